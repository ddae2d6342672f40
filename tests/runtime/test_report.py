"""`dbspec report OUT` and the report.html every run ends with: plan summary, one plot per metric (best step
marked), validation grids per step, dataset thumbnails; self-contained, torch-free, clear errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dbspec.cli import app
from dbspec.report.runfiles import numeric_series
from tests.runtime.reportrun import BEST, add_evaluation, finished_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_out(tmp_path_factory) -> Path:
    return finished_run(tmp_path_factory.mktemp("report"))


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_every_run_ends_with_a_report(run_out):
    page = (run_out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    # One plot per metric; no class images here, so the instance term is the loss and has no line of its own.
    keys = {key.split("[")[0] for row in _rows(run_out) for key in row}
    assert {"epoch", "instance", "prior"} <= keys
    assert page.count("<svg") == len(keys - {"step", "epoch", "instance", "prior"})
    assert "step 2" in page and "step 4" in page and "a toy on a beach" in page


def test_the_report_plots_every_metric_and_marks_the_best_checkpoint(run_out):
    add_evaluation(run_out)
    result = CliRunner().invoke(app, ["report", str(run_out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {run_out / 'report.html'}" in result.output
    page = (run_out / "report.html").read_text()
    rows = _rows(run_out)
    # One plot per metric key; list-valued keys (eval loss bands) are one plot with a line per band.
    keys = {key.split("[")[0] for row in rows for key in row} - {"step", "epoch", "instance", "prior"}
    assert {"loss", "lr", "eval_loss", "eval_loss_bands", "clip_t", "clip_i", "dino"} <= keys
    assert page.count("<svg") == len(keys)
    for label in ("eval_loss_bands[0]", "eval_loss_bands[2]", f"best (step {BEST['step']})"):
        assert label in page
    # The series a plot draws are exactly the file's numbers (rows with only some keys add to those only).
    series = numeric_series(tuple(rows))
    assert series["dino"] == [(2, 0.41), (4, 0.47)] and series["clip_t"] == [(2, 0.21)]
    assert series["eval_loss_bands[1]"] == [(2, 0.3), (4, 0.2)]
    assert [s for s, _ in series["loss"]] == [1, 2, 3, 4]
    assert "best checkpoint: step 4" in page and "dino = 0.47" in page
    # Validation grids side by side, the best step's outlined; its preview animations too.
    figures = re.findall(r"<figure>(.*?)</figure>", page, flags=re.S)
    assert len(figures) == 2
    assert "class='best'" in figures[1] and "class='best'" not in figures[0]
    assert all(figure.count("data:image/webp;base64,") == 2 for figure in figures)  # one per prompt
    # Dataset thumbnails with bucket and caption, and the plan summary.
    toy = sorted((run_out.parent / "data" / "toy").glob("*.png"))
    assert page.count("data:image/jpeg;base64,") == len(toy) + 2  # + one grid per validation step
    assert "a photo of ohwx toy" in page and "64x64" in page
    assert "Schedule" in page and "optimizer steps" in page


def test_the_report_is_self_contained(run_out):
    page = (run_out / "report.html").read_text()
    sources = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", page)
    assert sources and all(s.startswith(("data:", "#")) for s in sources)  # "#": the plots' own defs
    assert "<link" not in page and "@import" not in page and re.findall(r"url\((?!#)", page) == []
    assert sorted(p.name for p in run_out.glob("*report*")) == ["report.html"]  # no temporaries left


def test_report_needs_no_torch(run_out):
    code = (
        "import sys; from pathlib import Path; from dbspec.report import write_report; "
        f"write_report(Path({str(run_out)!r})); "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda t: t / "absent", "is not a folder"),
        (lambda t: t, "has no plan.json, so it is not a dbspec run folder"),
        (lambda t: (t / "plan.json").write_text("{}") and t, "plan_version"),
    ],
)
def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path, setup, expected):
    folder = setup(tmp_path) or tmp_path
    result = CliRunner().invoke(app, ["report", str(folder)])
    assert result.exit_code == 1
    assert str(folder) in result.output and expected in result.output
    assert not (tmp_path / "report.html").exists()
