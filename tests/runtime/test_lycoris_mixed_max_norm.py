"""LyCORIS's max norm (`--scale_weight_norms`) in a run of several kinds (issue 12): a GLoRA or DyLoRA network
whose preset file gives some layers LoCon, LoHa, LoKr, Diag-OFT or full (a LoCon, full or IA^3 network
likewise), converted from a kohya command line, against lycoris-lora 4.1.3's kohya network built from the
same preset on the tiny SD 1.x U-Net and CLIP holding the same weights: lycoris.kohya's
apply_max_norm_regularization calls each module's apply_max_norm, GLoRAModule, DyLoraModule, FullModule and
IA3Module keep the base one (skipped), so only the
LoCon / LoHa / LoKr / Diag-OFT layers are scaled; dbspec's runtime/max_norm.py finds those layers by class
in the mixed run and gives the same count, mean and largest norm, and the same weights after the step."""

from __future__ import annotations

import pytest
import torch

from dbspec.runtime.adapters import add_lora
from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.max_norm import apply_max_norm, lycoris_norm_modules, lycoris_update
from tests.runtime.test_lycoris_algo_maps import MIXED, PRESETS, _converted_plan, _lycoris, pipe  # noqa: F401

pytest.importorskip("lycoris.kohya")

# LoCon ResNets and conv_in, LoHa MLPs (U-Net and CLIP), LoKr on conv_out, Diag-OFT on the down / upsamplers'
# convolutions and the other transformer layers the network's own algo
MIXED_NORMS = (
    MIXED
    + """[name_algo_map.conv_out]
algo = "lokr"
[module_algo_map.Downsample2D]
algo = "diag-oft"
dim = 4
[module_algo_map.Upsample2D]
algo = "full"
"""
)


