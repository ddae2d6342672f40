"""sdxl_train.py's --block_lr (23 U-Net block rates) converted to [[optimizer.blocks]]: a realistic full
fine-tune's plan holds the blocks in kohya's index order with their rates and patterns; kohya's refusals
(not 23 values, an item float() rejects) stop the conversion; what dbspec cannot express is DBS403."""

from __future__ import annotations

import re

import pytest
from convert_kit import SDXL, codes, errors, fate, images, kohya, messages, plan_of

from dbspec.convert.kohya.block_lr import full_block_pattern
from tests.runtime.runspec import summary_text

# kohya's docs example shape: embeddings and conv_in low, the middle high, the output blocks at 0 (frozen)
RATES = [1e-6, 1e-6] + [2e-6] * 8 + [4e-6] * 3 + [0.0] * 9 + [1e-6]


def _sdxl_full(tmp_path, extra: str):
    images(tmp_path / "d" / "2_zwx man", 2, (1024, 1024))
    return kohya(
        tmp_path,
        command=f"sdxl_train.py --pretrained_model_name_or_path {SDXL} --train_data_dir d --resolution 1024 "
        "--train_text_encoder --learning_rate 4e-6 --learning_rate_te1 1e-6 --learning_rate_te2 1e-6 "
        "--mixed_precision bf16 --max_train_steps 100 --optimizer_type AdamW8bit --gradient_checkpointing "
        f"{extra}",
    )


def test_block_lr_becomes_the_denoiser_blocks(tmp_path):
    outcome = _sdxl_full(tmp_path, "--block_lr " + ",".join(f"{r:g}" for r in RATES))
    assert not errors(outcome) and fate(outcome, "block_lr") == "mapped"
    plan = plan_of(outcome, tmp_path)
    blocks = plan.optimizer.blocks
    assert [b.lr for b in blocks] == pytest.approx(RATES)
    assert [b.name for b in blocks] == [f"denoiser_block{i}" for i in range(23)]
    assert [b.pattern for b in blocks] == [full_block_pattern(i) for i in range(23)]
    assert plan.optimizer.lr == pytest.approx(4e-6) and plan.optimizer.text_encoder_lr == pytest.approx(1e-6)
    summary = summary_text(plan)
    assert "denoiser_block12 │ `^mid_block\\.resnets\\.1\\.`: lr 4e-06" in summary
    assert "denoiser_block13 │ `^up_blocks\\.0\\.(resnets|attentions)\\.0\\.`: lr 0: not trained" in summary


# Real SDXL U-Net parameter paths (diffusers) and their kohya block (sdxl_train.py's rule on the original
# name): one per kind of layer each block holds.
REAL = {
    "time_embedding.linear_1.weight": 0,  # time_embed.0
    "add_embedding.linear_2.bias": 0,  # label_emb.0.2
    "conv_in.weight": 1,  # input_blocks.0.0
    "down_blocks.0.resnets.1.conv2.weight": 3,  # input_blocks.2.0
    "down_blocks.0.downsamplers.0.conv.weight": 4,  # input_blocks.3.0.op
    "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight": 5,  # input_blocks.4.1
    "down_blocks.2.attentions.1.proj_out.weight": 9,  # input_blocks.8.1
    "mid_block.resnets.0.time_emb_proj.weight": 10,  # middle_block.0
    "mid_block.attentions.0.transformer_blocks.9.ff.net.2.weight": 11,  # middle_block.1
    "mid_block.resnets.1.norm1.bias": 12,  # middle_block.2
    "up_blocks.0.attentions.2.norm.weight": 15,  # output_blocks.2.1
    "up_blocks.0.upsamplers.0.conv.weight": 15,  # output_blocks.2.2
    "up_blocks.1.resnets.0.conv_shortcut.weight": 16,  # output_blocks.3.0
    "up_blocks.1.upsamplers.0.conv.bias": 18,  # output_blocks.5.2
    "up_blocks.2.resnets.2.conv1.weight": 21,  # output_blocks.8.0
    "conv_norm_out.weight": 22,  # out.0
    "conv_out.bias": 22,  # out.2
}


@pytest.mark.parametrize(("path", "block"), REAL.items())
def test_patterns_name_kohyas_block_first(path, block):
    first = next(i for i in range(23) if re.search(full_block_pattern(i), path))
    assert first == block


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("1e-6," * 21 + "1e-6", "must have 23 values (kohya asserts), got 22"),
        ("1e-6,," + "1e-6," * 20 + "1e-6", "float()"),
    ],
)
def test_kohyas_refusals_stop_the_conversion(tmp_path, value, why):
    outcome = _sdxl_full(tmp_path, f"--block_lr={value}")
    assert outcome.exit_code == 1 and why in messages(outcome, "DBS402")


def test_fused_groups_with_block_lr_are_unsupported(tmp_path):
    outcome = _sdxl_full(
        tmp_path, "--fused_optimizer_groups 4 --block_lr " + ",".join(f"{r:g}" for r in RATES)
    )
    assert fate(outcome, "block_lr") == "unsupported" and "DBS403" in codes(outcome)


def test_block_lr_is_inert_when_the_unet_does_not_train(tmp_path):
    outcome = _sdxl_full(tmp_path, "--block_lr " + ",".join(["1e-6"] * 23) + " --learning_rate 0")
    assert fate(outcome, "block_lr") == "inert" and not plan_of(outcome, tmp_path).optimizer.blocks
