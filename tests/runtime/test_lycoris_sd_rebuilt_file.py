"""lycoris.kohya --dim_from_weights with a LyCORIS Diag-OFT, BOFT or GLoRA file on SD 1.x (issue 12;
convert/kohya/lycoris_sd_rebuilt.py): lycoris-lora 4.1.3's network over a preset file on the tiny U-Net and
CLIP, every parameter moved at random, some modules taken from a network of another dim (another block size
/ rank), some alphas changed (another constraint / scale), some rescales left out and some modules left out,
saved. kohya's steps with --dim_from_weights, create_network_from_weights on the file, apply_to, load_weights,
and dbspec's converted run build the same layers (each module's class, block shape or rank, rescale) and
start them alike (tensors equal, outputs to 1e-5); a tiny run from the file trains.
An IA3 file stops lycoris-lora's create_network_from_weights (TypeError), as the conversion says (DBS402)."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.tiny import build_pipeline
from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_sd_full_file import _lycoris_modules, _named

lycoris_kohya = pytest.importorskip("lycoris.kohya")
FROM = (
    '--dim_from_weights --network_args "algo=lokr" "conv_dim=8"'  # args create_network_from_weights ignores
)


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _state(pipe, folder, monkeypatch, dim: int, **args) -> dict[str, torch.Tensor]:
    made = kit.network(pipe, folder, monkeypatch, dim, **args)
    return kit.moved_state(made, seed=dim, scale=0.1)


def _mixed_file(pipe, folder, monkeypatch, algo: str, **args):
    """A file of `algo` modules at dim 4, every third module at dim 2 (its own block size / rank), every
    fourth with alpha 0.01 x (OFT: a constraint that binds) or 3 x (GLoRA) its own, every fifth without its
    rescale (OFT), every sixth left out."""
    conv = {"conv_dim": "4", "conv_alpha": "2"} if algo == "glora" else {}
    state = _state(pipe, folder, monkeypatch, 4, algo=algo, **conv, **args)
    other = _state(pipe, folder, monkeypatch, 2, algo=algo, **({"conv_dim": "2"} if conv else {}), **args)
    names = sorted({k.split(".")[0] for k in state})
    for name in names[::3]:
        for key in [k for k in state if k.startswith(name + ".")]:
            state[key] = other[key]
    for name in names[1::4]:
        alpha = state[f"{name}.alpha"]
        state[f"{name}.alpha"] = (alpha * 0 + 0.01) if algo != "glora" else alpha * 3
    for name in names[2::5] if algo != "glora" else ():
        state.pop(f"{name}.rescale", None)
    return kit.save_state(state, folder, drop=6)


def _theirs(pipe, path) -> dict[str, nn.Module]:
    """kohya's steps with --dim_from_weights: create_network_from_weights, apply_to, load_weights."""
    named, unet = _named(pipe.text_encoder), copy.deepcopy(pipe.unet)
    made, _ = lycoris_kohya.create_network_from_weights(1.0, str(path), None, named, unet)
    made.apply_to(named, unet, True, True)
    made.load_weights(str(path))
    return _lycoris_modules(made)


def _same_start(pipe, tmp_path, path, kind: str, classes, check) -> None:
    theirs = _theirs(pipe, path)
    in_file = {k.split(".")[0] for k in load_file(str(path))}
    assert set(theirs) == in_file
    plan = kit.converted_plan(tmp_path, FROM)
    assert plan.adapter.kind == kind and plan.adapter.init_partial
    assert plan.adapter.blocks, "modules of their own values: blocks"
    comps, count = _loaded(plan)
    assert count == len(in_file)
    ours = kit.kohya_layers(comps, classes, adapter=True)
    assert sorted(ours) == sorted(theirs)
    convs = 0
    for name, lyco in theirs.items():
        layer = ours[name]
        check(name, layer, lyco)
        base = layer.get_base_layer()
        convs += isinstance(base, nn.Conv2d) and base.kernel_size == (3, 3)
        x = kit.sample_input(base)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
            assert not torch.allclose(layer(x), base(x), atol=1e-4), name
    assert convs, "3x3 convolutions built from the file too"


@pytest.mark.parametrize("algo", ["diag-oft", "boft"])
def test_oft_file_builds_as_lycoris_trains(pipe, tmp_path, monkeypatch, algo):
    from dbspec.runtime.lycoris_oft import DiagOftLayer

    path = _mixed_file(pipe, tmp_path, monkeypatch, algo, rescaled="True")

    def check(name, layer, lyco):
        assert float(lyco.alpha) * lyco.dim == pytest.approx(lyco.constraint)
        torch.testing.assert_close(layer.lora_oft_blocks["default"], lyco.oft_blocks, rtol=0, atol=0)
        if lyco.rescaled:
            torch.testing.assert_close(layer.lora_oft_rescale["default"], lyco.rescale, rtol=0, atol=0)
        else:
            assert "default" not in getattr(layer, "lora_oft_rescale", {}), name

    _same_start(pipe, tmp_path, path, algo, DiagOftLayer, check)
    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    assert kit.trained(saved, load_file(str(path)), lambda k: k.endswith(".oft_blocks"))


