"""kohya's sdxl_train.py fused hooks under mixed_precision fp16 without clipping (issue 12), on tiny models
against kohya's arithmetic written out:

- `precision.fp16_gradients = "scaled"` with fp32 weights (--fused_backward_pass without --full_fp16): the
  fused Adafactor steps the fp32 weights from the gradients of loss x 2^16, never unscaled, the scale never
  changing (nothing calls scaler.update());
- `precision.fp16_gradients = "scaled_first"` (--fused_optimizer_groups): the reference is kohya's hooks on a
  copy of the U-Net, stepping inside backward as each chunk's last gradient arrives: the first chunk's bare
  AdamW from the scaled gradients, the others as accelerate's AcceleratedOptimizer.step does (torch's
  GradScaler.step, then update), so the scale moves between chunks (growth_interval 1 here, and an overflow
  injected into one chunk) and the later chunks unscale by the scale of that moment.

Each also trains a few steps and resumes bit-exact."""

from __future__ import annotations

import copy

import attrs
import pytest
import torch

from dbspec.frontend import plan_spec
from dbspec.runtime.execute import execute
from dbspec.runtime.fp16_weights import ScaledFirstGradScaler, ScaledFp16GradScaler
from dbspec.runtime.loop import _optimizer_step
from dbspec.runtime.step import run_batch
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.optim_kit import flat_tensors, newest_state
from tests.runtime.runspec import CPU, compile_spec, final_weights, summary_text, write_spec
from tests.runtime.test_fused_groups import SDXL, _adafactor, _chunks, _replay, _rewind, _setup

SCALED = '[precision]\nmixed = "fp16"\nfp16_gradients = "scaled"\n'
ADAFACTOR = ["optimizer.kind=adafactor", "optimizer.max_grad_norm=0"]
SCALED_FIRST = '[precision]\nmixed = "fp16"\nfp16_gradients = "scaled_first"\n'
GROUPS = ["optimizer.kind=adamw", "optimizer.split=3", "optimizer.max_grad_norm=0"]


def _scaler_state(scale: float, growth_interval: int) -> dict:
    return {
        "scale": scale,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": growth_interval,
        "_growth_tracker": 0,
    }


def build_unet():
    return build_pipeline(SDXL).unet


def _same_unet(run, reference) -> bool:
    ours, theirs = run.comps.unet.state_dict(), reference.state_dict()
    return all(torch.equal(ours[k], theirs[k]) for k in ours)


# --- fp16_gradients = "scaled" with fp32 weights -----------------------------------------------------------


def test_scaled_gradients_with_fp32_weights_plan_and_summary(tmp_path):
    plan = compile_spec(write_spec(tmp_path, base=SDXL, steps=2, extra=SCALED), ADAFACTOR)
    assert plan.precision.mixed == "fp16" and plan.precision.weights == "fp32"
    assert plan.precision.fp16_gradients == "scaled"
    assert "gradients NOT unscaled" in summary_text(plan)


def test_a_scaled_step_on_fp32_weights_is_adafactor_on_the_gradients_of_loss_times_the_scale(tmp_path):
    """One loop step against kohya's written out on a copy of the fp32 U-Net: fp16 autocast, (loss x 2^16)
    backward, transformers' Adafactor (kohya's fused step_param per tensor is its update) on those fp32
    gradients as they are; the scale stays 2^16."""
    plan = compile_spec(write_spec(tmp_path, base=SDXL, steps=2, extra=SCALED), ADAFACTOR)
    run = _setup(plan)
    assert isinstance(run.scaler, ScaledFp16GradScaler)
    reference = copy.deepcopy(run.comps.unet)
    assert all(p.dtype == torch.float32 for p in reference.parameters())
    back = _rewind(run)
    _optimizer_step(run, 0)
    assert run.scaler.get_scale() == 2.0**16

    back()
    batches, reseed = _replay(run, 0, 1)
    reseed(0)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = run_batch(attrs.evolve(run.parts, unet=reference), batches[0], step=0, epoch=1).loss
    (loss * 2.0**16).backward()
    params = [p for p in reference.parameters() if p.grad is not None]
    assert params and all(p.grad.dtype == torch.float32 for p in params)
    _adafactor(params, plan).step()
    assert _same_unet(run, reference)  # bit-exact
    base = build_unet().state_dict()
    assert any(not torch.equal(v, base[k]) for k, v in reference.state_dict().items())  # it trained


