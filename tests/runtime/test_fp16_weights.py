"""precision.weights = "fp16" (kohya's full_fp16): the trained weights are fp16, the optimizer steps them
directly, and a grad scaler that unscales fp16 gradients (kohya's patched accelerate scaler) skips steps whose
gradients overflow, backing its scale off; runs train, resume bit-exact, and one step equals a hand-written
fp16 loss-scaling step.
"""

from __future__ import annotations

import copy

import pytest
import torch

from dbspec.plan.io import plan_to_json
from dbspec.runtime.device import make_accelerator
from dbspec.runtime.execute import execute
from dbspec.runtime.loop import _optimizer_step
from dbspec.runtime.setup import setup
from dbspec.runtime.tiny import build_pipeline
from dbspec.frontend import plan_spec
from tests.runtime.runspec import CPU, compile_spec, summary_text, write_spec
from tests.runtime.optim_kit import flat_tensors, newest_state, same_trained_state

FP16 = '[precision]\nmixed = "fp16"\nweights = "fp16"\nweights_rounding = "nearest"\n'
ADAFACTOR = [
    "optimizer.kind=adafactor"
]  # fp32 state over fp16 weights (AdamW's fp16 state is refused, DBS249)
LORA = '\n[adapter]\nkind = "lora"\nrank = 4\n\n[train]\ntext_encoder = true\n'


def _setup(plan):
    return setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)


def _trained(run) -> list[torch.Tensor]:
    return [p for group in run.optimizer.param_groups for p in group["params"]]


def _scaler_state(scale: float, growth_interval: int = 2000) -> dict:
    """A GradScaler state (torch's public state_dict format) with its scale and growth interval set."""
    return {
        "scale": scale,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": growth_interval,
        "_growth_tracker": 0,
    }


def test_the_plan_holds_fp16_weights_and_says_what_they_cost(tmp_path):
    spec = write_spec(tmp_path, extra=FP16.replace('mixed = "fp16"\n', ""))
    warned = plan_spec(spec, CPU, None, ADAFACTOR).diagnostics
    assert {"DBS368", "DBS341"} <= {d.code for d in warned}  # auto picks fp16, slow on the CPU
    plan = compile_spec(spec, ADAFACTOR)
    assert plan.precision.mixed == "fp16" and "weights are fp16" in plan.precision.reason  # auto picks fp16
    assert plan.precision.weights == "fp16" and not plan.precision.stochastic_rounding
    assert {c.name: c.dtype for c in plan.precision.components if c.trainable == "full"} == {"unet": "fp16"}
    text = summary_text(plan)
    assert "kohya's full_fp16" in text and "grad scaler" in text and "65536" in text
    fp32 = compile_spec(write_spec(tmp_path, extra='[precision]\nmixed = "fp16"\n'), ADAFACTOR)
    assert plan.memory.gradients * 2 == fp32.memory.gradients  # 2 bytes a gradient instead of 4
    assert any(note.startswith("fp16 weights") for note in plan.memory.notes)


def test_the_scaler_is_torchs_default_and_unscales_fp16_gradients(tmp_path):
    """accelerate's scaler is torch's GradScaler with its defaults; the fp16-weights one starts the same, and
    its unscale_ takes the fp16 gradients torch's refuses."""
    plan = compile_spec(write_spec(tmp_path, steps=2, extra=FP16), ADAFACTOR)
    run = _setup(plan)
    assert run.scaler is run.accelerator.scaler and run.optimizer.scaler is run.scaler
    assert run.scaler.state_dict() == torch.amp.GradScaler("cpu").state_dict()
    params = _trained(run)
    assert params and all(p.dtype == torch.float16 for p in params)
    for p in params:
        p.grad = torch.full_like(p, 4.0)
    plain = torch.amp.GradScaler("cpu")
    for scaler in (plain, run.scaler):
        scaler.scale(torch.ones(()))  # as backward does: the scale tensor is made at the first loss
    with pytest.raises(ValueError, match="unscale FP16 gradients"):
        plain.unscale_(run.optimizer.optimizer)
    run.accelerator.unscale_gradients(run.optimizer)  # the loop's call before clipping
    assert all(torch.equal(p.grad, torch.full_like(p, 4.0 / 65536)) for p in params)
    with run.accelerator.autocast():  # on the CPU too, where accelerate leaves fp16 autocast off
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16


