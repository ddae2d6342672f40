"""Per-text-encoder conditioning dropout (loss.text_encoder_dropout, kohya's SD3 `--clip_l_dropout_rate`,
`--clip_g_dropout_rate`, `--t5_dropout_rate`): the draws and the zeroing against kohya's description, restated
here from library/strategy_sd3.py (Sd3TextEncodingStrategy.drop_cached_text_encoder_outputs and
concat_encodings), and a tiny SD3 run with it that resumes bit-exact."""

from __future__ import annotations

import math
import random

import pytest
import torch

from dbspec.plan.text_dropout import dropped_encoders
from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import final_weights, make_plan, summary_text

BASE = "builtin:tiny-sd3"
T5_LENGTH = 20


# --- kohya's description, restated -------------------------------------------------------------------------
def kohya_drop_and_join(lg_out, t5_out, lg_pooled, dropped, l_width):
    """kohya's form: CLIP-L and CLIP-G hidden states side by side (lg_out: B x 77 x (L + G)), T5's own tensor,
    the pooled pair; a dropped encoder's slices set to zeros sample by sample, then lg_out zero-padded to T5's
    width and put before T5's tokens."""
    lg_out, t5_out, lg_pooled = lg_out.clone(), t5_out.clone(), lg_pooled.clone()
    for i, (drop_l, drop_g, drop_t5) in enumerate(dropped):
        if drop_l:
            lg_out[i, :, :l_width] = 0
            lg_pooled[i, :l_width] = 0
        if drop_g:
            lg_out[i, :, l_width:] = 0
            lg_pooled[i, l_width:] = 0
        if drop_t5:
            t5_out[i] = 0
    lg_out = torch.nn.functional.pad(lg_out, (0, t5_out.shape[-1] - lg_out.shape[-1]))
    return torch.cat([lg_out, t5_out], dim=-2), lg_pooled


@pytest.fixture(scope="module")
def encoders():
    pipe = build_pipeline(BASE)
    tokenizers = [pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3]
    tokenizers[2].model_max_length = T5_LENGTH
    return [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3], tokenizers


@pytest.mark.parametrize(
    "dropped",
    [
        [(False, False, False), (False, False, False), (False, False, False)],  # rate 0: nothing changes
        [(True, True, True), (True, True, True), (True, True, True)],  # rate 1: every output zero
        [(True, False, False), (False, True, True), (False, False, True)],
    ],
)
def test_zeroing_is_kohyas_on_the_encoders_outputs(encoders, dropped):
    text_encoders, tokenizers = encoders
    l_width = text_encoders[0].config.hidden_size  # tiny: CLIP-L 32 wide, CLIP-G 64, T5 128
    g_width = text_encoders[1].config.hidden_size
    gen = torch.Generator().manual_seed(3)
    lg_out = torch.randn(3, 77, l_width + g_width, generator=gen)
    t5_out = torch.randn(3, T5_LENGTH, text_encoders[2].config.d_model, generator=gen)
    lg_pooled = torch.randn(3, 2 * text_encoders[0].config.projection_dim, generator=gen)
    # the family's own joined form, as encode_prompts returns it
    joined = torch.cat([torch.nn.functional.pad(lg_out, (0, t5_out.shape[-1] - lg_out.shape[-1])), t5_out], 1)
    text = {"prompt_embeds": joined, "pooled": lg_pooled}
    ours = family_runtime("sd3").drop_text_encoders(text, dropped, text_encoders, tokenizers)
    embeds, pooled = kohya_drop_and_join(lg_out, t5_out, lg_pooled, dropped, l_width)
    assert torch.equal(ours["prompt_embeds"], embeds) and torch.equal(ours["pooled"], pooled)
    if all(all(row) for row in dropped):
        assert not ours["prompt_embeds"].any() and not ours["pooled"].any()
    assert torch.equal(text["prompt_embeds"], joined)  # out of place: cached tensors stay as they were


def test_draws_are_kohyas_per_sample_rule():
    """kohya: per sample, per encoder in order, `rate > 0 and random() < rate`; a rate of 0 draws nothing."""
    for seed in range(200):
        rng = random.Random(f"dbspec-text-encoder-dropout:{seed}")
        first, second = rng.random(), rng.random()
        assert dropped_encoders([0.5, 0.0, 0.5], seed) == (first < 0.5, False, second < 0.5)
        assert dropped_encoders([0.0, 0.0, 0.0], seed) == (False, False, False)
        assert dropped_encoders([1.0, 1.0, 1.0], seed) == (True, True, True)


def test_seeded_draws_drop_in_proportion():
    rates, n = (0.1, 0.5, 0.8), 4000
    counts = [0, 0, 0]
    for seed in range(n):
        for k, dropped in enumerate(dropped_encoders(rates, seed * 7919 + 13)):
            counts[k] += dropped
    for rate, count in zip(rates, counts):
        sd = math.sqrt(rate * (1 - rate) / n)
        assert abs(count / n - rate) < 5 * sd, (rate, count / n)
    assert dropped_encoders(rates, 5) == dropped_encoders(rates, 5)  # a function of the seed alone


