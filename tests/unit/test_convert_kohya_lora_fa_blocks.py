"""kohya networks.lora_fa's block arguments (block_dims, block_alphas, conv_block_dims, conv_block_alphas,
down/mid/up_lr_weight, block_lr_zero_threshold; issue 12, was DBS403). networks/lora_fa.py keeps an older
copy of networks/lora.py's block code: on SD 1.x/2.x it computes the same blocks, ranks and rates (so a
lora_fa run plans networks.lora's [[adapter.blocks]]), its mid_lr_weight is one float(); it has no SDXL
numbering, so on SDXL every U-Net module is its block -1: the lists' last value, lr weight 1.

The expectations restate kohya's rules (get_block_index, get_block_lr_weight, remove_block_dims_and_alphas)
as test_convert_kohya_blocks.py does for networks.lora."""

from __future__ import annotations

import math

import pytest

from convert_kit import (
    SD15,
    SDXL,
    codes,
    errors,
    fate,
    images,
    kohya,
    messages,
    plan_of,
    write,
)  # noqa: F401
from test_convert_kohya_blocks import kohya_block_index, planned, sd15_layers, sdxl_layers

# a kohya LoRA-FA config file (sd-scripts' --config_file TOML) for SD 1.5 with per-block settings
CONFIG = """\
pretrained_model_name_or_path = "{model}"
train_data_dir = "img"
resolution = "512,512"
output_dir = "out"
output_name = "fa_blocks"
network_module = "networks.lora_fa"
network_dim = 8
network_alpha = 4
network_args = [{network_args}]
learning_rate = 1e-4
unet_lr = {unet_lr}
text_encoder_lr = 5e-5
optimizer_type = "AdamW"
lr_scheduler = "constant"
max_train_steps = 400
train_batch_size = 1
mixed_precision = "fp16"
save_model_as = "safetensors"
"""

DIMS = [0, 2, 2, 2, 4, 4, 4, 8, 8, 8, 8, 8, 16, 8, 8, 8, 8, 8, 8, 4, 4, 4, 2, 2, 6]
ALPHAS = [d / 2 for d in DIMS]
CONV = [0, 1, 1, 1, 2, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 2, 2, 2, 1, 1, 3]
DOWN = "0,0.5,0.05,1,1,1,1,0.25,0.25,1,1,1"  # 0.05 at or below the threshold 0.1: block 2 removed
UP = "cosine+0.5"


def _convert(tmp_path, network_args: list[str], model: str = SD15, unet_lr: str = "1e-4", script: str = ""):
    images(tmp_path / "img" / "10_ohwx cat", 3, (512, 512))
    text = CONFIG.format(model=model, network_args=", ".join(f'"{a}"' for a in network_args), unet_lr=unet_lr)
    write(tmp_path / "cfg.toml", text)
    script = script or "train_network.py"
    return kohya(tmp_path, config_file=tmp_path / "cfg.toml", command=f"accelerate launch {script}")


def _lists() -> list[str]:
    return [
        f"block_dims={','.join(map(str, DIMS))}",
        f"block_alphas={','.join(map(str, ALPHAS))}",
        f"conv_block_dims={','.join(map(str, CONV))}",
        f"down_lr_weight={DOWN}",
        "mid_lr_weight=2",
        f"up_lr_weight={UP}",
        "block_lr_zero_threshold=0.1",
    ]


def _kohya_weights() -> list[float]:
    """networks/lora_fa.py get_block_lr_weight: down list, mid float, up preset `cosine+0.5`, zero
    threshold 0.1; indexed by get_block_index (down_lr_weight[index], mid at 12, up_lr_weight[index - 13])."""
    down = [float(x) for x in DOWN.split(",")]
    up = [math.sin(math.pi * (i / 11) / 2) + 0.5 for i in reversed(range(12))]
    return [w if w > 0.1 else 0.0 for w in [*down, 2.0, *up]]


