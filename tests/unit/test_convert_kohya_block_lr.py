"""sdxl_train.py's --block_lr (23 U-Net block rates) converted to [[optimizer.blocks]]: a realistic full
fine-tune's plan holds the blocks in kohya's index order with their rates and patterns; kohya's refusals
(not 23 values, an item float() rejects) stop the conversion; what dbspec cannot express is DBS403."""

from __future__ import annotations

import re

import pytest
from convert_kit import SDXL, codes, errors, fate, images, kohya, messages, plan_of, write

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


def _block_lr(rates) -> str:
    return "--block_lr " + ",".join(f"{r:g}" for r in rates)


def test_relative_step_adafactor_keeps_only_the_blocks_at_zero(tmp_path):
    """kohya's default Adafactor (relative_step): get_optimizer pops every block group's rate and Adafactor
    computes each tensor's step itself, so the rates change nothing; the blocks at 0 are still left out of
    the optimizer. The plan: those blocks at 0, the others at learning_rate (the logged initial rate)."""
    outcome = _sdxl_full(tmp_path, "--optimizer_type Adafactor " + _block_lr(RATES))
    assert not errors(outcome) and fate(outcome, "block_lr") == "mapped"
    assert "DBS403" not in codes(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.optimizer.kind == "adafactor" and plan.optimizer.adafactor.relative_step
    assert plan.schedule.lr_schedule == "adafactor"
    assert [b.lr for b in plan.optimizer.blocks] == pytest.approx([4e-6 if r else 0.0 for r in RATES])
    assert [b.pattern for b in plan.optimizer.blocks] == [full_block_pattern(i) for i in range(23)]


def test_relative_step_adafactor_without_a_block_at_zero_ignores_block_lr(tmp_path):
    """Every block trains and Adafactor's relative step ignores the rates: block_lr changes nothing (DBS405),
    the U-Net trains as one group (Adafactor steps each tensor on its own)."""
    rates = [r or 3e-6 for r in RATES]
    outcome = _sdxl_full(
        tmp_path, "--optimizer_type Adafactor --optimizer_args warmup_init=True " + _block_lr(rates)
    )
    assert fate(outcome, "block_lr") == "inert" and "block_lr" in messages(outcome, "DBS405")
    plan = plan_of(outcome, tmp_path)
    assert not plan.optimizer.blocks and plan.optimizer.adafactor.warmup_init


def test_fused_backward_pass_steps_each_block_at_its_rate(tmp_path):
    """A config file with fixed-rate Adafactor and the fused backward pass: kohya's patched step_param steps
    each tensor with its block group's rate and clips each gradient on its own."""
    images(tmp_path / "img" / "10_ohwx woman", 4, (1024, 1024))
    write(
        tmp_path / "config.toml",
        f"""pretrained_model_name_or_path = "{SDXL}"
train_data_dir = "img"
resolution = "1024,1024"
max_train_steps = 1500
mixed_precision = "bf16"
gradient_checkpointing = true
learning_rate = 4e-6
optimizer_type = "adafactor"
optimizer_args = ["scale_parameter=False", "relative_step=False", "warmup_init=False"]
lr_scheduler = "constant_with_warmup"
lr_warmup_steps = 100
fused_backward_pass = true
block_lr = "{",".join(f"{r:g}" for r in RATES)}"
""",
    )
    outcome = kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train.py")
    assert not errors(outcome) and fate(outcome, "block_lr") == "mapped"
    plan = plan_of(outcome, tmp_path)
    assert [b.lr for b in plan.optimizer.blocks] == pytest.approx(RATES)
    assert not plan.optimizer.adafactor.relative_step and plan.optimizer.lr == pytest.approx(4e-6)
    assert (plan.optimizer.clip_mode, plan.optimizer.max_grad_norm) == ("norm_per_tensor", 1.0)
    assert (plan.schedule.lr_schedule, plan.schedule.warmup_steps) == ("constant_with_warmup", 100)


def test_fused_groups_of_a_per_tensor_optimizer_step_the_blocks_as_one_optimizer(tmp_path):
    """--fused_optimizer_groups 4 with AdamW8bit: kohya's chunks (a new one at each change of rate) each
    update their tensors on their own, as one optimizer with the block groups does: the blocks at their
    rates, no split, each gradient clipped on its own."""
    outcome = _sdxl_full(tmp_path, "--fused_optimizer_groups 4 " + _block_lr(RATES))
    assert not errors(outcome) and fate(outcome, "block_lr") == "mapped"
    plan = plan_of(outcome, tmp_path)
    assert [b.lr for b in plan.optimizer.blocks] == pytest.approx(RATES)
    assert plan.optimizer.split == 1 and plan.optimizer.clip_mode == "norm_per_tensor"


@pytest.mark.parametrize(
    ("extra", "rates"),
    [
        ("--fused_optimizer_groups 4", RATES),  # four chunks at least
        ("--fused_optimizer_groups 1", RATES),  # one chunk per run of equal rates: four here
        ("--fused_optimizer_groups 1", [r or 1e-6 for r in RATES[:10]] + [0.0] * 13),  # 1e-6, 2e-6, te 1e-6
    ],
)
def test_fused_groups_over_relative_step_adafactor_stop_kohya(tmp_path, extra, rates):
    """With two optimizers or more get_optimizer writes lr_scheduler "adafactor:None" at the second (it set
    learning_rate to None at the first) and get_scheduler_fix's float() raises: DBS402."""
    outcome = _sdxl_full(tmp_path, f"--optimizer_type Adafactor {extra} " + _block_lr(rates))
    assert outcome.exit_code == 1 and "adafactor:None" in messages(outcome, "DBS402")


@pytest.mark.parametrize(
    ("extra", "stops"),
    [
        ("--fused_optimizer_groups 4", True),
        ("--fused_optimizer_groups 1", True),  # the text encoders' 1e-6 starts a second chunk
        ("--fused_optimizer_groups 1 --learning_rate_te1 4e-6 --learning_rate_te2 4e-6", False),
    ],
)
def test_fused_groups_over_relative_step_adafactor_without_block_lr(tmp_path, extra, stops):
    """The same stop without block_lr: two optimizers or more (kohya's chunks) are DBS402; one runs."""
    outcome = _sdxl_full(tmp_path, f"--optimizer_type Adafactor {extra}")
    if stops:
        assert outcome.exit_code == 1 and "adafactor:None" in messages(outcome, "DBS402")
        assert fate(outcome, "fused_optimizer_groups") == "invalid"
    else:
        assert not errors(outcome) and plan_of(outcome, tmp_path).optimizer.adafactor.relative_step


def test_one_fused_group_over_relative_step_adafactor_runs(tmp_path):
    """fused_optimizer_groups 1 with one rate along every group (the blocks' and the text encoders'): one
    optimizer, kohya runs; the blocks at 0 stay out of it."""
    rates = [1e-6 if r else 0.0 for r in RATES]
    outcome = _sdxl_full(
        tmp_path, "--optimizer_type Adafactor --fused_optimizer_groups 1 " + _block_lr(rates)
    )
    assert not errors(outcome) and fate(outcome, "block_lr") == "mapped"
    plan = plan_of(outcome, tmp_path)
    assert [b.lr for b in plan.optimizer.blocks] == pytest.approx([4e-6 if r else 0.0 for r in RATES])


@pytest.mark.parametrize(
    ("extra", "split"),
    [
        ("--optimizer_type Prodigy --learning_rate 1 --fused_optimizer_groups 4", {}),  # d per chunk
        (
            "--fused_optimizer_groups 4 --gradient_accumulation_steps 2",  # the first chunk per micro-batch
            {"split_first_step": "micro_batch"},
        ),
        (
            "--optimizer_type Adafactor --optimizer_args relative_step=False --fused_backward_pass "
            "--fused_optimizer_groups 4",  # kohya hooks its first optimizer alone
            {"split_train": "first"},
        ),
    ],
)
def test_fused_groups_that_keep_their_chunks_cut_the_block_groups(tmp_path, extra, split):
    """Where the run keeps kohya's chunks (optimizer.split), the block groups are cut into them as kohya
    cuts them (runtime/optim_split.py; tests/runtime/test_optimizer_split.py checks the chunks against
    kohya's loop): the plan holds the blocks at their rates and the split; the run lists the chunks."""
    outcome = _sdxl_full(tmp_path, f"{extra} " + _block_lr(RATES))
    assert not errors(outcome) and fate(outcome, "block_lr") == "mapped"
    plan = plan_of(outcome, tmp_path)
    o = plan.optimizer
    assert [b.lr for b in o.blocks] == pytest.approx(RATES)
    assert (o.split, o.split_order, o.split_chunks, o.clip_mode) == (4, "original", (), "norm_per_tensor")
    assert {key: getattr(o, key) for key in split} == split


def test_block_lr_is_inert_when_the_unet_does_not_train(tmp_path):
    outcome = _sdxl_full(tmp_path, "--block_lr " + ",".join(["1e-6"] * 23) + " --learning_rate 0")
    assert fate(outcome, "block_lr") == "inert" and not plan_of(outcome, tmp_path).optimizer.blocks
