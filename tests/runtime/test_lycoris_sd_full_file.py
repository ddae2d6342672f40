"""lycoris.kohya --network_weights with a LyCORIS full file (`diff` / `diff_b`) on SD 1.x and SDXL (issue 12;
convert/kohya/lycoris_sd_full.py, runtime/lycoris_whole_init.py): lycoris-lora 4.1.3's FullModules on the
tiny U-Net and CLIP, every copy moved at random, saved as its network saves them. A converted kohya command
starts each layer where lycoris-lora's network stands after kohya's steps: with algo=full (no
--dim_from_weights) create_network's FullModules, apply_to, then load_weights (W + diff); with
--dim_from_weights create_network_from_weights on the file, apply_to, load_weights (W + 2 diff). A tiny
run from the file trains and resumes bit for bit; a full layer the file lacks fails as LyCORIS's load hook
does."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_flow_init import _loaded

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# the attention and ResNet blocks (their 3x3 and 1x1 convolutions), conv_in and CLIP's attention, by class
# and name (the `full` preset's TimestepEmbedding class would reach diffusers' time embedding twice)
PRESET = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = ["conv_in"]
text_encoder_target_module = ["CLIPAttention"]
"""
TINY = {"sd1": "builtin:tiny-sd1", "sdxl": "builtin:tiny-sdxl"}


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline(TINY["sd1"])


def _named(text_encoder) -> nn.Module:
    if hasattr(text_encoder, "text_model"):  # transformers' CLIPTextModel(WithProjection) as kohya holds it
        return copy.deepcopy(text_encoder)
    named = nn.Module()  # kohya's CLIP names its modules text_model.*
    named.text_model = copy.deepcopy(text_encoder)
    return named


def _full_file(pipe, folder: Path, monkeypatch, drop: int = 0) -> Path:
    """LyCORIS's algo=full network over PRESET, every copy moved at random, saved; `drop`: leave every
    drop-th module out."""
    kept_lycoris_presets(monkeypatch)
    preset = folder / "preset.toml"
    preset.write_text(PRESET, encoding="utf-8")
    named, unet = _named(pipe.text_encoder), copy.deepcopy(pipe.unet)
    made = lycoris_kohya.create_network(1.0, 4, 1.0, None, named, unet, algo="full", preset=str(preset))
    made.apply_to(named, unet, True, True)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in made.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    state = {k: v.detach().clone().contiguous() for k, v in made.state_dict().items()}
    names = sorted({k.split(".")[0] for k in state})
    for name in names[::drop] if drop else ():
        for key in [k for k in state if k.startswith(name + ".")]:
            del state[key]
    path = folder / "prev.safetensors"
    save_file(state, str(path))
    return path


def _convert(tmp_path: Path, extra: str):
    from tests.unit.convert_kit import SD15, errors, images, kohya

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        "--network_weights=prev.safetensors --learning_rate=1e-3 --max_train_steps=3 "
        f"--save_model_as=safetensors --output_dir=out --seed=1 {extra}",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return outcome


def _ours(comps, family: str = "sd1") -> dict[str, nn.Module]:
    """kohya name -> dbspec's full layer."""
    from dbspec.runtime.adapters import lora_adapter
    from dbspec.runtime.exports import kohya_parts
    from dbspec.runtime.lycoris_full import FullLayer

    out = {}
    parts = kohya_parts(unet=comps.unet, text_encoders=comps.text_encoders, family=family, lycoris=True)
    for prefix, module, to_path in parts:
        found = lora_adapter(module)
        for name, layer in found[0].named_modules() if found else ():
            if isinstance(layer, FullLayer):
                out[f"{prefix}_{to_path(name).replace('.', '_')}"] = layer
    return out


def _same_start(comps, theirs: dict[str, nn.Module], family: str = "sd1") -> None:
    """Each of lycoris-lora's FullModules against dbspec's layer: weight, bias and output."""
    ours = _ours(comps, family)
    assert sorted(ours) == sorted(theirs)
    convs = 0
    for name, lyco in theirs.items():
        layer = ours[name]
        weight, bias = lyco.make_weight(1.0, torch.device("cpu"))
        torch.testing.assert_close(layer.lora_full["default"], weight, rtol=0, atol=1e-6, msg=name)
        if bias is not None:
            torch.testing.assert_close(layer.lora_full_bias["default"], bias, rtol=0, atol=1e-6, msg=name)
        base = layer.get_base_layer()
        convs += isinstance(base, nn.Conv2d) and base.kernel_size == (3, 3)
        x = (
            torch.randn(2, base.in_features)
            if isinstance(base, nn.Linear)
            else torch.randn(1, base.in_channels, 8, 8)
        )
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
            assert not torch.allclose(layer(x), base(x), atol=1e-4), name
    assert convs, "3x3 convolutions start from the file too"


