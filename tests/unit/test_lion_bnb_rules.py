"""bitsandbytes' Lion kinds (lion8bit, paged_lion, paged_lion8bit) in the compiler: the target rules every
bitsandbytes optimizer has (CUDA or the CPU, DBS343; the paged ones warn on the CPU, DBS314), bf16 trained
weights (a per-parameter optimizer), and the memory estimate (one moment: 8-bit block-wise, or fp32)."""

from __future__ import annotations

import pytest

from dbspec.plan.model import BNB_OPTIMIZER_KINDS
import tomli

from dbspec.compiler import rules
from dbspec.compiler.memory import estimate_memory
from dbspec.compiler.rules import run_environment_rules
from dbspec.plan.model import ComponentPlan, TargetEnv
from dbspec.spec.paths import has_path
from dbspec.spec.structure import structure_spec

HEAD = 'spec_version = 2\n[model]\nbase = "runwayml/stable-diffusion-v1-5"\n'
DOG = '[[datasets]]\nname = "dog"\npath = "data/dog"\nprompt = "a photo of ohwx dog"\n'
STEPS = "[schedule]\nsteps = 100\n"
MPS = TargetEnv(device="mps", memory_bytes=8 << 30, bf16=False)
CPU = TargetEnv(device="cpu", memory_bytes=8 << 30, bf16=False)
CUDA = TargetEnv(device="cuda", memory_bytes=24 << 30, bf16=True, compute_capability="8.9")
KINDS = ["lion8bit", "paged_lion", "paged_lion8bit"]


def _spec(body: str):
    data = tomli.loads(HEAD + DOG + STEPS + body)
    spec, problems = structure_spec(data)
    assert problems == [], problems
    return spec, data


@pytest.mark.parametrize("kind", KINDS)
def test_a_bitsandbytes_lion_needs_cuda_or_the_cpu_and_a_paged_one_warns_on_the_cpu(kind):
    spec, _ = _spec(f'[optimizer]\nkind = "{kind}"\n')
    assert [(h.code, h.path) for h in run_environment_rules(spec, MPS)] == [("DBS343", ("optimizer", "kind"))]
    assert kind in run_environment_rules(spec, MPS)[0].message
    on_cpu = run_environment_rules(spec, CPU)
    if kind.startswith("paged_"):
        assert [(h.code, h.severity) for h in on_cpu] == [("DBS314", "warning")]
        unpaged = "Lion8bit" if kind.endswith("8bit") else "Lion (32-bit state)"
        assert kind in on_cpu[0].message and f"unpaged {unpaged}" in on_cpu[0].message
    else:
        assert on_cpu == []
    assert run_environment_rules(spec, CUDA) == []


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_weights_take_a_bitsandbytes_lion(kind):
    """Lion's update of one parameter reads no other: the stochastic-rounding step may run it per parameter
    (tests/runtime/test_lion_bnb.py checks that it equals one step over all)."""
    body = f'[optimizer]\nkind = "{kind}"\n[precision]\nmixed = "bf16"\nweights = "bf16"\n'
    spec, data = _spec(body)
    hits = list(rules.low_precision_weights_settings(spec, lambda path: has_path(data, path)))
    assert hits == []
    prodigy, data = _spec('[optimizer]\nkind = "prodigy"\n[precision]\nmixed = "bf16"\nweights = "bf16"\n')
    refused = list(rules.low_precision_weights_settings(prodigy, lambda path: has_path(data, path)))
    assert [(h.code, h.path) for h in refused] == [("DBS259", ("optimizer", "kind"))]
    assert kind in refused[0].help  # the help lists the kinds that can


def _estimate(optimizer: str, params: int = 1_000_000):
    return estimate_memory(
        components=(
            ComponentPlan(name="unet", dtype="fp32", trainable="full", quantized="none", params=params),
        ),
        trainable_params={"unet": params},
        optimizer=optimizer,
        momentum=0.0,
        batch_size=1,
        max_bucket=(512, 512),
        family="sd1",
        gradient_checkpointing=True,
        mixed="bf16",
        ema=False,
        ema_offload=False,
        teacher=(),
        available=0,
    )


@pytest.mark.parametrize(
    ("optimizer", "per_param"),
    [
        # one byte per element of Lion's one moment, plus one fp32 absmax per block of 256 elements
        ("lion8bit", 1 + 4 / 256),
        ("paged_lion8bit", 1 + 4 / 256),
        ("paged_lion", 4),  # the fp32 moment, counted on the device
    ],
)
def test_the_optimizer_state_of_a_bitsandbytes_lion(optimizer, per_param):
    plan = _estimate(optimizer)
    assert plan.optimizer == int(1_000_000 * per_param)
    assert plan.optimizer < _estimate("adamw8bit").optimizer or optimizer == "paged_lion"
    if optimizer.endswith("8bit"):
        assert any(n.startswith(f"{optimizer}: 1.02 bytes per parameter") for n in plan.notes), plan.notes
    if optimizer.startswith("paged_"):
        assert any("page" in n and n.startswith(optimizer) for n in plan.notes), plan.notes


@pytest.mark.parametrize("kind", BNB_OPTIMIZER_KINDS)
def test_a_bitsandbytes_optimizer_is_refused_where_sharding_hands_it_partial_tensors(kind):
    """Every bitsandbytes 0.50 optimizer's step raises on FSDP2's DTensors (each checked on the CPU with
    gloo: "got mixed torch.Tensor and DTensor", "optimizer_update_32bit ... does not have a sharding
    strategy"); ZeRO-Offload's CPU step is refused for the 8-bit ones."""

    def hits(distributed: str) -> list:
        spec, data = _spec(f'[optimizer]\nkind = "{kind}"\n[distributed]\n{distributed}')
        found = rules.distributed_combinations(spec, lambda path: has_path(data, path))
        return [(h.code, h.path) for h in found if h.path == ("optimizer", "kind")]

    assert hits('strategy = "fsdp"\n') == [("DBS268", ("optimizer", "kind"))]
    offload = hits('strategy = "deepspeed"\nzero_stage = 2\nzero_offload_optimizer = true\n')
    assert offload == ([("DBS268", ("optimizer", "kind"))] if kind.endswith("8bit") else [])
    assert hits('strategy = "ddp"\n') == []


def test_the_plan_layer_lists_every_bitsandbytes_optimizer_kind():
    """runtime/imports.py reads the plan layer's list (the runtime may not import the spec model)."""
    from dbspec.spec.model import ADEMAMIX_KINDS, BNB_LION_KINDS

    expected = {"adamw8bit", "paged_adamw", "paged_adamw8bit", *ADEMAMIX_KINDS, *BNB_LION_KINDS}
    assert set(BNB_OPTIMIZER_KINDS) == expected
