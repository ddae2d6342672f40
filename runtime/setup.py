"""`setup(plan) -> Run`: everything before the first step (litgpt's `setup`), and `Run`, the parts it builds.

Device and accelerator (`device.py`), models (`models.py`), their preparation for training (`prepare.py`),
class images, caches (`cache_fill.py`), optimizer, LR schedule, data order, noise generator, EMA, teacher, and
the resumed state (`state.py`). The loop (`loop.py`) then only steps.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch
from rich.console import Console

from dbspec.plan.io import legacy_run_hashes, run_hash
from dbspec.families import family_spec
from dbspec.plan.model import Plan, denoiser_held
from dbspec.runtime import checkpoints as ckpt
from dbspec.runtime import text_masks
from dbspec.runtime.compiling import compile_models
from dbspec.runtime.cache_fill import fill_caches
from dbspec.runtime.data import BucketBatchSampler
from dbspec.runtime.distributed import StrategyError, sharded_models
from dbspec.runtime.ema import Ema
from dbspec.runtime.evaluate import RunningMean
from dbspec.runtime.logs import cache_progress
from dbspec.runtime.max_norm import locon_norm_rate, lycoris_norm_modules, norm_modules
from dbspec.runtime.max_norm_alphas import with_file_alphas
from dbspec.runtime.families import family_runtime
from dbspec.runtime.models import Components, pipeline_for
from dbspec.runtime.optim import make_lr_scheduler, make_optimizer, param_groups, resume_training_mode
from dbspec.runtime.optim_split import make_split, run_optimizer_chunks, scale_later_chunks
from dbspec.runtime.rounding import with_stochastic_rounding
from dbspec.runtime.prepare import (
    configure_models,
    lora_up_ids,
    make_teacher,
    raises_dylora_ups,
    set_train_mode,
)
from dbspec.runtime.generate import generate_class_images
from dbspec.runtime.idle_text import named_idle, split_idle
from dbspec.runtime.init_weights import load_init_weights
from dbspec.runtime.blocks import block_param_groups
from dbspec.runtime.optimizer_blocks import optimizer_block_groups
from dbspec.runtime.start import start_later
from dbspec.runtime.state import TrainState
from dbspec.runtime.scaled_pos import install as install_scaled_tables
from dbspec.runtime.step import Parts
from dbspec.runtime.text import WINDOW
from dbspec.runtime.tokens_ti import add_tokens


@attrs.define(eq=False)
class Run:
    """The parts of one run the loop steps; `step` is where it starts (0, or the resumed checkpoint's)."""

    plan: Plan
    plan_json: str
    accelerator: object
    out: Path
    comps: Components
    pipeline: object  # a diffusers pipeline over the live components (validation, final weights)
    parts: Parts  # what one micro-batch needs (step.run_batch)
    params: list  # every trained parameter (gradient clipping)
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    scaler: object  # accelerate's fp16 gradient scaler, or None
    sampler: BucketBatchSampler
    generator: torch.Generator
    ema: Ema | None
    step: int = 0
    prompt_inputs: object = None  # validation prompts encoded by the family (several CLIP windows), or None
    sharded: list = attrs.field(
        factory=list
    )  # the models FSDP sharded (distributed.gathered reads them whole)
    # adapter.max_norm: kohya's LoRA modules (runtime/max_norm.py) the loop rescales after each micro-batch
    norm_modules: list = attrs.field(factory=list)
    # LoRA-FA with kohya's gradients: the frozen downs by name, whose accumulated gradients checkpoints keep
    frozen_down: dict = attrs.field(factory=dict)
    # train.text_encoder_idle: the idle encoders' adapter weights by name, whose gradients add up uncleared
    idle: dict = attrs.field(factory=dict)
    # evaluation.log = "kohya_running_mean": kohya's validation loss recorder, kept across evaluations
    eval_record: RunningMean = attrs.field(factory=RunningMean)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def setup(plan: Plan, accelerator, plan_json: str, *, resume: bool, console) -> Run:
    """Build the run the plan describes on `accelerator`; with `resume`, restored from the
    latest checkpoint."""
    s = plan.schedule
    out = Path(plan.checkpoints.dir)
    accelerator.wait_for_everyone()
    # Read (and vet) the checkpoint before loading models: resuming another run's checkpoint fails at once.
    saved = ckpt.resume_state(out, run_hash(plan), plan_json, legacy_run_hashes(plan)) if resume else None
    resumed = TrainState.from_checkpoint(saved) if saved is not None else None
    device = accelerator.device
    torch.manual_seed(s.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = plan.precision.tf32
        torch.backends.cudnn.allow_tf32 = plan.precision.tf32

    # Models: load, make class images with the untouched base model, then freeze/adapt for training.
    with accelerator.main_process_first():  # a built-in model is written once, by the first process
        comps = family_runtime(plan.model.family).load(plan)
    if plan.model.merge_adapters:  # kohya --base_weights: merged on the CPU in fp32 before anything else
        from dbspec.runtime.merge_adapters import merge_adapters

        for note in merge_adapters(plan, comps.unet, comps.text_encoders):
            if accelerator.is_main_process:
                (console or Console(stderr=True)).print(f"note: {note}", markup=False, highlight=False)
    comps.unet.to(device)
    comps.vae.to(device)
    for enc in comps.text_encoders:
        enc.to(device)
    pipeline = pipeline_for(plan, comps)
    class_prompts = long_prompt_inputs(plan, comps, pipeline, device)  # encoded as training encodes them
    for d in plan.datasets:  # each process makes its share of the batches
        if d.generate is not None:
            share = (accelerator.process_index, accelerator.num_processes)
            generate_class_images(
                pipeline,
                d.generate,
                share=share,
                wait=accelerator.wait_for_everyone,
                prompt_inputs=class_prompts,
            )
    teacher = make_teacher(plan, comps, device)
    unet_params, per_encoder = configure_models(plan, comps, device)
    # model.scaled_pos_embed: kohya's scaled position tables in every denoiser forward from here on (not the
    # class images above, made with the untouched base)
    install_scaled_tables(plan, [comps.unet, teacher], log=_scaled_log(accelerator, console))
    # LoRA-FA with kohya's gradients: the frozen downs need a gradient but are not the optimizer's
    frozen_down = named_frozen_downs(comps) if plan.adapter.frozen_down_grad == "kohya" else {}
    if frozen_down:
        unet_params, per_encoder = (
            _without(unet_params, frozen_down),
            [_without(params, frozen_down) for params in per_encoder],
        )
    # train.text_encoder_idle: the idle encoders' adapter weights take gradients, out of the optimizer
    per_encoder, held = split_idle(plan, per_encoder)
    idle = named_idle(comps, plan) if plan.idle_text_encoders else {}
    if plan.adapter.init_weights and resumed is None:  # a resume restores the checkpoint's weights instead
        load_init_weights(plan, comps.unet, comps.text_encoders)
    text_params = [p for params in per_encoder for p in params]
    tokens = (
        add_tokens(plan, comps.text_encoders, comps.tokenizers, s.seed + 7)
        if plan.pivotal is not None
        else None
    )
    # Every process checks and encodes its share of the images and captions; no one reads an entry before
    # all shares are written.
    with cache_progress(console) as progress:
        share = (accelerator.process_index, accelerator.num_processes)
        latent_cache, text_cache, _ = fill_caches(plan, comps, device, progress, share)
    accelerator.wait_for_everyone()

    # Optimizer, LR schedule, data order and the one generator that draws all training noise.
    o = plan.optimizer
    lora_up = (
        lora_up_ids(comps, dylora=raises_dylora_ups(plan.adapter))
        if o.loraplus_denoiser_ratio or o.loraplus_text_encoder_ratio or o.loraplus_held
        else frozenset()
    )
    groups = param_groups(unet_params, per_encoder, plan.optimizer, lora_up)
    if plan.adapter.blocks or plan.adapter.text_encoder_blocks:  # per-block learning rates (kohya
        # down/mid/up_lr_weight, Flux network_reg_lrs on the denoiser and the text encoders)
        groups = block_param_groups(
            groups,
            comps.unet,
            plan.adapter,
            o.loraplus_denoiser_ratio,
            tuple(zip(family_spec(plan.model.family).text_encoder_names, comps.text_encoders)),
            o.loraplus_text_encoder_ratio,
        )
    if plan.optimizer.blocks:  # per-block denoiser rates (kohya sdxl_train.py block_lr)
        groups = optimizer_block_groups(groups, comps.unet, plan.optimizer.blocks)
    if tokens is not None:  # pivotal tuning: the new token rows, at their own rate
        groups.append(tokens.group())
    if plan.optimizer.split > 1:  # one optimizer and LR schedule per chunk (kohya's fused_optimizer_groups)
        optimizer, lr_scheduler = make_split(groups, plan, comps.unet, device)
    else:
        optimizer = make_optimizer(groups, plan.optimizer)
        if (
            plan.precision.stochastic_rounding
        ):  # bf16 weights: updates in fp32, rounded stochastically to bf16
            optimizer = with_stochastic_rounding(optimizer, s.seed, device)
        lr_scheduler = make_lr_scheduler(optimizer, s)
    ema = Ema.from_plan(plan.ema, unet_params + text_params) if plan.ema.enabled else None
    compile_models(plan, comps)  # after the caches are filled: only training steps run compiled
    # prepare: DDP wrapping when several processes run; the optimizer scales fp16 gradients.
    trained = [m for m in (comps.unet, *comps.text_encoders) if any(p.requires_grad for p in m.parameters())]
    *wrapped, optimizer = accelerator.prepare(*trained, optimizer)
    forward = {id(m): w for m, w in zip(trained, wrapped)}
    sharded = sharded_models(wrapped)  # FSDP: prepare replaced their parameters by DTensor shards
    if sharded and (len(plan.validation.steps) or plan.evaluation.metrics):  # the rules refuse them (DBS268)
        raise StrategyError(
            "validation and evaluation run on the first process alone and cannot sample a sharded model yet: "
            'turn them off, or use distributed.strategy = "ddp"'
        )
    if plan.precision.fp16_gradients == "scaled_first":  # kohya's fused groups: later chunks via the scaler
        scale_later_chunks(optimizer, accelerator.scaler)
    if plan.optimizer.split > 1 and accelerator.is_main_process:  # the chunks the tensors came to
        (console or Console(stderr=True)).print(
            f"note: optimizer.split: {len(run_optimizer_chunks(optimizer))} optimizers over "
            + "; ".join(run_optimizer_chunks(optimizer)),
            markup=False,
        )
    if sharded and accelerator.is_main_process:
        names = ", ".join(name for name, m in _named(comps) if m in sharded)
        (console or Console(stderr=True)).print(
            f"note: FSDP shards {names} across {accelerator.num_processes} process(es)", markup=False
        )
    sampler = BucketBatchSampler.from_plan(plan, rank=accelerator.process_index)
    # Each process draws its own noise; one process reproduces single-GPU runs exactly.
    generator = torch.Generator().manual_seed(s.seed + 1_000_003 * accelerator.process_index)
    parts = Parts(
        plan=plan,
        unet=forward.get(id(comps.unet), comps.unet),
        vae=comps.vae,
        text_encoders=[forward.get(id(e), e) for e in comps.text_encoders],
        tokenizers=comps.tokenizers,
        noise_scheduler=comps.noise_scheduler,
        latent_cache=latent_cache,
        text_cache=text_cache,
        device=device,
        generator=generator,
        text_trains=bool(text_params) or any(held.values()),  # the idle encoders run under grad too
        teacher=teacher,
        tokens=tokens,
    )
    run = Run(
        plan=plan,
        plan_json=plan_json,
        accelerator=accelerator,
        out=out,
        comps=comps,
        pipeline=pipeline,
        parts=parts,
        params=(
            [p for group in optimizer.param_groups for p in group["params"]]  # the sharded ones
            if sharded
            else (
                _kohya_network_order(comps, tokens)
                if frozen_down or idle or _held_whole(plan)
                else unet_params + text_params
            )
            + (tokens.params if tokens is not None else [])
        ),
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        scaler=accelerator.scaler,
        sampler=sampler,
        generator=generator,
        ema=ema,
        prompt_inputs=long_prompt_inputs(plan, comps, pipeline, device, tokens),
        sharded=sharded,
        frozen_down=frozen_down,
        idle=idle,
    )
    if plan.adapter.max_norm and plan.adapter.max_norm_form == "lycoris":  # lycoris.kohya: denoiser first
        # the LoCon layers draw their rank-dropout mask in the norm (LoConModule.make_weight): a lora
        # adapter's, a LoHa / LoKr adapter's LoCon blocks
        locon_rate = locon_norm_rate(plan.adapter)
        run.norm_modules = lycoris_norm_modules(
            comps.unet, comps.text_encoders, plan.adapter.fused, locon_rate
        )
    elif plan.adapter.max_norm:  # kohya's order: the text encoders' modules, then the denoiser's
        run.norm_modules = norm_modules([*comps.text_encoders, comps.unet], plan.adapter.fused)
        # init_alpha "ignore": kohya's max-norm reads the alphas the starting file put in its modules' buffers
        run.norm_modules = with_file_alphas(run.norm_modules, plan, comps.unet, comps.text_encoders)
    if resumed is not None:
        if plan.distributed.deepspeed is not None:
            raise StrategyError(
                "resuming under DeepSpeed is not supported yet: its ZeRO optimizer state is split per "
                "process and a checkpoint holds the first process's part (its weights are whole); train "
                'with strategy = "fsdp" to resume, or start afresh with --overwrite'
            )
        resumed.restore(run)
        run.step = resumed.step
        resumed = None  # frees the CPU copy of the weights and optimizer state
        resume_training_mode(run.optimizer, plan.optimizer)  # schedule-free: averaged -> training weights
    elif s.start is not None:  # schedule.start_step / start_epoch (kohya's initial_step)
        start_later(run, s.start)
    if s.text_encoder_stop_step and run.step >= s.text_encoder_stop_step:
        freeze_text_encoders(run)
    if tokens is not None and plan.pivotal.stop_step and run.step >= plan.pivotal.stop_step:
        tokens.stop()
    set_train_mode(comps, plan)
    return run


def _scaled_log(accelerator, console):
    """Where the first process says a scaled position table was added (the others stay quiet)."""
    if not accelerator.is_main_process:
        return None
    return lambda text: (console or Console(stderr=True)).print(f"note: {text}", markup=False)


def named_frozen_downs(comps: Components) -> dict[str, torch.nn.Parameter]:
    """The LoRA downs (peft `lora_A`) that require a gradient, by `<component>.<parameter name>`."""
    return {
        f"{component}.{name}": p
        for component, module in _named(comps)
        for name, p in module.named_parameters()
        if p.requires_grad and ".lora_A." in f".{name}."
    }


def _held_whole(plan: Plan) -> bool:
    """The denoiser's adapter held whole at lr_scale 0 (kohya's U-Net modules at unet_lr 0): kohya's clip
    adds the text encoders' modules' norms first."""
    return plan.train_denoiser and plan.adapter.kind != "none" and denoiser_held(plan.adapter.blocks)


def _kohya_network_order(comps: Components, tokens) -> list:
    """LoRA-FA with kohya's gradients, idle text encoders, or a denoiser held whole: every adapter weight
    that takes a gradient (the frozen downs, the idle encoders' and held modules' too) in kohya's network
    order, the text encoders' modules then the
    denoiser's, each down before its up: the parameters train_network.py clips, in the order its total norm
    adds them."""
    own = {id(p) for p in tokens.params} if tokens is not None else set()
    models = (*comps.text_encoders, comps.unet)
    return [p for m in models for p in m.parameters() if p.requires_grad and id(p) not in own]


def _without(params: list, frozen: dict) -> list:
    ids = {id(p) for p in frozen.values()}
    return [p for p in params if id(p) not in ids]


def _named(comps: Components) -> list[tuple[str, torch.nn.Module]]:
    return [("unet", comps.unet), *((f"text_encoder {i + 1}", e) for i, e in enumerate(comps.text_encoders))]


def freeze_text_encoders(run: Run) -> None:
    """After the stop step the text encoder is frozen. Its parameters get no gradient, and optimizers skip
    parameters without one (no update, no weight decay)."""
    for enc in run.parts.text_encoders:
        enc.requires_grad_(False)
        enc.train(run.plan.text_encoder_mode == "train")  # eval, but where every encoder is in train mode
    run.parts.text_trains = False


def long_prompt_inputs(plan: Plan, comps: Components, pipeline, device, tokens=None):
    """Validation prompts beyond one CLIP window are encoded as in training (the pipeline would cut them at 77
    tokens), and every prompt of a family that encodes its own (SD3: the plan's T5 length); None for one
    window, where the pipeline encodes them itself."""
    model = plan.model
    family = family_runtime(model.family)
    if model.max_tokens <= WINDOW and not getattr(family, "own_prompt_encoding", False):
        return None

    def encode(prompt: str) -> dict:
        with torch.no_grad():
            return family.encode_prompts(
                comps.text_encoders,
                comps.tokenizers,
                tokens.expand([prompt]) if tokens is not None else [prompt],  # pivotal: tok -> tok tok_1 ..
                clip_skip=model.clip_skip,
                max_tokens=model.max_tokens,
                device=device,
                **text_masks.encode_options(model),  # validation conditions as training does
            )

    return lambda prompt, negative: family.pipeline_prompt_inputs(
        pipeline, encode(prompt), encode(negative), negative
    )
