"""dbspec/compiler/zero_group.py against the real D-Adaptation and Prodigy classes: a text-encoder group at
rate 0 beside a denoiser group at a positive rate, in kohya's networks.lora_fa order (text encoder first) and
in dbspec's (denoiser first), stepped on the same gradients. Where zero_group_moves says "" the group at rate
0 keeps its weights to the bit in both orders and the denoiser's weights are the same in both (dbspec's held
text encoder is kohya's run); where it gives a reason, one of those fails. Outside ORDER_DEPENDENT both
orders end with the same weights, the group at rate 0 moved or not (optimizer.text_encoder_at_zero = "keep"
is kohya's run)."""

from __future__ import annotations

import importlib

import pytest
import torch

from dbspec.compiler.zero_group import ORDER_DEPENDENT, zero_group_moves
from dbspec.plan.model import OptimizerPlan
from dbspec.runtime.optim import DADAPT_CLASSES, param_groups

CLASSES = {**DADAPT_CLASSES, "prodigy": ("prodigyopt", "Prodigy")}  # plan kind -> (module, class)
# (kind, weight_decay, betas, decouple, momentum)
CASES = [
    ("dadapt_adam", 0.0, (0.9, 0.999), True, 0.0),
    ("dadapt_adam", 0.1, (0.9, 0.999), False, 0.0),
    ("dadapt_adam", 0.1, (0.9, 0.999), True, 0.0),
    ("dadapt_adam_preprint", 0.1, (0.9, 0.999), True, 0.0),
    ("dadapt_sgd", 0.1, None, False, 0.0),
    ("dadapt_sgd", 0.0, None, False, 0.9),
    ("dadapt_lion", 0.0, (0.9, 0.99), False, 0.0),
    ("dadapt_adagrad", 0.0, None, False, 0.0),
    ("dadapt_adan", 0.02, (0.98, 0.92, 0.99), False, 0.0),
    ("dadapt_adan_ip", 0.02, (0.98, 0.92, 0.99), False, 0.0),
    ("prodigy", 0.0, (0.9, 0.999), True, 0.0),
    ("prodigy", 0.01, (0.9, 0.999), True, 0.0),
    ("prodigy", 0.0, (0.0, 0.999), True, 0.0),
    ("prodigy", 0.01, (0.9, 0.999), False, 0.0),  # coupled decay: in the gradient, never in exp_avg at 0
]
LR, STEPS = 1.0, 8


def _kwargs(kind: str, weight_decay: float, betas, decouple: bool, momentum: float) -> dict:
    # d0 large enough that a decay at d x lr shows within STEPS float32 steps (the default 1e-6 hides it)
    kwargs: dict = {"weight_decay": weight_decay, "d0": 0.1}
    if betas is not None:
        kwargs["betas"] = betas
    if kind in ("dadapt_sgd", "dadapt_adagrad"):
        kwargs["momentum"] = momentum
    if kind in ("dadapt_adam", "dadapt_adam_preprint", "prodigy"):
        kwargs["decouple"] = decouple
    return kwargs


