"""kohya's `optimizer_type = "prodigyplus.ProdigyPlusScheduleFree"` (issue 12, the prodigy-plus-schedule-free
package): converted to optimizer.kind = "prodigy_plus_schedulefree", checked, and asserted on the plan.

Expected values follow sd-scripts library/train_util.py: get_optimizer's lower-cased name ends with
"schedulefree", so its schedule-free branch runs (importing `schedulefree`), matches none of its three names
and falls through to the class path, built as `ProdigyPlusScheduleFree(params, lr=learning_rate,
**optimizer_args)`; is_schedulefree_optimizer is true, so get_scheduler_fix returns its dummy scheduler and
the training loop switches the optimizer's train()/eval() modes. The constructor's defaults are read from the
class (prodigy-plus-schedule-free 2.0.1): lr 1.0, betas (0.9, 0.99), beta3 None (sqrt(beta2)),
weight_decay 0, d0 1e-6, d_coef 1, eps 1e-8, use_bias_correction False; it raises ValueError for lr or d0 not
above 0.
"""

from __future__ import annotations

import inspect

import pytest
from prodigyplus import ProdigyPlusScheduleFree

from convert_kit import (
    KOHYA_LORA,
    empty_hub_cache,  # noqa: F401 (an autouse fixture)
    expressible,
    fate,
    kohya_lora,
    messages,
    plan_of,
)
from dbspec.convert.common.optimizers import PRODIGY_PLUS_CONSTRUCTOR

DEFAULTS = {
    k: p.default
    for k, p in inspect.signature(ProdigyPlusScheduleFree.__init__).parameters.items()
    if k != "self"
}
PATH = "--optimizer_type prodigyplus.ProdigyPlusScheduleFree"
BASE = KOHYA_LORA.replace("--learning_rate 1e-4", "--learning_rate 1.0")


def test_without_arguments_it_takes_its_defaults_and_no_schedule(tmp_path):
    outcome = expressible(kohya_lora(tmp_path, f"{PATH} --lr_scheduler cosine", base=BASE))
    assert fate(outcome, "optimizer_type") == "mapped"
    assert fate(outcome, "lr_scheduler") == "inert"  # kohya's dummy scheduler for schedule-free
    assert "use_bias_correction=True in optimizer_args gives" in messages(outcome, "DBS405")
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.lr, o.weight_decay, o.eps) == (
        "prodigy_plus_schedulefree",
        1.0,
        DEFAULTS["weight_decay"],
        DEFAULTS["eps"],
    )
    assert o.betas == DEFAULTS["betas"]
    p = o.prodigy_plus
    assert (p.d0, p.d_coef, p.use_bias_correction) == (DEFAULTS["d0"], DEFAULTS["d_coef"], False)
    assert p.beta3 == pytest.approx(0.99**0.5)  # beta3 None: sqrt(beta2)


def test_its_arguments_become_the_plans_values(tmp_path):
    outcome = expressible(
        kohya_lora(
            tmp_path,
            f'{PATH} --optimizer_args "betas=(0.95,0.999)" beta3=0.9 weight_decay=0.01 d0=1e-5 d_coef=2 '
            "eps=1e-7 use_bias_correction=True split_groups=True factored=True use_stableadamw=True "
            "stochastic_rounding=False",
            base=BASE,
        )
    )
    assert fate(outcome, "optimizer_args") == "mapped"
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.betas, o.weight_decay, o.eps) == ((0.95, 0.999), 0.01, 1e-7)
    p = o.prodigy_plus
    assert (p.d0, p.d_coef, p.beta3, p.use_bias_correction) == (1e-5, 2.0, 0.9, True)


@pytest.mark.parametrize(
    "args", ["use_speed=True", "schedulefree_c=8", "factored=False", "split_groups_mean=True", "eps=None"]
)
def test_settings_dbspec_has_no_option_for_are_unsupported(tmp_path, args):
    outcome = kohya_lora(tmp_path, f"{PATH} --optimizer_args {args}", base=BASE)
    assert fate(outcome, "optimizer_args") == "unsupported"
    assert args.split("=")[0] in messages(outcome, "DBS403")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ("amsgrad=True", "has no such argument (TypeError)"),
        ("lr=1.0", "gets it twice (TypeError)"),
        ("d0=0", "raises ValueError"),
        ('"betas=0.9,0.99,0.999"', "a pair of numbers"),
    ],
)
def test_arguments_its_constructor_refuses_are_invalid(tmp_path, args, says):
    outcome = kohya_lora(tmp_path, f"{PATH} --optimizer_args {args}", base=BASE)
    assert outcome.exit_code == 1 and says in messages(outcome, "DBS402")


def test_a_learning_rate_of_0_is_invalid(tmp_path):
    """kohya passes lr=learning_rate, and the class raises ValueError for lr 0."""
    base = KOHYA_LORA.replace("--learning_rate 1e-4", "--learning_rate 0 --unet_lr 1.0")
    outcome = kohya_lora(tmp_path, PATH, base=base)
    assert outcome.exit_code == 1 and "raises ValueError for lr <= 0" in messages(outcome, "DBS402")


def test_its_arguments_are_its_constructors():
    """The keywords the converter knows for the class are exactly its constructor's."""
    assert set(PRODIGY_PLUS_CONSTRUCTOR) == set(DEFAULTS) - {"params", "lr"}
