"""Metric plots: matplotlib figures (no pyplot, no global state) rendered to inline SVG text."""

from __future__ import annotations

import io

from dbspec.report.runfiles import Best

Points = list[tuple[int, float]]
FIRST = ("loss", "lr")  # plotted first, in this order; then every other metric by name
TITLES = {"loss": "Training loss", "lr": "Learning rate"}
LOSS_TERMS = ("instance", "prior")  # the loss's two terms: lines on the loss plot, not plots of their own
NOT_METRICS = ("epoch",)  # the step -> epoch mapping: an axis of the run, not a curve worth a plot


def group_series(series: dict[str, Points]) -> list[tuple[str, dict[str, Points]]]:
    """One plot per metric: `key[i]` series (a list-valued metric, e.g. eval loss per timestep band) share
    their key's plot. The loss's instance and prior terms are lines on the loss plot, where a prior term was
    logged (without class images the instance term is the loss). Loss and learning rate first."""
    series = {name: points for name, points in series.items() if name not in NOT_METRICS}
    terms = {name: series.pop(name) for name in LOSS_TERMS if name in series}
    if any(value != 0 for _, value in terms.get("prior", ())):
        series.update(terms)
    groups: dict[str, dict[str, Points]] = {}
    for name, points in series.items():
        key = "loss" if name in LOSS_TERMS else name.split("[", 1)[0]
        groups.setdefault(key, {})[name] = points
    order = [key for key in FIRST if key in groups] + sorted(key for key in groups if key not in FIRST)
    return [(key, groups[key]) for key in order]


def svg_plot(key: str, lines: dict[str, Points], best: Best | None) -> str:
    """The SVG element of one metric's plot; the best checkpoint's step is a dashed line (and a star on the
    metric it was chosen by)."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"svg.hashsalt": "dbspec", "svg.fonttype": "none", "font.size": 9}):
        figure = Figure(figsize=(5.6, 2.8))
        # Fixed margins: a constrained layout would draw every figure twice (most of a report's time).
        figure.subplots_adjust(left=0.13, right=0.97, top=0.9, bottom=0.17)
        axes = figure.add_subplot()
        for name, points in lines.items():
            steps, values = zip(*sorted(points))
            axes.plot(steps, values, label=name, linewidth=1.2, marker="." if len(points) <= 30 else None)
        if best is not None:
            axes.axvline(
                best.step, color="#d62728", linestyle="--", linewidth=1, label=f"best (step {best.step})"
            )
            if best.metric in lines:
                axes.plot([best.step], [best.value], marker="*", markersize=12, color="#d62728", linestyle="")
        axes.set_title(TITLES.get(key, key))
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        if key == "lr":
            axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if len(lines) > 1 or best is not None:
            axes.legend(fontsize=7)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]
