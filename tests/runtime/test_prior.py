"""Prior preservation from the base model's own prediction (no class images needed as targets):
zero while the student equals the base, growing as it moves. LoRA and full fine-tune."""

from __future__ import annotations

import pytest
import torch

from dbspec.runtime.data import Sample
from dbspec.runtime.models import load_components
from dbspec.runtime.optim import make_optimizer, param_groups
from dbspec.runtime.setup import configure_models, make_teacher
from dbspec.runtime.step import Parts, run_batch
from tests.runtime.runspec import make_plan

ADAPTERS = {"lora": '[adapter]\nkind = "lora"\nrank = 4\n', "full": ""}


def _batch(plan, role: str) -> tuple[Sample, ...]:
    di = next(i for i, d in enumerate(plan.datasets) if d.role == role)
    images = [img for img in plan.datasets[di].images if img.bucket == (64, 64)][:2]
    return tuple(Sample(dataset=di, image=ii, role=role, flip=False, aug_seed=ii, img=img)
                 for ii, img in enumerate(images))


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_base_model_prior_is_zero_at_start_and_grows(tmp_path, adapter):
    plan = make_plan(tmp_path, steps=4, with_class=True,
                     extra=ADAPTERS[adapter] + '[loss]\nprior = "base_model"\nprior_weight = 0.5\n')
    assert plan.loss.prior == "base_model" and "_base(x_t)" in plan.loss.formula
    device = torch.device("cpu")
    comps = load_components(plan)
    teacher = make_teacher(plan, comps, device)
    assert (teacher is None) == (adapter == "lora")
    unet_params, text_params = configure_models(plan, comps, device)
    parts = Parts(plan=plan, unet=comps.unet, vae=comps.vae, text_encoders=comps.text_encoders,
                  tokenizers=comps.tokenizers, noise_scheduler=comps.noise_scheduler, latent_cache=None,
                  text_cache=None, device=device, generator=torch.Generator().manual_seed(0), teacher=teacher)
    class_batch, instance_batch = _batch(plan, "class"), _batch(plan, "instance")

    assert float(run_batch(parts, class_batch).terms["prior"]) == 0.0  # student == base, exactly

    optimizer = make_optimizer(param_groups(unet_params, text_params, plan.optimizer), plan.optimizer)
    for _ in range(3):
        optimizer.zero_grad()
        run_batch(parts, instance_batch).loss.backward()
        optimizer.step()
    moved = run_batch(parts, class_batch)
    assert float(moved.terms["prior"]) > 0.0
    assert float(moved.loss.detach()) == pytest.approx(0.5 * float(moved.terms["prior"]))  # no instance samples here