def test_an_overflowing_step_is_skipped_and_the_scale_backs_off_then_grows(tmp_path):
    plan = compile_spec(write_spec(tmp_path, steps=8, extra=FP16), ADAFACTOR)
    run = _setup(plan)
    params = _trained(run)
    start = [p.detach().clone() for p in params]
    run.scaler.load_state_dict(_scaler_state(2.0**40))  # every fp16 gradient x 2^40 overflows (max 65504)
    _optimizer_step(run, 0)
    assert run.scaler.get_scale() == 2.0**39  # backed off
    assert all(torch.equal(p.detach(), s) for p, s in zip(params, start, strict=True))  # skipped: unchanged
    assert not any(run.optimizer.state[p] for p in params)  # the optimizer never stepped
    run.scaler.load_state_dict(_scaler_state(2.0**8, growth_interval=1))
    _optimizer_step(run, 1)
    assert run.scaler.get_scale() == 2.0**9  # a finite step; after growth_interval of them the scale grows
    assert any(not torch.equal(p.detach(), s) for p, s in zip(params, start, strict=True))  # it trained
    assert all(p.dtype == torch.float16 and torch.isfinite(p).all() for p in params)


def _reference_step(params, grads, scale: float, optimizer) -> bool:
    """fp16 loss scaling written out: gradients of (loss x scale) divided by the scale; a step with any inf
    or NaN is skipped, else the optimizer steps the fp16 parameters. Returns whether it stepped."""
    unscaled = [(g.float() / scale).to(torch.float16) for g in grads]
    if not all(torch.isfinite(g).all() for g in unscaled):
        return False
    for p, g in zip(params, unscaled, strict=True):
        p.grad = g
    optimizer.step()
    return True


def _hand_built(kind: str, params: list, plan) -> torch.optim.Optimizer:
    """The optimizer kohya builds, from the library directly, with the plan's hyper-parameters."""
    o = plan.optimizer
    if kind == "sgd":  # no state and no normalisation: an update forgetting to unscale would be 65536x off
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    from transformers.optimization import Adafactor

    return Adafactor(
        params,
        lr=o.lr,
        scale_parameter=False,
        relative_step=False,
        warmup_init=False,
        weight_decay=o.weight_decay,
    )


@pytest.mark.parametrize("kind", ["sgd", "adafactor"])
def test_steps_equal_a_hand_written_fp16_loss_scaling_step(tmp_path, kind):
    """The run's optimizer (accelerate's, through the fp16-weights scaler) against the library's optimizer on
    fp16 copies, fed the same scaled fp16 gradients, the overflowing one included."""
    plan = compile_spec(write_spec(tmp_path, steps=4, extra=FP16), [f"optimizer.kind={kind}"])
    run = _setup(plan)
    params = _trained(run)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    reference = _hand_built(kind, copies, plan)
    assert type(run.optimizer.optimizer) is type(reference)
    start = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(5)
    run.scaler.scale(torch.ones(()))  # as backward does: the scale tensor is made at the first loss
    stepped = []
    for index in range(4):
        scale = run.scaler.get_scale()
        grads = [(torch.randn(p.shape, generator=generator) * 1e-3 * scale).to(torch.float16) for p in params]
        if index == 2:
            grads[0].view(-1)[0] = float("inf")  # one overflowed element: the whole step is skipped
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        run.optimizer.step()
        stepped.append(_reference_step(copies, grads, scale, reference))
        expected = scale if stepped[-1] else scale / 2
        assert run.scaler.get_scale() == expected
        assert run.optimizer.step_was_skipped == (not stepped[-1])
    assert stepped == [True, True, False, True]
    assert all(torch.equal(p.detach(), q.detach()) for p, q in zip(params, copies, strict=True))  # bit-exact
    assert any(not torch.equal(p.detach(), q) for p, q in zip(params, start, strict=True))  # they stepped


