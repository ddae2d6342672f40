"""kohya networks.lora per-block network_args (block_dims, block_alphas, conv_block_dims, conv_block_alphas,
down/mid/up_lr_weight, block_lr_zero_threshold): realistic command lines convert without
--allow-unsupported, pass `dbspec check`, and the plan's [[adapter.blocks]] give every U-Net module the rank,
alpha and learning-rate weight kohya's networks/lora.py gives it.

The expectation is computed here from kohya's own rules: module names as kohya spells them (SD1: diffusers
paths with underscores; SDXL: the original input_blocks/middle_block/output_blocks layout),
`get_block_index`'s regex and arithmetic on those names, `get_block_lr_weight`'s presets; then compared with
what the plan's patterns give the same module's diffusers path (first matching block, else the adapter's own
rank)."""

from __future__ import annotations

import math
import re

import pytest

from convert_kit import SD15, SDXL, empty_hub_cache, fate, images, kohya, plan_of  # noqa: F401
from dbspec.plan.model import AdapterPlan

_KOHYA_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")


def kohya_block_index(lora_name: str, sdxl: bool) -> int:
    """networks/lora.py get_block_index, restated."""
    if not sdxl:
        m = _KOHYA_UPDOWN.search(lora_name)
        if m:
            side, i, kind, j = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
            idx = 3 * i + 2 if kind in ("upsamplers", "downsamplers") else 3 * i + j
            return 1 + idx if side == "down" else 13 + idx
        return 12 if "mid_block_" in lora_name else -1
    name = lora_name[len("lora_unet_") :]
    for prefix, base in (("input_blocks_", 1), ("middle_block_", 10), ("output_blocks_", 13)):
        if name.startswith(prefix):
            return base + int(name.split("_")[2])
    return -1


def sd15_layers() -> list[tuple[str, str]]:
    """(diffusers path, kohya name) of SD1.5's attention-block and ResNet layers (2 per down block, 3 per up
    block; attentions in down blocks 0-2 and up blocks 1-3), each as a module prefix."""
    out = []
    for i in range(4):
        for j in range(2):
            out.append(f"down_blocks.{i}.resnets.{j}.conv1")
            if i < 3:
                out.append(f"down_blocks.{i}.attentions.{j}.transformer_blocks.0.attn1.to_q")
        if i < 3:
            out.append(f"down_blocks.{i}.downsamplers.0.conv")
        for j in range(3):
            out.append(f"up_blocks.{i}.resnets.{j}.conv1")
            if i > 0:
                out.append(f"up_blocks.{i}.attentions.{j}.transformer_blocks.0.attn1.to_q")
        if i < 3:
            out.append(f"up_blocks.{i}.upsamplers.0.conv")
    out += ["mid_block.attentions.0.transformer_blocks.0.attn1.to_q", "mid_block.resnets.1.conv1"]
    return [(p, "lora_unet_" + p.replace(".", "_")) for p in out]


