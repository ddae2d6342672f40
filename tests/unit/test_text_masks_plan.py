"""The text attention masks in the compiler: model.t5_attention_mask / clip_attention_mask in the plan and its
summary, the text cache key, and DBS530-DBS532 on families without the encoder (or where it is inert)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from test_compile import compile_in, image, planned_ok, write_spec
from test_compile import codes as plan_codes

from dbspec.compiler.caches import text_key
from dbspec.plan.summary import model_table


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    image(tmp_path / "inst" / "a.png", (64, 64))
    return tmp_path


def _model_summary(plan) -> str:
    out = io.StringIO()
    Console(file=out, width=250, color_system=None).print(model_table(plan))
    return out.getvalue()


def test_flux_plan_holds_the_t5_mask_and_shows_the_key_mask(toy: Path):
    write_spec(toy, model={"base": "builtin:tiny-flux", "t5_attention_mask": True})
    plan = planned_ok(toy)
    assert plan.model.t5_attention_mask and not plan.model.clip_attention_mask
    summary = _model_summary(plan)
    assert "T5 encodes with its padding mask (model.t5_attention_mask); the transformer masks" in summary
    write_spec(toy, model={"base": "builtin:tiny-flux"})
    plain = planned_ok(toy)
    assert "padding mask" not in _model_summary(plain)
    assert text_key("a dog", plan.model, "float32") != text_key("a dog", plain.model, "float32")


def test_sd3_plan_holds_both_masks(toy: Path):
    write_spec(
        toy, model={"base": "builtin:tiny-sd3", "t5_attention_mask": True, "clip_attention_mask": True}
    )
    plan = planned_ok(toy)
    assert plan.model.t5_attention_mask and plan.model.clip_attention_mask
    summary = _model_summary(plan)
    assert "CLIP encodes with its padding mask" in summary and "transformer masks" not in summary
    write_spec(toy, model={"base": "builtin:tiny-sd3", "t5_attention_mask": True})
    t5 = planned_ok(toy)
    assert text_key("a dog", plan.model, "float32") != text_key("a dog", t5.model, "float32")


@pytest.mark.parametrize("base", ["builtin:tiny-sd1", "builtin:tiny-sdxl"])
def test_t5_mask_without_t5_is_refused(toy: Path, base: str):
    write_spec(toy, model={"base": base, "t5_attention_mask": True})
    assert "DBS530" in plan_codes(compile_in(toy), "error")


@pytest.mark.parametrize("base", ["builtin:tiny-sd2", "builtin:tiny-sdxl"])
def test_clip_mask_outside_sd3_is_refused(toy: Path, base: str):
    write_spec(toy, model={"base": base, "clip_attention_mask": True})
    assert "DBS531" in plan_codes(compile_in(toy), "error")


def test_clip_mask_on_flux_is_inert(toy: Path):
    write_spec(toy, model={"base": "builtin:tiny-flux", "clip_attention_mask": True})
    assert "DBS532" in plan_codes(compile_in(toy), "warning")
