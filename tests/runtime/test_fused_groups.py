"""kohya's sdxl_train.py fused combinations on tiny models, against references built the way kohya's run
builds them:

- `optimizer.split_first_step = "micro_batch"` (--fused_optimizer_groups with gradient accumulation): the
  reference is real accelerate with gradient_accumulation_steps 2, the first chunk optimizer left bare and
  the others prepared, each stepped and cleared from post-accumulate-grad hooks once its chunk's gradients
  are in (clipping each tensor on the last micro-batch);
- `optimizer.split_train = "first"` (--fused_backward_pass with --fused_optimizer_groups): only the first
  chunk's tensors step (transformers' Adafactor over that chunk alone);
- `precision.fp16_gradients = "scaled"` (--full_fp16 --fused_backward_pass, max_grad_norm 0): Adafactor steps
  the fp16 weights from the gradients of loss x 2^16, never unscaled, the scale never changing.

Each also trains a few steps; the "first" split resumes bit-exact here. The other two save kinds of state
resumed elsewhere: a micro-batch split's chunk optimizers and schedules (with accumulation 2, under a grad
scaler too) in test_fused_fp16_scaled.py's test_scaled_first_with_accumulation_trains_and_resumes_bit_exact
(and split AdamW in test_optimizer_split.py's test_split_schedule_free_and_stochastic_rounding_step_as_one);
fp16 weights of a U-Net and text encoder with their scaler in test_fp16_weights.py, a scale that never
moves in test_fused_fp16_scaled.py's test_a_scaled_fp32_run_resumes_bit_exact."""

from __future__ import annotations

import copy

import attrs
import torch

from dbspec.plan.io import plan_to_json
from dbspec.runtime.device import make_accelerator
from dbspec.runtime.execute import execute
from dbspec.runtime.families.original_order import original_order
from dbspec.runtime.loop import _next_step_batches, _optimizer_step, reseed_micro_batch
from dbspec.runtime.optim_split import SPLIT_KEY
from dbspec.runtime.setup import setup
from dbspec.runtime.step import run_batch
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.optim_kit import flat_tensors, newest_state
from dbspec.frontend import plan_spec
from tests.runtime.runspec import CPU, compile_spec, final_weights, summary_text, write_spec
from tests.unit.test_split_chunks import kohya_chunks

SDXL = "builtin:tiny-sdxl"
NO_MIX = '[precision]\nmixed = "no"\n'


def _setup(plan):
    return setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)


def _chunks(unet: torch.nn.Module, split: int) -> list[list[torch.Tensor]]:
    """kohya's chunks of the U-Net's tensors (one rate): its own SDXL UNet's order, its grouping loop."""
    sequence = [p for _, p in original_order(unet)]
    return [[sequence[i] for i in chunk] for chunk in kohya_chunks([(len(sequence), 1.0)], split)]


def _replay(run, step: int, micro_batches: int):
    """Rewind the run's data order and noise to before `step` and return its micro-batches, with a function
    that reseeds the noise for micro-batch `index` as the loop does."""
    plan = run.plan

    def reseed(index: int) -> None:
        if plan.schedule.noise_streams == "micro_batch":
            reseed_micro_batch(run.generator, plan, step, index, 0)

    return _next_step_batches(run.sampler, micro_batches), reseed


def _rewind(run):
    sampler, noise = copy.deepcopy(run.sampler.state_dict()), run.generator.get_state()

    def back() -> None:
        run.sampler.load_state_dict(sampler)
        run.generator.set_state(noise)

    return back


# --- split_first_step = "micro_batch" ---------------------------------------------------------------------

MICRO = [
    "optimizer.kind=adamw",
    "optimizer.split=3",
    'optimizer.split_first_step="micro_batch"',
    'optimizer.clip_mode="norm_per_tensor"',
    "optimizer.max_grad_norm=0.05",  # small: every tensor's clip bites
    "schedule.accumulation=2",
]


def test_the_plan_says_the_first_chunk_steps_every_micro_batch(tmp_path):
    plan = compile_spec(write_spec(tmp_path, base=SDXL, steps=4, extra=NO_MIX), MICRO)
    assert (plan.optimizer.split, plan.optimizer.split_first_step, plan.optimizer.split_train) == (
        3,
        "micro_batch",
        "all",
    )
    text = summary_text(plan)
    assert "the first chunk's optimizer steps" in text  # after every micro-batch (the row wraps there)
    assert "the same updates as one adamw" not in text


def test_micro_batch_steps_under_fp16_mixed_precision_are_refused_at_plan_time(tmp_path):
    """The first chunk would step between micro-batches from gradients the grad scaler has not unscaled."""
    spec = write_spec(tmp_path, base=SDXL, steps=4, extra='[precision]\nmixed = "fp16"\n')
    found = plan_spec(spec, CPU, None, MICRO).diagnostics
    assert [(d.code, d.severity) for d in found if d.code == "DBS389"] == [("DBS389", "error")]
    bf16 = plan_spec(write_spec(tmp_path, base=SDXL, steps=4, extra=NO_MIX), CPU, None, MICRO).diagnostics
    assert "DBS389" not in {d.code for d in bf16}