def test_a_full_fine_tune_with_fp16_weights_trains_and_resumes_bit_exact(tmp_path):
    """The U-Net and the text encoder trained in fp16 (sdxl_train / train_db cast both), validation images
    sampled with them, the scaler's state checkpointed and restored."""
    extra = FP16 + "\n[train]\ntext_encoder = true\n\n[checkpoints]\nevery = 2\n"
    extra += '\n[validation]\nevery = 2\nsteps = 2\nprompts = ["a photo of ohwx toy"]\n'
    spec = write_spec(tmp_path, steps=4, extra=extra)
    plan = compile_spec(spec, [*ADAFACTOR, "output.dir=whole"])
    assert {c.name: c.dtype for c in plan.precision.components if c.trainable == "full"} == {
        "unet": "fp16",
        "text_encoder": "fp16",
    }
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished" and whole.steps == 4
    base = build_pipeline("builtin:tiny-sd1")
    for trained, before in (
        (whole.components.unet, base.unet),
        (whole.components.text_encoders[0], base.text_encoder),
    ):
        assert all(p.dtype == torch.float16 for p in trained.parameters())
        start = before.half().state_dict()
        assert any(not torch.equal(v, start[k]) for k, v in trained.state_dict().items())  # it trained
    assert list((tmp_path / "whole").rglob("*.png"))  # validation sampled the fp16 models
    state = newest_state(tmp_path / "whole")
    held = [t for t in flat_tensors(state["trainable"]).values() if t.is_floating_point()]
    assert held and all(t.dtype == torch.float16 for t in held)
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0  # the scaler's state is saved

    parts = compile_spec(spec, [*ADAFACTOR, "output.dir=parts"])
    first = execute(parts, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = flat_tensors(state["trainable"]), flat_tensors(newest_state(tmp_path / "parts")["trainable"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert newest_state(tmp_path / "parts")["scaler"] == state["scaler"]


def test_a_resumed_run_continues_with_the_saved_scale(tmp_path):
    """The scale a checkpoint holds (backed off by an overflow) is the scale the resumed run steps with."""
    from dbspec.runtime.state import TrainState

    plan = compile_spec(write_spec(tmp_path, steps=4, extra=FP16), ADAFACTOR)
    run = _setup(plan)
    run.scaler.load_state_dict(_scaler_state(2.0**40))
    _optimizer_step(run, 0)
    held = TrainState.capture(run, 1)
    assert held.scaler["scale"] == 2.0**39
    again = _setup(plan)
    assert again.scaler.get_scale() == 2.0**16  # a fresh run starts at torch's default
    held.restore(again)
    assert again.scaler.get_scale() == 2.0**39
    _optimizer_step(run, 1)
    _optimizer_step(again, 1)
    assert run.scaler.state_dict() == again.scaler.state_dict()
    assert all(torch.equal(p, q) for p, q in zip(_trained(run), _trained(again), strict=True))


def test_a_lora_run_with_fp16_adapters_trains_resumes_bit_exact_and_loads(tmp_path):
    """kohya's full_fp16 in train_network.py casts the LoRA network to fp16: the adapters train in fp16."""
    spec = write_spec(tmp_path, steps=4, extra=FP16 + LORA + "\n[checkpoints]\nevery = 2\n")
    plan = compile_spec(spec, [*ADAFACTOR, "output.dir=whole"])
    assert {c.name: (c.trainable, c.dtype) for c in plan.precision.components if c.name != "vae"} == {
        "unet": ("lora", "fp16"),
        "text_encoder": ("lora", "fp16"),
    }
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished"
    trained = {n: p for n, p in whole.components.unet.named_parameters() if ".lora_" in n}
    assert trained and all(p.dtype == torch.float16 for p in trained.values())
    assert any(p.abs().sum() > 0 for n, p in trained.items() if ".lora_B." in n)  # B starts at 0: it trained
    parts = compile_spec(spec, [*ADAFACTOR, "output.dir=parts"])
    first = execute(parts, stop_after=2)
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    assert same_trained_state(tmp_path / "whole", tmp_path / "parts")
    pipe = build_pipeline("builtin:tiny-sd1")
    pipe.load_lora_weights(whole.final)
    loaded = {n: p for n, p in pipe.unet.named_parameters() if ".lora_" in n}
    assert len(loaded) == len(trained)


def test_one_training_step_equals_a_hand_written_loss_scaling_step(tmp_path):
    """A whole step of the loop (forward under autocast, scaled backward, unscale, clip, SGD) against the same
    written out on an fp16 copy of the base U-Net: loss x 2^16, backward, gradients / 2^16, torch's clip,
    torch's SGD on the fp16 parameters."""
    import attrs

    from dbspec.runtime.loop import _next_step_batches, reseed_micro_batch
    from dbspec.runtime.step import run_batch

    plan = compile_spec(write_spec(tmp_path, steps=2, extra=FP16), ["optimizer.kind=sgd", "optimizer.lr=1.0"])
    assert plan.optimizer.max_grad_norm > 0 and plan.schedule.accumulation == 1
    run = _setup(plan)
    reference = build_pipeline("builtin:tiny-sd1").unet.half().to(run.parts.device)
    before = {k: v.clone() for k, v in run.comps.unet.state_dict().items()}
    assert all(torch.equal(v, before[k]) for k, v in reference.state_dict().items())
    sampler, noise = copy.deepcopy(run.sampler.state_dict()), run.generator.get_state()
    _optimizer_step(run, 0)
    assert run.scaler.get_scale() == 2.0**16  # a finite step at the initial scale

    run.sampler.load_state_dict(sampler)
    run.generator.set_state(noise)
    (batch,) = _next_step_batches(run.sampler, 1)
    if plan.schedule.noise_streams == "micro_batch":
        reseed_micro_batch(run.generator, plan, 0, 0, 0)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = run_batch(
            attrs.evolve(run.parts, unet=reference), batch, step=0, epoch=run.sampler.epoch + 1
        ).loss
    (loss * 2.0**16).backward()
    params = [p for p in reference.parameters() if p.grad is not None]
    for p in params:
        p.grad = (p.grad.float() / 2.0**16).to(torch.float16)
    torch.nn.utils.clip_grad_norm_(params, plan.optimizer.max_grad_norm)
    o = plan.optimizer
    torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay).step()

    after = run.comps.unet.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items())  # the step moved the weights
    assert all(torch.equal(v, after[k]) for k, v in reference.state_dict().items())  # bit-exact