def test_sd15_block_lists_and_lr_weights_give_each_module_kohyas_rank_and_rate(tmp_path):
    outcome = _convert(tmp_path, _lists())
    assert not {"DBS402", "DBS403", "DBS404"} & codes(outcome), errors(outcome)
    assert fate(outcome, "network_args") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.freeze_down, a.rank, a.alpha) == (True, 8, 4.0)  # the text encoder's modules: network_dim
    assert a.conv_rank > 0 and "time_emb_proj" in a.denoiser_targets  # conv_block_dims turns convs on
    weights = _kohya_weights()
    for path, name in sd15_layers():
        idx = kohya_block_index(name, sdxl=False)
        conv = path.endswith(("conv", "conv1"))
        rank, alpha, scale = planned(a, path)
        if weights[idx] == 0 or (CONV if conv else DIMS)[idx] == 0:  # remove_block_dims_and_alphas
            assert rank == 0, (path, idx)
            continue
        expected = (CONV[idx], 1.0) if conv else (DIMS[idx], ALPHAS[idx])  # conv alphas: kohya's 1.0
        assert (rank, alpha) == expected and scale == pytest.approx(weights[idx]), (path, idx)


def test_sd15_lora_fa_plans_networks_loras_blocks(tmp_path):
    """Where the two copies compute alike, lora_fa's blocks are networks.lora's, entry for entry."""
    fa = plan_of(_convert(tmp_path / "fa", _lists()), tmp_path / "fa").adapter
    lora_dir = tmp_path / "lora"
    images(lora_dir / "img" / "10_ohwx cat", 3, (512, 512))
    text = CONFIG.format(model=SD15, network_args=", ".join(f'"{a}"' for a in _lists()), unet_lr="1e-4")
    write(lora_dir / "cfg.toml", text.replace("networks.lora_fa", "networks.lora"))
    lora = kohya(lora_dir, config_file=lora_dir / "cfg.toml", command="accelerate launch train_network.py")
    assert fa.blocks == plan_of(lora, lora_dir).adapter.blocks and len(fa.blocks) > 10


def test_sdxl_every_unet_module_takes_the_lists_last_value(tmp_path):
    """lora_fa's get_block_index matches none of SDXL's original names: every U-Net module is block -1, so
    block_dims[-1] / block_alphas[-1] / conv_block_dims[-1], lr weight 1 (the weights read, unused: DBS405);
    the text encoders keep network_dim / network_alpha."""
    outcome = _convert(tmp_path, _lists(), model=SDXL, script="sdxl_train_network.py")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert "block index -1" in messages(outcome, "DBS405")
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.rank, a.alpha) == (8, 4.0)
    for path, _name in sdxl_layers():
        conv = path.endswith(("conv", "conv1"))
        assert planned(a, path) == ((CONV[-1], 1.0, 1.0) if conv else (DIMS[-1], ALPHAS[-1], 1.0)), path
    assert len(a.blocks) == 1 and a.blocks[0].lr_scale == 1.0  # one block, at lr weight 1


def test_sdxl_without_lists_the_adapter_keeps_its_rank(tmp_path):
    """lr weights alone on SDXL: every module at weight 1 and network_dim, no block entry at all."""
    outcome = _convert(
        tmp_path,
        ["down_lr_weight=0,0,0,0,0,0,0,0,0,0,0,0", "mid_lr_weight=0"],
        model=SDXL,
        script="sdxl_train_network.py",
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank, a.alpha, a.blocks) == (8, 4.0, ())


def test_sdxl_last_up_weight_zero_is_refused(tmp_path):
    """remove_block_dims_and_alphas zeroes index 24, which every SDXL module reads: no U-Net module."""
    outcome = _convert(
        tmp_path, ["up_lr_weight=1,1,1,1,1,1,1,1,1,1,1,0"], model=SDXL, script="sdxl_train_network.py"
    )
    assert fate(outcome, "network_args") == "unsupported" and "no U-Net module" in messages(outcome, "DBS403")


def test_a_mid_lr_weight_list_is_invalid_as_lora_fa_stops(tmp_path):
    """lora_fa's parse_block_lr_kwargs: float(mid_lr_weight), ValueError on a list (networks.lora splits
    it)."""
    outcome = _convert(tmp_path, ["mid_lr_weight=1,0.5"])
    assert not outcome.written and fate(outcome, "network_args") == "invalid"
    assert "one float()" in messages(outcome, "DBS402")


def test_unet_at_rate_zero_with_lr_weights_is_refused_block_dims_alone_is_not(tmp_path):
    """With lr weights prepare_optimizer_params skips a block group at rate 0 (not lora_fa's kept group)."""
    weighted = _convert(tmp_path / "w", ["up_lr_weight=cosine"], unet_lr="0")
    assert "skips a group at rate 0" in messages(weighted, "DBS403")
    dims = _convert(tmp_path / "d", [f"block_dims={','.join(map(str, DIMS))}"], unet_lr="0")
    assert "skips a group at rate 0" not in messages(dims, "DBS403")
