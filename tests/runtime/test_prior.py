"""Prior preservation from the base model's own prediction (no class images needed as targets):
zero while the student equals the base, growing as it moves. LoRA and full fine-tune."""

from __future__ import annotations

import pytest
import torch

from dbspec.frontend import plan_spec
from dbspec.runtime.data import Sample
from dbspec.runtime.models import load_components
from dbspec.runtime.optim import make_optimizer, param_groups
from dbspec.runtime.prepare import configure_models, make_teacher
from dbspec.runtime.step import Parts, run_batch
from tests.runtime.runspec import CPU, make_plan, write_spec

ADAPTERS = {"lora": '[adapter]\nkind = "lora"\nrank = 4\n', "full": ""}


def _batch(plan, role: str) -> tuple[Sample, ...]:
    di = next(i for i, d in enumerate(plan.datasets) if d.role == role)
    images = [img for img in plan.datasets[di].images if img.bucket == (64, 64)][:2]
    return tuple(
        Sample(dataset=di, image=ii, role=role, flip=False, aug_seed=ii, img=img)
        for ii, img in enumerate(images)
    )


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_base_model_prior_is_zero_at_start_and_grows(tmp_path, adapter):
    plan = make_plan(
        tmp_path,
        steps=4,
        with_class=True,
        extra=ADAPTERS[adapter] + '[loss]\nprior = "base_model"\nprior_weight = 0.5\n',
    )
    assert plan.loss.prior == "base_model" and "_base(x_t)" in plan.loss.formula
    device = torch.device("cpu")
    comps = load_components(plan)
    assert plan.loss.teacher == (() if adapter == "lora" else ("unet",))
    teacher = make_teacher(plan, comps, device)
    assert (teacher is None) == (adapter == "lora")
    unet_params, text_params = configure_models(plan, comps, device)
    parts = Parts(
        plan=plan,
        unet=comps.unet,
        vae=comps.vae,
        text_encoders=comps.text_encoders,
        tokenizers=comps.tokenizers,
        noise_scheduler=comps.noise_scheduler,
        latent_cache=None,
        text_cache=None,
        device=device,
        generator=torch.Generator().manual_seed(0),
        teacher=teacher,
    )
    class_batch, instance_batch = _batch(plan, "class"), _batch(plan, "instance")

    assert float(run_batch(parts, class_batch).terms["prior"]) == 0.0  # student == base, exactly

    optimizer = make_optimizer(param_groups(unet_params, text_params, plan.optimizer), plan.optimizer)
    for _ in range(3):
        optimizer.zero_grad()
        run_batch(parts, instance_batch).loss.backward()
        optimizer.step()
    moved = run_batch(parts, class_batch)
    assert float(moved.terms["prior"]) > 0.0
    assert float(moved.loss.detach()) == pytest.approx(
        0.5 * float(moved.terms["prior"])
    )  # no instance samples here


def test_a_full_finetune_copies_only_the_unet_the_plan_lists(tmp_path):
    """Training the text encoder too changes nothing: the plan (and its memory estimate)
    copies the UNet only."""
    plan = make_plan(
        tmp_path,
        steps=2,
        with_class=True,
        extra='[train]\ntext_encoder = true\n[loss]\nprior = "base_model"\n',
    )
    assert plan.loss.teacher == ("unet",)
    unet_params = next(c.params for c in plan.precision.components if c.name == "unet")
    assert plan.memory.teacher == unet_params * 4  # fp32 on CPU: no mixed precision
    comps = load_components(plan)
    teacher = make_teacher(plan, comps, torch.device("cpu"))
    assert type(teacher) is type(comps.unet) and teacher is not comps.unet
    assert sum(p.numel() for p in teacher.parameters()) == unet_params
    assert not any(p.requires_grad for p in teacher.parameters())


def test_a_base_prior_with_a_frozen_unet_is_refused_by_the_plan(tmp_path):
    """It used to compile, then stop the run with an internal error when the first class batch came."""
    spec = write_spec(
        tmp_path,
        steps=2,
        with_class=True,
        extra='[train]\ndenoiser = false\ntext_encoder = true\n[loss]\nprior = "base_model"\n',
    )
    planned = plan_spec(spec, CPU, str(spec), [])
    assert planned.plan is None
    assert [(d.code, d.path) for d in planned.diagnostics if d.severity == "error"] == [
        ("DBS226", "loss.prior")
    ]
