"""Which curves the report plots: one plot per metric, the loss's terms on the loss plot, no epoch plot."""

from __future__ import annotations

from dbspec.report.plots import group_series


def _series(prior: list[float]) -> dict[str, list[tuple[int, float]]]:
    steps = range(1, len(prior) + 1)
    return {
        "loss": [(s, 1.0 + p) for s, p in zip(steps, prior)],
        "instance": [(s, 1.0) for s in steps],
        "prior": list(zip(steps, prior)),
        "lr": [(s, 1e-3) for s in steps],
        "epoch": [(s, 0.0) for s in steps],
        "eval_loss_bands[0]": [(2, 0.4)],
        "eval_loss_bands[1]": [(2, 0.3)],
        "dino": [(2, 0.5)],
    }


def test_without_class_images_the_loss_plot_is_the_loss_alone():
    groups = group_series(_series([0.0, 0.0, 0.0]))
    assert [key for key, _ in groups] == ["loss", "lr", "dino", "eval_loss_bands"]
    assert list(dict(groups)["loss"]) == ["loss"]
    assert list(dict(groups)["eval_loss_bands"]) == ["eval_loss_bands[0]", "eval_loss_bands[1]"]


def test_a_prior_term_puts_both_terms_on_the_loss_plot():
    groups = dict(group_series(_series([0.0, 0.2, 0.1])))
    assert list(groups) == ["loss", "lr", "dino", "eval_loss_bands"]
    assert list(groups["loss"]) == ["loss", "instance", "prior"]
    assert groups["loss"]["prior"] == [(1, 0.0), (2, 0.2), (3, 0.1)]
