"""kohya's SGDNesterov and LoRA+ (issue 12) through the real optimizer and loop on a tiny SD1 model."""

from __future__ import annotations

import io

import torch
from rich.console import Console

from dbspec.plan.summary import render_summary
from dbspec.runtime.execute import execute
from dbspec.runtime.models import load_components
from dbspec.runtime.optim import make_optimizer, param_groups
from dbspec.runtime.prepare import configure_models
from tests.runtime.runspec import compile_spec, write_spec

NESTEROV = ['optimizer.kind="sgd"', "optimizer.nesterov=true", "optimizer.momentum=0.9"]


def test_sgd_nesterov_builds_torch_sgd_with_nesterov_and_trains(tmp_path):
    plan = compile_spec(write_spec(tmp_path, steps=2), NESTEROV)
    assert plan.optimizer.nesterov and plan.optimizer.momentum == 0.9
    console = Console(file=io.StringIO(), width=200)
    render_summary(plan, console)
    assert "sgd, lr 0.001, Nesterov momentum 0.9" in console.file.getvalue()
    comps = load_components(plan)
    unet_params, text_params = configure_models(plan, comps, torch.device("cpu"))
    optimizer = make_optimizer(param_groups(unet_params, text_params, plan.optimizer), plan.optimizer)
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in optimizer.param_groups)
    result = execute(plan)
    assert result.status == "finished" and len(result.losses) == 2


def test_the_first_nesterov_step_is_the_textbook_update(tmp_path):
    """Nesterov's first step: buf = g + wd*p, update = (g + wd*p) + momentum*buf (torch.optim.SGD's docs)."""
    plan = compile_spec(write_spec(tmp_path, steps=2), [*NESTEROV, "optimizer.weight_decay=0.01"])
    o = plan.optimizer
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    p.grad = torch.tensor([0.3, 0.1, -0.2])
    d = p.grad + o.weight_decay * p.detach()
    expected = p.detach() - o.lr * (d + o.momentum * d)
    make_optimizer(param_groups([p], [], o), o).step()
    assert torch.allclose(p.detach(), expected, rtol=0, atol=1e-7)
    assert not torch.allclose(p.detach(), torch.tensor([1.0, -2.0, 0.5]) - o.lr * d)  # plain SGD differs
