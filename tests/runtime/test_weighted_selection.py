"""The weighted best-checkpoint rule (checkpoints.select = "weighted"): the score on known metric rows, a tiny
run whose metrics.jsonl decides the best checkpoint, resume keeping it, the plan and summary showing the rule,
and its rules (DBS291-DBS293)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from dbspec.frontend import check_spec
from dbspec.plan.summary import evaluation_table
from dbspec.runtime import checkpoints as ckpt
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec, write_spec
from tests.runtime.test_evaluate import LORA, METRICS, VALIDATION

WEIGHTS = (("eval_loss", 2.0), ("clip_t", 0.5), ("dino", 1.0))
SELECT = (
    '[checkpoints]\nevery = 1\nkeep = 1\nselect = "weighted"\n'
    "select_weight_dino = 1.0\nselect_weight_clip_t = 0.5\nselect_weight_eval_loss = 2.0\n"
)


def _score(row: dict) -> float:
    """The documented rule, computed here: 1 x dino + 0.5 x clip_t - 2 x eval_loss."""
    return 1.0 * row["dino"] + 0.5 * row["clip_t"] - 2.0 * row["eval_loss"]


def _save(out: Path, step: int, scores: dict, keep: int = 1) -> None:
    ckpt.save_checkpoint(
        out,
        step,
        weights=lambda folder: (folder / "w.txt").write_text(str(step)),
        state={"step": step},
        keep=keep,
        scores={"step": step, **scores},
        select="weighted",
        select_weights=WEIGHTS,
    )


def test_the_weighted_sum_negates_eval_loss():
    row = {"eval_loss": 0.1, "clip_t": 0.3, "dino": 0.6, "clip_i": 0.9}
    assert ckpt.selection_score(row, WEIGHTS) == pytest.approx(_score(row))
    assert ckpt.selection_score({"dino": 0.6}, WEIGHTS) is None  # a weighted metric is missing


def test_the_best_by_the_weighted_rule_on_known_rows(tmp_path):
    # dino alone would pick step 2, eval_loss alone step 3; the weighted sum picks step 4
    rows = [
        {"eval_loss": 0.30, "clip_t": 0.20, "dino": 0.50},
        {"eval_loss": 0.40, "clip_t": 0.10, "dino": 0.90},
        {"eval_loss": 0.10, "clip_t": 0.10, "dino": 0.40},
        {"eval_loss": 0.15, "clip_t": 0.30, "dino": 0.70},
        {"eval_loss": 0.15, "clip_t": 0.30, "dino": 0.70},  # a tie does not move it
    ]
    for step, row in enumerate(rows, start=1):
        _save(tmp_path, step, row)
    root = tmp_path / "checkpoints"
    expected = max(range(len(rows)), key=lambda i: (_score(rows[i]), -i)) + 1
    assert expected == 4
    assert (root / "best").read_text() == "step-000004\n"
    record = json.loads((root / "best.json").read_text())
    assert record["metric"] == "weighted" and record["value"] == pytest.approx(_score(rows[3]))
    assert record["weights"] == [list(w) for w in WEIGHTS]
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("step-")) == [
        "step-000004",
        "step-000005",
    ]


def test_a_tiny_run_picks_the_best_weighted_checkpoint_and_resume_keeps_it(tmp_path):
    extra = LORA + VALIDATION + METRICS + SELECT
    spec = write_spec(tmp_path, steps=4, with_class=True, extra=extra)
    plan = compile_spec(spec, ["output.dir=whole"])
    assert plan.checkpoints.select == "weighted" and plan.checkpoints.select_weights == WEIGHTS
    out = Path(execute(plan).output)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "dino" in r]
    best = max(rows, key=lambda r: (_score(r), -r["step"]))  # the first of equal scores stays
    record = json.loads((out / "checkpoints" / "best.json").read_text())
    assert record["checkpoint"] == f"step-{best['step']:06d}"
    assert record["value"] == pytest.approx(_score(best))
    parts = compile_spec(spec, ["output.dir=parts"])
    execute(parts, stop_after=2)
    resumed = Path(execute(parts, resume=True).output)
    assert json.loads((resumed / "checkpoints" / "best.json").read_text()) == record


def _summary(plan) -> str:
    out = io.StringIO()
    Console(file=out, width=250, color_system=None).print(evaluation_table(plan))
    return out.getvalue()


def test_the_summary_shows_the_rule(tmp_path):
    extra = LORA + VALIDATION + METRICS + SELECT
    plan = compile_spec(write_spec(tmp_path, steps=2, with_class=True, extra=extra))
    assert "by the highest -2 x eval_loss + 0.5 x clip_t + 1 x dino" in _summary(plan)


def _codes(spec: Path) -> dict[str, str]:
    return {d.code: d.severity for d in check_spec(spec).diagnostics}


def test_rules_of_the_weighted_rule(tmp_path):
    base = LORA + VALIDATION + METRICS
    none = write_spec(tmp_path, extra=base + '[checkpoints]\nselect = "weighted"\n')
    assert _codes(none).get("DBS291") == "error"
    missing = base.replace('metrics = ["clip_t", "clip_i", "dino"]', 'metrics = ["clip_t"]')
    spec = write_spec(
        tmp_path, extra=missing + '[checkpoints]\nselect = "weighted"\nselect_weight_dino = 1.0\n'
    )
    assert _codes(spec).get("DBS292") == "error"
    no_loss = base.replace("holdout = 1\n", "")
    spec = write_spec(
        tmp_path, extra=no_loss + '[checkpoints]\nselect = "weighted"\nselect_weight_eval_loss = 1\n'
    )
    assert _codes(spec).get("DBS292") == "error"
    inert = write_spec(tmp_path, extra=base + '[checkpoints]\nselect = "dino"\nselect_weight_clip_t = 1.0\n')
    assert _codes(inert).get("DBS293") == "warning"
    good = write_spec(tmp_path, with_class=True, extra=base + SELECT)
    assert not {c for c, s in _codes(good).items() if s == "error"}