def test_a_scaled_fp32_run_resumes_bit_exact(tmp_path):
    extra = SCALED + "\n[train]\ntext_encoder = true\n\n[checkpoints]\nevery = 2\n"
    spec = write_spec(tmp_path, steps=4, extra=extra)
    whole = execute(compile_spec(spec, [*ADAFACTOR, 'output.dir="whole"']))
    assert whole.status == "finished" and whole.steps == 4
    plan = compile_spec(spec, [*ADAFACTOR, 'output.dir="parts"'])
    first = execute(plan, stop_after=2)
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a = flat_tensors(newest_state(tmp_path / "whole")["trainable"])
    b = flat_tensors(newest_state(tmp_path / "parts")["trainable"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(t.dtype == torch.float32 for t in a.values() if t.is_floating_point())
    assert newest_state(tmp_path / "parts")["scaler"]["scale"] == 2.0**16  # never updated


# --- fp16_gradients = "scaled_first" -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "overrides", "code_path"),
    [
        (SCALED_FIRST, ["optimizer.kind=adamw", "optimizer.max_grad_norm=0"], "fp16_gradients"),
        (SCALED_FIRST.replace('"fp16"', '"bf16"', 1), GROUPS, "fp16_gradients"),
        (SCALED_FIRST, ["optimizer.kind=adamw", "optimizer.split=3"], "max_grad_norm"),
    ],
    ids=["no-split", "bf16-mixed", "clipping"],
)
def test_scaled_first_is_refused_where_it_cannot_run(tmp_path, extra, overrides, code_path):
    found = plan_spec(write_spec(tmp_path, base=SDXL, steps=2, extra=extra), CPU, None, overrides).diagnostics
    assert [str(d.path).split(".")[-1] for d in found if d.code == "DBS555"] == [code_path]


def test_scaled_first_plan_allows_micro_batch_steps_under_fp16(tmp_path):
    micro = [*GROUPS, 'optimizer.split_first_step="micro_batch"', "schedule.accumulation=2"]
    found = plan_spec(write_spec(tmp_path, base=SDXL, steps=2, extra=SCALED_FIRST), CPU, None, micro)
    assert "DBS389" not in {d.code for d in found.diagnostics} and found.plan is not None
    assert found.plan.precision.fp16_gradients == "scaled_first"
    assert "first chunk's gradients NOT unscaled" in summary_text(found.plan)


def _kohya_step(reference, chunks, optimizers, scaler, parts, batch, poison=None) -> list[bool]:
    """kohya's --fused_optimizer_groups step written out: fp16 autocast, accelerator.backward (the loss times
    the scaler's scale), and per-tensor hooks counting each chunk's gradients; when a chunk's last one
    arrives, the first chunk's bare optimizer steps from the scaled gradients, a later chunk's through
    accelerate's wrapper (GradScaler.step: unscale by the scale now, skip on inf/NaN; then update). Returns
    which chunks were skipped."""
    owner = {p: index for index, chunk in enumerate(chunks) for p in chunk}
    arrived, skipped = [0] * len(chunks), [False] * len(chunks)

    def hook(param: torch.Tensor) -> None:
        index = owner[param]
        arrived[index] += 1
        if arrived[index] < len(chunks[index]):
            return
        if index == 0:
            optimizers[0].step()
        else:
            before = scaler.get_scale()
            scaler.step(optimizers[index])
            found = sum(v.item() for v in scaler._found_inf_per_device(optimizers[index]).values())
            scaler.update()
            skipped[index] = bool(found)
            assert (scaler.get_scale() < before) == bool(found)
        optimizers[index].zero_grad(set_to_none=True)

    handles = [p.register_post_accumulate_grad_hook(hook) for p in owner]
    if poison is not None:
        handles.append(poison.register_hook(lambda g: torch.full_like(g, float("inf"))))
    with torch.autocast("cpu", dtype=torch.float16):
        loss = run_batch(attrs.evolve(parts, unet=reference), batch, step=0, epoch=1).loss
    scaler.scale(loss).backward()
    for handle in handles:
        handle.remove()
    assert arrived == [len(c) for c in chunks]  # every chunk stepped (or was skipped) inside backward
    return skipped


def test_scaled_first_steps_equal_kohyas_hooks_as_the_scale_moves_between_chunks(tmp_path):
    """Three steps against kohya's hooks on a copy of the U-Net, the scaler growing after every finite chunk
    step (growth_interval 1), so each later chunk unscales by a different scale than the loss was scaled
    with; in the first step one tensor of the last chunk gets an inf gradient: that chunk is skipped (its LR
    schedule too) and the scale halved before the next chunk unscales."""
    plan = compile_spec(write_spec(tmp_path, base=SDXL, steps=4, extra=SCALED_FIRST), GROUPS)
    assert (plan.precision.fp16_gradients, plan.optimizer.split) == ("scaled_first", 3)
    run = _setup(plan)
    assert isinstance(run.scaler, ScaledFirstGradScaler)
    split = run.optimizer.optimizer
    reference = copy.deepcopy(run.comps.unet)
    chunks = _chunks(reference, 3)
    ours = _chunks(run.comps.unet, 3)
    o = plan.optimizer
    made = [
        torch.optim.AdamW(c, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay) for c in chunks
    ]
    theirs = torch.amp.GradScaler("cpu")
    for scaler in (run.scaler, theirs):
        scaler.load_state_dict(_scaler_state(2.0**16, growth_interval=1))
    back = _rewind(run)
    poisoned = [ours[2][0]]
    handle = poisoned[0].register_hook(lambda g: torch.full_like(g, float("inf")))
    _optimizer_step(run, 0)
    handle.remove()
    ran = [(run.scaler.get_scale(), list(split.skipped))]
    for step in (1, 2):
        _optimizer_step(run, step)
        ran.append((run.scaler.get_scale(), list(split.skipped)))
    assert ran[0][1] == [False, False, True]  # the poisoned chunk skipped
    assert [s.last_epoch for s in run.lr_scheduler.schedulers] == [3, 3, 2]  # its schedule did not step

    back()
    expected = []
    for step in range(3):
        (batch,), reseed = _replay(run, step, 1)
        reseed(0)
        poison = chunks[2][0] if step == 0 else None
        skipped = _kohya_step(reference, chunks, made, theirs, run.parts, batch, poison)
        expected.append((theirs.get_scale(), skipped))
    assert ran == expected
    # growth after each finite update (2 a step), halving on the overflow: 2^16 -> 2^16 -> 2^18 -> 2^20
    assert [scale for scale, _ in ran] == [2.0**16, 2.0**18, 2.0**20]
    assert _same_unet(run, reference)  # bit-exact
    base = dict(build_unet().named_parameters())
    trained = dict(run.comps.unet.named_parameters())
    assert all(not torch.equal(trained[n], base[n]) for n in list(trained)[:3])  # it trained


def test_scaled_first_with_accumulation_trains_and_resumes_bit_exact(tmp_path):
    """gradient_accumulation_steps 2: the first chunk steps after each micro-batch from its scaled gradients
    (kohya's bare optimizer), the others once a step through the scaler; saved and resumed."""
    micro = [*GROUPS, 'optimizer.split_first_step="micro_batch"', "schedule.accumulation=2"]
    # 3 steps, stopped after 2 (the step-2 checkpoint's scaler is checked) and resumed for the last one
    spec = write_spec(tmp_path, base=SDXL, steps=3, extra=SCALED_FIRST + "[checkpoints]\nevery = 2\n")
    whole = execute(compile_spec(spec, [*micro, 'output.dir="whole"']))
    assert whole.status == "finished" and len(whole.losses) == 3
    plan = compile_spec(spec, [*micro, 'output.dir="parts"'])
    first = execute(plan, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    state = newest_state(tmp_path / "parts")
    assert state["scaler"]["_growth_tracker"] == 2 * 2  # two later chunks updated the scale each step
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_scaled_first_with_fp16_weights_equals_kohyas_hooks_over_its_patched_scaler(tmp_path):
    """--full_fp16 --fused_optimizer_groups 3 (Adafactor): fp16 weights, the first chunk's Adafactor on the
    scaled fp16 gradients, the others through the scaler kohya patches to unscale fp16 gradients
    (patch_accelerator_for_fp16_training: _unscale_grads_ with allow_fp16 True); two steps, the scale growing
    after every chunk step."""
    extra = SCALED_FIRST.replace(
        "[precision]\n", '[precision]\nweights = "fp16"\nweights_rounding = "nearest"\n'
    )
    overrides = ["optimizer.kind=adafactor", "optimizer.split=3", "optimizer.max_grad_norm=0"]
    plan = compile_spec(write_spec(tmp_path, base=SDXL, steps=4, extra=extra), overrides)
    assert (plan.precision.weights, plan.precision.fp16_gradients) == ("fp16", "scaled_first")
    run = _setup(plan)
    split = run.optimizer.optimizer
    reference = copy.deepcopy(run.comps.unet)
    assert all(p.dtype == torch.float16 for p in reference.parameters())
    chunks = _chunks(reference, 3)
    made = [_adafactor(c, plan) for c in chunks]
    theirs = torch.amp.GradScaler("cpu")
    unscale = theirs._unscale_grads_
    theirs._unscale_grads_ = lambda opt, inv, found, allow_fp16: unscale(
        opt, inv, found, True
    )  # kohya's patch
    for scaler in (run.scaler, theirs):
        scaler.load_state_dict(_scaler_state(2.0**16, growth_interval=1))
    back = _rewind(run)
    ran = []
    for step in (0, 1):
        _optimizer_step(run, step)
        ran.append((run.scaler.get_scale(), list(split.skipped)))

    back()
    expected = []
    for step in (0, 1):
        (batch,), reseed = _replay(run, step, 1)
        reseed(0)
        skipped = _kohya_step(reference, chunks, made, theirs, run.parts, batch)
        expected.append((theirs.get_scale(), skipped))
    assert ran == expected and [s for s, _ in ran] == [2.0**18, 2.0**20]
    assert _same_unet(run, reference)  # bit-exact
    assert all(p.dtype == torch.float16 for p in run.comps.unet.parameters())
