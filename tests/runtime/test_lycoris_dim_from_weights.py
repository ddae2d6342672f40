"""kohya train_network.py with lycoris.kohya and --dim_from_weights on a file LyCORIS's algo=dylora saved
(kohya's layout: lora_down / lora_up / alpha): lycoris-lora 4.1.3's create_network_from_weights builds a
LoConModule per module of the file, whatever `algo` the network_args name; the converted plan adapts the same
layers, in LoRA, at the file's rank and scale (issue 12)."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_algo_maps import _ours, pipe  # noqa: F401 (a fixture)

lycoris_kohya = pytest.importorskip("lycoris.kohya")


PRESET = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
"""


def _dylora_file(pipe, path, monkeypatch) -> None:  # noqa: F811

    kept_lycoris_presets(monkeypatch)
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)  # kohya's CLIP names its modules text_model.*
    preset = path.with_name("preset.toml")  # `full`'s layers by name (its TimestepEmbedding class would
    preset.write_text(PRESET, encoding="utf-8")  # match diffusers' time embedding twice: LyCORIS asserts)
    torch.manual_seed(0)
    unet = copy.deepcopy(pipe.unet)
    made = lycoris_kohya.create_network(
        1.0,
        4,
        2.0,
        None,
        named,
        unet,
        algo="dylora",
        block_size=2,
        conv_dim="2",
        preset=str(preset),
    )
    made.apply_to(named, unet, True, True)  # registers the modules the state dict saves
    state = {k: v.detach().clone().contiguous() for k, v in made.state_dict().items()}
    modules = sorted({k.split(".")[0] for k in state})
    for name in modules:  # DyLoraModule saves a convolution's lora_up 2-D, which its LoConModule cannot
        up = state[f"{name}.lora_up.weight"]  # copy (DBS402); kohya's networks.dylora saves it 4-D
        if state[f"{name}.lora_down.weight"].dim() == 4 and up.dim() == 2:
            state[f"{name}.lora_up.weight"] = up[:, :, None, None].contiguous()
    for name in modules[::3]:  # every third module at alpha 1: two (rank, alpha) pairs in the file
        state[f"{name}.alpha"] = torch.tensor(1.0)
    for name in modules[2::6]:  # and some at alpha 0, which LoConModule reads as its rank (scale 1)
        state[f"{name}.alpha"] = torch.tensor(0.0)
    for name in modules[1::5]:  # and some modules left out: none is built there
        for key in [k for k in state if k.startswith(name + ".")]:
            del state[key]
    save_file(state, str(path))


def test_dylora_file_builds_lycoris_locon_modules(pipe, tmp_path, monkeypatch):  # noqa: F811
    from tests.unit.convert_kit import SD15, errors, images, kohya, plan_of

    _dylora_file(pipe, tmp_path / "prev.safetensors", monkeypatch)
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=8 --network_alpha=8 "
        '--network_args "algo=dylora" "block_size=2" --network_weights=prev.safetensors --dim_from_weights '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    plan = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"])
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)
    made, _ = lycoris_kohya.create_network_from_weights(
        1, str(tmp_path / "prev.safetensors"), None, named, copy.deepcopy(pipe.unet), algo="dylora"
    )
    theirs = {
        m.lora_name: (type(m).__name__, m.lora_dim, float(m.scale))
        for m in [*made.unet_loras, *made.text_encoder_loras]
    }
    assert {v[0] for v in theirs.values()} == {"LoConModule"}
    assert len({v[1:] for v in theirs.values()}) > 1, "the file gives layers different scales"
    from safetensors.torch import load_file

    zero = {
        k.split(".")[0]
        for k, v in load_file(str(tmp_path / "prev.safetensors")).items()
        if k.endswith(".alpha") and v == 0
    }
    assert zero and {k: theirs[k][2] for k in zero} == dict.fromkeys(zero, 1.0)  # alpha 0: the rank, scale 1
    ours = _ours(pipe, plan.adapter)
    assert sorted(set(ours) ^ set(theirs)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != pytest.approx(v)} == {}
