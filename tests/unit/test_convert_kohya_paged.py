"""kohya's paged AdamW optimizers (issue 16): sd-scripts library/train_util.py get_optimizer builds
bitsandbytes.optim.PagedAdamW, PagedAdamW32bit (PagedAdamW with its default 32-bit state) and PagedAdamW8bit
as `cls(params, lr=learning_rate, **optimizer_args)`; dbspec has them as paged_adamw and paged_adamw8bit."""

from __future__ import annotations

import pytest

from convert_kit import SD15, codes, fate, images, kohya, messages, plan_of

LORA = (
    f"train_network.py --pretrained_model_name_or_path {SD15} --network_module networks.lora "
    "--train_data_dir d --resolution 512 --max_train_steps 100"
)
KOHYA_PAGED = {
    "PagedAdamW": "paged_adamw",
    "PagedAdamW32bit": "paged_adamw",
    "pagedadamw8bit": "paged_adamw8bit",
}
# bitsandbytes 0.50's constructor defaults (inspect.signature of PagedAdamW, PagedAdamW32bit, PagedAdamW8bit)
BNB_DEFAULTS = {"weight_decay": 0.01, "betas": (0.9, 0.999), "eps": 1e-8}


@pytest.mark.parametrize("name", list(KOHYA_PAGED))
def test_each_paged_optimizer_converts_to_its_own_kind(tmp_path, name):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(tmp_path, command=f"{LORA} --optimizer_type {name} --learning_rate 1e-4")
    assert fate(outcome, "optimizer_type") == "mapped" and "DBS403" not in codes(outcome)
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.lr) == (KOHYA_PAGED[name], 1e-4)
    for key, value in BNB_DEFAULTS.items():
        assert getattr(o, key) == pytest.approx(value), key


def test_paged_optimizer_arguments_are_kept(tmp_path):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"{LORA} --optimizer_type PagedAdamW8bit "
        '--optimizer_args "weight_decay=0.1" "betas=0.9,0.99"',
    )
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.weight_decay, o.betas) == ("paged_adamw8bit", 0.1, (0.9, 0.99))


def test_a_paged_adamw_made_8bit_by_its_arguments_is_paged_adamw8bit(tmp_path):
    """bitsandbytes 0.50's PagedAdamW passes optim_bits on to the Optimizer2State PagedAdamW8bit builds with
    8 (was DBS403, issue 12); optim_bits=32 is PagedAdamW's default and stays paged_adamw."""
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    eight = kohya(tmp_path, command=f'{LORA} --optimizer_type PagedAdamW --optimizer_args "optim_bits=8"')
    assert not {"DBS402", "DBS403", "DBS404"} & codes(eight), messages(eight, "DBS403")
    assert plan_of(eight, tmp_path).optimizer.kind == "paged_adamw8bit"
    thirty_two = kohya(
        tmp_path, command=f'{LORA} --optimizer_type PagedAdamW --optimizer_args "optim_bits=32"'
    )
    assert plan_of(thirty_two, tmp_path).optimizer.kind == "paged_adamw"
