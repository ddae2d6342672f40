"""kohya lycoris.kohya `train_norm=True` on SDXL (sdxl_train_network.py), against lycoris-lora 4.1.3's
create_network on kohya's own SDXL U-Net (the recorded tree of test_lycoris_preset_file_sdxl.py: the original
layout's paths and kohya's classes, its ResNets' norms `GroupNorm32`) and both CLIP encoders: the NormModules
it builds are exactly the norms the converted plan offsets (`[adapter] denoiser_norms` on diffusers' SDXL
U-Net, renamed to the original layout as dbspec's kohya export names them; `text_encoder_norms` on each
encoder), and a tiny SDXL run's export holds NormModule's `w_norm` / `b_norm` under those names for the norms
the tiny model has (issue 12)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from safetensors import safe_open
from torch import nn

from dbspec.runtime.execute import execute
from dbspec.unet_layout import SDXL_UNET, rename, unet_table
from tests.runtime.runspec import compile_spec
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.shared import NETWORK_ATTRS
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip, models  # noqa: F401

lycoris_kohya = pytest.importorskip("lycoris.kohya")

FILE = """\
unet_target_module = ["ResnetBlock2D"]
unet_target_name = ['middle_block\\.1\\.transformer_blocks\\.[0-3]\\.norm2', "out.0"]
text_encoder_target_module = []
text_encoder_target_name = [
    'text_model\\.encoder\\.layers\\.(1|20)\\.layer_norm1',
    'text_model\\.final_layer_norm',
]
"""
# CLIP-L's root class alone (OpenCLIP bigG's is CLIPTextModelWithProjection): every CLIP-L LayerNorm, none
# of bigG's (adapter.text_encoder_2_norms empty); the ResNets' norms, Linears and convolutions
ROOT = """\
enable_conv = true
unet_target_module = ["ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPTextModel"]
"""
FILES = {"p.toml": FILE, "root.toml": ROOT}
NORMS = (nn.GroupNorm, nn.LayerNorm)


def _converted(tmp_path: Path, preset: str, overrides: list[str] | None = None):
    from tests.unit.convert_kit import SDXL, errors, images, kohya, plan_of

    if preset.endswith(".toml"):
        (tmp_path / preset).write_text(FILES[preset], encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=4 --network_alpha=1 "
        f'--network_args "algo=locon" "preset={preset}" "train_norm=True" --learning_rate=1e-2 '
        "--max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return plan_of(outcome, tmp_path, overrides)


def _lycoris_norms(models, preset: str, monkeypatch) -> set[str]:  # noqa: F811
    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, models["te"], models["kohya_unet"], algo="locon", preset=preset, train_norm="True"
    )
    # a text_encoder_target_module naming an encoder's root class: LyCORIS names its layers lora_te1__text_...
    # (the empty path joined with "_"), dbspec's export kohya's usual lora_te1_text_... (docs/converting.md)
    made = [m for m in [*made.unet_loras, *made.text_encoder_loras] if type(m).__name__ == "NormModule"]
    return {re.sub(r"^(lora_te\d?)__", r"\1_", m.lora_name) for m in made}


def _matches(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _planned_norms(models, adapter) -> set[str]:  # noqa: F811
    table = unet_table(SDXL_UNET)
    names = {
        "lora_unet_" + rename(n, table).replace(".", "_")
        for n, m in models["unet"].named_modules()
        if isinstance(m, NORMS) and _matches(n, adapter.denoiser_norms)
    }
    texts = (adapter.text_encoder_norms, adapter.text_encoder_2_norms)
    for prefix, model, norms in zip(("lora_te1", "lora_te2"), models["te"], texts):
        names |= {
            f"{prefix}_{n.replace('.', '_')}"
            for n, m in model.named_modules()
            if isinstance(m, nn.LayerNorm) and _matches(n, norms)
        }
    return names


@pytest.mark.parametrize("preset", ["full", "attn-mlp", "unet-convblock-only", "p.toml", "root.toml"])
def test_sdxl_norms_are_the_ones_lycoris_builds_norm_modules_on(models, preset, tmp_path, monkeypatch):  # noqa: F811
    plan = _converted(tmp_path, preset)
    theirs = _lycoris_norms(
        models, str(tmp_path / preset) if preset.endswith(".toml") else preset, monkeypatch
    )
    ours = _planned_norms(models, plan.adapter)
    assert theirs and sorted(ours - theirs) == [] and sorted(theirs - ours) == []
    assert any(n.startswith("lora_te2") for n in ours) == (preset == "p.toml")
    assert any(n.startswith("lora_te1") for n in ours) == preset.endswith(".toml")
    if preset == "root.toml":
        assert plan.adapter.text_encoder_2_norms == () and plan.adapter.text_encoder_norms


@pytest.mark.parametrize("preset", sorted(FILES))
def test_sdxl_norms_run_exports_lycoris_names(models, preset, tmp_path, monkeypatch):  # noqa: F811
    """The files' norms on the tiny SDXL model (a prefix of the full layout; CLIP layers 0-2): the export's
    NormModule tensors are LyCORIS's names for the norms the tiny model has (root.toml: CLIP-L's alone, bigG
    not training)."""
    from dbspec.runtime.tiny import build_pipeline
    from tests.unit.convert_kit import out_path

    _converted(tmp_path, preset, ["model.base=builtin:tiny-sdxl"])
    theirs = _lycoris_norms(models, str(tmp_path / preset), monkeypatch)
    tiny = build_pipeline("builtin:tiny-sdxl")
    table = unet_table(tiny.unet.config)
    present = {
        "lora_unet_" + rename(n, table).replace(".", "_")
        for n, m in tiny.unet.named_modules()
        if isinstance(m, NORMS)
    }
    for prefix, model in zip(("lora_te1", "lora_te2"), (tiny.text_encoder, tiny.text_encoder_2)):
        model = _kohya_clip(model)
        present |= {
            f"{prefix}_{n.replace('.', '_')}" for n, m in model.named_modules() if isinstance(m, NORMS)
        }
    done = execute(compile_spec(out_path(tmp_path), ["model.base=builtin:tiny-sdxl"]))
    assert done.status == "finished"
    (export,) = Path(done.final).glob("*.kohya.safetensors")
    with safe_open(str(export), "pt") as handle:
        norms = {key.split(".")[0] for key in handle.keys() if key.endswith(("w_norm", "b_norm"))}
    expected = theirs & present
    if preset == "p.toml":
        assert any(n.startswith("lora_unet_middle_block") for n in expected) and "lora_unet_out_0" in expected
    assert any(n.startswith("lora_te1") for n in expected)
    assert any(n.startswith("lora_te2") for n in expected) == (preset == "p.toml")
    assert norms == expected


def test_sdxl_each_encoders_own_norms_train_resume_and_load_in_lycoris(tmp_path, monkeypatch):
    """text_encoder_2_norms of its own (here OpenCLIP bigG's final LayerNorm beside root.toml's CLIP-L norms):
    each encoder offsets its own list, the run resumes bit-exact, and lycoris-lora's
    create_network_from_weights loads the export (lora_te1_ / lora_te2_ NormModules, CLIP-L's LoCon) onto
    the base encoders with both trained encoders' outputs."""
    import torch
    from safetensors.torch import load_file

    from dbspec.runtime.tiny import build_pipeline
    from tests.unit.convert_kit import out_path

    _converted(tmp_path, "root.toml", ["model.base=builtin:tiny-sdxl"])
    spec = out_path(tmp_path)
    base = ["model.base=builtin:tiny-sdxl", 'checkpoints.exports=["kohya_lora"]', "schedule.steps=2"]
    base += ['adapter.text_encoder_2_norms=["final_layer_norm"]', "train.text_encoder_2=true"]
    plan = compile_spec(spec, [*base, "output.dir=whole"])
    assert plan.adapter.text_encoder_2_norms == ("final_layer_norm",)
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished"
    parts = compile_spec(spec, [*base, "output.dir=parts"])
    first = execute(parts, stop_after=1)
    second = execute(parts, resume=True)
    assert first.status == "interrupted" and second.status == "finished"
    assert first.losses + second.losses == whole.losses
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    (again,) = Path(second.final).glob("*.kohya.safetensors")
    tensors, resumed = load_file(str(export)), load_file(str(again))
    assert tensors.keys() == resumed.keys() and all(torch.equal(tensors[k], resumed[k]) for k in tensors)
    te2 = {k.split(".")[0] for k in tensors if k.startswith("lora_te2")}
    assert te2 == {"lora_te2_text_model_final_layer_norm"}
    assert "lora_te1_text_model_encoder_layers_1_layer_norm2" in {k.split(".")[0] for k in tensors}

    tiny = build_pipeline("builtin:tiny-sdxl")
    inner = [copy.deepcopy(tiny.text_encoder).float(), copy.deepcopy(tiny.text_encoder_2).float()]
    encoders = [_kohya_clip(m) for m in inner]  # kohya's `text_model.` level (LyCORIS's names)
    for attr in NETWORK_ATTRS[1:4]:  # the loader's network builds its preset's modules first: none here
        monkeypatch.setattr(lycoris_kohya.LycorisNetworkKohya, attr, [])
    network, weights = lycoris_kohya.create_network_from_weights(
        1.0, str(export), None, encoders, nn.Module(), for_inference=True
    )
    assert {type(m).__name__ for m in network.text_encoder_loras} == {"LoConModule", "NormModule"}
    ids = torch.arange(7).unsqueeze(0) % tiny.text_encoder.config.vocab_size
    with torch.no_grad():
        plain = [m.eval()(ids)[0] for m in inner]
    network.apply_to(encoders, nn.Module(), apply_text_encoder=True, apply_unet=False)
    network.load_state_dict(weights, strict=False)
    trained = [m.float().eval() for m in whole.components.text_encoders]
    with torch.no_grad():
        for theirs_model, ours_model, before in zip(inner, trained, plain):
            ours, theirs = ours_model(ids)[0], theirs_model.eval()(ids)[0]
            assert (ours - before).abs().max() > 1e-3  # each trained encoder differs from its base
            torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