def _lycoris_modules(network) -> dict[str, nn.Module]:
    return {m.lora_name: m for m in [*network.unet_loras, *network.text_encoder_loras]}


def test_algo_full_starts_at_w_plus_diff(pipe, tmp_path, monkeypatch):
    """No --dim_from_weights: create_network's FullModules (the same preset), apply_to, load_weights."""
    path = _full_file(pipe, tmp_path, monkeypatch)
    named, unet = _named(pipe.text_encoder), copy.deepcopy(pipe.unet)
    preset = str(tmp_path / "preset.toml")
    made = lycoris_kohya.create_network(1.0, 4, 1.0, None, named, unet, algo="full", preset=preset)
    made.apply_to(named, unet, True, True)
    assert made.load_weights(str(path)) == {}
    outcome = _convert(tmp_path, '--network_args "algo=full" "preset=preset.toml"')
    from tests.unit.convert_kit import plan_of

    plan = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"])
    assert plan.adapter.kind == "full" and plan.adapter.init_scale == 1.0 and plan.adapter.init_partial
    comps, count = _loaded(plan)
    theirs = _lycoris_modules(made)
    assert count == len(theirs)
    _same_start(comps, theirs)


def test_algo_full_file_lacking_a_layer_fails_as_lycoris_does(pipe, tmp_path, monkeypatch):
    path = _full_file(pipe, tmp_path, monkeypatch, drop=7)
    named, unet = _named(pipe.text_encoder), copy.deepcopy(pipe.unet)
    preset = str(tmp_path / "preset.toml")
    made = lycoris_kohya.create_network(1.0, 4, 1.0, None, named, unet, algo="full", preset=preset)
    made.apply_to(named, unet, True, True)
    with pytest.raises(KeyError):
        made.load_weights(str(path))
    from tests.unit.convert_kit import plan_of

    plan = plan_of(
        _convert(tmp_path, '--network_args "algo=full" "preset=preset.toml"'),
        tmp_path,
        ["model.base=builtin:tiny-sd1"],
    )
    with pytest.raises(ValueError, match=r"is not in the file.*KeyError"):
        _loaded(plan)


