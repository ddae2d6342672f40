"""`dbspec report OUT`: one self-contained `<OUT>/report.html` for a run (also written at the end of every
run).

It holds the plan summary, the loss and learning-rate curves, every metric over steps with the best checkpoint
marked, the validation grids of every validation step side by side, and the dataset images with their buckets
and captions. Plots are matplotlib figures inlined as SVG, images are inlined as data URIs: the file opens
anywhere, offline. Torch-free (it reads the run's files only); matplotlib is imported when plotting.
"""

from __future__ import annotations

from pathlib import Path

from dbspec.report.page import build_html
from dbspec.report.runfiles import ReportError, read_run
from dbspec.util.atomic import write_text_atomic

REPORT_FILE = "report.html"

__all__ = ["REPORT_FILE", "ReportError", "write_report"]


def write_report(out: Path) -> Path:
    """Write `<out>/report.html` (atomically) from the run folder `out`; ReportError names what is wrong."""
    run = read_run(Path(out))
    path = run.out / REPORT_FILE
    write_text_atomic(path, build_html(run))
    return path
