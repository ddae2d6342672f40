"""kohya's LoRA+ ratios at 0 (issue 12, was DBS403). networks/lora.py (lora_flux, lora_sd3, dylora and
LyCORIS's alike) takes each part's ratio as `loraplus_unet_lr_ratio or loraplus_lr_ratio` (the text
encoders' likewise): a part's own 0 falls back to the general ratio (LoRA+ off where it is unset), and a
ratio that comes out 0 gives the plus group the rate lr x 0, which prepare_optimizer_params skips ("NO LR
skipping!"): the up matrices stay out of the optimizer while their gradients are computed, never cleared
(optimizer.zero_grad clears the optimizer's parameters) and clipped with the rest
(get_trainable_params): `adapter.loraplus_zero = "held"`, the plan's `optimizer.loraplus_held`."""

from __future__ import annotations

import io

import pytest
from convert_kit import codes, errors, fate, plan_of
from test_init_weights import _convert, _plan

from dbspec.plan.summary import render_summary


@pytest.mark.parametrize(
    ("args", "ratios", "held"),
    [
        ("loraplus_lr_ratio=0", (0.0, 0.0), ("denoiser", "text_encoder")),
        ("loraplus_lr_ratio=0 loraplus_unet_lr_ratio=4", (4.0, 0.0), ("text_encoder",)),
        ("loraplus_lr_ratio=0 loraplus_text_encoder_lr_ratio=2", (0.0, 2.0), ("denoiser",)),
        ("loraplus_unet_lr_ratio=0", (0.0, 0.0), ()),  # 0 or None: no LoRA+ at all
        ("loraplus_unet_lr_ratio=0 loraplus_lr_ratio=8", (8.0, 8.0), ()),  # 0 or 8
        ("loraplus_text_encoder_lr_ratio=0 loraplus_unet_lr_ratio=4", (4.0, 0.0), ()),
    ],
)
def test_a_ratio_of_0_holds_the_up_matrices_as_kohya_skips_their_group(tmp_path, args, ratios, held):
    outcome = _convert(tmp_path, f"--network_dim=8 --network_alpha=4 --network_args {args}")
    assert outcome.written and "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, "network_args") == "mapped"
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.loraplus_denoiser_ratio, o.loraplus_text_encoder_ratio, o.loraplus_held) == (*ratios, held)
    assert ('loraplus_zero = "held"' in outcome.text) == bool(held)


def test_a_spec_says_it_and_the_plan_shows_it(tmp_path):
    planned = _plan(
        tmp_path,
        'rank = 4\nalpha = 4.0\nloraplus_denoiser_ratio = 8\nloraplus_zero = "held"',
        "[train]\ntext_encoder = true",
    )
    assert planned.plan is not None, planned.diagnostics
    o = planned.plan.optimizer
    assert (o.loraplus_denoiser_ratio, o.loraplus_text_encoder_ratio, o.loraplus_held) == (
        8.0,
        0.0,
        ("text_encoder",),
    )
    from rich.console import Console

    console = Console(file=io.StringIO(), width=400)
    render_summary(planned.plan, console)
    assert "denoiser x8, text encoder x0 (held, out of the optimizer)" in console.file.getvalue()
    planned = _plan(tmp_path, "rank = 4\nalpha = 4.0", "[train]\ntext_encoder = true")  # "off": LoRA+ off
    assert planned.plan.optimizer.loraplus_held == ()