LORA = '[adapter]\nkind = "lora"\nrank = 4\n\n[checkpoints]\nevery = 2\n'


def test_tiny_sd3_trains_with_encoder_dropout_and_resumes_bit_exact(tmp_path):
    extra = LORA + "\n[loss]\ntext_encoder_dropout = [0.5, 0.3, 0.7]\n"
    plan = make_plan(tmp_path / "whole", base=BASE, steps=4, extra=extra)
    assert plan.loss.text_encoder_dropout == (0.5, 0.3, 0.7)
    assert "text dropout" in summary_text(plan) and "text_encoder_3 0.7" in summary_text(plan)
    assert plan.cache.text_embeddings  # the text cache stays on: zeros need no encoding
    whole = execute(plan)
    parts_plan = make_plan(tmp_path / "parts", base=BASE, steps=4, extra=extra)
    first = execute(parts_plan, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(parts_plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    plain = execute(make_plan(tmp_path / "plain", base=BASE, steps=4, extra=LORA))
    assert plain.losses != whole.losses  # the option reaches the conditioning
    assert all(math.isfinite(x) for x in whole.losses)


def test_rate_zero_everywhere_is_a_plain_run(tmp_path):
    """Rates of 0 draw nothing and settle to off: the very run without the option."""
    plan = make_plan(
        tmp_path / "zero", base=BASE, steps=2, extra=LORA + "\n[loss]\ntext_encoder_dropout = [0, 0, 0]\n"
    )
    assert plan.loss.text_encoder_dropout == ()
    plain = make_plan(tmp_path / "plain", base=BASE, steps=2, extra=LORA)
    assert execute(plan).losses == execute(plain).losses


@pytest.mark.parametrize(
    ("base", "rates", "code"),
    [("builtin:tiny-sd3", "[0.1, 0.2]", "DBS540"), ("builtin:tiny-sd1", "[0.1]", "DBS542")],
)
def test_a_detected_family_is_checked_when_planned(tmp_path, base, rates, code):
    """family = "auto": `dbspec check` cannot know the encoders; the plan checks the detected family."""
    from dbspec.frontend import plan_spec
    from tests.runtime.runspec import CPU, write_spec

    path = write_spec(tmp_path, base=base, extra=f"[loss]\ntext_encoder_dropout = {rates}\n")
    planned = plan_spec(path, CPU, str(path), [])
    found = [(d.code, d.path) for d in planned.diagnostics if d.severity == "error"]
    assert planned.plan is None and found == [(code, "loss.text_encoder_dropout")]


def test_families_with_encoder_dropout_have_its_runtime():
    """The registry's text_encoder_dropout flag (what the compiler allows) and the runtime method agree."""
    from dbspec.families import FAMILIES

    for name, spec in FAMILIES.items():
        assert hasattr(family_runtime(name), "drop_text_encoders") == spec.text_encoder_dropout, name


def test_a_plan_file_with_rates_the_family_cannot_take_is_refused(tmp_path):
    import attrs

    from dbspec.plan.io import plan_from_json, plan_to_json
    from dbspec.plan.validate import plan_problems

    plan = make_plan(tmp_path, base=BASE, steps=2, extra="[loss]\ntext_encoder_dropout = [0.1, 0.0, 0.2]\n")
    assert plan_from_json(plan_to_json(plan)).loss.text_encoder_dropout == (0.1, 0.0, 0.2)
    assert not plan_problems(plan)
    for rates, said in (((0.1, 0.2), "one rate per text encoder"), ((0.1, 1.5, 0.0), "numbers in [0, 1]")):
        broken = attrs.evolve(plan, loss=attrs.evolve(plan.loss, text_encoder_dropout=rates))
        assert any(said in p for p in plan_problems(broken))


def test_an_always_dropped_encoder_gets_no_update_while_the_others_train(tmp_path):
    """Rate 1 zeroes every CLIP-L output, so its LoRA receives no gradient (kohya does not even run it);
    CLIP-G's trains."""
    extra = (
        '[adapter]\nkind = "lora"\nrank = 2\n\n[train]\ntext_encoder = true\n\n'
        "[loss]\ntext_encoder_dropout = [1.0, 0.0, 0.0]\n"
    )
    result = execute(make_plan(tmp_path, base=BASE, steps=2, extra=extra), keep_models=True)
    assert result.status == "finished"

    def lora_b(encoder) -> list[torch.Tensor]:
        return [p for n, p in encoder.named_parameters() if "lora_B" in n]

    clip_l, clip_g = result.components.text_encoders[:2]
    assert lora_b(clip_l) and all(not p.any() for p in lora_b(clip_l))  # still peft's zero init
    assert any(p.any() for p in lora_b(clip_g))
