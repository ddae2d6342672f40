"""kohya's SGDNesterov and LoRA+ (issue 12) through the real optimizer and loop on a tiny SD1 model."""

from __future__ import annotations

import io

import attrs
import torch
from rich.console import Console

from dbspec.plan.summary import render_summary
from dbspec.runtime.execute import execute
from dbspec.runtime.models import load_components
from dbspec.runtime.optim import make_optimizer, param_groups
from dbspec.runtime.prepare import configure_models, lora_up_ids
from tests.runtime.runspec import compile_spec, final_weights, write_spec

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


LORAPLUS = """
[adapter]
kind = "lora"
rank = 2
conv_rank = 2
loraplus_ratio = 16.0
loraplus_text_encoder_ratio = 4.0

[train]
text_encoder = true
"""


def test_loraplus_puts_exactly_the_lora_b_matrices_in_their_own_groups(tmp_path):
    plan = compile_spec(write_spec(tmp_path, steps=2, extra=LORAPLUS), ["optimizer.text_encoder_lr=5e-4"])
    o = plan.optimizer
    assert (o.loraplus_denoiser_ratio, o.loraplus_text_encoder_ratio) == (16.0, 4.0)
    console = Console(file=io.StringIO(), width=200)
    render_summary(plan, console)
    assert "LoRA+ lora_B lr: denoiser x16, text encoder x4" in console.file.getvalue()
    comps = load_components(plan)
    unet_params, text_params = configure_models(plan, comps, torch.device("cpu"))
    named = {
        id(p): (side, name)
        for side, module in (("denoiser", comps.unet), ("text_encoder", comps.text_encoders[0]))
        for name, p in module.named_parameters()
        if p.requires_grad
    }
    groups = param_groups(unet_params, text_params, o, lora_up_ids(comps))
    by_name = {g["name"]: g for g in groups}
    assert list(by_name) == ["denoiser", "denoiser_lora_up", "text_encoder", "text_encoder_lora_up"]
    for side, lr, ratio in (("denoiser", o.lr, 16.0), ("text_encoder", 5e-4, 4.0)):
        up = [named[id(p)] for p in by_name[f"{side}_lora_up"]["params"]]
        rest = [named[id(p)] for p in by_name[side]["params"]]
        expected_up = {n for s, n in named.values() if s == side and ".lora_B." in n}
        assert {n for _, n in up} == expected_up and len(up) == len(expected_up) > 0
        assert all(s == side for s, _ in up + rest) and not any(".lora_B." in n for _, n in rest)
        assert any(".lora_A." in n for _, n in rest)
        assert by_name[f"{side}_lora_up"]["lr"] == lr * ratio and by_name[side]["lr"] == lr
    # conv (LoCon) up matrices go with the rest of the denoiser's lora_B
    assert any("conv" in n for _, n in (named[id(p)] for p in by_name["denoiser_lora_up"]["params"]))
    # kohya's ratio 0 (adapter.loraplus_zero "held"): the denoiser's plus group is skipped, its lora_B in
    # no group (held_gradients keeps their gradients), the text encoder's LoRA+ as before
    held = attrs.evolve(o, loraplus_denoiser_ratio=0.0, loraplus_held=("denoiser",))
    groups = param_groups(unet_params, text_params, held, lora_up_ids(comps))
    assert [g["name"] for g in groups] == ["denoiser", "text_encoder", "text_encoder_lora_up"]
    grouped = {named[id(p)] for g in groups for p in g["params"]}
    assert not any(s == "denoiser" and ".lora_B." in n for s, n in grouped)
    assert {n for s, n in named.values() if s == "denoiser" and ".lora_B." not in n} == {
        n for s, n in grouped if s == "denoiser"
    }
    # their gradients, which optimizer.zero_grad never clears, go into checkpoints (a resume keeps adding)
    from types import SimpleNamespace

    from dbspec.runtime.optimizer_blocks import held_gradients

    for p in unet_params:
        p.grad = torch.ones_like(p)
    run = SimpleNamespace(
        plan=attrs.evolve(plan, optimizer=held),
        optimizer=SimpleNamespace(param_groups=groups),
        idle=None,
        comps=comps,
    )
    kept = held_gradients(run)
    assert kept and set(kept) == {n for s, n in named.values() if s == "denoiser" and ".lora_B." in n}
    # without a ratio the layout is the usual one group per side
    plain = attrs.evolve(o, loraplus_denoiser_ratio=0.0, loraplus_text_encoder_ratio=0.0)
    assert [g["name"] for g in param_groups(unet_params, text_params, plain, lora_up_ids(comps))] == [
        "denoiser",
        "text_encoder",
    ]


def test_a_loraplus_run_trains_and_resumes_bit_exact(tmp_path):
    spec = write_spec(tmp_path, steps=4, extra=LORAPLUS)
    whole = execute(compile_spec(spec, ["output.dir=whole"]))
    # kohya's ratio 0 on the denoiser (loraplus_zero "held"): its up matrices stay at their init (zeros)
    held = compile_spec(
        spec, ["output.dir=plain", "adapter.loraplus_ratio=0", 'adapter.loraplus_zero="held"']
    )
    assert (held.optimizer.loraplus_held, held.optimizer.loraplus_text_encoder_ratio) == (("denoiser",), 4.0)
    plain = execute(held)
    assert whole.status == "finished" and whole.losses[1:] != plain.losses[1:]  # the up matrices moved faster
    ups = {k: v for k, v in final_weights(plain.final).items() if k.endswith(("lora_B.weight", "up.weight"))}
    assert ups and all(not v.any() for k, v in ups.items() if "/unet." in k)
    assert any(v.any() for k, v in ups.items() if "/text_encoder." in k)
    plan = compile_spec(spec, ["output.dir=parts"])
    first = execute(plan, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
