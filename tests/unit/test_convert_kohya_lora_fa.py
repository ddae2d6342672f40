"""kohya's `network_module = "networks.lora_fa"` (LoRA-FA): once refused (DBS403), now networks.lora's adapter
with `freeze_down = true`; with clipping on (kohya's default max_grad_norm 1.0) `frozen_down_grad = "kohya"`,
as its frozen downs keep a gradient that counts in the clip (sd-scripts networks/lora_fa.py: the network's
requires_grad_(True) reaches lora_down; train_network.py clips over every network parameter). Its network_args
as its create_network reads them: conv_dim / conv_alpha and the dropouts as networks.lora, no LoRA+ (ignored),
its older block code as test_convert_kohya_lora_fa_blocks.py checks (was refused)."""

from __future__ import annotations

from convert_kit import SD15, codes, empty_hub_cache, errors, fate, images, kohya, messages, plan_of, write  # noqa: F401

CONFIG = """\
pretrained_model_name_or_path = "{model}"
train_data_dir = "img"
resolution = "512,512"
output_dir = "out"
output_name = "fa"
network_module = "networks.lora_fa"
network_dim = 16
network_alpha = 8
network_dropout = 0.1
{network_args}
learning_rate = 1e-4
unet_lr = 1e-4
text_encoder_lr = 5e-5
optimizer_type = "AdamW8bit"
lr_scheduler = "cosine"
max_train_steps = 1200
train_batch_size = 2
mixed_precision = "fp16"
save_precision = "fp16"
save_model_as = "safetensors"
cache_latents = true
gradient_checkpointing = true
seed = 42
{clip}
scale_weight_norms = 2.0
"""


def _convert(tmp_path, network_args: str = "", clip: str = ""):
    images(tmp_path / "img" / "10_ohwx cat", 3, (512, 512))
    text = CONFIG.format(model=SD15, network_args=network_args, clip=clip)
    write(tmp_path / "cfg.toml", text)
    return kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")


def test_a_lora_fa_config_plans_frozen_downs_with_kohyas_gradients(tmp_path):
    outcome = _convert(tmp_path, 'network_args = ["conv_dim=8", "conv_alpha=4", "rank_dropout=0.1"]')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.conv_rank, a.conv_alpha) == ("lora", 16, 8.0, 8, 4.0)
    assert (a.freeze_down, a.frozen_down_grad) == (True, "kohya")  # kohya's max_grad_norm defaults to 1.0
    assert (a.down_dropout, a.rank_dropout, a.max_norm) == (0.1, 0.1, 2.0)
    assert fate(outcome, "network_module") == "mapped" and fate(outcome, "network_args") == "mapped"


def test_without_clipping_the_downs_need_no_gradient(tmp_path):
    a = plan_of(_convert(tmp_path, clip="max_grad_norm = 0.0"), tmp_path).adapter
    assert (a.freeze_down, a.frozen_down_grad) == (True, "none")


def test_loraplus_is_ignored_and_block_args_mapped(tmp_path):
    plus = _convert(tmp_path, 'network_args = ["loraplus_lr_ratio=16"]')
    assert "no LoRA+" in messages(plus, "DBS405")
    assert plan_of(plus, tmp_path).optimizer.loraplus_denoiser_ratio == 0.0
    blocks = _convert(
        tmp_path, 'network_args = ["block_dims=2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2"]'
    )
    assert fate(blocks, "network_args") == "mapped" and not {"DBS402", "DBS403"} & codes(blocks)
    assert {b.rank for b in plan_of(blocks, tmp_path).adapter.blocks} == {2}