def test_a_step_equals_kohyas_hooks_under_accelerates_accumulation(tmp_path):
    """One optimizer step of two micro-batches against kohya's arrangement on real accelerate: the first
    chunk's bare AdamW steps and clears after micro-batch 1 (so micro-batch 2's forward sees its new weights)
    and again after micro-batch 2; the prepared ones accumulate both and step once, each tensor clipped on
    the last micro-batch."""
    from accelerate import Accelerator

    plan = compile_spec(write_spec(tmp_path, base=SDXL, steps=2, extra=NO_MIX), MICRO)
    run = _setup(plan)
    reference = copy.deepcopy(run.comps.unet)
    back = _rewind(run)
    _optimizer_step(run, 0)
    split = run.optimizer.optimizer
    first = split.optimizers[0]
    assert {int(first.state[p]["step"]) for p in first.param_groups[0]["params"]} == {2}  # per micro-batch
    assert {
        int(o.state[p]["step"]) for o in split.optimizers[1:] for g in o.param_groups for p in g["params"]
    } == {1}

    back()
    o = plan.optimizer
    accelerator = Accelerator(gradient_accumulation_steps=2, cpu=True)
    chunks = _chunks(reference, 3)
    made = [
        torch.optim.AdamW(c, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay) for c in chunks
    ]
    optimizers = [made[0], *(accelerator.prepare(m) for m in made[1:])]  # kohya prepares these alone
    owner = {p: index for index, chunk in enumerate(chunks) for p in chunk}
    arrived = [0] * len(chunks)

    def hook(param: torch.Tensor) -> None:
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_([param], o.max_grad_norm)
        index = owner[param]
        arrived[index] += 1
        if arrived[index] == len(chunks[index]):
            optimizers[index].step()
            optimizers[index].zero_grad(set_to_none=True)

    handles = [p.register_post_accumulate_grad_hook(hook) for p in owner]
    batches, reseed = _replay(run, 0, 2)
    parts = attrs.evolve(run.parts, unet=reference)
    for index, batch in enumerate(batches):
        arrived[:] = [0] * len(chunks)
        reseed(index)
        with accelerator.accumulate():
            accelerator.backward(run_batch(parts, batch, step=0, epoch=run.sampler.epoch + 1).loss)
    for handle in handles:
        handle.remove()
    assert accelerator.sync_gradients

    ours, theirs = run.comps.unet.state_dict(), reference.state_dict()
    before = build_pipeline(SDXL).unet.state_dict()
    assert any(not torch.equal(ours[k], before[k]) for k in ours)  # it trained
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # bit-exact


def test_a_micro_batch_split_run_saves_each_chunks_steps(tmp_path):
    """A run's checkpoint holds the three chunk optimizers, the first having stepped once per micro-batch
    (its resume: see the module docstring)."""
    spec = write_spec(tmp_path, base=SDXL, steps=4, extra=NO_MIX + "[checkpoints]\nevery = 2\n")
    whole = execute(compile_spec(spec, [*MICRO, 'output.dir="whole"']))
    assert whole.status == "finished" and len(whole.losses) == 4
    saved = newest_state(tmp_path / "whole")["optimizer"][SPLIT_KEY]
    assert len(saved) == 3
    steps = [{int(s["step"]) for s in chunk["state"].values()} for chunk in saved]
    assert steps == [{8}, {4}, {4}]  # 4 steps of 2 micro-batches


# --- split_train = "first" ---------------------------------------------------------------------------------

FIRST = [
    "optimizer.kind=adafactor",
    "optimizer.split=3",
    'optimizer.split_train="first"',
    'optimizer.clip_mode="norm_per_tensor"',
    "optimizer.max_grad_norm=0.05",
]


def _adafactor(params, plan):
    """transformers' Adafactor with the plan's settings (kohya's fused step is its per-parameter update)."""
    from transformers.optimization import Adafactor

    o, a = plan.optimizer, plan.optimizer.adafactor
    return Adafactor(
        params,
        lr=None if a.relative_step else o.lr,
        scale_parameter=a.scale_parameter,
        relative_step=a.relative_step,
        warmup_init=a.warmup_init,
        beta1=a.beta1,
        clip_threshold=a.clip_threshold,
        decay_rate=a.decay_rate,
        weight_decay=o.weight_decay,
    )


def test_only_the_first_chunk_steps_as_kohyas_hooked_first_optimizer(tmp_path):
    """One step: the first chunk's tensors equal transformers' Adafactor over that chunk alone (each gradient
    clipped by its own norm), every later chunk's tensor is unchanged."""
    plan = compile_spec(write_spec(tmp_path, base=SDXL, steps=2, extra=NO_MIX), FIRST)
    assert plan.optimizer.split_train == "first"
    assert "only the first chunk's" in summary_text(plan)
    run = _setup(plan)
    reference = copy.deepcopy(run.comps.unet)
    back = _rewind(run)
    _optimizer_step(run, 0)

    back()
    chunks = _chunks(reference, 3)
    batches, reseed = _replay(run, 0, 1)
    reseed(0)
    loss = run_batch(attrs.evolve(run.parts, unet=reference), batches[0], step=0, epoch=run.sampler.epoch + 1)
    loss.loss.backward()
    for p in chunks[0]:
        torch.nn.utils.clip_grad_norm_([p], plan.optimizer.max_grad_norm)
    _adafactor(chunks[0], plan).step()

    ours = dict(original_order(run.comps.unet))
    theirs = dict(original_order(reference))
    first = {id(p) for p in chunks[0]}
    base = dict(original_order(build_pipeline(SDXL).unet))
    for name, param in theirs.items():
        assert torch.equal(ours[name].detach(), param.detach()), name
        assert torch.equal(param.detach(), base[name].detach()) == (id(param) not in first), name