def test_glora_file_builds_as_lycoris_trains(pipe, tmp_path, monkeypatch):
    from dbspec.runtime.lycoris_glora import GloraLayer

    path = _mixed_file(pipe, tmp_path, monkeypatch, "glora")

    def check(name, layer, lyco):
        for part in ("a1", "a2", "b1", "b2"):
            mine = getattr(layer, f"lora_glora_{part}")["default"]
            torch.testing.assert_close(mine, getattr(lyco, part).weight, rtol=0, atol=0, msg=name)

    _same_start(pipe, tmp_path, path, "glora", GloraLayer, check)
    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    assert kit.trained(saved, load_file(str(path)), lambda k: k.endswith(".b2.weight"))


def test_ia3_file_stops_create_network_from_weights(pipe, tmp_path, monkeypatch):
    state = _state(pipe, tmp_path, monkeypatch, 4, algo="ia3")
    path = kit.save_state(state, tmp_path)
    with pytest.raises(TypeError):
        _theirs(pipe, path)
    from tests.unit.convert_kit import SD15, codes, images, kohya, messages

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        "--network_weights=prev.safetensors --learning_rate=1e-3 --max_train_steps=3 "
        f"--output_dir=out {FROM}",
    )
    assert "DBS402" in codes(outcome) and "IA3" in messages(outcome, "DBS402")


def test_sdxl_diag_oft_file_in_kohyas_original_names(tmp_path, monkeypatch):
    """SDXL: the file's U-Net modules in kohya's original layout (input_blocks...), its CLIP-L / OpenCLIP
    modules lora_te1_ / lora_te2_, two block sizes in it. lycoris-lora's create_network_from_weights,
    apply_to and load_weights run on the diffusers-named file (the name is only the lookup); dbspec's run
    from the renamed one builds and starts every layer where lycoris-lora's does (blocks equal, outputs to
    1e-5)."""
    from safetensors.torch import save_file

    from dbspec.runtime.exports import kohya_parts
    from dbspec.runtime.lycoris_oft import DiagOftLayer
    from tests.runtime.test_lycoris_sd_full_file import PRESET
    from tests.unit.convert_kit import SDXL, errors, images, kohya, plan_of

    kept_lycoris_presets(monkeypatch)
    xl = build_pipeline("builtin:tiny-sdxl")
    preset = tmp_path / "preset.toml"
    preset.write_text(PRESET, encoding="utf-8")

    def state_at(dim: int) -> dict[str, torch.Tensor]:
        texts, unet = [_named(xl.text_encoder), _named(xl.text_encoder_2)], copy.deepcopy(xl.unet)
        made = lycoris_kohya.create_network(
            1.0, dim, 1.0, None, texts, unet, algo="diag-oft", preset=str(preset), rescaled="True"
        )
        made.apply_to(texts, unet, True, True)
        return kit.moved_state(made, seed=dim, scale=0.1)

    state, other = state_at(4), state_at(2)
    names = sorted({k.split(".")[0] for k in state})
    for name in names[::3]:  # their own block size
        state |= {k: other[k] for k in other if k.startswith(name + ".")}
    for name in names[1::4]:  # a constraint that binds
        state[f"{name}.alpha"] = state[f"{name}.alpha"] * 0 + 0.01
    for name in names[2::5]:  # left out
        for key in [k for k in state if k.startswith(name + ".")]:
            del state[key]
    assert any(k.startswith("lora_te1_") for k in state) and any(k.startswith("lora_te2_") for k in state)
    diffusers_file = tmp_path / "diffusers.safetensors"
    save_file(state, str(diffusers_file))
    (_, _, to_original), *_ = kohya_parts(unet=xl.unet, text_encoders=[], family="sdxl")
    paths = {f"lora_unet_{n}".replace(".", "_"): n for n, _ in xl.unet.named_modules() if n}
    renamed = {}
    for key, value in state.items():
        name, tensor = key.split(".", 1)
        if name in paths:
            name = f"lora_unet_{to_original(paths[name])}".replace(".", "_")
        renamed[f"{name}.{tensor}"] = value
    assert renamed.keys() != state.keys()
    save_file(renamed, str(tmp_path / "prev.safetensors"))

    texts, unet = [_named(xl.text_encoder), _named(xl.text_encoder_2)], copy.deepcopy(xl.unet)
    made, _ = lycoris_kohya.create_network_from_weights(1.0, str(diffusers_file), None, texts, unet)
    made.apply_to(texts, unet, True, True)
    made.load_weights(str(diffusers_file))
    original = {paths[m.lora_name]: m for m in made.unet_loras}
    theirs = {
        **{f"lora_unet_{to_original(p)}".replace(".", "_"): m for p, m in original.items()},
        **{m.lora_name: m for m in made.text_encoder_loras},
    }
    assert len({tuple(m.oft_blocks.shape[1:]) for m in theirs.values()}) > 1

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        "--network_weights=prev.safetensors --learning_rate=1e-3 --max_train_steps=3 "
        f"--output_dir=out {FROM}",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    plan = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sdxl"])
    assert plan.adapter.kind == "diag-oft" and plan.adapter.blocks and plan.adapter.text_encoder_blocks
    comps, count = _loaded(plan)
    assert count == len(theirs)
    ours = kit.kohya_layers(comps, DiagOftLayer, adapter=True, family="sdxl")
    assert sorted(ours) == sorted(theirs)
    for name, lyco in theirs.items():
        layer = ours[name]
        torch.testing.assert_close(
            layer.lora_oft_blocks["default"], lyco.oft_blocks, rtol=0, atol=0, msg=name
        )
        x = kit.sample_input(layer.get_base_layer())
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
