"""Optimizer arguments of kohya's get_optimizer (`cls(params, lr=learning_rate, **optimizer_args)`) that were
DBS403 (issue 12): torch RAdam's decoupled_weight_decay, bitsandbytes 0.50's PagedAdamW(optim_bits=8) and
AdamW8bit(is_paged=True) (PagedAdamW8bit's optimizer), bitsandbytes' min_8bit_size on its 8-bit classes, and
lion_pytorch's decoupled_weight_decay. Arguments bitsandbytes 0.50 refuses are invalid, the ones it never
reads are ignored (DBS405)."""

from __future__ import annotations

import pytest

from convert_kit import (
    exact,
    SD15,
    SDXL,
    codes,
    empty_hub_cache,  # noqa: F401 (an autouse fixture)
    expressible,
    fate,
    images,
    kohya,
    kohya_lora,
    messages,
    plan_of,
    write,
)
from dbspec.plan.model import BNB_MIN_8BIT_SIZE
from dbspec.spec.model import Optimizer


def test_the_spec_default_is_the_plans_bitsandbytes_default():
    assert Optimizer().min_8bit_size == BNB_MIN_8BIT_SIZE == 4096


def test_sdxl_lora_config_with_radam_decoupled_weight_decay(tmp_path):
    images(tmp_path / "img" / "10_ohwx woman", 3, (1024, 1024))
    write(
        tmp_path / "config.toml",
        f"""
pretrained_model_name_or_path = "{SDXL}"
train_data_dir = "img"
resolution = "1024,1024"
network_module = "networks.lora"
network_dim = 16
network_alpha = 8
learning_rate = 1e-4
max_train_steps = 1200
optimizer_type = "RAdam"
optimizer_args = [ "weight_decay=0.01", "decoupled_weight_decay=True", "betas=(0.9, 0.99)" ]
""",
    )
    outcome = exact(
        kohya(
            tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train_network.py"
        )
    )
    assert fate(outcome, "optimizer_args") == "mapped"
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.weight_decay, o.betas, o.decoupled_weight_decay) == ("radam", 0.01, (0.9, 0.99), True)


def test_radam_class_path_with_the_flag_off_keeps_torchs_coupled_decay(tmp_path):
    outcome = exact(
        kohya_lora(
            tmp_path,
            '--optimizer_type torch.optim.RAdam --optimizer_args "decoupled_weight_decay=False" '
            '"weight_decay=0.1"',
        )
    )
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.weight_decay, o.decoupled_weight_decay) == ("radam", 0.1, False)


def test_full_fine_tune_paged_adamw_with_optim_bits_8_and_min_8bit_size(tmp_path):
    """train_db.py with PagedAdamW made 8-bit by its arguments: PagedAdamW8bit's optimizer, whose small
    tensors (under min_8bit_size elements) keep 32-bit state."""
    images(tmp_path / "img" / "20_ohwx man", 3, (512, 512))
    outcome = exact(
        kohya(
            tmp_path,
            command=f"accelerate launch train_db.py --pretrained_model_name_or_path {SD15} "
            "--train_data_dir img --resolution 512 --learning_rate 1e-6 --max_train_steps 800 "
            '--optimizer_type PagedAdamW --optimizer_args "optim_bits=8" "min_8bit_size=16384" '
            '"weight_decay=0.05"',
        )
    )
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.min_8bit_size, o.weight_decay, o.lr) == ("paged_adamw8bit", 16384, 0.05, 1e-6)


