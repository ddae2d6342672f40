"""The report page: plain HTML with inline CSS, inline SVG plots and data-URI images (no external resources).

A small script marks `<body data-ready data-images data-images-broken>` once the page has loaded, so a
headless browser (tests/cli/test_report_browser.py) can tell that every image decoded.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from dbspec.plan.model import Plan
from dbspec.report.plots import group_series, svg_plot
from dbspec.report.runfiles import Run, numeric_series

DATASET_THUMB = 96  # px, longest side
GRID_THUMB = 360
MAX_IMAGES_SHOWN = 48  # per dataset
MAX_ANIMATION_BYTES = 256 << 10

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots svg{width:520px;height:auto}
.row{display:flex;gap:12px;overflow-x:auto;padding-bottom:6px}
figure{margin:0;flex:0 0 auto}figcaption{font-size:.85em;color:#555;text-align:center}
.best{outline:3px solid #d62728}.badge{color:#d62728;font-weight:600}
table.images{border-collapse:collapse;font-size:.85em}table.images td,table.images th{border:1px solid #ddd;
padding:3px 6px;text-align:left;vertical-align:middle}
pre.summary{font-size:12px;line-height:1.25;overflow-x:auto;background:#fafafa;padding:8px}
.notes{color:#8a5a00}
"""
SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute("data-images", String(images.length));
  document.body.setAttribute("data-images-broken", String(broken.length));
  document.body.setAttribute("data-ready", "1");
});
"""


def build_html(run: Run) -> str:
    plan = run.plan
    parts = [
        f"<h1>dbspec run report: {_e(Path(plan.checkpoints.dir).name)}</h1>",
        _overview(run),
        _notes(run.notes),
        "<h2>Metrics</h2>",
        _plots(run),
        "<h2>Validation</h2>",
        _validation(run),
        "<h2>Datasets</h2>",
        *(_dataset(plan, index) for index in range(len(plan.datasets))),
        "<h2>Plan</h2>",
        f"<pre class='summary'>{_summary_html(plan)}</pre>",
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>dbspec report: {_e(plan.checkpoints.dir)}</title><style>{CSS}</style>"
        f"<script>{SCRIPT}</script></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _overview(run: Run) -> str:
    plan, rows = run.plan, run.rows
    last = max((row["step"] for row in rows), default=0)
    final = (run.out / "final").is_dir()
    items = [
        f"output <code>{_e(run.out)}</code>, spec <code>{_e(plan.spec_file)}</code>",
        f"base model <code>{_e(plan.model.base)}</code> ({_e(plan.model.family)}, "
        f"{_e(plan.model.prediction)}), adapter {_e(plan.adapter.kind)}",
        f"{last} of {plan.schedule.total_steps} steps logged; "
        + ("final weights written" if final else "no final weights yet"),
    ]
    if run.best is not None:
        items.append(
            f"<span class='badge'>best checkpoint: step {run.best.step}</span> "
            f"({_e(run.best.metric)} = {run.best.value:.6g})"
        )
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def _notes(notes: tuple[str, ...]) -> str:
    return "<ul class='notes'>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>" if notes else ""


def _plots(run: Run) -> str:
    groups = group_series(numeric_series(run.rows))
    if not groups:
        return "<p>No metrics logged yet.</p>"
    return "<div class='plots'>" + "".join(svg_plot(key, lines, run.best) for key, lines in groups) + "</div>"


def _validation(run: Run) -> str:
    v = run.plan.validation
    if not run.samples:
        return "<p>No validation images yet.</p>" if v.prompts else "<p>Validation is off.</p>"
    prompts = "".join(f"<li>row {i + 1}: {_e(p)}</li>" for i, p in enumerate(v.prompts))
    figures = []
    for step, folder in run.samples:
        best = run.best is not None and run.best.step == step
        grid = _thumbnail(folder / "grid.png", GRID_THUMB)
        image = (
            f"<img src='{grid}' alt='validation grid, step {step}'" + (" class='best'" if best else "") + ">"
            if grid
            else "<p>(no grid)</p>"
        )
        label = f"step {step}" + (" <span class='badge'>best</span>" if best else "")
        figures.append(f"<figure>{image}<figcaption>{label}</figcaption>{_animations(folder)}</figure>")
    return f"<ul>{prompts}</ul><div class='row'>" + "".join(figures) + "</div>"


def _animations(folder: Path) -> str:
    """The live-preview animations of a validation step (small animated WebPs, inlined as they are)."""
    shown = []
    for path in sorted((folder / "previews").glob("*.webp"))[:4]:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if len(data) <= MAX_ANIMATION_BYTES:
            uri = "data:image/webp;base64," + base64.b64encode(data).decode("ascii")
            shown.append(
                f"<img src='{uri}' width='96' alt='preview {_e(path.stem)}' title='{_e(path.stem)}'>"
            )
    return "<div>" + "".join(shown) + "</div>" if shown else ""


def _dataset(plan: Plan, index: int) -> str:
    d = plan.datasets[index]
    head = f"<h3>{_e(d.name)} ({_e(d.role)}, {len(d.images)} images, <code>{_e(d.path)}</code>)</h3>"
    rows = []
    for image in d.images[:MAX_IMAGES_SHOWN]:
        thumb = _thumbnail(Path(image.path), DATASET_THUMB)
        cell = f"<img src='{thumb}' alt='{_e(image.rel)}'>" if thumb else "(not generated yet)"
        size = f"{image.size[0]}x{image.size[1]}"
        bucket = f"{image.bucket[0]}x{image.bucket[1]}"
        rows.append(
            f"<tr><td>{cell}</td><td>{_e(image.rel)}</td><td>{size}</td><td>{bucket}</td>"
            f"<td>{image.repeats}</td><td>{_e(image.caption)}</td></tr>"
        )
    more = len(d.images) - MAX_IMAGES_SHOWN
    tail = f"<p>and {more} more</p>" if more > 0 else ""
    return (
        head
        + "<table class='images'><tr><th></th><th>file</th><th>size</th><th>bucket</th><th>repeats</th>"
        + "<th>caption</th></tr>"
        + "".join(rows)
        + "</table>"
        + tail
    )


def _thumbnail(path: Path, side: int) -> str:
    """A JPEG data URI of `path` at most `side` px on its longest side; "" when it cannot be read."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError):
        return ""
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _summary_html(plan: Plan) -> str:
    """`dbspec plan`'s summary tables, as rich renders them, in inline-styled HTML."""
    from rich.console import Console

    from dbspec.plan.summary import render_summary

    console = Console(
        record=True, width=150, file=io.StringIO(), force_terminal=True, color_system="truecolor"
    )
    render_summary(plan, console)
    return console.export_html(inline_styles=True, code_format="{code}")