def _run(kind: str, kwargs: dict, text_first: bool, order: str = "") -> tuple[list, list, float]:
    """(denoiser, text encoder) weights after STEPS steps on seeded gradients, from _start's, and d; with
    `order` (optimizer.group_order) the groups as dbspec's runtime/optim.py param_groups builds them."""
    module, name = CLASSES[kind]
    cls = getattr(importlib.import_module(module), name)
    gen, (denoiser, text) = _start()
    denoiser, text = [torch.nn.Parameter(p) for p in denoiser], [torch.nn.Parameter(p) for p in text]
    grads = [[torch.randn(p.shape, generator=gen) for p in (*denoiser, *text)] for _ in range(STEPS)]
    groups = [{"params": denoiser, "lr": LR}, {"params": text, "lr": 0.0}]
    groups = groups[::-1] if text_first else groups
    if order:
        plan = OptimizerPlan(
            kind=kind, lr=LR, text_encoder_lr=0.0, weight_decay=0.0, betas=(0.9, 0.99), eps=1e-8,
            momentum=0.0, max_grad_norm=0.0, text_encoder_at_zero="keep", group_order=order,
        )  # fmt: skip
        groups = param_groups(denoiser, [text], plan)
        kohyas = order == "text_encoders_first"
        assert [g["name"] for g in groups] == ["text_encoder", "denoiser"][:: 1 if kohyas else -1]
    optimizer = cls(groups, lr=LR, **kwargs)
    for step in grads:
        for p, g in zip((*denoiser, *text), step):
            # a pull toward 3 (d grows) plus noise; fresh each step: some classes add the coupled weight
            # decay to the gradient in place
            p.grad = (p.detach() - 3.0) + 0.1 * g
        optimizer.step()
    d = optimizer.param_groups[0]["d"]  # the estimate, summed over the groups in their order
    return [p.detach().clone() for p in denoiser], [p.detach().clone() for p in text], d


def _start() -> tuple[torch.Generator, tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """The seeded generator and the weights at the start: the denoiser's, the text encoder's (non-zero, as a
    --network_weights file's)."""
    gen = torch.Generator().manual_seed(0)
    denoiser = [torch.randn(60, 50, generator=gen) for _ in range(6)]
    return gen, (denoiser, [torch.randn(40, 30, generator=gen) for _ in range(6)])


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal, nan where the other is nan."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_zero_group_moves_says_what_the_real_classes_do(case):
    kind, weight_decay, betas, decouple, momentum = case
    kwargs = _kwargs(*case)
    start_denoiser, start_text = _start()[1]
    kohya_denoiser, kohya_text, kohya_d = _run(kind, kwargs, text_first=True)
    ours_denoiser, ours_text, ours_d = _run(kind, kwargs, text_first=False)
    assert not all(map(torch.equal, start_denoiser, ours_denoiser))  # the denoiser trains
    held = all(map(torch.equal, start_text, kohya_text)) and all(map(torch.equal, start_text, ours_text))
    same = all(map(torch.equal, kohya_denoiser, ours_denoiser))
    reason = zero_group_moves(kind, weight_decay, betas or (0.9, 0.999), decouple, momentum)
    assert (held and same) == (reason == ""), reason
    # text_encoder_at_zero = "keep": the group moves, but as in kohya's order, unless ORDER_DEPENDENT says not
    # (Prodigy with betas[0] = 0 steps the group at rate 0 by gradient / (d x eps): inf and nan, alike)
    alike = same and all(map(_equal, kohya_text, ours_text)) and kohya_d == ours_d
    assert alike == (kind not in ORDER_DEPENDENT), kind


def test_dadapt_lion_in_kohyas_group_order_is_kohyas_run():
    """optimizer.group_order = "text_encoders_first": param_groups puts the text encoder's group, kept at
    rate 0, ahead of the denoiser's, networks.lora_fa's order, and DAdaptLion (which steps it at d x the
    largest rate and sums both groups into d in their order) ends with kohya's weights and d bit for bit; in
    dbspec's own order it does not (the test above: DAdaptLion is ORDER_DEPENDENT)."""
    kwargs = _kwargs("dadapt_lion", 0.0, (0.9, 0.99), False, 0.0)
    kohya_denoiser, kohya_text, kohya_d = _run("dadapt_lion", kwargs, text_first=True)
    for order, alike in (("text_encoders_first", True), ("denoiser_first", False)):
        denoiser, text, d = _run("dadapt_lion", kwargs, text_first=False, order=order)
        same = all(map(torch.equal, kohya_denoiser, denoiser)) and all(map(torch.equal, kohya_text, text))
        assert (same and kohya_d == d) == alike, order
    assert not all(map(torch.equal, _start()[1][1], kohya_text))  # the group at rate 0 moved (kohya's too)
