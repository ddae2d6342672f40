"""lycoris.kohya --network_weights with a LyCORIS LoKr / LoHa file on SD 1.x (issue 12;
runtime/lycoris_init.py, one module per layer under kohya's names): lycoris-lora 4.1.3's LokrModules /
LohaModules over a preset file on the tiny U-Net and CLIP (3x3 convolutions at conv_dim), every factor moved
at random, saved as its network saves them (some modules left out). kohya's steps, create_network (the same
algo, dims, alphas, preset and factor), apply_to, load_weights (`load_state_dict(strict=False)`: a module the
file lacks keeps its init; the load hooks only set the scalar to 1) and dbspec's converted run start every
layer alike (outputs to 1e-5); a tiny run from the file trains; a factor of another
shape fails naming the tensor, as lycoris-lora fails."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dbspec.runtime.tiny import build_pipeline
from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_sd_full_file import PRESET, _lycoris_modules, _named

lycoris_kohya = pytest.importorskip("lycoris.kohya")
# algo -> create_network's extra arguments (strings, as kohya's network_args hand them)
ALGOS = {"lokr": {"factor": "4"}, "loha": {}}


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _args(algo: str) -> str:
    extra = " ".join(f'"{k}={v}"' for k, v in ALGOS[algo].items())
    return (
        f'--network_dim=4 --network_alpha=1 --network_args "algo={algo}" "preset=preset.toml" "conv_dim=4" '
        f'"conv_alpha=2" {extra}'
    )


def _network(pipe, folder, monkeypatch, algo: str, dim: int = 4):
    args = {"conv_dim": str(dim), "conv_alpha": "2", **ALGOS[algo]}
    return kit.network(pipe, folder, monkeypatch, dim, algo=algo, **args)


def _file(pipe, folder, monkeypatch, algo: str, drop: int = 0, dim: int = 4):
    return kit.saved_file(
        _network(pipe, folder, monkeypatch, algo, dim), folder, seed=9, scale=0.1, drop=drop
    )


def _ours(comps) -> dict[str, nn.Module]:
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer

    return kit.kohya_layers(comps, (LoKrLayer, LoHaLayer), adapter=True)


def _plan(tmp_path, algo: str):
    plan = kit.converted_plan(tmp_path, _args(algo))
    assert plan.adapter.kind == algo and plan.adapter.init_partial
    return plan


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_factor_file_starts_as_lycoris_loads_it_trains(pipe, tmp_path, monkeypatch, algo):
    path = _file(pipe, tmp_path, monkeypatch, algo, drop=6)
    state = load_file(str(path))
    in_file = {k.split(".")[0] for k in state}
    made = _network(pipe, tmp_path, monkeypatch, algo)
    assert set(made.load_weights(str(path))) == {"missing keys"}  # the left-out modules keep their init
    theirs = _lycoris_modules(made)
    assert in_file < set(theirs)
    comps, count = _loaded(_plan(tmp_path, algo))
    assert count == len(in_file)
    ours = _ours(comps)
    assert sorted(ours) == sorted(theirs)
    convs = 0
    for name, lyco in theirs.items():
        layer = ours[name]
        base = layer.get_base_layer()
        x = kit.sample_input(base)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
            if name in in_file:
                convs += isinstance(base, nn.Conv2d) and base.kernel_size == (3, 3)
                assert not torch.allclose(layer(x), base(x), atol=1e-4), name
    assert convs, "3x3 convolutions start from the file too"

    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    assert kit.trained(saved, state, lambda k: not k.endswith(".alpha")), "the run trained the factors"


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_factor_file_of_another_rank_fails_naming_the_tensor(pipe, tmp_path, monkeypatch, algo):
    path = _file(pipe, tmp_path, monkeypatch, algo, dim=2)
    made = _network(pipe, tmp_path, monkeypatch, algo)
    with pytest.raises(RuntimeError, match="size mismatch"):
        made.load_weights(str(path))
    # a LoKr of rank 2 splits its factors otherwise (lokr_w2_a / lokr_w2_b where the run's are full)
    shape = r"has shape \[[\d, ]+\]; the run's layer|has no place in the run's layer"
    with pytest.raises(ValueError, match=rf"tensor `lora_\w+\.\w+` ({shape})"):
        _loaded(_plan(tmp_path, algo))


def test_sdxl_lokr_file_in_kohyas_original_names(tmp_path, monkeypatch):
    """SDXL: kohya's U-Net names its modules in the original layout (input_blocks...); lycoris-lora's network
    loads the diffusers-named file (the name is only the lookup), dbspec's run the renamed one: every layer
    of both encoders and the U-Net starts alike."""
    from dbspec.runtime.exports import kohya_parts
    from tests.runtime.test_lycoris_sd_full_file import TINY
    from tests.unit.convert_kit import SDXL, errors, images, kohya, plan_of

    kept_lycoris_presets(monkeypatch)
    xl = build_pipeline(TINY["sdxl"])
    preset = tmp_path / "preset.toml"
    preset.write_text(PRESET, encoding="utf-8")

    def made():
        texts, unet = [_named(xl.text_encoder), _named(xl.text_encoder_2)], copy.deepcopy(xl.unet)
        net = lycoris_kohya.create_network(
            1.0,
            4,
            1.0,
            None,
            texts,
            unet,
            algo="lokr",
            preset=str(preset),
            conv_dim="4",
            conv_alpha="2",
            factor="4",
        )
        net.apply_to(texts, unet, True, True)
        return net

    source = made()
    state = kit.moved_state(source, seed=11, scale=0.1)
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
    theirs_net = made()
    assert theirs_net.load_weights(str(diffusers_file)) == {}
    theirs = {
        **{
            f"lora_unet_{to_original(paths[m.lora_name])}".replace(".", "_"): m for m in theirs_net.unet_loras
        },
        **{m.lora_name: m for m in theirs_net.text_encoder_loras},
    }

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        '--network_weights=prev.safetensors --network_dim=4 --network_alpha=1 --network_args "algo=lokr" '
        '"preset=preset.toml" "conv_dim=4" '
        '"conv_alpha=2" "factor=4" --learning_rate=1e-3 --max_train_steps=3 --output_dir=out',
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    plan = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sdxl"])
    comps, count = _loaded(plan)
    # the preset's `conv_in` names diffusers' first convolution, which kohya's SDXL U-Net calls
    # input_blocks.0.0: kohya's network has no module there, and its file module is ignored (strict=False)
    assert theirs.pop("lora_unet_input_blocks_0_0") is not None
    assert count == len(theirs)
    from peft.tuners.lokr import LoKrLayer

    ours = kit.kohya_layers(comps, LoKrLayer, adapter=True, family="sdxl")
    assert sorted(ours) == sorted(theirs)
    assert any(k.startswith("lora_te2_") for k in ours) and any("input_blocks" in k for k in ours)
    for name, lyco in theirs.items():
        layer, base = ours[name], ours[name].get_base_layer()
        x = kit.sample_input(base)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