def _randomise(models, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in models:
            for p in model.parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


# the LoCon ResNets' and LoHa MLPs' own weight_decompose (was DBS403, a spec's DBS583 with max_norm):
# LyCORIS's apply_max_norm takes their update before the decomposition, as the undecomposed layers'
MIXED_NORMS_WD = MIXED_NORMS.replace("alpha = 2\n", "alpha = 2\nweight_decompose = true\n").replace(
    'algo = "loha"\ndim = 2\n', 'algo = "loha"\ndim = 2\nweight_decompose = true\n'
)


@pytest.mark.parametrize("algo", ["glora", "dylora", "locon", "full", "ia3", "lokr+wd", "full+wd"])
def test_mixed_max_norm_equals_lycoris_network(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    import copy

    algo, wd = algo.split("+")[0], algo.endswith("+wd")
    PRESETS["norms"] = MIXED_NORMS_WD if wd else MIXED_NORMS
    try:
        path, plan = _converted_plan(tmp_path, "norms", algo, "--scale_weight_norms=1.0")
    finally:
        del PRESETS["norms"]
    a = plan.adapter
    assert (a.kind, a.max_norm, a.max_norm_form) == ({"locon": "lora"}.get(algo, algo), 1.0, "lycoris")
    assert {b.kind for b in a.blocks} >= {"lora", "loha", "lokr", "diag-oft", "full"} - {a.kind}
    assert {b.kind for b in a.blocks if b.dora == "on"} == ({"lora", "loha"} if wd else set())
    unet, text = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    add_lora(unet, a, a.denoiser_targets, seed=0, conv=True)
    add_lora(text, a, a.text_encoder_targets, seed=0, component="text_encoder")
    _randomise((unet, text), 3)
    made = _lycoris(pipe, path, monkeypatch, algo)
    made.apply_to(None, None, apply_text_encoder=True, apply_unet=True)  # registers its modules
    state = lycoris_state(unet=unet, text_encoders=[text], family="sd1", dtype="fp32")
    missing, unexpected = made.load_state_dict(state, strict=False)
    # DyLoraModule keeps its own up_list / down_list and loads nothing (never scaled either)
    dylora = {m.lora_name for m in made.loras if type(m).__name__ == "DyLoraModule"}
    assert {k.split(".")[0] for k in [*missing, *unexpected]} <= dylora, (missing[:5], unexpected[:5])
    modules = lycoris_norm_modules(unet, [text])
    kinds = {type(m.layer).__name__ for m in modules}
    assert len(kinds) >= 4, kinds  # LoCon, LoHa, LoKr, Diag-OFT layers; no GLoRA, DyLoRA or full one
    norms = sorted(float(lycoris_update(m).norm()) for m in modules)
    limit = norms[len(norms) // 2]  # about half the layers above it
    made.train()
    ours = apply_max_norm(modules, limit)
    theirs = made.apply_max_norm_regularization(limit, "cpu")
    assert ours[0] == int(theirs[0]) and 0 < ours[0] < len(modules)
    if wd:  # some decomposed LoCon / LoHa layer was scaled (its scalar, before the decomposition)
        assert any(getattr(m, "wd", False) and float(m.scalar) != 1.0 for m in made.loras)
    torch.testing.assert_close(
        torch.tensor(ours[1:]), torch.tensor([float(theirs[1]), float(theirs[2])]), rtol=1e-6, atol=1e-7
    )
    after = lycoris_state(unet=unet, text_encoders=[text], family="sd1", dtype="fp32")
    reference = made.state_dict()
    compared = 0
    for key, value in after.items():
        if key.split(".")[0] not in dylora:
            # IA3Module's `on_input` an int64 buffer, the export's in the export dtype
            torch.testing.assert_close(value, reference[key].to(value.dtype), rtol=1e-5, atol=1e-7, msg=key)
            compared += not torch.equal(value, state[key])
    assert compared >= ours[0]  # every scaled layer's weights moved as LyCORIS's did


def test_mixed_max_norm_run_resumes_bit_exact_and_exports_as_lycoris(pipe, tmp_path, monkeypatch):  # noqa: F811
    """The GLoRA network's converted spec trains on the tiny SD 1.x U-Net: kohya's max-norm keys are logged,
    the LoCon / LoHa layers' fixed scalars (new state in a run of several kinds, saved with each kind's
    adapter folder) move below 1 and never train, every scaled layer ends within the limit, a run stopped
    after one step and resumed ends bit-exact, and each U-Net module of lycoris-lora's network from the
    preset with the kohya export loaded (the scalars folded into lora_up / hada_w1_a as LyCORIS saves them)
    gives the trained layer's output."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from dbspec.runtime.execute import execute
    from dbspec.runtime.lycoris_switches import layer_scalar
    from tests.runtime.runspec import compile_spec
    from tests.runtime.test_lycoris_algo_maps import _layers_match_lycoris
    from tests.unit.convert_kit import out_path

    limit = 1e-3
    PRESETS["norms"] = MIXED_NORMS
    try:
        path, plan = _converted_plan(tmp_path, "norms", "glora", f"--scale_weight_norms={limit}")
    finally:
        del PRESETS["norms"]
    assert (plan.adapter.kind, plan.adapter.max_norm) == ("glora", limit)
    spec = out_path(tmp_path)
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2", "train.text_encoder=false", "logging.every=1"]
    whole = execute(compile_spec(spec, [*base, "output.dir=whole"]), keep_models=True)
    assert whole.status == "finished"
    rows = [json.loads(line) for line in (spec.parent / "whole" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    assert len(rows) == 2 and rows[-1]["max_norm/keys_scaled"] > 0
    assert 0 < rows[-1]["max_norm/max_key_norm"] <= limit * (1 + 1e-5)
    trained = whole.components.unet
    modules = lycoris_norm_modules(trained, [])
    with torch.no_grad():
        assert max(float(lycoris_update(m).norm()) for m in modules) <= limit * (1 + 1e-5)
    scalars = [layer_scalar(m.layer) for m in modules if m.kind in ("lora", "loha")]
    assert scalars and all(s is not None and not s.requires_grad for s in scalars)
    assert any(float(s) < 1.0 for s in scalars)
    saved = {
        f"{p.relative_to(whole.final)}:{k}": v
        for p in sorted(Path(whole.final).rglob("*.safetensors"))
        for k, v in load_file(str(p)).items()
    }
    assert any("scalar" in k for k in saved)  # the scalars are in the run's adapter folders
    parts = compile_spec(spec, [*base, "output.dir=parts"])
    assert execute(parts, stop_after=1).status == "interrupted"
    resumed = execute(parts, resume=True)
    assert resumed.status == "finished"
    again = {
        f"{p.relative_to(resumed.final)}:{k}": v
        for p in sorted(Path(resumed.final).rglob("*.safetensors"))
        for k, v in load_file(str(p)).items()
    }
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    made = _lycoris(pipe, path, monkeypatch, "glora")
    _layers_match_lycoris(made, load_file(str(export)), trained.eval())


@pytest.mark.parametrize("algo", ["lokr", "glora"])
def test_dim_from_weights_file_of_several_kinds_max_norm_equals_lycoris(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """--dim_from_weights with --scale_weight_norms, the file of a LoKr / GLoRA network whose preset gives
    layers LoCon, LoHa, LoKr, Diag-OFT and full (every parameter moved, some modules left out): lycoris-lora's
    create_network_from_weights builds each module by its keys, and its apply_max_norm_regularization after
    load_weights scales the LoCon / LoHa / LoKr / Diag-OFT modules; dbspec's converted run started from the
    file (the LoCon / LoHa layers' fixed scalars at 1) gives the same count and norms and, after the step,
    every layer's output (1e-5). The run itself resumes with those scalars in
    test_mixed_max_norm_run_resumes_bit_exact_and_exports_as_lycoris."""
    import copy

    from peft.tuners.tuners_utils import BaseTunerLayer

    from tests.runtime import lycoris_sd_file_kit as kit
    from tests.runtime.test_flow_init import _loaded
    from tests.runtime.test_lycoris_mixed_file import _network
    from tests.runtime.test_lycoris_sd_full_file import _named
    from tests.runtime.test_lycoris_sd_rebuilt_file import FROM

    lycoris_kohya = pytest.importorskip("lycoris.kohya")
    preset = tmp_path / "mixed.toml"
    preset.write_text(MIXED_NORMS, encoding="utf-8")
    state = kit.moved_state(_network(pipe, preset, monkeypatch, algo), seed=2, scale=0.1)
    path = kit.save_state(state, tmp_path, drop=6)
    named, unet = _named(pipe.text_encoder), copy.deepcopy(pipe.unet)
    theirs, _ = lycoris_kohya.create_network_from_weights(1.0, str(path), None, named, unet)
    theirs.apply_to(named, unet, True, True)
    theirs.load_weights(str(path))
    kinds = {type(m).__name__ for m in theirs.loras}
    assert {"LoConModule", "LohaModule", "LokrModule", "DiagOFTModule"} <= kinds, kinds
    plan = kit.converted_plan(tmp_path, f"{FROM} --scale_weight_norms=1.0")
    a = plan.adapter
    assert (a.max_norm, a.max_norm_form) == (1.0, "lycoris") and a.init_weights
    comps, _ = _loaded(plan)
    modules = lycoris_norm_modules(comps.unet, comps.text_encoders)
    with torch.no_grad():
        norms = sorted(float(lycoris_update(m).norm()) for m in modules)
    limit = norms[len(norms) // 2]
    ours = apply_max_norm(modules, limit)
    expected = theirs.apply_max_norm_regularization(limit, "cpu")
    assert ours[0] == int(expected[0]) and 0 < ours[0] < len(modules)
    torch.testing.assert_close(
        torch.tensor(ours[1:]), torch.tensor([float(expected[1]), float(expected[2])]), rtol=1e-6, atol=1e-7
    )
    layers = kit.kohya_layers(comps, BaseTunerLayer)
    torch.manual_seed(0)
    for lyco in theirs.loras:
        layer = layers[lyco.lora_name]
        x = kit.sample_input(layer.get_base_layer())
        with torch.no_grad():
            torch.testing.assert_close(layer.eval()(x), lyco.eval()(x), rtol=0, atol=1e-5, msg=lyco.lora_name)
