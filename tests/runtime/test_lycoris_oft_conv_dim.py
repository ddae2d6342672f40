"""LyCORIS Diag-OFT / BOFT with `conv_dim` other than `network_dim` (issue 12, was DBS403): lycoris.kohya's
create_single_module gives a Conv2d wider than 1x1 conv_dim as its lora_dim (a 1x1 one and every Linear
network_dim), which the converter writes as an [[adapter.blocks]] entry over the k x k convolutions at that
block size. Checked against lycoris-lora 4.1.3's kohya network built on the tiny SD 1.x U-Net: every layer
LyCORIS builds is adapted by the converted plan, its blocks in the shape LyCORIS's module gives them."""

from __future__ import annotations

import copy

import attrs

import pytest
from torch import nn

from dbspec.runtime.adapters import add_lora
from dbspec.runtime.tiny import build_pipeline

lycoris_kohya = pytest.importorskip("lycoris.kohya")


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _plan(tmp_path, algo: str, dim: int, conv_dim: int):
    from tests.unit.convert_kit import SD15, errors, images, kohya, plan_of

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        f"--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim={dim} "
        f'--network_alpha=1 --network_args "algo={algo}" "conv_dim={conv_dim}" "preset=unet-convblock-only" '
        "--network_train_unet_only --learning_rate=1e-2 --max_train_steps=2 "
        "--save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"])


def _theirs(pipe, algo: str, dim: int, conv_dim: int) -> dict[str, tuple]:
    network = lycoris_kohya.LycorisNetworkKohya
    state = {k: copy.copy(getattr(network, k)) for k in dir(network) if k.isupper()}
    try:  # apply_preset sets the class's attributes: restored after
        made = lycoris_kohya.create_network(
            1.0,
            dim,
            1.0,
            None,
            nn.Module(),
            copy.deepcopy(pipe.unet),
            algo=algo,
            conv_dim=str(conv_dim),
            preset="unet-convblock-only",
        )
    finally:
        for key, value in state.items():
            setattr(network, key, value)
    return {m.lora_name: tuple(m.oft_blocks.shape) for m in made.unet_loras}


def _ours(pipe, adapter) -> dict[str, tuple]:
    from dbspec.runtime.lycoris_oft import DiagOftLayer

    unet = copy.deepcopy(pipe.unet)
    add_lora(unet, adapter, adapter.denoiser_targets, seed=0, conv=True)
    out = {}
    for name, layer in unet.named_modules():  # BoftLayer is a DiagOftLayer
        if isinstance(layer, DiagOftLayer) and "default" in layer.lora_oft_blocks:
            out["lora_unet_" + name.replace(".", "_")] = tuple(layer.lora_oft_blocks["default"].shape)
    return out


@pytest.mark.parametrize("algo", ["diag-oft", "boft"])
def test_conv_dim_is_the_kxk_convolutions_block_size(pipe, tmp_path, algo):
    plan = _plan(tmp_path, algo, 4, 8)
    theirs = _theirs(pipe, algo, 4, 8)
    assert [(b.rank, b.conv_rank) for b in plan.adapter.blocks] == [(8, 8)]  # the block size
    assert _ours(pipe, plan.adapter) == theirs
    # the block matters: network_dim's size on the k x k convolutions is not LyCORIS's network
    assert _ours(pipe, attrs.evolve(plan.adapter, blocks=())) != theirs