def test_a_first_chunk_run_trains_those_tensors_alone_and_resumes_bit_exact(tmp_path):
    spec = write_spec(tmp_path, base=SDXL, steps=4, extra=NO_MIX)
    whole = execute(compile_spec(spec, [*FIRST, 'output.dir="whole"']), keep_models=True)
    assert whole.status == "finished"
    unet = whole.components.unet
    chunks = _chunks(unet, 3)
    base = dict(original_order(build_pipeline(SDXL).unet))
    named = {id(p): n for n, p in original_order(unet)}
    moved = [not torch.equal(p.detach(), base[named[id(p)]].detach()) for p in chunks[0]]
    assert any(moved)
    assert all(torch.equal(p.detach(), base[named[id(p)]].detach()) for c in chunks[1:] for p in c)
    plan = compile_spec(spec, [*FIRST, 'output.dir="parts"'])
    first = execute(plan, stop_after=2)
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- precision.fp16_gradients = "scaled" ----------------------------------------------------------------

SCALED = (
    '[precision]\nmixed = "fp16"\nweights = "fp16"\nweights_rounding = "nearest"\nfp16_gradients = "scaled"\n'
)
ADAFACTOR = ["optimizer.kind=adafactor", "optimizer.max_grad_norm=0"]


def test_the_plan_says_the_fp16_gradients_stay_scaled(tmp_path):
    plan = compile_spec(write_spec(tmp_path, steps=2, extra=SCALED), ADAFACTOR)
    assert plan.precision.weights == "fp16" and plan.precision.fp16_gradients == "scaled"
    assert "gradients NOT unscaled" in summary_text(plan)


def test_a_scaled_step_is_adafactor_on_the_gradients_of_loss_times_the_scale(tmp_path):
    """One loop step against the same written out on an fp16 copy of the U-Net: fp16 autocast, (loss x 2^16)
    backward, transformers' Adafactor stepping the fp16 weights from those gradients as they are; the scale
    stays 2^16, and a step with an overflowed gradient is not skipped."""
    plan = compile_spec(write_spec(tmp_path, steps=2, extra=SCALED), ADAFACTOR)
    run = _setup(plan)
    reference = copy.deepcopy(run.comps.unet)
    assert all(p.dtype == torch.float16 for p in reference.parameters())
    back = _rewind(run)
    _optimizer_step(run, 0)
    assert run.scaler.get_scale() == 2.0**16 and not run.optimizer.step_was_skipped

    back()
    batches, reseed = _replay(run, 0, 1)
    reseed(0)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = run_batch(attrs.evolve(run.parts, unet=reference), batches[0], step=0, epoch=1).loss
    (loss * 2.0**16).backward()
    params = [p for p in reference.parameters() if p.grad is not None]
    _adafactor(params, plan).step()
    ours, theirs = run.comps.unet.state_dict(), reference.state_dict()
    before = build_pipeline("builtin:tiny-sd1").unet.half().state_dict()
    assert any(not torch.equal(ours[k], before[k]) for k in ours)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # bit-exact

    trained = [p for g in run.optimizer.param_groups for p in g["params"]]
    for p in trained:
        p.grad = torch.full_like(p, 1e-3)
    trained[0].grad.view(-1)[0] = float("inf")
    run.optimizer.step()
    assert not run.optimizer.step_was_skipped and run.scaler.get_scale() == 2.0**16
    assert not torch.isfinite(trained[0]).all()  # kohya's hook steps it too: inf in, NaN/inf out


def test_a_scaled_fp16_run_saves_fp16_weights_and_the_unmoved_scale(tmp_path):
    """A full fine-tune (U-Net and text encoder in fp16) whose scale never moves: its checkpoint holds the
    fp16 weights and the first scale (its resume: see the module docstring)."""
    extra = SCALED + "\n[train]\ntext_encoder = true\n\n[checkpoints]\nevery = 2\n"
    spec = write_spec(tmp_path, steps=4, extra=extra)
    whole = execute(compile_spec(spec, [*ADAFACTOR, 'output.dir="whole"']))
    assert whole.status == "finished" and whole.steps == 4
    state = newest_state(tmp_path / "whole")
    held = [t for t in flat_tensors(state["trainable"]).values() if t.is_floating_point()]
    assert held and all(t.dtype == torch.float16 for t in held)
    assert state["scaler"]["scale"] == 2.0**16  # never updated
