"""EMA of trained weights: diffusers' schedule, swap for validation, checkpoint round trip, CPU offload."""

from __future__ import annotations

import io

import pytest
import torch
from diffusers.training_utils import EMAModel

from dbspec.plan.model import EmaPlan
from dbspec.runtime.ema import Ema

SHAPES = [(8, 4), (4,), (3, 3, 2, 2)]


def _params(
    seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(device, dtype)) for s in SHAPES]


def _train_step(params: list[torch.nn.Parameter], gen: torch.Generator) -> None:
    """Stands in for an optimizer step: moves every weight a little, deterministically."""
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn(p.shape, generator=gen).to(p.dtype))


def _run(ema: Ema, params: list, steps: range, gen: torch.Generator) -> None:
    for step in steps:
        _train_step(params, gen)
        ema.update(step)


def test_matches_diffusers_ema_model_with_its_default_schedule():
    # decay 0.75: the (1 + s) / (10 + s) ramp reaches it at s = 26, so 40 steps cover ramp and plateau.
    ours_params, theirs_params = _params(), _params()
    ours = Ema(ours_params, decay=0.75, warmup=True, offload=False)
    theirs = EMAModel(theirs_params, decay=0.75, use_ema_warmup=False, foreach=True)
    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for step in range(1, 41):
        _train_step(ours_params, gen_a)
        _train_step(theirs_params, gen_b)
        ours.update(step)
        theirs.step(theirs_params)
        assert ours.decay_for_update(step) == theirs.cur_decay_value
    for mine, reference in zip(ours.shadow, theirs.shadow_params):
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-6)


def test_without_warmup_every_update_uses_the_decay_and_update_every_skips_steps():
    params = _params()
    start = [p.detach().clone() for p in params]
    ema = Ema(params, decay=0.9, warmup=False, offload=False, update_every=3)
    gen = torch.Generator().manual_seed(2)
    expected = [s.clone() for s in start]
    for step in range(1, 10):
        _train_step(params, gen)
        did = ema.update(step)
        assert did == (step % 3 == 0)
        if did:
            expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, params)]
    assert ema.updates == 3
    for mine, want in zip(ema.shadow, expected):
        torch.testing.assert_close(mine, want, rtol=0, atol=1e-6)


def test_swap_puts_ema_weights_in_and_restores_the_live_weights_exactly():
    params = _params(dtype=torch.bfloat16)
    ema = Ema(params, decay=0.9, warmup=True, offload=True)
    _run(ema, params, range(1, 6), torch.Generator().manual_seed(3))
    live = [p.detach().clone() for p in params]
    assert all(s.dtype == torch.float32 for s in ema.shadow)  # fp32 shadows beside bf16 weights
    with ema.swap():
        for p, s in zip(params, ema.shadow):
            assert torch.equal(p, s.to(p.dtype))
        assert not all(torch.equal(p, w) for p, w in zip(params, live))
    assert all(torch.equal(p, w) for p, w in zip(params, live))
    assert all(p.requires_grad for p in params)


def test_swap_restores_when_the_block_raises():
    params = _params()
    ema = Ema(params, decay=0.5, warmup=False, offload=False)
    _run(ema, params, range(1, 3), torch.Generator().manual_seed(4))
    live = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError), ema.swap():
        raise RuntimeError("validation failed")
    assert all(torch.equal(p, w) for p, w in zip(params, live))


def test_copy_to_writes_the_average_into_other_parameters():
    params = _params()
    ema = Ema(params, decay=0.9, warmup=True, offload=False)
    _run(ema, params, range(1, 4), torch.Generator().manual_seed(5))
    others = _params(seed=9)
    ema.copy_to(others)
    assert all(torch.equal(o, s) for o, s in zip(others, ema.shadow))
    with pytest.raises(ValueError, match="tracks 3"):
        ema.copy_to(others[:2])


def test_state_round_trip_resumes_bit_exactly():
    straight_params = _params()
    straight = Ema(straight_params, decay=0.99, warmup=True, offload=True)
    _run(straight, straight_params, range(1, 11), torch.Generator().manual_seed(6))

    gen = torch.Generator().manual_seed(6)
    first_params = _params()
    first = Ema(first_params, decay=0.99, warmup=True, offload=True)
    _run(first, first_params, range(1, 6), gen)
    buffer = io.BytesIO()
    torch.save({"ema": first.state_dict(), "weights": [p.detach() for p in first_params]}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # what checkpoints.load_state does

    resumed_params = _params(seed=7)  # a fresh process: other weights until restored
    with torch.no_grad():
        for p, w in zip(resumed_params, saved["weights"]):
            p.copy_(w)
    resumed = Ema(resumed_params, decay=0.99, warmup=True, offload=True)
    resumed.load_state_dict(saved["ema"])
    _run(resumed, resumed_params, range(6, 11), gen)
    assert resumed.updates == straight.updates == 10
    assert all(torch.equal(a, b) for a, b in zip(resumed.shadow, straight.shadow))


def test_state_of_another_shape_is_refused():
    ema = Ema(_params(), decay=0.9, warmup=True, offload=False)
    state = ema.state_dict()
    state["shadow"][0] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="shape"):
        ema.load_state_dict(state)


def test_shadows_stay_on_the_parameters_device_unless_offloaded():
    # The meta device stands in for an accelerator (no CUDA in CI): shadows follow the parameters' device,
    # and updates run there. Offloaded shadows live on the CPU; their state is CPU tensors either way.
    on_device = _params(device="meta")
    kept = Ema(on_device, decay=0.9, warmup=True, offload=False)
    assert all(s.device.type == "meta" for s in kept.shadow)
    assert kept.update(1) and all(s.device.type == "meta" for s in kept.shadow)
    offloaded = Ema(_params(), decay=0.9, warmup=True, offload=True)
    assert all(s.device.type == "cpu" for s in offloaded.shadow)
    assert all(s.device.type == "cpu" for s in offloaded.state_dict()["shadow"])


def test_from_plan_and_bad_settings():
    plan = EmaPlan(enabled=True, decay=0.999, warmup=False, update_every=4, offload=True)
    ema = Ema.from_plan(plan, _params())
    assert (ema.decay, ema.warmup, ema.update_every, ema.offload) == (0.999, False, 4, True)
    with pytest.raises(ValueError, match="decay"):
        Ema(_params(), decay=1.5, warmup=True, offload=False)
    with pytest.raises(ValueError, match="update_every"):
        Ema(_params(), decay=0.9, warmup=True, offload=False, update_every=0)