@pytest.mark.parametrize(
    ("args", "kind", "size"),
    [
        (
            '--optimizer_type AdamW8bit --optimizer_args "is_paged=True" "min_8bit_size=0"',
            "paged_adamw8bit",
            0,
        ),
        ('--use_8bit_adam --optimizer_args "min_8bit_size=8192"', "adamw8bit", 8192),
        ('--optimizer_type PagedAdamW8bit --optimizer_args "min_8bit_size=1e4"', "paged_adamw8bit", 10000),
        ('--optimizer_type PagedLion8bit --optimizer_args "min_8bit_size=4096.5"', "paged_lion8bit", 4097),
        ('--optimizer_type Lion8bit --optimizer_args "min_8bit_size=-1"', "lion8bit", 0),
        (
            "--optimizer_type bitsandbytes.optim.AdEMAMix8bit --optimizer_args min_8bit_size=65536",
            "ademamix8bit",
            65536,
        ),
        (
            "--optimizer_type bitsandbytes.optim.AdEMAMix "
            '--optimizer_args "optim_bits=8" "min_8bit_size=1024"',
            "ademamix8bit",
            1024,
        ),
    ],
)
def test_min_8bit_size_on_each_8bit_class(tmp_path, args, kind, size):
    """bitsandbytes keeps 32-bit state where `p.numel() < min_8bit_size`: a fractional bound is its ceiling
    and a negative one is 0 (no tensor is below either) for whole element counts."""
    o = plan_of(exact(kohya_lora(tmp_path, args)), tmp_path).optimizer
    assert (o.kind, o.min_8bit_size) == (kind, size)


@pytest.mark.parametrize(
    ("args", "kind", "needle"),
    [
        ('--optimizer_type PagedAdamW32bit --optimizer_args "optim_bits=8"', "paged_adamw", "hard-codes"),
        ('--optimizer_type PagedAdamW --optimizer_args "amsgrad=True"', "paged_adamw", "amsgrad"),
        (
            '--optimizer_type bitsandbytes.optim.PagedLion --optimizer_args "min_8bit_size=16384"',
            "paged_lion",
            "32-bit",
        ),
    ],
)
def test_arguments_bitsandbytes_never_reads_are_ignored(tmp_path, args, kind, needle):
    outcome = expressible(kohya_lora(tmp_path, args))
    assert needle in messages(outcome, "DBS405")
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.min_8bit_size) == (kind, 4096)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ('--optimizer_type PagedAdamW8bit --optimizer_args "optim_bits=8"', "only takes optim_bits=32"),
        ('--optimizer_type AdamW8bit --optimizer_args "amsgrad=True"', "amsgrad"),
        ('--optimizer_type PagedAdamW --optimizer_args "optim_bits=16"', "NotImplementedError"),
        ('--optimizer_type AdamW8bit --optimizer_args "percentile_clipping=5"', "`percentile_clipping`"),
    ],
)
def test_arguments_bitsandbytes_refuses_are_invalid(tmp_path, args, needle):
    outcome = kohya_lora(tmp_path, args)
    assert outcome.exit_code == 1 and needle in messages(outcome, "DBS402")


def test_lion_decoupled_weight_decay_divides_by_kohyas_learning_rate(tmp_path):
    """lion_pytorch's Lion(lr=learning_rate, decoupled_weight_decay=True) divides weight_decay by that lr at
    every step: dbspec's Lion gets the quotient (the same Python division)."""
    images(tmp_path / "img" / "10_sks dog", 3, (512, 512))
    write(
        tmp_path / "config.toml",
        f"""
pretrained_model_name_or_path = "{SD15}"
train_data_dir = "img"
resolution = "512"
network_module = "networks.lora"
network_dim = 8
learning_rate = 3e-5
unet_lr = 3e-5
text_encoder_lr = 1e-5
max_train_steps = 400
optimizer_type = "Lion"
optimizer_args = [ "weight_decay=1.0", "decoupled_weight_decay=True", "betas=0.95,0.98" ]
""",
    )
    outcome = exact(
        kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch train_network.py")
    )
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.betas, o.weight_decay) == ("lion", (0.95, 0.98), 1.0 / 3e-5)
    off = exact(
        kohya_lora(tmp_path / "off", '--optimizer_type Lion --optimizer_args "decoupled_weight_decay=False"')
    )
    assert plan_of(off, tmp_path / "off").optimizer.weight_decay == 0.0
    assert "DBS403" not in codes(off)
