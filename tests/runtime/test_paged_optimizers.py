"""bitsandbytes' paged AdamW optimizers on the CPU (issue 16 item 4): `paged_adamw` (PagedAdamW, 32-bit state)
and `paged_adamw8bit` (PagedAdamW8bit). bitsandbytes pages optimizer state to host memory only on CUDA; on the
CPU it warns and runs the unpaged optimizer. The plan says so (DBS314), the updates equal the unpaged class's
bit for bit (checked here, the evidence the warning rests on), and a full fine-tune of the tiny SD1 model
trains and resumes bit-exact."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dbspec.runtime.execute import execute
from dbspec.runtime.imports import unused_libraries
from dbspec.runtime.models import load_components
from dbspec.runtime.optim import make_optimizer, param_groups
from dbspec.runtime.prepare import configure_models
from tests.runtime.runspec import compile_spec, write_spec

bnb = pytest.importorskip("bitsandbytes")

UNPAGED = {"paged_adamw": ("PagedAdamW", "AdamW"), "paged_adamw8bit": ("PagedAdamW8bit", "AdamW8bit")}


def _weights(final: str) -> dict[str, torch.Tensor]:
    return {
        f"{p.name}/{k}": v for p in Path(final).rglob("*.safetensors") for k, v in load_file(str(p)).items()
    }


@pytest.mark.parametrize("kind", list(UNPAGED))
def test_a_paged_optimizer_plans_with_its_cpu_fallback_and_steps_as_the_unpaged_one(tmp_path, kind):
    paged_name, unpaged_name = UNPAGED[kind]
    plan = compile_spec(write_spec(tmp_path, steps=4), [f'optimizer.kind="{kind}"', "optimizer.lr=1e-4"])
    assert plan.optimizer.kind == kind
    assert any("DBS314" in w and "unpaged" in w for w in plan.warnings), plan.warnings
    assert "bitsandbytes" not in unused_libraries(plan)  # `dbspec run` leaves it visible

    def two_steps(name: str):
        comps = load_components(plan)
        unet_params, text_params = configure_models(plan, comps, torch.device("cpu"))
        groups = param_groups(unet_params, text_params, plan.optimizer)
        if name == paged_name:
            optimizer = make_optimizer(groups, plan.optimizer)
        else:  # the same arguments make_optimizer passes
            o = plan.optimizer
            optimizer = getattr(bnb.optim, name)(
                groups, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
            )
        assert type(optimizer).__name__ == name
        for scale in (1.0, -0.5):
            for p in unet_params:
                p.grad = torch.full_like(p, scale) * torch.linspace(-1, 1, p.numel()).reshape(p.shape)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                optimizer.step()
        return optimizer, unet_params, [str(w.message) for w in caught]

    paged, paged_params, _ = two_steps(paged_name)
    assert paged.is_paged
    unpaged, unpaged_params, _ = two_steps(unpaged_name)
    assert not unpaged.is_paged
    assert all(torch.equal(a, b) for a, b in zip(paged_params, unpaged_params))
    state = [paged.state[p]["state1"].dtype for p in paged_params]
    assert (torch.uint8 in state) == (kind == "paged_adamw8bit")  # 8-bit moments only in the 8-bit kind


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(UNPAGED))
def test_a_paged_optimizer_trains_and_resumes_bit_exact(tmp_path, kind):
    spec = write_spec(tmp_path, steps=4)  # a full fine-tune: the tiny UNet has tensors of >= 4096 elements
    options = [f'optimizer.kind="{kind}"', "optimizer.lr=1e-4"]
    whole = execute(compile_spec(spec, [*options, "output.dir=whole"]))
    assert whole.status == "finished" and len(whole.losses) == 4
    parts = compile_spec(spec, [*options, "output.dir=parts"])
    first = execute(parts, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = _weights(whole.final), _weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    untrained = load_components(parts).unet.state_dict()
    trained = load_file(str(Path(whole.final) / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(trained[k], untrained[k]) for k in untrained)  # the optimizer did move them
