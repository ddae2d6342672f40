"""A tiny finished run for the report tests: validation (with live previews) at steps 2 and 4, metrics every
step; then eval rows and a best pointer of the shape the evaluation code writes."""

from __future__ import annotations

import json
from pathlib import Path

from dbspec.runtime.execute import execute
from tests.runtime.runspec import make_plan

VALIDATION = """
[validation]
prompts = ["a photo of ohwx toy", "a toy on a beach"]
every = 2
steps = 2
preview_every = 1
preview_model = "builtin:tiny-taesd"

[logging]
every = 1
tensorboard = false
"""
EVAL_ROWS = [
    {
        "step": 2,
        "eval_loss": 0.30,
        "eval_loss_bands": [0.5, 0.3, 0.1],
        "clip_t": 0.21,
        "clip_i": 0.62,
        "dino": 0.41,
    },
    {"step": 4, "eval_loss": 0.25, "eval_loss_bands": [0.45, 0.2, 0.1], "dino": 0.47},  # some keys only
]
BEST = {"step": 4, "metric": "dino", "value": 0.47}


def finished_run(tmp: Path) -> Path:
    plan = make_plan(tmp, steps=4, extra=VALIDATION, report=True)
    result = execute(plan)
    assert result.status == "finished"
    return Path(plan.checkpoints.dir)


def add_evaluation(out: Path) -> None:
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        for row in EVAL_ROWS:
            f.write(json.dumps(row) + "\n")
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "checkpoints" / "best.json").write_text(json.dumps(BEST))
