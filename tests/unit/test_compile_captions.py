"""The plan's caption processing: options settled per dataset, token warm-up resolved, and the text cache the
plan decides (cached, empty caption once for dropout, or the text encoder every step)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from rich.console import Console

from dbspec.compiler.caches import text_key
from dbspec.plan.captions import fixed_caption
from dbspec.plan.summary import render_summary
from tests.unit.test_compile import CPU, compile_in, image, planned_ok, write_spec


@pytest.fixture
def tagged(tmp_path: Path) -> Path:
    """Three images with tag captions; c has one tag only (nothing to shuffle)."""
    for name, caption in (
        ("a", "ohwx toy, red, small"),
        ("b", "ohwx toy, blue;;;dark, {big|tiny}"),
        ("c", "ohwx"),
    ):
        image(tmp_path / "inst" / f"{name}.png", (64, 64))
        (tmp_path / "inst" / f"{name}.txt").write_text(caption + "\nsecond line, x\n", encoding="utf-8")
    return tmp_path


def dataset(**options) -> dict:
    return {"captions": "textfile", "prompt": None, "repeats": 3, **options}


def by_name(plan) -> dict:
    return {Path(img.path).stem: img for img in plan.datasets[0].images}


def test_defaults_change_nothing(tagged):
    write_spec(tagged, dataset())
    plan = planned_ok(tagged)
    p = plan.datasets[0].caption_processing
    assert not p.active and p.varying_images == 0 and p.empty_text_key == ""
    images = by_name(plan)
    assert images["a"].caption == "ohwx toy, red, small"  # the first line, as kohya reads it
    assert all(img.text_key for img in images.values())


def test_shuffle_uncaches_only_captions_that_can_change(tagged):
    write_spec(tagged, dataset(shuffle_caption=True, keep_tokens=1))
    plan = planned_ok(tagged)
    p = plan.datasets[0].caption_processing
    assert p.shuffle_caption and p.keep_tokens == 1
    images = by_name(plan)
    assert images["a"].text_key == "" and images["b"].text_key == ""
    assert images["c"].text_key == text_key("ohwx", plan.model, "fp32")  # one tag: it never changes
    assert (p.varying_images, p.varying_samples_per_epoch) == (2, 6)
    assert any("text encoder runs forward for 6 sample(s) per epoch" in n for n in plan.cache.notes)


def test_pure_dropout_caches_every_caption_and_the_empty_one(tagged):
    write_spec(tagged, dataset(caption_dropout_rate=0.1, caption_dropout_every_n_epochs=4))
    plan = planned_ok(tagged)
    p = plan.datasets[0].caption_processing
    assert p.varying_images == 0
    assert p.empty_text_key == text_key("", plan.model, "fp32")
    assert all(img.text_key for img in plan.datasets[0].images)
    assert plan.cache.text_misses == 4  # three captions and the empty one, each encoded once
    assert any("empty caption" in n for n in plan.cache.notes)


def test_the_text_cache_keys_the_text_a_caption_becomes(tagged):
    write_spec(tagged, dataset(secondary_separator=";;;"))
    plan = planned_ok(tagged)
    b = by_name(plan)["b"]
    assert b.caption == "ohwx toy, blue;;;dark, {big|tiny}"
    assert b.text_key == text_key("ohwx toy, blue,dark, {big|tiny}", plan.model, "fp32")


def test_wildcards_read_every_line_and_vary(tagged):
    write_spec(tagged, dataset(enable_wildcard=True))
    plan = planned_ok(tagged)
    images = by_name(plan)
    assert images["a"].caption == "ohwx toy, red, small\nsecond line, x"
    assert all(img.text_key == "" for img in images.values())  # one of two lines per step
    assert plan.datasets[0].caption_processing.varying_images == 3


@pytest.mark.parametrize(("warmup", "steps", "resolved"), [(0.5, 10, 5.0), (0.25, 10, 2.0), (7, 10, 7.0)])
def test_token_warmup_fraction_is_resolved_against_the_run(tagged, warmup, steps, resolved):
    write_spec(tagged, dataset(token_warmup_step=warmup, token_warmup_min=2), schedule={"steps": steps})
    plan = planned_ok(tagged)
    p = plan.datasets[0].caption_processing
    assert p.token_warmup_step == resolved == (math.floor(warmup * steps) if warmup < 1 else warmup)
    assert p.varying_images == 3 and all(img.text_key == "" for img in plan.datasets[0].images)


def test_a_training_text_encoder_caches_nothing(tagged):
    write_spec(
        tagged,
        dataset(caption_dropout_rate=0.2),
        train={"text_encoder": True},
        cache={"text_embeddings": False},
    )
    plan = planned_ok(tagged)
    assert plan.datasets[0].caption_processing.empty_text_key == ""
    assert all(img.text_key == "" for img in plan.datasets[0].images)


def test_summary_shows_processing_and_cost(tagged):
    write_spec(tagged, dataset(shuffle_caption=True, caption_tag_dropout_rate=0.2, caption_dropout_rate=0.05))
    plan = planned_ok(tagged)
    console = Console(width=400, record=True)
    render_summary(plan, console)
    text = console.export_text()
    assert "Caption processing" in text
    assert "caption dropout 0.05" in text and "shuffle tags" in text and "tag dropout 0.2" in text
    assert "3 of 3 images uncached" in text and "9 samples/epoch" in text  # one tag can drop out too
    assert "empty caption cached once" in text


def test_the_rules_reach_the_plan(tagged):
    write_spec(tagged, dataset(shuffle_caption=True, caption_separator=""))
    planned = compile_in(tagged)
    assert planned.plan is None and "DBS240" in [d.code for d in planned.diagnostics]


def test_fixed_caption_is_what_the_compiler_keys(tagged):
    write_spec(tagged, dataset(shuffle_caption=True, keep_tokens=1))
    plan = planned_ok(tagged, CPU)
    p = plan.datasets[0].caption_processing
    for img in plan.datasets[0].images:
        assert bool(img.text_key) == (fixed_caption(img.caption, p) is not None)
