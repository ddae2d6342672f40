"""`dbspec sample` of a LoRA run's diffusers file computes the trained model: every adapted layer of every
component loaded (diffusers' U-Net loader reads a file's key layout off its first key, and its text-encoder
loader drops DoRA magnitudes: runtime/weights.py _diffusers_lora_layers, runtime/sample.py)."""

from __future__ import annotations

import copy
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dbspec.families import family_spec
from dbspec.runtime import sample as sample_module
from dbspec.runtime.execute import execute
from dbspec.runtime.sample import SampleError, SampleRequest, load_pipeline
from tests.runtime.runspec import compile_spec, write_spec
from tests.runtime.test_lycoris import _unet_output

# what `dbspec convert kohya` writes for lycoris.kohya algo=locon with the `full` preset on SD 1.x
LOCON_FULL = """kind = "lora"
rank = 2
alpha = 1.0
denoiser_targets = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
    "time_emb_proj", "conv_shortcut", "time_embedding.linear_1", "time_embedding.linear_2"]
text_encoder_targets = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
conv_rank = 2
conv_alpha = 1.0
conv_targets = ["conv1", "conv2", "downsamplers.0.conv", "upsamplers.0.conv", "conv_in", "conv_out"]
"""
FLOW_TARGETS = """kind = "lora"
rank = 2
denoiser_targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
    "to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear",
    "norm1_context.linear", "proj_out", "context_embedder", "norm_out.linear", "linear_1", "linear_2"]
"""
CASES = {
    "sd1_locon_full": ("builtin:tiny-sd1", LOCON_FULL),
    "sdxl_locon_full": ("builtin:tiny-sdxl", LOCON_FULL),
    "sd1_locon_full_dora": ("builtin:tiny-sd1", LOCON_FULL + "dora = true\n"),
    "flux_lora": ("builtin:tiny-flux", FLOW_TARGETS),
    "sd3_lora": ("builtin:tiny-sd3", FLOW_TARGETS),
}
# the cases whose run also writes a kohya_lora export: the kohya-file tests below sample that export of the
# same run (one tiny run per case, not one per test)
KOHYA_CASES = {
    "builtin:tiny-sd1": "sd1_locon_full",
    "builtin:tiny-sdxl": "sdxl_locon_full",
    "builtin:tiny-flux": "flux_lora",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A one-step run of each case (text encoders trained, models kept), by case name: its plan and result,
    made on first use, once per module. The runs are read only: a test writes into its own tmp_path."""
    made: dict[str, tuple] = {}

    def run(case: str):
        if case not in made:
            base, table = CASES[case]
            flow = base.endswith(("flux", "sd3"))
            extra = f"[adapter]\n{table}\n[train]\ntext_encoder = true\n"
            if case in KOHYA_CASES.values():
                extra += '[checkpoints]\nexports = ["kohya_lora"]\n'
            spec = write_spec(tmp_path_factory.mktemp(case), base=base, steps=1, extra=extra)
            plan = compile_spec(spec, ["optimizer.lr=1e-2", *(["model.t5_max_length=8"] if flow else [])])
            made[case] = (plan, execute(plan, keep_models=True))
        return made[case]

    return run


def _effective(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights a model computes with: a copy with every adapter merged into its layer."""
    module = copy.deepcopy(module)
    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.merge()
    return {k.replace(".base_layer", ""): v for k, v in module.state_dict().items() if "lora_" not in k}


def _adapted(module: torch.nn.Module) -> int:
    return sum(isinstance(m, BaseTunerLayer) for m in module.modules())


@pytest.mark.parametrize("case", list(CASES))
def test_sampled_lora_is_the_trained_model(tmp_path, monkeypatch, runs, case):
    base, _ = CASES[case]
    plan, run = runs(case)
    trained = run.components
    for module in (trained.unet, *trained.text_encoders):
        module.eval()
    lora = Path(run.final) / "pytorch_lora_weights.safetensors"
    with safe_open(str(lora), "pt") as f:
        keys = list(f.keys())
    # one key layout per file: peft's lora_A/lora_B or diffusers' renamed attention projections
    assert all(".lora_A." in k or ".lora_B." in k or "lora_magnitude" in k for k in keys) or not any(
        ".lora_A." in k or ".lora_B." in k for k in keys
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = load_pipeline(SampleRequest(source=Path(run.output), settings=plan.validation))
    assert not [w for w in caught if "additional target modules" in str(w.message)]
    spec_ = family_spec(plan.model.family)
    pairs = [(spec_.denoiser, trained.unet), *zip(spec_.text_encoder_names, trained.text_encoders)]
    for name, module in pairs:
        loaded = getattr(pipe, name)
        assert _adapted(loaded) == _adapted(module), name
        ours, theirs = _effective(module), _effective(loaded)
        assert ours.keys() == theirs.keys(), name
        for key, value in ours.items():
            torch.testing.assert_close(theirs[key], value, rtol=1e-5, atol=1e-5, msg=f"{name}.{key}")
    assert _adapted(trained.unet) and _adapted(trained.text_encoders[0])
    if base == "builtin:tiny-sd1":  # and the U-Net's output, adapters on
        torch.testing.assert_close(_unet_output(pipe.unet), _unet_output(trained.unet), rtol=1e-5, atol=1e-5)
    if case == "sd1_locon_full":  # a file dbspec wrote before, in the mixed layout, samples the trained model
        old = _mixed_copy(lora, tmp_path / "old")
        pipe = load_pipeline(SampleRequest(source=old, settings=plan.validation))
        assert _adapted(pipe.unet) == _adapted(trained.unet)
        torch.testing.assert_close(_unet_output(pipe.unet), _unet_output(trained.unet), rtol=1e-5, atol=1e-5)
        # read as diffusers reads it (no copy in one layout), its attention layers are dropped: refused
        monkeypatch.setattr(sample_module, "_one_layout", lambda lora, scratch: lora)
        with pytest.raises(SampleError, match="loaded 51 of the file's 83 adapted unet layers"):
            load_pipeline(SampleRequest(source=old, settings=plan.validation))


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def _mixed_copy(lora: Path, folder: Path) -> Path:
    """The file as dbspec wrote it before: each component's peft keys through diffusers'
    convert_state_dict_to_diffusers (the attention projections renamed, the other layers peft's)."""
    from diffusers.utils import convert_state_dict_to_diffusers

    state = load_file(str(lora))
    mixed = {}
    for component in sorted({k.split(".", 1)[0] for k in state}):
        part = {k: v for k, v in state.items() if k.startswith(component + ".")}
        mixed |= convert_state_dict_to_diffusers(part)
    assert any(".lora.down." in k for k in mixed) and any(".lora_A." in k for k in mixed)
    folder.mkdir()
    save_file(mixed, str(folder / lora.name), metadata=_metadata(lora))
    shutil.copy(lora.parent / "plan.json", folder / "plan.json")
    return folder


def _kohya_run(runs, base: str):
    """The one-step run of `base`'s kohya case (KOHYA_CASES) with its kohya_lora export: its plan, result and
    export."""
    plan, run = runs(KOHYA_CASES[base])
    (export,) = Path(run.final).glob("*.kohya.safetensors")
    return plan, run, export


@pytest.mark.parametrize("base", ["builtin:tiny-sd1", "builtin:tiny-sdxl"])
def test_sampled_kohya_file_is_the_trained_model_or_refused(tmp_path, runs, base):
    """A kohya-layout file (`lora_unet_*` / `lora_te*_*`, here a LoCon run's kohya_lora export) passed to
    `dbspec sample` directly: diffusers' loaders convert it, and every module's layer must carry an adapter
    (the check covered diffusers-layout files only): all loaded, the sampled weights are the trained ones;
    a module no layer of the base model has is left out by diffusers, and refused, naming the counts."""
    plan, run, export = _kohya_run(runs, base)
    pipe = load_pipeline(SampleRequest(source=export, base=base, settings=plan.validation))
    spec_ = family_spec(plan.model.family)
    pairs = [
        (spec_.denoiser, run.components.unet),
        *zip(spec_.text_encoder_names, run.components.text_encoders),
    ]
    for name, module in pairs:
        module.eval()
        loaded = getattr(pipe, name)
        assert _adapted(loaded) == _adapted(module) > 0, name
        ours, theirs = _effective(module), _effective(loaded)
        for key, value in ours.items():
            torch.testing.assert_close(theirs[key], value, rtol=1e-5, atol=1e-5, msg=f"{name}.{key}")
    state = load_file(str(export))
    module = next(k.split(".")[0] for k in state if k.startswith("lora_unet_") and "_proj_in." in k)
    moved = re.sub(r"_blocks_(\d+)_", r"_blocks_9\1_", module, count=1)  # a block the base model lacks
    state |= {k.replace(module, moved): v.clone() for k, v in state.items() if k.startswith(module + ".")}
    save_file(state, str(tmp_path / "extra.safetensors"))
    adapted = _adapted(run.components.unet)
    with pytest.raises(
        SampleError, match=f"loaded {adapted} of the file's {adapted + 1} adapted unet layers"
    ):
        load_pipeline(
            SampleRequest(source=tmp_path / "extra.safetensors", base=base, settings=plan.validation)
        )


def test_kohya_file_diffusers_cannot_convert_is_refused(runs):
    """diffusers' kohya Flux converter splits the fused Linears at FLUX.1's widths (3072) and asserts on
    others (tiny-flux's): a SampleError naming the file, not diffusers' bare AssertionError."""
    plan, _run, export = _kohya_run(runs, "builtin:tiny-flux")
    with pytest.raises(SampleError, match="diffusers cannot load it onto builtin:tiny-flux"):
        load_pipeline(SampleRequest(source=export, base="builtin:tiny-flux", settings=plan.validation))
