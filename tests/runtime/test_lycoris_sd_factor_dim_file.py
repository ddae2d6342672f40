"""lycoris.kohya --dim_from_weights with a LyCORIS LoKr or LoHa file on SD 1.x (issue 12;
convert/kohya/lycoris_sd_factor.py): lycoris-lora 4.1.3's network over a preset file on the tiny U-Net and
CLIP (3x3 convolutions at conv_dim, with and without use_tucker), every factor moved at random, some modules
taken from a network of another dim (another rank, so another Kronecker decomposition for LoKr), some alphas
changed and some modules left out, saved. kohya's steps with --dim_from_weights (create_network_from_weights
on the file, apply_to, load_weights) and dbspec's converted run build the same layers and start them alike
(factors equal, outputs to 1e-5); a tiny run from the file trains: the `loha-tucker` and `lokr-dora`
files' runs, which train the plain `loha` and `lokr` cases' layers too (LoHa's linears beside its Tucker
convolutions, LoKr's modules without dora_scale beside the decomposed ones)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from dbspec.runtime.tiny import build_pipeline
from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_sd_rebuilt_file import FROM, _theirs

lycoris_kohya = pytest.importorskip("lycoris.kohya")
CASES = {
    "lokr": {"algo": "lokr", "factor": "4"},
    "loha": {"algo": "loha"},
    "loha-tucker": {"algo": "loha", "use_tucker": "True"},
    "lokr-dora": {"algo": "lokr", "factor": "4", "dora_wd": "True"},
}


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _state(pipe, folder, monkeypatch, dim: int, **args) -> dict[str, torch.Tensor]:
    made = kit.network(pipe, folder, monkeypatch, dim, conv_dim=str(dim), conv_alpha="2", **args)
    return kit.moved_state(made, seed=dim, scale=0.1)


def _mixed_file(pipe, folder, monkeypatch, args: dict[str, str]):
    """A file of modules at dim 4, every third at dim 2 (its own rank / decomposition), every fourth with
    alpha 3 x its own, every fifth without its dora_scale (with dora_wd), every sixth left out."""
    state = _state(pipe, folder, monkeypatch, 4, **args)
    other = _state(pipe, folder, monkeypatch, 2, **args)
    names = sorted({k.split(".")[0] for k in state})
    for name in names[::3]:
        for key in [k for k in state if k.startswith(name + ".")]:
            del state[key]
        state |= {k: v for k, v in other.items() if k.startswith(name + ".")}
    for name in names[1::4]:
        state[f"{name}.alpha"] = state[f"{name}.alpha"] * 3
    for name in names[2::5]:  # weight_decompose on the others only
        state.pop(f"{name}.dora_scale", None)
    return kit.save_state(state, folder, drop=6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_factor_file_builds_as_lycoris_trains(pipe, tmp_path, monkeypatch, case):
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer

    from dbspec.runtime.lycoris_dora import dora_scale_of

    args = CASES[case]
    algo = args["algo"]
    path = _mixed_file(pipe, tmp_path, monkeypatch, args)
    state = load_file(str(path))
    theirs = _theirs(pipe, path)
    in_file = {k.split(".")[0] for k in state}
    assert set(theirs) == in_file
    plan = kit.converted_plan(tmp_path, FROM)
    assert plan.adapter.kind == algo and plan.adapter.init_partial
    assert plan.adapter.blocks, "modules of their own rank: blocks"
    comps, count = _loaded(plan)
    assert count == len(in_file)
    ours = kit.kohya_layers(comps, (LoKrLayer, LoHaLayer), adapter=True)
    assert sorted(ours) == sorted(theirs)
    convs = tucker = 0
    for name, lyco in theirs.items():
        layer = ours[name]
        base = layer.get_base_layer()
        for key in [
            k.split(".", 1)[1] for k in state if k.startswith(name + ".") and not k.endswith("alpha")
        ]:
            mine = dora_scale_of(layer, "default") if key == "dora_scale" else getattr(layer, key)["default"]
            torch.testing.assert_close(mine, getattr(lyco, key), rtol=0, atol=0, msg=f"{name}.{key}")
        tucker += "lokr_t2" in dir(lyco) or getattr(lyco, "tucker", False)
        convs += isinstance(base, torch.nn.Conv2d) and base.kernel_size == (3, 3)
        x = kit.sample_input(base)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
            assert not torch.allclose(layer(x), base(x), atol=1e-4), name
    assert convs, "3x3 convolutions built from the file too"
    assert bool(tucker) == ("use_tucker" in args)
    decomposed = {n for n, m in theirs.items() if getattr(m, "wd", False)}
    assert decomposed == {k.split(".")[0] for k in state if k.endswith(".dora_scale")}
    assert bool(decomposed) == ("dora_wd" in args) and decomposed != set(theirs)
    if case in ("lokr", "loha"):  # started as above; `lokr-dora` and `loha-tucker` train such layers
        return
    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    assert kit.trained(saved, state, lambda k: not k.endswith(".alpha")), "the run trained the factors"


def test_lokr_tucker_file_whose_rank_lycoris_misreads_is_invalid(pipe, tmp_path, monkeypatch):
    """A LoKr Tucker convolution whose first factor is full: make_module_from_state_dict reads the rank off
    `lokr_w2_a`'s columns (its rows of the layer), rebuilds other factors and its copy_ raises; the conversion
    says so (DBS402)."""
    from tests.unit.convert_kit import SD15, codes, images, kohya, messages

    args = {"algo": "lokr", "factor": "4", "use_tucker": "True"}
    path = kit.save_state(_state(pipe, tmp_path, monkeypatch, 4, **args), tmp_path)
    assert any(k.endswith(".lokr_t2") for k in load_file(str(path)))
    with pytest.raises(RuntimeError):
        _theirs(pipe, path)
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        "--network_weights=prev.safetensors --learning_rate=1e-3 --max_train_steps=3 "
        f"--output_dir=out {FROM}",
    )
    assert "DBS402" in codes(outcome) and "lokr_t2" in messages(outcome, "DBS402")


def test_sdxl_lokr_file_in_kohyas_original_names(tmp_path, monkeypatch):
    """SDXL: the file's U-Net modules in kohya's original layout (input_blocks...), its CLIP-L / OpenCLIP
    modules lora_te1_ / lora_te2_, two dims in it. lycoris-lora's create_network_from_weights, apply_to and
    load_weights run on the diffusers-named file (the name is only the lookup); dbspec's run from the renamed
    one builds and starts every layer where lycoris-lora's does (factors equal, outputs to 1e-5)."""
    import copy

    from peft.tuners.lokr import LoKrLayer
    from safetensors.torch import save_file

    from dbspec.runtime.exports import kohya_parts
    from tests.runtime.test_lycoris_sd_full_file import PRESET, _named
    from tests.unit.convert_kit import SDXL, errors, images, kohya, plan_of

    kept_lycoris_presets(monkeypatch)
    xl = build_pipeline("builtin:tiny-sdxl")
    preset = tmp_path / "preset.toml"
    preset.write_text(PRESET, encoding="utf-8")

    def state_at(dim: int) -> dict[str, torch.Tensor]:
        texts, unet = [_named(xl.text_encoder), _named(xl.text_encoder_2)], copy.deepcopy(xl.unet)
        made = lycoris_kohya.create_network(
            1.0, dim, 1.0, None, texts, unet, algo="lokr", preset=str(preset), conv_dim=str(dim), factor="4"
        )
        made.apply_to(texts, unet, True, True)
        return kit.moved_state(made, seed=dim, scale=0.1)

    state, other = state_at(4), state_at(2)
    names = sorted({k.split(".")[0] for k in state})
    for name in names[::3]:  # their own rank / decomposition
        state = {k: v for k, v in state.items() if not k.startswith(name + ".")}
        state |= {k: v for k, v in other.items() if k.startswith(name + ".")}
    for name in names[2::5]:  # left out
        state = {k: v for k, v in state.items() if not k.startswith(name + ".")}
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
    # the preset's `conv_in` names diffusers' first convolution, kohya's input_blocks.0.0: its file module
    # is renamed too and built by both
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
    assert plan.adapter.kind == "lokr" and plan.adapter.blocks
    comps, count = _loaded(plan)
    assert count == len(theirs)
    ours = kit.kohya_layers(comps, LoKrLayer, adapter=True, family="sdxl")
    assert sorted(ours) == sorted(theirs)
    assert any(k.startswith("lora_te2_") for k in ours) and any("input_blocks" in k for k in ours)
    for name, lyco in theirs.items():
        layer = ours[name]
        x = kit.sample_input(layer.get_base_layer())
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