def test_dim_from_weights_starts_at_w_plus_two_diff_trains_and_resumes(pipe, tmp_path, monkeypatch):
    """--dim_from_weights: the file's modules (some of the preset's left out), at W + 2 diff."""
    path = _full_file(pipe, tmp_path, monkeypatch, drop=5)
    named, unet = _named(pipe.text_encoder), copy.deepcopy(pipe.unet)
    made, _ = lycoris_kohya.create_network_from_weights(1.0, str(path), None, named, unet)
    made.apply_to(named, unet, True, True)
    assert made.load_weights(str(path)) == {}
    theirs = _lycoris_modules(made)
    assert sorted(theirs) == sorted({k.split(".")[0] for k in load_file(str(path))})
    from tests.unit.convert_kit import out_path, plan_of

    outcome = _convert(tmp_path, '--network_args "algo=lokr" --dim_from_weights')
    plan = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"])
    assert plan.adapter.kind == "full" and plan.adapter.init_scale == 2.0
    comps, count = _loaded(plan)
    assert count == len(theirs)
    _same_start(comps, theirs)
    # a tiny run from the file trains, and stopped after a step and resumed ends bit for bit the same
    overrides = ["model.base=builtin:tiny-sd1"]
    whole = execute(compile_spec(out_path(tmp_path), overrides))
    assert whole.status == "finished"
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    saved = load_file(str(export))
    assert {k.split(".")[0] for k in saved} == set(theirs)
    moved = [
        k
        for k, v in saved.items()
        if k.endswith(".diff") and not torch.allclose(v, 2 * load_file(str(path))[k])
    ]
    assert moved, "the run trained the copies"
    split = compile_spec(out_path(tmp_path), [*overrides, "output.dir=parts"])
    first = execute(split, stop_after=1)
    resumed = execute(split, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    (again,) = Path(resumed.final).glob("*.kohya.safetensors")
    again = load_file(str(again))
    assert again.keys() == saved.keys() and all(torch.equal(again[k], saved[k]) for k in saved)


def test_sdxl_file_in_kohyas_original_names_starts_at_w_plus_two_diff(tmp_path, monkeypatch):
    """SDXL: kohya's U-Net names its modules in the original layout (input_blocks...); the file's U-Net
    modules renamed so, its CLIP-L / OpenCLIP modules lora_te1_ / lora_te2_ (LyCORIS's numbering of
    kohya's list). lycoris-lora's create_network_from_weights, apply_to and load_weights run on the
    diffusers-named file (the same modules: the name is only the lookup); dbspec's run from the renamed one
    starts every layer where lycoris-lora's does."""
    from dbspec.runtime.exports import kohya_parts
    from tests.unit.convert_kit import SDXL, errors, images, kohya, plan_of

    kept_lycoris_presets(monkeypatch)
    xl = build_pipeline(TINY["sdxl"])
    preset = tmp_path / "preset.toml"
    preset.write_text(PRESET, encoding="utf-8")
    texts = [_named(xl.text_encoder), _named(xl.text_encoder_2)]
    unet = copy.deepcopy(xl.unet)
    made = lycoris_kohya.create_network(1.0, 4, 1.0, None, texts, unet, algo="full", preset=str(preset))
    made.apply_to(texts, unet, True, True)
    torch.manual_seed(4)
    with torch.no_grad():
        for p in made.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    state = {k: v.detach().clone().contiguous() for k, v in made.state_dict().items()}
    names = sorted({k.split(".")[0] for k in state})
    for name in names[::4]:  # some modules left out: none is built there
        for key in [k for k in state if k.startswith(name + ".")]:
            del state[key]
    assert any(k.startswith("lora_te1_") for k in state) and any(k.startswith("lora_te2_") for k in state)
    diffusers_file = tmp_path / "diffusers.safetensors"
    save_file(state, str(diffusers_file))
    (_, _, to_original), *_ = [p for p in kohya_parts(unet=xl.unet, text_encoders=[], family="sdxl")]
    paths = {f"lora_unet_{n}".replace(".", "_"): n for n, _ in xl.unet.named_modules() if n}
    renamed = {}
    for key, value in state.items():
        name, tensor = key.split(".", 1)
        if name in paths:
            name = f"lora_unet_{to_original(paths[name])}".replace(".", "_")
        renamed[f"{name}.{tensor}"] = value
    assert renamed.keys() != state.keys()  # the U-Net's names differ in the original layout
    save_file(renamed, str(tmp_path / "prev.safetensors"))

    texts, unet = [_named(xl.text_encoder), _named(xl.text_encoder_2)], copy.deepcopy(xl.unet)
    theirs, _ = lycoris_kohya.create_network_from_weights(1.0, str(diffusers_file), None, texts, unet)
    theirs.apply_to(texts, unet, True, True)
    assert theirs.load_weights(str(diffusers_file)) == {}
    original = {paths[m.lora_name]: m for m in theirs.unet_loras}
    theirs = {
        **{f"lora_unet_{to_original(p)}".replace(".", "_"): m for p, m in original.items()},
        **{m.lora_name: m for m in theirs.text_encoder_loras},
    }

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        "--network_weights=prev.safetensors --dim_from_weights --learning_rate=1e-3 --max_train_steps=3 "
        "--output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    plan = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sdxl"])
    assert plan.adapter.kind == "full" and plan.adapter.init_scale == 2.0
    comps, count = _loaded(plan)
    assert count == len(theirs)
    _same_start(comps, theirs, "sdxl")


def test_file_of_another_shape_fails_naming_the_tensor(pipe, tmp_path, monkeypatch):
    """A module's `diff` of another shape than its layer's: lycoris-lora's create_network_from_weights
    fails copying it, and so does dbspec's run when it loads the file, naming the tensor and both shapes."""
    path = _full_file(pipe, tmp_path, monkeypatch)
    state = load_file(str(path))
    key = next(k for k in sorted(state) if k.endswith("attn1_to_q.diff"))
    state[key] = state[key][:-1].contiguous()  # one row short
    save_file(state, str(path))
    named, unet = _named(pipe.text_encoder), copy.deepcopy(pipe.unet)
    with pytest.raises(RuntimeError):
        lycoris_kohya.create_network_from_weights(1.0, str(path), None, named, unet)
    from tests.unit.convert_kit import plan_of

    plan = plan_of(_convert(tmp_path, "--dim_from_weights"), tmp_path, ["model.base=builtin:tiny-sd1"])
    with pytest.raises(ValueError, match=rf"`{key}` has shape \[\d+, \d+\]; the run's layer has"):
        _loaded(plan)