def sdxl_layers() -> list[tuple[str, str]]:
    """SDXL (3 down blocks of 2 layers, attentions in blocks 1-2; 3 up blocks of 3, attentions in 0-1):
    diffusers path and kohya's original-layout name."""
    out = []
    for i in range(3):
        for j in range(2):
            n = 1 + 3 * i + j
            out.append((f"down_blocks.{i}.resnets.{j}.conv1", f"input_blocks_{n}_0_in_layers_2"))
            if i > 0:
                out.append(
                    (
                        f"down_blocks.{i}.attentions.{j}.transformer_blocks.0.attn1.to_q",
                        f"input_blocks_{n}_1_x",
                    )
                )
        if i < 2:
            out.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks_{3 + 3 * i}_0_op"))
        for j in range(3):
            n = 3 * i + j
            out.append((f"up_blocks.{i}.resnets.{j}.conv1", f"output_blocks_{n}_0_in_layers_2"))
            if i < 2:
                out.append(
                    (
                        f"up_blocks.{i}.attentions.{j}.transformer_blocks.0.attn1.to_q",
                        f"output_blocks_{n}_1_x",
                    )
                )
        if i < 2:
            out.append((f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks_{3 * i + 2}_2_conv"))
    out += [
        ("mid_block.resnets.0.conv1", "middle_block_0_in_layers_2"),
        ("mid_block.attentions.0.transformer_blocks.0.attn1.to_q", "middle_block_1_x"),
        ("mid_block.resnets.1.conv1", "middle_block_2_in_layers_2"),
    ]
    return [(p, "lora_unet_" + k) for p, k in out]


def planned(a: AdapterPlan, path: str) -> tuple[int, float, float]:
    """(rank, alpha, lr scale) the plan gives the module at `path` (a 3x3 conv when it ends in conv/conv1)."""
    conv = path.endswith(("conv", "conv1"))
    block = next((b for b in a.blocks if re.search(b.pattern, path)), None)
    if block is None:
        return (a.conv_rank, a.conv_alpha, 1.0) if conv else (a.rank, a.alpha, 1.0)
    return (
        (block.conv_rank, block.conv_alpha, block.lr_scale)
        if conv
        else (block.rank, block.alpha, block.lr_scale)
    )


def _convert(tmp_path, model: str, network: str, script: str = "train_network.py"):
    images(tmp_path / "x" / "10_ohwx", 3, (512, 512))
    return kohya(
        tmp_path,
        command=f"accelerate launch {script} --pretrained_model_name_or_path={model} --train_data_dir=x "
        f"--resolution=512 --network_module=networks.lora {network} --learning_rate=1e-4 "
        "--max_train_steps=200 --save_model_as=safetensors",
    )


SD_DIMS = [0, 2, 2, 2, 4, 4, 4, 8, 8, 8, 8, 8, 16, 8, 8, 8, 8, 8, 8, 4, 4, 4, 2, 2, 0]
SD_ALPHAS = [d / 2 for d in SD_DIMS]
SD_CONV = [0, 1, 1, 1, 2, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 2, 2, 2, 1, 1, 1]


def test_sd15_block_dims_and_conv_block_dims_give_each_module_kohyas_rank(tmp_path):
    args = (
        f'--network_dim=8 --network_alpha=4 --network_args "block_dims={",".join(map(str, SD_DIMS))}" '
        f'"block_alphas={",".join(map(str, SD_ALPHAS))}" "conv_block_dims={",".join(map(str, SD_CONV))}"'
    )
    outcome = _convert(tmp_path, SD15, args)
    a = plan_of(outcome, tmp_path).adapter
    assert fate(outcome, "network_args") == "mapped"
    # conv_block_dims without conv_dim: convolutions adapted, alpha 1.0 (kohya's fallback), ResNet linears too
    assert a.conv_rank > 0 and "time_emb_proj" in a.denoiser_targets
    for path, name in sd15_layers():
        idx = kohya_block_index(name, sdxl=False)
        conv = path.endswith(("conv", "conv1"))
        expected = (SD_CONV[idx], 1.0, 1.0) if conv else (SD_DIMS[idx], SD_ALPHAS[idx], 1.0)
        got = planned(a, path)
        if expected[0] == 0:
            assert got[0] == 0, path
        else:
            assert got == expected, (path, idx)


def _kohya_preset(name: str, n: int) -> list[float]:
    """get_block_lr_weight's presets, restated: name[+base]."""
    name, _, base = name.partition("+")
    add = float(base) if base else 0.0
    if name == "sine":
        return [math.sin(math.pi * (i / (n - 1)) / 2) + add for i in range(n)]
    if name == "cosine":
        return [math.sin(math.pi * (i / (n - 1)) / 2) + add for i in reversed(range(n))]
    if name == "linear":
        return [i / (n - 1) + add for i in range(n)]
    if name == "reverse_linear":
        return [i / (n - 1) + add for i in reversed(range(n))]
    raise AssertionError(name)


@pytest.mark.parametrize("down", ["sine+.5", "cosine", "linear+0.25", "reverse_linear"])
def test_sdxl_block_lr_weights_presets_and_zero_threshold(tmp_path, down):
    up = "0,0,0.05,1,1,1,1.5,1.5,2"
    outcome = _convert(
        tmp_path,
        SDXL,
        f'--network_dim=16 --network_alpha=8 --network_args "down_lr_weight={down}" '
        f'"mid_lr_weight=1.5,1,0.5" "up_lr_weight={up}" "block_lr_zero_threshold=0.1" '
        "--network_train_unet_only",
        "sdxl_train_network.py",
    )
    a = plan_of(outcome, tmp_path).adapter
    weights = [1.0, *_kohya_preset(down, 9), 1.5, 1.0, 0.5, *[float(x) for x in up.split(",")], 1.0]
    weights = [w if w > 0.1 else 0.0 for w in weights]  # kohya zeroes weights at or below the threshold
    for path, name in sdxl_layers():
        idx = kohya_block_index(name, sdxl=True)
        if path.endswith(("conv", "conv1")):
            continue  # no convolution LoRA in this run
        rank, alpha, scale = planned(a, path)
        if weights[idx] == 0:  # remove_block_dims_and_alphas: the block gets no LoRA
            assert rank == 0, path
        else:
            assert (rank, alpha) == (16, 8.0) and scale == pytest.approx(weights[idx]), (path, idx)


def test_block_dims_of_the_wrong_length_is_invalid_as_kohya_asserts(tmp_path):
    outcome = _convert(tmp_path, SD15, '--network_args "block_dims=4,4,4"')
    assert not outcome.written and fate(outcome, "network_args") == "invalid"


def test_a_single_number_lr_weight_is_invalid_as_kohya_crashes_on_it(tmp_path):
    """parse_block_lr_kwargs splits only at commas; "0.5" goes to get_list as a preset name, whose error
    message ("... %s ... %s" % (name)) raises TypeError."""
    outcome = _convert(
        tmp_path, SD15, '--network_dim=8 --network_alpha=8 --network_args "down_lr_weight=0.5"'
    )
    assert not outcome.written and fate(outcome, "network_args") == "invalid"
