"""kohya `optimizer_args` that change how torch's RAdam, AdamW or lion_pytorch's Lion compute their update,
not what (issue 12): RAdam's and AdamW's `capturable` (CUDA only) and Lion's `use_triton` (CUDA only)
convert exactly; torch's `differentiable=True` stops kohya's run at its first step (DBS402); `maximize=True`
stays DBS403. torch's RAdam and AdamW run here in-process: `capturable`'s tensor path against the default
one on the CPU (torch's CUDA check skipped as torch.compile skips it), `differentiable` raising on trained
parameters."""

from __future__ import annotations

from unittest import mock

import pytest

from convert_kit import codes, empty_hub_cache, exact, fate, kohya_lora, messages, plan_of  # noqa: F401

torch = pytest.importorskip("torch")


def _steps(cls, steps: int = 8, dtype=None, **kwargs) -> list:
    """The parameters after `steps` updates from fixed gradients (a 2-D and a 1-D tensor)."""
    torch.manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(5, 3, dtype=dtype)),
        torch.nn.Parameter(torch.randn(7, dtype=dtype)),
    ]
    opt = cls(params, lr=1e-2, weight_decay=0.01, **kwargs)
    draws = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=draws, dtype=dtype)
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("name", ["RAdam", "AdamW"])
@pytest.mark.parametrize("foreach", [False, True])
def test_capturable_computes_the_default_update(foreach, name):
    """RAdam(capturable=True) keeps the step and bias corrections as tensors (float32 where the default
    dtype is) and selects the rectified update with torch.where, AdamW(capturable=True) keeps them as tensors
    too: the default update to float rounding, in float64 to 1e-12, in float32 to 1e-5 after 8 steps that
    move the weights by about 0.07. On the CPU torch refuses it (kohya's run with it needs CUDA, where this
    same code runs)."""
    cls = getattr(torch.optim, name)
    with pytest.raises(AssertionError, match="capturable=True"):
        _steps(cls, capturable=True, foreach=foreach)
    before = _steps(cls, steps=0)
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # the step counters' dtype (torch's _get_scalar_dtype)
        try:
            plain = _steps(cls, dtype=dtype, foreach=foreach)
            with mock.patch("torch.compiler.is_compiling", return_value=True):  # no CUDA-device check
                captured = _steps(cls, dtype=dtype, capturable=True, foreach=foreach)
        finally:
            torch.set_default_dtype(previous)
        for a, b, start in zip(plain, captured, before):
            assert (a.double() - start.double()).abs().max() > 0.01  # the steps moved it
            torch.testing.assert_close(b, a, rtol=0, atol=tolerance)


@pytest.mark.parametrize("cls", ["RAdam", "AdamW", "SGD"])
def test_differentiable_raises_on_trained_parameters(cls):
    """torch steps with autograd on under differentiable=True; the in-place update of an nn.Parameter (as
    kohya's trained weights are) raises at the first step."""
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        _steps(getattr(torch.optim, cls), steps=1, differentiable=True)


def test_radam_capturable_converts_exactly(tmp_path):
    outcome = exact(
        kohya_lora(
            tmp_path,
            '--optimizer_type RAdam --optimizer_args "capturable=True" "differentiable=False" '
            '"weight_decay=0.01"',
        )
    )
    assert fate(outcome, "optimizer_args") == "mapped"
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.weight_decay) == ("radam", 0.01)


def test_lion_use_triton_converts_exactly(tmp_path):
    """lion_pytorch's Triton kernel computes update_fn's Lion step (to float rounding), on CUDA only."""
    outcome = exact(kohya_lora(tmp_path, '--optimizer_type Lion --optimizer_args "use_triton=True"'))
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, tuple(o.betas)) == ("lion", (0.9, 0.99))


@pytest.mark.parametrize("name", ["RAdam", "AdamW", "SGDNesterov"])
def test_differentiable_true_stops_kohya(tmp_path, name):
    outcome = kohya_lora(tmp_path, f'--optimizer_type {name} --optimizer_args "differentiable=True"')
    assert "DBS402" in codes(outcome), codes(outcome)
    assert "differentiable=True" in messages(outcome, "DBS402")


def test_radam_maximize_stays_refused(tmp_path):
    """maximize=True climbs the loss: no dbspec option trains that way."""
    outcome = kohya_lora(tmp_path, '--optimizer_type RAdam --optimizer_args "maximize=True"')
    assert "DBS403" in codes(outcome) and "maximize" in messages(outcome, "DBS403")
