"""kohya's `optimizer_type = "pytorch_optimizer.CAME"` (issue 12): converted to optimizer.kind =
"pytorch_optimizer_came", checked, and asserted on the plan.

Expected values follow sd-scripts library/train_util.py get_optimizer: no kohya branch matches the name, so
the class path is imported as written (case-sensitive) and built as `CAME(params, lr=learning_rate,
**optimizer_args)` with the arguments parsed by ast.literal_eval; and pytorch_optimizer 4.1's CAME
constructor (read below): betas (0.9, 0.999, 0.9999), weight_decay 0.0 decoupled, clip_threshold 1.0,
eps1 1e-30, eps2 1e-16; ValueError for a negative weight_decay or eps, beta1/beta2 outside [0, 1), beta3
outside [0, 1]; any other keyword is swallowed by its **kwargs and never read.
"""

from __future__ import annotations

import inspect

import pytest
from pytorch_optimizer import CAME

from convert_kit import (
    KOHYA_LORA,
    empty_hub_cache,  # noqa: F401 (an autouse fixture)
    expressible,
    fate,
    kohya_lora,
    messages,
    plan_of,
)
from dbspec.convert.common.optimizers import PYTORCH_OPTIMIZER_CAME_ARGS

# pytorch_optimizer's CAME defaults, read from its constructor (kohya passes nothing else)
DEFAULTS = {k: p.default for k, p in inspect.signature(CAME.__init__).parameters.items() if k != "self"}


def test_pytorch_optimizer_came_without_arguments_takes_its_defaults(tmp_path):
    outcome = expressible(kohya_lora(tmp_path, "--optimizer_type pytorch_optimizer.CAME"))
    assert fate(outcome, "optimizer_type") == "mapped"
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.lr, o.weight_decay) == ("pytorch_optimizer_came", 1e-4, DEFAULTS["weight_decay"])
    assert o.betas == DEFAULTS["betas"]
    assert o.came.eps == (DEFAULTS["eps1"], DEFAULTS["eps2"])
    assert o.came.clip_threshold == DEFAULTS["clip_threshold"]


def test_its_arguments_become_the_plans_values(tmp_path):
    """eps1 and eps2 are dbspec's came_eps pair; its default flags and `foreach` (the same update) are kept
    exactly."""
    outcome = expressible(
        kohya_lora(
            tmp_path,
            '--optimizer_type pytorch_optimizer.CAME --optimizer_args "betas=(0.8,0.99,0.995)" '
            "weight_decay=0.02 clip_threshold=2 eps1=1e-29 eps2=1e-15 weight_decouple=True "
            "fixed_decay=False ams_bound=False maximize=False foreach=False",
        )
    )
    assert fate(outcome, "optimizer_args") == "mapped"
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.betas, o.weight_decay) == ("pytorch_optimizer_came", (0.8, 0.99, 0.995), 0.02)
    assert (o.came.clip_threshold, o.came.eps) == (2.0, (1e-29, 1e-15))
    assert isinstance(o.came.clip_threshold, float)  # clip_threshold=2 is an int literal
    only_eps2 = expressible(
        kohya_lora(tmp_path / "b", "--optimizer_type pytorch_optimizer.CAME --optimizer_args eps2=1e-12")
    )
    assert plan_of(only_eps2, tmp_path / "b").optimizer.came.eps == (1e-30, 1e-12)


def test_keywords_it_never_reads_are_ignored(tmp_path):
    """pytorch_optimizer's CAME takes **kwargs: came_pytorch's `eps` pair (or a typo) changes nothing."""
    outcome = expressible(
        kohya_lora(tmp_path, '--optimizer_type pytorch_optimizer.CAME --optimizer_args "eps=(1e-29,1e-15)"')
    )
    assert "`eps=(1e-29, 1e-15)`: pytorch_optimizer's CAME takes **kwargs and never reads" in messages(
        outcome, "DBS405"
    )
    assert plan_of(outcome, tmp_path).optimizer.came.eps == (1e-30, 1e-16)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ("lr=1e-3", "gets it twice (TypeError)"),
        ('"betas=0.9,0.999"', "expected three numbers such as betas=0.9,0.999,0.9999"),
        ('"betas=0.9,1.0,0.999"', "beta1 and beta2 are in [0, 1)"),
        ("weight_decay=-0.1", "raises ValueError (must be >= 0)"),
        ("eps1=-1e-30", "raises ValueError (must be >= 0)"),
    ],
)
def test_arguments_its_constructor_refuses_are_invalid(tmp_path, args, says):
    outcome = kohya_lora(tmp_path, f"--optimizer_type pytorch_optimizer.CAME --optimizer_args {args}")
    assert outcome.exit_code == 1 and says in messages(outcome, "DBS402")


@pytest.mark.parametrize(
    "args", ["weight_decouple=False", "fixed_decay=True", "ams_bound=True", "maximize=True", "eps1=0"]
)
def test_arguments_dbspec_has_no_option_for_are_unsupported(tmp_path, args):
    outcome = kohya_lora(tmp_path, f"--optimizer_type pytorch_optimizer.CAME --optimizer_args {args}")
    assert fate(outcome, "optimizer_args") == "unsupported" and args.split("=")[0] in messages(
        outcome, "DBS403"
    )


def test_a_learning_rate_of_0_converts(tmp_path):
    """Unlike came_pytorch's CAME (which asserts lr > 0), pytorch_optimizer's takes lr 0 (it refuses only a
    negative one): kohya's learning_rate 0 with per-part rates runs."""
    base = KOHYA_LORA.replace(
        "--learning_rate 1e-4", "--learning_rate 0 --unet_lr 1e-4 --text_encoder_lr 5e-5"
    )
    outcome = expressible(kohya_lora(tmp_path, "--optimizer_type pytorch_optimizer.CAME", base=base))
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.lr, o.text_encoder_lr) == ("pytorch_optimizer_came", 1e-4, 5e-5)


def test_the_wrong_case_is_invalid(tmp_path):
    outcome = kohya_lora(tmp_path, "--optimizer_type pytorch_optimizer.came")
    assert outcome.exit_code == 1 and "did you mean pytorch_optimizer.CAME" in messages(outcome, "DBS402")


def test_its_arguments_are_its_constructors():
    """The keywords the converter reads for pytorch_optimizer.CAME are exactly its constructor's."""
    assert set(PYTORCH_OPTIMIZER_CAME_ARGS) == set(DEFAULTS) - {"params", "lr", "kwargs"}
