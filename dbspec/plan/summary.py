"""The dry-run summary: rich tables of what a plan will do."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console, Group
from rich.table import Table

from dbspec.plan.scaled_pos import area_bounds, grid_of
from dbspec.families import FAMILIES, family_spec
from dbspec.plan.compiled import compile_summary
from dbspec.plan.model import (
    BNB_MIN_8BIT_SIZE,
    BYPASS_KINDS,
    denoiser_held,
    FP16_GRAD_SCALER,
    CaptionPlan,
    FlowPlan,
    GeneratePlan,
    LoggingPlan,
    NoisePlan,
    Plan,
    PreviewPlan,
    RefinePlan,
    StepRange,
)


def _gib(n: int) -> str:
    if not n:
        return "unknown"
    return (
        f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
    )  # tiny models: MiB, not "0.00 GiB"


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", show_edge=False, pad_edge=False)
    for col in columns:
        table.add_column(col, overflow="fold")  # wrap long names and paths, never cut them
    return table


def _count(n: int) -> str:
    """Parameter counts at a glance: 859.5M, 2.57B, 41.2K (the built-in tiny models)."""
    for scale, suffix, digits in ((1e9, "B", 2), (1e6, "M", 1), (1e3, "K", 1)):
        if n >= scale:
            return f"{n / scale:.{digits}f}{suffix}"
    return str(n)


def shown_component(plan: Plan, name: str) -> str:
    """A component's name as the summary prints it: the plan's "unet" is the family's denoiser (SD3 and Flux:
    "transformer"). Display only; the plan keeps its field names."""
    if name != "unet" or plan.model.family not in FAMILIES:
        return name
    return family_spec(plan.model.family).denoiser


def _shown(path: str) -> str:
    """A path below the working folder relative to it (shorter to read), any other absolute."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def model_table(plan: Plan) -> Table:
    m = plan.model
    t = _table("Model", "base", "source", "family", "prediction", "parameters")
    params = ", ".join(f"{shown_component(plan, k)} {_count(v)}" for k, v in m.params.items()) or "unknown"
    t.add_row(m.base, m.source + ("" if m.resolved else " (not downloaded)"), m.family, m.prediction, params)
    lines = [f"note: {note}" for note in m.notes]
    lines += component_file_lines(plan)
    if m.clip_skip != 1 or m.max_tokens != 75:
        windows = f" ({m.max_tokens // 75} windows of 75, joined)" if m.max_tokens != 75 else ""
        lines.append(f"text: clip skip {m.clip_skip}, {m.max_tokens} prompt tokens{windows}")
    if m.weighted_captions:
        lines.append("text: weighted captions (A1111 attention syntax scales token hidden states, as kohya)")
    if any(e.tokenizer_class.startswith("T5") for e in family_spec(m.family).text_encoders):
        lines.append(f"text: T5 reads {m.t5_max_length} tokens (model.t5_max_length)")
    lines += text_mask_lines(m)
    if family_spec(m.family).aesthetic_score:
        lines.append(
            f"conditioning: aesthetic score {m.aesthetic_score:g} in training (model.aesthetic_score), "
            "original size and crop; no target size"
        )
    t.caption = "\n".join(lines) or None
    t.caption_justify = "left"
    return t


def scaled_pos_summary(sides: tuple[int, ...]) -> str:
    """model.scaled_pos_embed: the tables the run starts with and how a forward picks one."""
    bounds = area_bounds(sides)
    tables = ", ".join(
        f"latent {side} ({patched} patches, grid {grid_of(patched)}, areas up to {bound})"
        for side, (bound, patched) in zip(sides, bounds)
    )
    return (
        f"kohya's scaled sin-cos tables replace the stored one in every forward of the run: {tables}; a "
        "latent taller or wider than its table's grid adds a table for its side (checkpointed)"
    )


def text_mask_lines(m) -> list[str]:
    """The text attention masks the run encodes (and, Flux, attends) with."""
    lines = []
    if m.t5_attention_mask:
        f = family_spec(m.family)
        n = f.t5_mask_padding
        kept = f" but the first {'one' if n == 1 else n} (kept by the model's design)" if n else ""
        keys = f"; the transformer masks the padded text keys{kept}" if f.t5_mask_in_denoiser else ""
        lines.append(f"text: T5 encodes with its padding mask (model.t5_attention_mask){keys}")
    if m.clip_attention_mask:
        lines.append("text: CLIP encodes with its padding mask (model.clip_attention_mask)")
    return lines


def component_file_lines(plan: Plan) -> list[str]:
    """Where each component's weights come from when not all from model.base (model.denoiser_file, ...)."""
    m = plan.model
    spec = family_spec(m.family)
    files = [(spec.denoiser, m.denoiser_file, "model.denoiser_file")]
    files += [
        (e.component, path, f"model.text_encoder_files[{i}]")
        for i, (e, path) in enumerate(zip(spec.text_encoders, m.text_encoder_files))
    ]
    if m.vae and Path(m.vae).is_file():
        files.append(("vae", m.vae, "model.vae"))
    lines = [f"weights: {name} from {_shown(path)} ({key})" for name, path, key in files if path]
    if lines:
        lines.append(f"weights: configs, tokenizers and the other components from {m.base}")
    mixed = "fp32" if plan.precision.mixed == "no" else plan.precision.mixed
    for merge in m.merge_adapters:  # kohya --base_weights
        lines.append(
            f"weights: merged {_shown(merge.path)} x {merge.multiplier:g} into {', '.join(merge.components)} "
            f"({merge.layers} layers; fp32 on the CPU, rounded to {mixed}; model.merge_adapters)"
        )
    return lines


def datasets_table(plan: Plan) -> Table:
    t = _table(
        "Datasets", "name", "role", "images", "samples/epoch", "resolution", "captions", "skipped", "generate"
    )
    for d in plan.datasets:
        captions = Counter(img.caption for img in d.images)
        caption = _short(captions.most_common(1)[0][0]) if captions else ""
        if len(captions) > 1:
            caption += f" (+{len(captions) - 1} more)"
        gen = _generate(d.generate) if d.generate else ""
        t.add_row(
            d.name,
            d.role,
            str(len(d.images)),
            str(d.samples_per_epoch),
            f"{d.resolution}x{d.resolution_height}" if d.resolution_height else str(d.resolution),
            caption,
            str(len(d.skipped)),
            gen,
        )
    faces = [
        f"face crop: dataset `{d.name}`: {len(d.face_crop.faces)} of {len(d.images)} images cut around their "
        f"face box, {_face_scale(d.face_crop.range)} (kohya's crop_target); latents not cached"
        for d in plan.datasets
        if d.face_crop is not None
    ]
    t.caption = "\n".join(faces + preserved_summary(plan) + image_prep_summary(plan)) or None
    t.caption_justify = "left"
    return t


def image_prep_summary(plan: Plan) -> list[str]:
    """Lines for datasets preparing images as kohya does: EXIF orientation ignored, crops without resizing,
    masks read from the red channel."""
    lines = []
    for d in plan.datasets:
        if d.exif_orientation == "ignore":
            tagged = sum(1 for img in d.images if img.orientation != 1)
            lines.append(
                f"EXIF orientation: dataset `{d.name}`: ignored, {tagged} tagged image(s) train as stored "
                "(kohya)"
            )
        if d.resize == "none":
            how = "a random window per step" if d.crop == "random" else "the centre window"
            lines.append(
                f"resize: dataset `{d.name}`: none, {how} of the unresized image (kohya, buckets off)"
            )
        if d.mask_channel == "red":
            lines.append(f"masks: dataset `{d.name}`: the mask files' red channel (kohya)")
    return lines


def captions_table(plan: Plan) -> Table | None:
    """Caption processing per dataset (kohya's options) and what it does to the text cache; None when off."""
    rows = [d for d in plan.datasets if d.caption_processing.active]
    if not rows:
        return None
    t = _table(
        "Caption processing (kohya order, drawn per sample and step)", "dataset", "processing", "text cache"
    )
    for d in rows:
        p = d.caption_processing
        t.add_row(d.name, "; ".join(_processing(p)), _caption_cache(plan, p, len(d.images)))
    return t


def _processing(p: CaptionPlan) -> list[str]:
    parts = []
    if p.caption_dropout_rate:
        parts.append(f"caption dropout {p.caption_dropout_rate:g}")
    if p.caption_dropout_every_n_epochs:
        n = p.caption_dropout_every_n_epochs
        parts.append(f"empty captions in epochs {n}, {2 * n}, ...")
    if p.enable_wildcard:
        parts.append("wildcards {a|b} and one line per step")
    fixed = f'fixed up to "{p.keep_tokens_separator}"' if p.keep_tokens_separator else ""
    fixed = " and ".join(x for x in (fixed, f"first {p.keep_tokens} fixed" if p.keep_tokens else "") if x)
    if p.token_warmup_step:
        parts.append(
            f"token warm-up {p.token_warmup_min} tags at step 0 -> all at step {p.token_warmup_step:g}"
        )
    if p.shuffle_caption:
        parts.append("shuffle tags" + (f" ({fixed})" if fixed else ""))
    if p.caption_tag_dropout_rate:
        parts.append(f"tag dropout {p.caption_tag_dropout_rate:g}")
    if p.shuffle_caption or p.caption_tag_dropout_rate or p.token_warmup_step:
        parts.append(f'tags split at "{p.caption_separator}", joined with ", "')
    elif p.keep_tokens_separator:
        parts.append(f'"{p.keep_tokens_separator}" stays in the text (nothing cuts tags)')
    if p.secondary_separator:
        parts.append(f'"{p.secondary_separator}" -> "{p.caption_separator}"')
    return parts


def _caption_cache(plan: Plan, p: CaptionPlan, images: int) -> str:
    if not plan.cache.text_embeddings:
        return "off (every caption is encoded when drawn): no extra cost"
    parts = []
    if p.varying_images:
        parts.append(
            f"{p.varying_images} of {images} images uncached (captions change per step): text encoder "
            f"forward for {p.varying_samples_per_epoch} samples/epoch"
        )
    else:
        parts.append("cached (captions never change)")
    if p.empty_text_key:
        parts.append("empty caption cached once for dropout")
    return "; ".join(parts)


def kohya_folders_table(plan: Plan) -> Table | None:
    """The `N_class tokens` sub-folders each `layout = "kohya_folders"` dataset found (None when none)."""
    rows = [(d.name, f) for d in plan.datasets for f in d.folders]
    if not rows:
        return None
    t = _table("kohya folders", "dataset", "folder", "images", "repeats", "prompt")
    for name, f in rows:
        t.add_row(name, f.name, str(f.images), str(f.repeats), _short(f.prompt) or "(empty)")
    return t


def _denoiser_held(plan: Plan) -> bool:
    """The denoiser's adapter held whole at lr_scale 0 (kohya's U-Net modules at unet_lr 0)."""
    return plan.train_denoiser and plan.adapter.kind != "none" and denoiser_held(plan.adapter.blocks)


def _block_rate(block) -> str:
    """An adapter block's learning rate: its own, its scale of its component's, or held at its init."""
    if block.lr:
        return f"lr {block.lr:g}"
    if block.lr_scale:
        return f"lr x {block.lr_scale:g}"
    return "held at init (lr 0: out of the optimizer, gradients kept for the clip norm)"


def groups_table(plan: Plan) -> Table | None:
    """Dataset groups (kohya's [[datasets]]): shown only when the spec has [[groups]]."""
    if not plan.groups:
        return None
    t = _table(
        "Dataset groups", "group", "datasets", "batch", "buckets", "instance", "class", "batches/epoch"
    )
    for g in plan.groups:
        sizes = (
            f"{g.bucket_min_size or 'res/2'}-{g.bucket_max_size or '2 res'}, "
            if g.bucket_mode == "aspect"
            else ""
        )
        t.add_row(
            g.name or "(default)",
            ", ".join(g.datasets),
            str(g.batch_size),
            f"{g.bucket_mode}, {sizes}step {g.bucket_step}",
            str(g.instance_samples),
            str(g.class_samples),
            str(g.batches_per_epoch),
        )
    return t


def buckets_table(plan: Plan) -> Table:
    grouped = bool(plan.groups)
    t = _table("Buckets", *(("group",) if grouped else ()), "size", "instance", "class", "batches/epoch", "")
    for b in plan.buckets:
        t.add_row(
            *((b.group or "(default)",) if grouped else ()),
            f"{b.size[0]}x{b.size[1]}",
            str(b.instance_samples),
            str(b.class_samples),
            str(b.batches_per_epoch),
            "fewer than batch size" if b.short else "",
        )
    return t


def _batch_sizes(plan: Plan) -> str:
    """The batch size, or each group's ("2 (default), 4 (closeups)") when groups differ."""
    sizes = {g.batch_size for g in plan.groups}
    if len(sizes) <= 1:
        return str(plan.groups[0].batch_size if plan.groups else plan.schedule.batch_size)
    return ", ".join(f"{g.batch_size} ({g.name or 'default'})" for g in plan.groups)


def schedule_table(plan: Plan) -> Table:
    s = plan.schedule
    t = _table("Schedule", "what", "value")
    rows = [
        (
            "optimizer steps",
            f"{s.total_steps} ({_plural(s.epochs, 'epoch')} x {_plural(s.steps_per_epoch, 'step')})",
        ),
        *([("start", _start(s.start))] if s.start is not None else []),
        (
            "batch",
            f"{_batch_sizes(plan)} x {s.accumulation} accumulation x {s.processes} process(es)",
        ),
        *([("processes", distributed_summary(plan))] if _shows_distributed(plan) else []),
        ("samples per epoch", f"{s.instance_samples_per_epoch} instance + {s.class_samples_per_epoch} class"),
        (
            "optimizer",
            f"{plan.optimizer.kind}, lr {plan.optimizer.lr:g}"
            + (
                " (the denoiser kept in the optimizer at rate 0: the optimizer and schedule move it, DBS606)"
                if plan.optimizer.lr == 0
                and plan.train_denoiser
                and plan.optimizer.denoiser_at_zero == "keep"
                else " (the denoiser held: gradients computed and clipped, weights still)"
                if plan.optimizer.lr == 0 and plan.train_denoiser
                else ""
            )
            + (
                f", text encoder lr {plan.optimizer.text_encoder_lr:g}"
                f"{_held(plan.optimizer.text_encoder_lr, plan)}"
                if plan.train_text_encoder
                else ""
            )
            + (
                f" ({_second_name(plan)}: {plan.optimizer.text_encoder_2_lr:g}"
                f"{_held(plan.optimizer.text_encoder_2_lr, plan)})"
                if plan.train_text_encoder and plan.optimizer.text_encoder_2_lr is not None
                else ""
            )
            + (
                f" (T5-XXL: {plan.optimizer.text_encoder_3_lr:g})"
                if plan.train_text_encoder and plan.optimizer.text_encoder_3_lr is not None
                else ""
            )
            + (f", Nesterov momentum {plan.optimizer.momentum:g}" if plan.optimizer.nesterov else "")
            + _loraplus(plan)
            + _optimizer_extras(plan)
            + _optimizer_flags(plan.optimizer)
            + (
                f", {plan.optimizer.implementation} kernel"
                if plan.optimizer.implementation != "default"
                else ""
            )
            + _clipping(plan),
        ),
        *_split_rows(plan),
        *_optimizer_block_rows(plan),
        ("lr schedule", _lr_schedule(s)),
        *_lr_rows(s),
        *_momentum_rows(s),
        ("checkpoints", _steps(s.checkpoint_steps)),
        *_checkpoint_rows(plan.checkpoints),
        ("validation", _steps(s.validation_steps) if s.validation_steps else "off"),
        *([("previews", _preview(plan.validation.preview))] if plan.validation.preview else []),
        *([("refines", _refine(plan.validation.refine))] if plan.validation.refine else []),
        *(
            [("validation text", "the text encoders in their training-step mode (seeded dropout, as kohya)")]
            if plan.validation.text_encoder_mode == "training" and s.validation_steps
            else []
        ),
        ("text encoder", _te(plan)),
        *([("Weights & Biases", _wandb(plan.logging))] if plan.logging.wandb else []),
        *(
            [("report", "off: no report.html at the end (`dbspec report OUT` writes it)")]
            if not plan.logging.report
            else []
        ),
        (
            "seed",
            f"{s.seed}: noise, timesteps, data order, flips and crops, adapter init"
            + (", class images (one seed each)" if any(d.generate for d in plan.datasets) else "")
            + (
                "; noise and timesteps seeded per micro-batch (N processes draw as one with N-fold "
                "accumulation)"
                if s.noise_streams == "micro_batch"
                else ""
            ),
        ),
    ]
    for row in rows:
        t.add_row(*row)
    return t


def _refine(r: RefinePlan) -> str:
    """The SDXL refiner's validation: which dataset images it refines, how strongly, towards which score."""
    names = ", ".join(Path(path).name for path in r.images)
    return (
        f"{len(r.images)} instance image(s) ({names}) with their captions, img2img strength {r.strength:g}, "
        f"aesthetic score {r.aesthetic_score:g} (negative {r.negative_aesthetic_score:g})"
    )


def _preview(p: PreviewPlan) -> str:
    where = {
        "builtin": "built-in",
        "diffusers": _shown(p.path),
        "hub": "hub" if p.resolved else "hub, not downloaded",
    }
    steps = ", ".join(str(k) for k in p.sampling_steps[:8]) + (", ..." if len(p.sampling_steps) > 8 else "")
    hook = f"; POST to {p.webhook} (timeout {p.webhook_timeout:g} s)" if p.webhook else ""
    return f"{p.model} ({where[p.source]}) at sampling steps {steps}; frames + animated WebP{hook}"


def _wandb(g: LoggingPlan) -> str:
    owner = f"{g.wandb_entity}/" if g.wandb_entity else ""
    return (
        f"project {owner}{g.wandb_project}, run {g.wandb_run_name!r}: metrics every {g.every} steps and the "
        "validation grids"
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _checkpoint_rows(c) -> list[tuple[str, str]]:
    """State retention and the export format, when not the defaults (every kept checkpoint resumable,
    safetensors exports)."""
    rows = []
    if c.keep_state and (c.keep == 0 or c.keep_state < c.keep):
        kept = f"of the last {c.keep} kept" if c.keep else "kept"
        rows.append(
            (
                "resume state",
                f"the newest {c.keep_state} checkpoint(s) keep it; older ones {kept} hold their weights only",
            )
        )
    if c.export_format != "safetensors" and c.exports:
        rows.append(
            (
                "export format",
                f".{c.export_format}: pickle (torch.save, as kohya writes it) for {', '.join(c.exports)}",
            )
        )
    return rows


def _steps(steps: StepRange) -> str:
    if len(steps) <= 8:
        return ", ".join(map(str, steps))
    return (
        ", ".join(map(str, steps.first(3)))
        + f", ... every {steps.every} to {steps.end} ({len(steps)} in all)"
    )


def _generate(gen: GeneratePlan) -> str:
    made = len(gen.seeds) - gen.count
    return (
        f"{gen.count} new{f', {made} made' if made else ''} "
        f"({gen.scheduler}, {gen.steps} steps, cfg {gen.guidance:g}, batch {gen.batch_size})"
    )


def preserved_summary(plan: Plan) -> list[str]:
    """One line per dataset with preserve_output: its target and what it costs."""
    total = sum(d.samples_per_epoch for d in plan.datasets) or 1
    target = (
        "the base model's prediction (adapter off) on the same noisy input, timestep and caption"
        if plan.train_denoiser
        else "the denoiser's own prediction (no adapter on it; the caption encoded with the text encoder's "
        "adapter on): zero loss and gradient, counted in the batch mean (DBS609)"
    )
    return [
        f"output preservation: dataset `{d.name}`: target = {target}; one extra no-grad denoiser forward "
        f"over its samples ({d.samples_per_epoch} of {total} per epoch, ~{d.samples_per_epoch / total:.0%})"
        for d in plan.datasets
        if d.preserve_output
    ]


def _teacher(plan: Plan) -> str:
    """Where the base-model prior's base prediction comes from."""
    if plan.loss.teacher:
        return f"frozen base copy of the {', '.join(shown_component(plan, n) for n in plan.loss.teacher)}"
    return "none: the LoRA adapters are switched off"


def _te(plan: Plan) -> str:
    if not plan.train_text_encoder:
        state = "frozen"
    else:
        stop = plan.schedule.text_encoder_stop_step
        state = f"trains until step {stop}" if stop else "trains the whole run"
    if plan.idle_text_encoders:  # train.text_encoder_idle / t5_idle = "kohya"
        names = ", ".join(shown_component(plan, n) for n in plan.idle_text_encoders)
        state += (
            f"; the adapter on {names} held untrained (kohya's modules at text_encoder_lr 0): out of the "
            "optimizer, its gradients added up and clipped"
        )
    modes = {
        "train": "every encoder in train mode in training steps (T5-XXL's dropout on)",
        "eval": "every encoder in eval mode in training steps (no dropout)",
    }
    return f"{state}; {modes[plan.text_encoder_mode]}" if plan.text_encoder_mode in modes else state


def _lycoris_switch_rows(a) -> list[tuple[str, str]]:
    """LyCORIS's LoKr full_matrix and use_scalar, when on."""
    rows = []
    if a.full_matrix:
        rows.append(
            ("  full matrix", "both Kronecker factors full on every layer, scale 1 (LyCORIS full_matrix)")
        )
    if a.scalar:
        rows.append(
            ("  scalar", "a trained scalar per layer, from 0, multiplies its update (LyCORIS use_scalar)")
        )
    return rows


def _dylora_rows(a) -> list[tuple[str, str]]:
    """DyLoRA: what each training step draws and how it scales; the rest of the run uses every rank."""
    if a.kind != "dylora":
        return []
    if a.dylora_form == "kohya":
        scale = "all ranks in the update, scaled x sqrt(rank / ((b + 1) x unit))"
    else:
        scale = "blocks 0..b in the update, scaled by alpha / (b + 1) instead of alpha / rank"
    if a.bypass:  # one block: nothing to draw
        return [("  exports", "every rank at alpha / rank (a plain LoRA file)")]
    return [
        (
            "  rank draw",
            f"each training micro-batch: block b drawn uniformly per layer (training generator); only b "
            f"trains; {scale}",
        ),
        ("  full rank", "validation, sampling and exports: every rank at alpha / rank (a plain LoRA file)"),
    ]


def _bypass_rows(a) -> list[tuple[str, str]]:
    """LyCORIS's bypass_mode on GLoRA and the rotations, when on."""
    if not getattr(a, "bypass", False):
        return []
    if a.kind == "glora":
        text = "the update on activations, W (x + a1 a2 x s) + b1 b2 x s (LyCORIS bypass_mode)"
        if a.rank_dropout:
            text += f"; rank dropout keeps the ranks drawn below {a.rank_dropout:g}, as LyCORIS's GLoRA"
        if a.bypass_dropout:
            text += f"; dropout {a.bypass_dropout:g} on each pair's output"
        return [("  bypass", text + " (while training)" if a.rank_dropout or a.bypass_dropout else text)]
    if a.kind == "tlora":
        text = "the update on activations, P (λ Q x) - P0 (λ0 Q0 x) scaled (LyCORIS bypass_mode)"
        if a.bypass_dropout:
            text += f"; dropout {a.bypass_dropout:g} on its output (while training)"
        return [("  bypass", text)]
    if a.kind == "dylora":
        return [
            ("  bypass", "W x + up (down x), unscaled, in every forward (LyCORIS bypass_mode, one block)")
        ]
    if a.kind in ("lora", "loha", "lokr"):  # its blocks of other kinds (LyCORIS map entries)
        return [
            (
                "  bypass",
                "LyCORIS bypass_mode on the blocks of other kinds: Diag-OFT / BOFT rotate the layer's "
                "output, its bias too; DyLoRA adds its one block unscaled; IA^3 scales the layer's output, "
                "its bias too",
            )
        ]
    if a.kind == "ia3":
        return [("  bypass", "the layer's output scaled, its bias too (LyCORIS bypass_mode)")]
    return [("  bypass", "the layer's output rotated, its bias too (LyCORIS bypass_mode)")]


def _full_rows(a, denoiser: str) -> list[tuple[str, str]]:
    """LyCORIS's full algo: which layers' weights it trains (copies; the base frozen)."""
    what = {
        "full": "full (LyCORIS: trained copies of the targeted layers' weights and biases)",
        "ia3": "ia3 (LyCORIS IA^3: a learned scale per output channel, W x (1 + s))",
        "diag-oft": f"diag-oft (LyCORIS: orthogonal blocks of output rows, block size hint {a.oft_block_size}"
        + (f", constraint {a.oft_constraint:g}" if a.oft_constraint else "")
        + (", rescaled" if a.oft_rescaled else "")
        + ")",
        "boft": f"boft (LyCORIS: butterfly products of orthogonal blocks of output rows, block size hint "
        f"{a.oft_block_size}"
        + (f", constraint {a.oft_constraint:g}" if a.oft_constraint else "")
        + (", rescaled" if a.oft_rescaled else "")
        + ")",
    }[a.kind]
    if a.kind == "diag-oft" and a.oft_form == "kohya":
        network, each = (
            ("networks.oft", "layer") if denoiser == "unet" else ("networks.oft_flux", "layer part")
        )
        what = (
            f"diag-oft (kohya's {network}: {a.oft_blocks} orthogonal blocks of output rows per {each}, "
            f"constraint {a.oft_constraint:g} x width)"
        )
    rows = [("adapter", what)]
    rows.append(("  targets", ", ".join(a.denoiser_targets)))
    if a.conv_targets:
        rows.append(("  conv targets", ", ".join(a.conv_targets)))
    if a.input_targets:
        rows.append(("  input side", f"{', '.join(a.input_targets)} (scale per input channel)"))
    rows.extend(_bypass_rows(a))
    rows.extend(_oft_block_rows(a))
    rows.extend(_scale_block_rows(a))
    rows.extend(_norm_dropout_rows(a))
    if a.rank_dropout or a.module_dropout:  # each layer's LyCORIS draws while training
        rank = {
            "full": "the update's output rows, weight and bias, unscaled",
            "diag-oft": "the rotations' entries, kept ones x 1 / (1 - rate)",
        }.get(a.kind, "the norm offsets'")
        rows.append(
            ("  dropout", f"rank {a.rank_dropout:g} ({rank}), module {a.module_dropout:g} (while training)")
        )
    if a.max_norm:  # diag-oft, boft: LyCORIS's apply_max_norm on the blocks
        rows.append(("  max norm", _max_norm_row(a)))
    bound = "upper bound: the whole component" if a.kind == "full" else "upper bound"
    for name, count in a.params.items():
        shown = denoiser if name == "unet" else name
        rows.append((f"  {shown} params", f"{count:,} ({bound})"))
    return rows + _start_rows(a)


def _scale_block_rows(a) -> list[tuple[str, str]]:
    """A full / IA^3 adapter's learning-rate blocks (ScaleBlock; the `exclude` patterns' rank-0 blocks left
    out) and its blocks of another kind with their sizes."""
    if a.kind not in ("full", "ia3"):
        return []
    rows = []
    for name, blocks in (("  block", a.blocks), ("  text-encoder block", a.text_encoder_blocks)):
        for b in blocks:
            if not (b.rank or b.conv_rank):
                continue
            size = ""
            if b.kind != "adapter":  # a LyCORIS map entry of another algorithm, at its own sizes
                conv = f", conv rank {b.conv_rank} alpha {b.conv_alpha:g}" if b.conv_rank else ""
                size = f"{b.kind} layers, rank {b.rank} alpha {b.alpha:g}{conv}, "
            rows.append(
                (f"{name} /{b.pattern}/" if b.pattern else f"{name} (every module)", size + _block_rate(b))
            )
    return rows


def _norm_dropout_rows(a) -> list[tuple[str, str]]:
    """The norm offsets' own rank dropout (adapter.norm_rank_dropout: LyCORIS's NormModule draws it)."""
    rate = a.norm_rank_dropout
    if not rate:
        return []
    own = " alone (the adapter's layers draw none)" if rate != a.rank_dropout else ""
    return [
        (
            "  norm rank dropout",
            f"{rate:g} on the norm offsets{own}: NormModule's mask, the offsets drawn below it kept, "
            "unscaled (while training)",
        )
    ]


def _oft_block_rows(a) -> list[tuple[str, str]]:
    """A Diag-OFT / BOFT adapter's own blocks (LyCORIS preset files' entries): their kind where it is the
    other OFT's, block-size hint, constraint, rescale and bypass_mode (the `exclude` patterns' rank-0 blocks
    left out)."""
    if a.kind not in ("diag-oft", "boft"):
        return []
    tables = (("  block", a.blocks), ("  text-encoder block", a.text_encoder_blocks))
    return [
        (
            f"{name} /{block.pattern}/",
            ("BOFT, " if block.kind == "boft" else "")
            + f"block size hint {block.rank}, constraint {block.alpha:g}"
            + _block_factor(block, a),
        )
        for name, blocks in tables
        for block in blocks
        if block.rank
    ]


def _ignored_alphas(a) -> str:
    """The starting file's alphas left unread (adapter.init_alpha "ignore"), as kohya's network does."""
    blocks = (*a.blocks, *a.text_encoder_blocks)
    if any(b.kind not in ("adapter", a.kind) for b in blocks) or a.kind in ("loha", "lokr"):
        return (  # runtime/lycoris_init.py: a run of several kinds, LyCORIS's LoHa / LoKr
            "; its alphas ignored: each LoCon / LoHa / LoKr layer trains at its own alpha / rank, as "
            "LyCORIS's modules (DyLoRA layers' checked; exports carry the trained alpha)"
        )
    if a.kind == "diag-oft":
        return (
            "; its alphas ignored: the blocks train at the adapter's constraint, as kohya's networks.oft "
            "(exports carry that alpha)"
        )
    return (
        "; its alphas ignored: the layers train at the adapter's alpha / rank, as kohya's networks.lora "
        "(exports carry that alpha)"
    )


def adapter_rows(a, denoiser: str = "unet") -> list[tuple[str, str]]:
    """The adapter: kind, ranks, where it goes and how many parameters it trains."""
    if a.kind == "none":
        return [("adapter", "none")]
    if a.kind in ("full", "ia3", "diag-oft", "boft"):
        return _full_rows(a, denoiser)
    kind = f"{a.kind} + DoRA" if a.dora else a.kind
    if a.dora and a.dora_form == "lycoris":  # LyCORIS's weight decomposition (runtime/lycoris_dora.py)
        kind += (
            f" (LyCORIS's, one magnitude per {'output row' if a.dora_axis == 'output' else 'input column'})"
        )
    if a.kind == "lokr":
        kind += f" (factor {a.factor}{', both factors low-rank' if a.decompose_both else ''}"
        kind += f"{', output split unbalanced' if a.unbalanced_factorization else ''}"
        kind += f"{', peft factorisation' if a.lokr_factorization == 'peft' else ''})"
    if a.tucker:
        kind += " with Tucker convolutions"
    if a.kind == "dylora":
        kind += (
            f" ({a.dylora_form}'s forward, blocks of {a.dylora_unit} rank{'s' if a.dylora_unit > 1 else ''})"
        )
    rows = [("adapter", f"{kind} rank {a.rank}, alpha {a.alpha:g}")]
    rows.append(("  targets", ", ".join(a.denoiser_targets)))
    if a.kind == "tlora":  # LyCORIS's T-LoRA as kohya runs it (runtime/lycoris_tlora.py)
        rows.append(
            (
                "  T-LoRA",
                "starts from each layer's SVD (first singular vectors and values), its frozen copy "
                "subtracted; no timestep rank mask (kohya sets none): every rank at every timestep",
            )
        )
    if a.conv_rank:
        rows.append(
            ("  conv targets", f"{', '.join(a.conv_targets)} (rank {a.conv_rank}, alpha {a.conv_alpha:g})")
        )
    if a.t5_targets:  # train.t5 (kohya's train_t5xxl)
        rows.append(("  T5-XXL targets", f"{', '.join(a.t5_targets)} (train.t5; outputs never cached)"))
    if a.kohya_names == "lycoris":  # lycoris.kohya's LoCon: LyCORIS's names in the kohya_lora export
        rows.append(("  kohya export names", "LyCORIS's (T5-XXL lora_te2_ on Flux / Chroma)"))
    if a.text_encoder_norms:  # LyCORIS train_norm (runtime/norm_offsets.py)
        norms = ", ".join(a.text_encoder_norms)
        rows.append(("  CLIP norm offsets", f"{norms} (LyCORIS train_norm: weight and bias offsets, from 0)"))
    second = a.text_encoder_2_norms
    if second is not None and second != a.text_encoder_norms:  # the second CLIP encoder's own
        rows.append(("  CLIP-2 norm offsets", ", ".join(second) or "none"))
    if a.denoiser_norms:  # LyCORIS train_norm on the U-Net (runtime/norm_offsets.py)
        norms = ", ".join(a.denoiser_norms)
        rows.append(
            ("  U-Net norm offsets", f"{norms} (LyCORIS train_norm: weight and bias offsets, from 0)")
        )
    rows.extend(_norm_dropout_rows(a))
    if a.kind == "lokr" and a.lokr_unit_scale:
        scale = "sqrt(rank) (LyCORIS rs_lora)" if a.lokr_rank_stabilized else "1 (LyCORIS)"
        rows.append(("  full factors", f"a layer whose two factors are both full trains at scale {scale}"))
    rows.extend(_lycoris_switch_rows(a))
    rows.extend(_dylora_rows(a))
    rows.extend(_bypass_rows(a))
    if a.multiplier != 1.0:
        rows.append(
            ("  multiplier", f"{a.multiplier:g} (the update's scale in this run; saved alpha unchanged)")
        )
    if a.rank_dropout or a.module_dropout:
        rescale = ", kept rows rescaled" if a.rank_dropout_scale else ""
        if a.rank_dropout and a.kind == "diag-oft":  # DiagOFTModule's nn.Dropout on its rotations
            rescale = " (LyCORIS Diag-OFT: the rotations' entries, kept ones x 1 / (1 - rate))"
        elif a.rank_dropout and a.kind == "lokr" and a.rank_dropout_form == "lycoris_bypass":
            rescale = (
                " (LyCORIS bypass: none on LoKr layers, LoRA blocks' ranks, LoHa blocks' rows, unscaled)"
            )
        elif a.rank_dropout and a.kind == "glora" and a.rank_dropout_form == "lycoris_bypass":
            rescale = (  # each class's own bypass mask (compiler/adapters.py _lycoris_rank_dropout_form)
                " (LyCORIS bypass: GLoRA layers keep the ranks drawn below the rate, LoRA blocks those "
                "above it, LoHa blocks' rows, none on LoKr blocks, unscaled)"
            )
        elif a.rank_dropout and a.kind != "lora" and a.rank_dropout_form == "lycoris":  # its LoCon blocks'
            rescale += " (LoRA blocks: LyCORIS LoCon's output rows, unscaled)"
        elif a.rank_dropout and a.rank_dropout_form != "kohya":  # LyCORIS LoCon's masks (lora_dropout.py)
            rescale = (
                " (LyCORIS LoCon: output rows, unscaled)"
                if a.rank_dropout_form == "lycoris"
                else " (LyCORIS LoCon bypass: ranks, unscaled)"
            )
        rows.append(
            ("  dropout", f"rank {a.rank_dropout:g}{rescale}, module {a.module_dropout:g} (while training)")
        )
    if a.down_dropout:
        rows.append(
            ("  down dropout", f"{a.down_dropout:g} on the down projection's output (while training)")
        )
    if a.output_dropout:
        rows.append(("  output dropout", f"{a.output_dropout:g} on the update's output (while training)"))
    if a.max_norm:
        rows.append(("  max norm", _max_norm_row(a)))
    if a.freeze_down:
        grads = (
            "; their gradients accumulate and count in the clip norm (kohya's)"
            if a.frozen_down_grad == "kohya"
            else ""
        )
        rows.append(("  LoRA-FA", f"down projections frozen at N(0, 2 / (in + rank)), up from zero{grads}"))
    rows.extend(_ggpo_rows(a))
    for block in a.blocks:
        conv = f", conv rank {block.conv_rank} alpha {block.conv_alpha:g}" if a.conv_rank else ""
        rows.append(
            (
                f"  block /{block.pattern}/" if block.pattern else "  block (every module)",
                ("" if block.kind == "adapter" else f"{block.kind} layers, ")
                + f"rank {block.rank} alpha {block.alpha:g}{conv}, "
                + _block_rate(block)
                + (f", optimizer group of its own (`_{block.group}`)" if block.group else "")
                + (", update scaled by 0 (its module_dropout drawn)" if block.zero_scale else "")
                + (f", SVD start {block.sig_type}" if block.sig_type != "principal" else "")
                + _random_start(block)
                + _block_factor(block, a),
            )
        )
    for block in a.text_encoder_blocks:
        rows.append(
            (
                f"  text-encoder block /{block.pattern}/",
                f"rank {block.rank} alpha {block.alpha:g}"
                + (f", {_block_rate(block)}" if block.lr or block.lr_scale != 1.0 else "")
                + (f", SVD start {block.sig_type}" if block.sig_type != "principal" else "")
                + _random_start(block)
                + _block_factor(block, a),
            )
        )
    for fused in a.fused:
        rows.append(
            (
                f"  fused {fused.name}",
                f"{fused.blocks}.*: {', '.join(fused.parts)} share one down-projection (kohya's LoRA on the "
                "fused layer)" + _fused_draw(a),
            )
        )
    for fused in a.split_fused:
        rows.append(
            (
                f"  split {fused.name}",
                f"{fused.blocks}.*: {', '.join(fused.parts)} keep their own LoRAs (kohya's split_qkv)"
                + _fused_draw(a).replace("once per layer", "once per layer, in this part order"),
            )
        )
    bound = "upper bound: the largest block rank everywhere" if a.blocks else "estimate"
    for name, count in a.params.items():
        shown = denoiser if name == "unet" else name
        rows.append((f"  {shown} params", f"{count:,} ({bound if name == 'unet' else 'estimate'})"))
    rows.extend(_start_rows(a))
    return rows


def _start_rows(a) -> list[tuple[str, str]]:
    """The file the adapter starts from (adapter.init_weights), as it loads."""
    if not a.init_weights:
        return []
    return [
        (
            "  starts from",
            f"{a.init_weights} ({a.init_layers} layers; a resume takes the checkpoint's)"
            + ("; layers it lacks keep their init, as kohya's strict=False load" if a.init_partial else "")
            + (f"; the copies at the layer plus {a.init_scale:g} x its diff" if a.init_scale != 1 else "")
            + (_ignored_alphas(a) if a.init_alpha == "ignore" else ""),
        )
    ]


def noise_summary(n: NoisePlan, flow: FlowPlan | None = None) -> str:
    """E.g.
    `N(0,1) + 0.05 offset (random strength), multires 6×0.3; input perturbation 0.1; t in [0, 1000)`; flow
    matching shows its sigma draw instead of the timestep range."""
    parts = ["N(0,1)"]
    if n.offset > 0:
        extras = [
            x
            for x in (
                "random strength" if n.offset_random_strength else "",
                f"adaptive {n.adaptive_scale:g}" if n.adaptive_scale else "",
            )
            if x
        ]
        parts.append(f" + {n.offset:g} offset" + (f" ({', '.join(extras)})" if extras else ""))
    if n.multires_iterations:
        parts.append(f", multires {n.multires_iterations}×{n.multires_discount:g}")
    if n.ip_gamma > 0:
        parts.append(
            f"; input perturbation {n.ip_gamma:g}" + (" (random strength)" if n.ip_random_strength else "")
        )
    if flow is not None:
        parts.append(f"; {flow_draw(flow, (n.min_timestep, n.max_timestep))}")
    elif n.min_timestep == n.max_timestep:
        parts.append(f"; t = {n.max_timestep}")
    else:
        parts.append(f"; t in [{n.min_timestep}, {n.max_timestep})")
    return "".join(parts)


def rollout_summary(r) -> str:
    """Scheduled sampling: the ramp and the extra compute per step."""
    ramp = (
        f"probability ramps 0 -> {r.probability:g} over steps 0-{r.ramp_steps}"
        if r.ramp_steps
        else f"probability {r.probability:g} from step 0"
    )
    return (
        f"scheduled sampling: {r.sampler}, up to {r.max_step_offset} timesteps back, {ramp}; "
        f"~{r.extra_forwards:g} extra no-grad denoiser forwards per sample once ramped "
        f"(a training step is ~3: forward + backward)"
    )


def flow_draw(f: FlowPlan, bounds: tuple[int, int] = (0, 1000)) -> str:
    """How a flow-matching step draws sigma, e.g. `σ ~ logit_normal(0, 1), the model's shift`; `bounds`: the
    timestep bounds of the floored draw."""
    density = {
        "uniform": "uniform",
        "logit_normal": f"logit_normal({f.logit_mean:g}, {f.logit_std:g})",
        "mode": f"mode({f.mode_scale:g})",
    }[f.timesteps]
    shift = f"shift {f.shift:g}" if f.shift else "the model's shift"
    if f.max_shift:  # Flux's time shift, continuous σ
        shift = f"shifted by image size (μ {f.base_shift:g} at 256 -> {f.max_shift:g} at 4096 latent patches)"
    draw = {
        "table": "",
        "continuous": ", continuous σ = shift(1 − u)",
        "floored": f", t = floor(shift(u)·({bounds[1]} − {bounds[0]}) + {bounds[0]}), σ = t/1000 "
        + ("falling with u (reversed bounds)" if bounds[0] > bounds[1] else "rising with u"),
    }[f.draw]
    return f"σ ~ {density}, {shift}{draw}" + (f", guidance {f.guidance:g}" if f.guidance else "")


def pivotal_summary(p) -> str:
    tokens = ", ".join(t.token for t in p.tokens)
    init = f'from "{p.init_word}"' if p.init_word else "random init"
    stop = f"until step {p.stop_step}" if p.stop_step else "the whole run"
    return (
        f"new tokens {tokens} ({p.vectors} vector(s) each, {init}) in {' + '.join(p.encoders)}: "
        f"{p.params:,} embedding values at lr {p.lr:g}, {stop}; captions with them are encoded every step"
    )


def fp16_scaler_summary(gradients: str = "unscaled") -> str:
    """The grad scaler of fp16 trained weights (precision.weights = "fp16") or of still-scaled gradients:
    dynamic, (fp16_gradients = "scaled") a fixed scale the optimizer steps under, or ("scaled_first") the
    first chunk stepped under it and the others through the dynamic scaler one by one."""
    s = FP16_GRAD_SCALER
    if gradients == "scaled":
        return (
            f"gradients NOT unscaled (precision.fp16_gradients = scaled): the loss "
            f"x{s['init_scale']:g}, a fixed scale; the optimizer steps from the scaled gradients, no step "
            "skipped (kohya's --fused_backward_pass hooks)"
        )
    if gradients == "scaled_first":
        return (
            "first chunk's gradients NOT unscaled (precision.fp16_gradients = scaled_first): its optimizer "
            "steps from the gradients of loss x scale, never skipped; each later chunk, in backward's order, "
            f"unscaled by the scale at that moment, skipped on inf/NaN (its LR schedule too), the scale "
            f"x{s['backoff_factor']:g} then, x{s['growth_factor']:g} after {s['growth_interval']} finite "
            f"chunk steps (start {s['init_scale']:g}; kohya's --fused_optimizer_groups hooks)"
        )
    return (
        f"fp16 gradients unscaled (kohya's patched scaler): scale {s['init_scale']:g} to start, "
        f"x{s['backoff_factor']:g} and the step skipped on inf/NaN, x{s['growth_factor']:g} after "
        f"{s['growth_interval']} finite steps"
    )


def text_dropout_summary(plan: Plan) -> str:
    """loss.text_encoder_dropout: each encoder's zeroing probability, and how it meets the text cache."""
    encoders = family_spec(plan.model.family).text_encoders
    rates = ", ".join(
        f"{shown_component(plan, e.component)} {r:g}"
        for e, r in zip(encoders, plan.loss.text_encoder_dropout)
    )
    return (
        f"each encoder's output zeroed per sample and step with p = {rates} (seeded by the sample; "
        "after the text cache, which stays valid)"
    )


def training_table(plan: Plan) -> Table:
    t = _table("Loss and precision", "what", "value")
    t.add_row("loss", plan.loss.formula)
    t.add_row("noise", noise_summary(plan.loss.noise, plan.loss.flow))
    if plan.loss.rollout is not None:
        t.add_row("rollout", rollout_summary(plan.loss.rollout))
    if plan.loss.text_encoder_dropout:
        t.add_row("text dropout", text_dropout_summary(plan))
    if plan.model.scaled_pos_embed:
        t.add_row("position tables", scaled_pos_summary(plan.model.scaled_pos_embed))
    if plan.loss.pos_embed_random_crop_rate:
        t.add_row(
            "position window",
            f"random window of the position-embedding table in {plan.loss.pos_embed_random_crop_rate:g} of "
            "training forwards (kohya's pos_emb_random_crop_rate; from the run's generator)",
        )
    if plan.pivotal is not None:
        t.add_row("pivotal", pivotal_summary(plan.pivotal))
    if plan.loss.prior == "base_model":
        t.add_row("teacher", _teacher(plan))
    for what, value in adapter_rows(plan.adapter, shown_component(plan, "unet")):
        t.add_row(what, value)
    t.add_row("mixed precision", f"{plan.precision.mixed} ({plan.precision.reason})")
    if plan.precision.weights != "fp32":
        held = f"{plan.precision.weights}{' (the adapters)' if plan.adapter.kind != 'none' else ''}"
        how = (
            "updates computed in fp32 and rounded stochastically (seeded, resumable)"
            if plan.precision.stochastic_rounding
            else "stepped directly by the optimizer (round-to-nearest, kohya's "
            f"full_{plan.precision.weights}; its state in the dtype it creates)"
        )
        t.add_row("trained weights", f"{held}, {how}")
        if plan.precision.weights == "fp16":
            t.add_row("grad scaler", fp16_scaler_summary(plan.precision.fp16_gradients))
    elif plan.precision.fp16_gradients != "unscaled":  # fp32 weights under fp16 mixed precision
        t.add_row("grad scaler", fp16_scaler_summary(plan.precision.fp16_gradients))
    for c in plan.precision.components:
        quant = f", {c.quantized} ({plan.precision.quantize_backend})" if c.quantized != "none" else ""
        ckpt = ", checkpointing" if c.gradient_checkpointing else ""
        held = ", held: nothing of it trains" if c.name == "unet" and _denoiser_held(plan) else ""
        t.add_row(f"  {shown_component(plan, c.name)}", f"{c.dtype}, {c.trainable}{held}{quant}{ckpt}")
    if plan.precision.compile is not None:
        t.add_row("torch.compile", compile_summary(plan))
    cache = plan.cache
    t.add_row(
        "latent cache",
        f"{cache.latent_hits} hits, {cache.latent_misses} to encode" if cache.latents else "off",
    )
    t.add_row(
        "text cache",
        f"{cache.text_hits} hits, {cache.text_misses} to encode" if cache.text_embeddings else "off",
    )
    t.add_row("source check", _source_check(plan))
    t.add_row("cache folder", _shown(cache.dir))
    t.add_row("output", _shown(plan.checkpoints.dir))
    return t


def _kohya_split_rows(t: Table, plan: Plan) -> None:
    """evaluation.split: kohya's validation split, dataset by dataset, and the images that also train."""
    e = plan.evaluation
    draw = "random.seed(seed) per dataset" if e.split_draw == "reseed" else "one random.seed(seed) stream"
    t.add_row("held out (kohya split)", f"split {e.split:g}, seed {e.seed}, {draw}")
    if len(set(e.dataset_splits) - {0.0}) > 1:
        t.add_row(
            "  split per dataset",
            ", ".join(f"`{d.name}` {f:g}" for d, f in zip(plan.datasets, e.dataset_splits) if f),
        )
    if len(set(e.dataset_seeds) - {-1}) > 1 or (e.split_draw == "stream" and set(e.dataset_seeds) - {-1}):
        t.add_row(
            "  seed per dataset",
            ", ".join(
                f"`{d.name}` {'stream' if s < 0 else s}"
                for d, s, f in zip(plan.datasets, e.dataset_seeds, e.dataset_splits)
                if f
            ),
        )
    for index in dict.fromkeys(e.holdout_datasets):
        rows = [
            (img, also) for img, d, also in zip(e.holdout, e.holdout_datasets, e.also_trained) if d == index
        ]
        name = f"`{plan.datasets[index].name}`" if index >= 0 else "(eval datasets)"
        trained = [img.rel for img, also in rows if also]
        t.add_row(
            f"  {'scored' if e.scored else 'held out'} of {name}",
            ", ".join(img.rel for img, _ in rows)
            + (f" (also trained, kohya's rounding: {', '.join(trained)})" if trained else " (not trained)"),
        )
    spacing = "kohya's linspace" if e.timestep_spacing == "linspace" else "midpoints"
    if e.scored:
        t.add_row(
            "fixed timesteps", f"{', '.join(map(str, e.timesteps))} ({spacing}) in {len(e.bands)} band(s)"
        )
    if e.max_images:
        t.add_row("scored per evaluation", f"the first {e.max_images} of {len(e.holdout)} held-out image(s)")
    if e.order == "kohya_loader":
        batches = f"the first {e.max_batches} batch(es)" if e.max_batches else "every batch"
        t.add_row(
            "scored per evaluation",
            f"{batches} of kohya's validation loader: " + ", ".join(e.holdout[i].rel for i in e.scored_order),
        )


def evaluation_table(plan: Plan) -> Table | None:
    """Which metrics run, when, on which images, with which models, and their cost (None when off)."""
    e = plan.evaluation
    if not e.metrics and not e.holdout:
        return None
    t = _table("Evaluation", "setting", "value")
    if e.metrics:
        t.add_row("metrics", ", ".join(e.metrics) + f" at {_steps(e.steps)}")
    if not e.scored:
        t.add_row(
            "evaluation loss", "off (evaluation.score = false): the held-out images only leave training"
        )
    if e.holdout and e.selection == "kohya_split":
        _kohya_split_rows(t, plan)
    elif e.holdout:
        held = ", ".join(img.rel for img in e.holdout)
        source = (
            f"of `{plan.datasets[e.dataset].name}` (seed {e.seed})" if e.dataset >= 0 else "(eval datasets)"
        )
        t.add_row("held out (not trained)", f"{held} {source}")
        spacing = " (kohya's linspace)" if e.timestep_spacing == "linspace" else ""
        if e.scored:
            t.add_row(
                "fixed timesteps", f"{', '.join(map(str, e.timesteps))}{spacing} in {len(e.bands)} band(s)"
            )
        if e.max_images:
            t.add_row(
                "scored per evaluation", f"the first {e.max_images} of {len(e.holdout)} held-out image(s)"
            )
    if e.log == "kohya_running_mean":
        t.add_row(
            "eval_loss logged",
            "kohya's running mean of (image, timestep) losses (appended in epoch 1, then written over)",
        )
    if e.identifier:
        t.add_row("subject", f"identifier `{e.identifier}`, class word `{e.class_word or '-'}`")
    for prompt, rewritten in zip(plan.validation.prompts, e.clip_t_prompts):
        t.add_row("clip_t prompt", f"{_short(prompt, 50)} -> {_short(rewritten, 50)}")
    if e.references:
        subject = ", ".join(f"p{i:02d}" for i in e.subject_prompts) or "none"
        t.add_row("subject images", f"validation prompts {subject} vs {len(e.references)} instance image(s)")
    for name, model in (("clip model", e.clip_model), ("dino model", e.dino_model)):
        if model is not None:
            t.add_row(name, f"{model.id} ({model.source}{': ' + _shown(model.path) if model.path else ''})")
    if plan.checkpoints.select != "none":
        t.add_row("best checkpoint", f"by {select_rule(plan.checkpoints)} (checkpoints/best, kept by keep-K)")
    for line in e.cost:
        t.add_row("cost", line)
    return t


def memory_table(plan: Plan) -> Table:
    m = plan.memory
    t = _table(f"Memory estimate ({plan.target.description or plan.target.device})", "part", "size")
    for name in ("weights", "gradients", "optimizer", "activations", "ema", "teacher"):
        value = getattr(m, name)
        if value:
            t.add_row(name, _gib(value))
    t.add_row("total", f"{_gib(m.total)} of {_gib(m.available)}" + ("" if m.fits else "  (does not fit)"))
    sharded = [f"note: {n}" for n in m.notes if n.startswith(_SHARDING_NOTES)]
    if sharded:  # what FSDP or ZeRO split across processes, and what offload moved to host memory
        t.caption = "\n".join(sharded)
        t.caption_justify = "left"
    return t


_SHARDING_NOTES = ("FSDP ", "ZeRO-", "CPU offload:")  # compiler/memory.py `_sharded`


def _shows_distributed(plan: Plan) -> bool:
    return plan.schedule.processes > 1 or plan.distributed.strategy != "ddp"


def distributed_summary(plan: Plan) -> str:
    """`[distributed]` as the Schedule table shows it: the strategy, its settings and the wait bound."""
    d = plan.distributed
    what = f"{plan.schedule.processes} x {d.strategy}"
    if d.fsdp is not None:
        what += f" ({d.fsdp.sharding}" + (", CPU offload" if d.fsdp.cpu_offload else "") + ")"
    if d.deepspeed is not None:
        z = d.deepspeed
        offload = [w for w, on in (("optimizer", z.offload_optimizer), ("weights", z.offload_params)) if on]
        what += (
            f" (ZeRO-{z.zero_stage}"
            + (f", {' and '.join(offload)} offloaded to CPU" if offload else "")
            + ")"
        )
    return what + f"; waits between processes bounded by {d.timeout_s} s"


def origins_table(plan: Plan) -> Table:
    t = _table("Where each value came from", "key", "origin", "where")
    for key, origin in sorted(plan.origins.items()):
        t.add_row(key, origin.kind, "  ".join(part for part in (origin.where, origin.note) if part))
    return t


def render_summary(plan: Plan, console: Console, *, explain: bool = False) -> None:
    parts = [
        model_table(plan),
        datasets_table(plan),
        captions_table(plan),
        kohya_folders_table(plan),
        groups_table(plan),
        buckets_table(plan),
        schedule_table(plan),
        training_table(plan),
        evaluation_table(plan),
        memory_table(plan),
    ]
    defaults = sorted(k for k, o in plan.origins.items() if o.kind in ("default", "derived"))
    if explain:
        parts.append(origins_table(plan))
    console.print(Group(*[item for p in parts if p is not None for item in (p, "")]))
    if not explain:
        console.print(
            f"{len(defaults)} values are defaults or derived; `dbspec plan --explain` lists every origin."
        )
    for text in plan.warnings:
        console.print(text, markup=False, highlight=False)


def _short(text: str, limit: int = 80) -> str:
    """A caption as the summary shows it: one table cell, however long the caption file was."""
    text = text.replace("\n", " | ")  # a multi-line (wildcard) caption in one line
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _source_check(plan: Plan) -> str:
    """What each run reads before step 1 to know no source changed since this plan (runtime/data.py)."""
    files = {path for d in plan.datasets for img in d.images for path, _ in img.source_files()}
    return f"{_plural(len(files), 'file')} hashed and decoded at the start of each run"


def _optimizer_block_rows(plan: Plan) -> list[tuple[str, str]]:
    """optimizer.blocks (kohya sdxl_train.py block_lr): each block's optimizer group, pattern and rate."""
    blocks = plan.optimizer.blocks
    if not blocks:
        return []
    head = (
        "denoiser blocks",
        f"{len(blocks)} groups by parameter path, the first pattern that matches wins; parameters no pattern "
        f"matches train at lr {plan.optimizer.lr:g}",
    )
    rows = [
        (
            f"  {b.name}",
            f"`{b.pattern}`: "
            + (
                f"lr {b.lr:g}"
                if b.lr
                else "lr 0: not trained (out of the optimizer; gradients kept and clipped)"
            ),
        )
        for b in blocks
    ]
    return [head, *rows]


def _start(st) -> str:
    """schedule.start_step / start_epoch: where the counter, the data and the LR schedule start."""
    lr = f"lr schedule from its step {st.lr_step}"
    if st.skip_data:
        return (
            f"step {st.requested}: steps {st.step + 1}-{st.end_step} train; data from epoch {st.epoch + 1}, "
            f"batch {st.position + 1} (the {st.position} before it and earlier epochs skipped); {lr}"
        )
    return (
        f"epoch {st.epoch + 1} (step {st.requested} asked, data not skipped): steps 1-{st.end_step} train "
        f"(counted from 0) on data from epoch {st.epoch + 1}'s first batch; {lr}"
    )


def _lr_schedule(s) -> str:
    """The schedule with the settings that shape it (kohya's scheduler options)."""
    extra = {
        "polynomial": f", power {s.power:g}" + (f", lr_end {s.lr_end:g}" if s.lr_end != 1e-7 else ""),
        "cosine": f", {s.cosine_cycles:g} wave(s)" if s.cosine_cycles != 0.5 else "",
        "cosine_with_restarts": f", {s.cycles} cycle(s)",
        "cosine_with_min_lr": f", {s.cycles} half-wave(s), min lr ratio {s.min_lr_ratio:g}",
        "warmup_stable_decay": f", decay {s.decay_steps} steps ({s.cycles} half-wave(s)), "
        f"min lr ratio {s.min_lr_ratio:g}, {s.warmup_type} warm-up, {s.decay_type} decay",
        "adafactor": " (transformers' AdafactorSchedule: Adafactor computes the LR itself, lr is unused)",
        "cosine_annealing": f" (torch CosineAnnealingLR), T_max {s.t_max}, eta_min {s.eta_min:g}",
        "cosine_annealing_warm_restarts": f" (torch CosineAnnealingWarmRestarts), T_0 {s.t_max}, T_mult "
        f"{s.t_mult}, eta_min {s.eta_min:g}",
        "simpletuner_cosine": f" (SimpleTuner's Cosine, no warm-up), T_0 {s.t_max}, eta_min {s.eta_min:g}",
        "simpletuner_sine": f" (SimpleTuner's Sine, no warm-up), T_0 {s.t_max}, eta_min {s.eta_min:g}",
    }.get(s.lr_schedule, "") + _torch_schedule(s)
    return f"{s.lr_schedule}, warm-up {s.warmup_steps}{extra}"


def _loraplus(plan: Plan) -> str:
    """LoRA+ in the optimizer row: the lr multiple of the LoRA up matrices (lora_B), where one is used."""
    o = plan.optimizer
    parts = []
    if plan.train_denoiser and o.loraplus_denoiser_ratio:
        parts.append(f"denoiser x{o.loraplus_denoiser_ratio:g}")
    if plan.train_text_encoder and o.loraplus_text_encoder_ratio:
        parts.append(f"text encoder x{o.loraplus_text_encoder_ratio:g}")
    # kohya's plus group at rate 0, skipped (adapter.loraplus_zero "held")
    parts += [f"{g.replace('_', ' ')} x0 (held, out of the optimizer)" for g in o.loraplus_held]
    return f"; LoRA+ lora_B lr: {', '.join(parts)}" if parts else ""


def _held(rate: float, plan: Plan) -> str:
    """A text encoder's group at rate 0: in the optimizer, never moving (DBS229), or kept there and moved by
    the optimizer or schedule (optimizer.text_encoder_at_zero = "keep" where they move it, DBS606: the plan
    records "hold" where nothing does, OneCycleLR / CyclicLR at bounds of 0 for it included)."""
    if rate != 0:
        return ""
    if plan.optimizer.text_encoder_at_zero == "keep":
        return " (kept in the optimizer at rate 0: the optimizer and schedule move it, DBS606)"
    return " (held: gradients computed and clipped, weights still)"


def _split_rows(plan: Plan) -> list[tuple[str, str]]:
    """optimizer.split: how the trained tensors are cut into chunks, one optimizer each."""
    o = plan.optimizer
    if o.split <= 1:
        return []
    order = (
        " (the denoiser's in the original layout's order, as kohya's UNet)"
        if o.split_order == "original"
        else ""
    )
    rates = [f"denoiser {o.lr:g}"] if plan.train_denoiser else []
    if plan.train_denoiser and o.blocks:  # kohya's block_lr: the denoiser's groups in their order
        held = [b.name for b in o.blocks if b.lr == 0]
        rates = [
            "denoiser (the tensors no block matches) "
            + f"{o.lr:g}, then each optimizer.blocks group above 0 in order: "
            + ", ".join(f"{b.name} {b.lr:g}" for b in o.blocks if b.lr > 0)
            + (f" ({', '.join(held)} at 0: in no chunk)" if held else "")
        ]
    if plan.train_text_encoder:
        rates.append(f"text encoder {o.text_encoder_lr:g}")
        if o.text_encoder_2_lr is not None:
            rates.append(f"second text encoder {o.text_encoder_2_lr:g}")
        if o.text_encoder_3_lr is not None:
            rates.append(f"T5-XXL {o.text_encoder_3_lr:g}")
    alike = o.kind.startswith("dadapt_") or o.kind == "prodigy"
    effect = (
        f"each {o.kind} estimates its step size d over its own chunk (logged as d*lr, d*lr/1, d*lr/2, ...)"
        if alike
        else f"the same updates as one {o.kind} (it updates each tensor on its own)"
        if o.split_train == "all"
        and o.split_first_step == "step"
        and plan.precision.fp16_gradients != "scaled_first"
        else f"each {o.kind} updates its own tensors"
    )
    return [
        (
            "optimizer split",
            f"{o.split} optimizers and LR schedules over consecutive chunks of ceil(tensors / {o.split}) "
            f"trained tensors{order}, a new chunk where the lr changes (lr {', '.join(rates)}); {effect}; "
            + _chunks(o)
            + _split_stepping(o),
        )
    ]


def _split_stepping(o) -> str:
    """optimizer.split_train / split_first_step: which chunks step, and when the first does."""
    said = ""
    if o.split_train == "first":
        said += "; only the first chunk's optimizer steps, the later chunks' tensors keep their weights"
    if o.split_first_step == "micro_batch":
        said += (
            "; the first chunk's optimizer steps after every micro-batch from that micro-batch's gradient "
            "(loss / accumulation) and clears it, the others once per step"
        )
    return said


def _chunks(o) -> str:
    """The plan's chunks, one optimizer each: tensors, components, rate; or where they are settled."""
    if not o.split_chunks:
        what = "read the denoiser's parameter paths" if o.blocks else "count the tensors"
        return f"the run cuts the chunks and notes them (the plan cannot {what})"
    shown = " | ".join(f"{c.tensors} {' + '.join(c.spans)} at {c.lr:g}" for c in o.split_chunks)
    return f"{len(o.split_chunks)} chunks (tensors, components, lr): {shown}"


def _clipping(plan: Plan) -> str:
    """Element-wise clipping, said in the optimizer row (norm clipping, the usual kind, is not)."""
    o = plan.optimizer
    if o.max_grad_norm <= 0 or o.clip_mode == "norm":
        return ""
    if o.clip_mode == "norm_per_tensor":
        return f"; each parameter's gradient clipped to norm {o.max_grad_norm:g} on its own"
    return f"; each gradient value clipped to +-{o.max_grad_norm:g}"


def _optimizer_extras(plan: Plan) -> str:
    """D-Adaptation's and Adafactor's settings in the optimizer row: how the step size comes about."""
    o = plan.optimizer
    if o.dadapt is not None:
        d = o.dadapt
        growth = f"at most x{d.growth_rate:g} per step" if d.growth_rate is not None else "unbounded growth"
        flags = [name for name in ("decouple", "use_bias_correction", "no_prox") if getattr(d, name)]
        extra = (
            f", betas {', '.join(f'{b:g}' for b in o.betas)}"
            if o.kind not in ("dadapt_sgd", "dadapt_adagrad")
            else ""
        )
        return (
            f"; D-Adaptation: step = d x lr (logged as d*lr), d estimated from d0 {d.d0:g} ({growth}), "
            "lr ~1.0 expected" + extra + (f", {', '.join(flags)}" if flags else "")
        )
    if o.prodigy is not None:
        return _prodigy_extras(o)
    if o.ademamix is not None:
        m = o.ademamix
        warm = [f"{name} over {n} steps" for name, n in (("alpha", m.t_alpha), ("beta3", m.t_beta3)) if n]
        return (
            f"; AdEMAMix{' 8-bit' if m.eight_bit else ''}{' paged' if m.paged else ''}: betas "
            f"{', '.join(f'{b:g}' for b in o.betas)}, alpha {m.alpha:g}"
            + (f", warm-up of {', '.join(warm)}" if warm else "")
        )
    if o.schedulefree is not None:
        f = o.schedulefree
        parts = [f"r {f.r:g}", f"weight_lr_power {f.weight_lr_power:g}"]
        if f.warmup_steps:
            parts.insert(0, f"its own warm-up {f.warmup_steps} steps")
        if o.kind == "radam_schedulefree":
            parts.append(f"silent_sgd_phase {f.silent_sgd_phase}")
        return (
            "; schedule-free: no LR schedule, the iterates averaged ("
            + ", ".join(parts)
            + "); checkpoints, exports, validation and evaluation use the averaged weights (eval mode)"
        )
    if o.came is not None:
        return _came_extras(o)
    if o.prodigy_plus is not None:
        p = o.prodigy_plus
        return (
            f"; ProdigyPlusScheduleFree: d0 {p.d0:g}, d_coef {p.d_coef:g}, beta3 {p.beta3:g}"
            + (", bias correction" if p.use_bias_correction else "")
            + ", each group its own d; no LR schedule, the iterates averaged; checkpoints, exports, "
            "validation and evaluation use the averaged weights (eval mode)"
        )
    if o.kind in _BNB_LION_CLASSES:
        return _bnb_lion_extras(o)
    return _adafactor_extras(o)


def _prodigy_extras(o) -> str:
    """prodigyopt's Prodigy: how its step size d comes about, each setting as the run passes it."""
    p = o.prodigy
    growth = f"at most x{p.growth_rate:g} per step" if p.growth_rate is not None else "unbounded growth"
    decay = "decoupled" if p.decouple else "added to the gradient"
    return (
        f"; Prodigy: step = d x lr (logged as d*lr), d estimated x d_coef {p.d_coef:g} from d0 {p.d0:g} "
        f"({growth}), lr ~1.0 expected, betas {', '.join(f'{b:g}' for b in o.betas)}, beta3 {p.beta3:g}, "
        f"eps {o.eps:g}, weight decay {o.weight_decay:g} ({decay})"
        + (", bias correction" if p.use_bias_correction else "")
        + (", safeguard warm-up (lr out of d's denominator)" if p.safeguard_warmup else "")
        + (f", d from every {p.slice_p}th element" if p.slice_p > 1 else "")
    )


def _optimizer_flags(o) -> str:
    """Constructor flags off their defaults: RAdam's decoupled decay, bitsandbytes' min_8bit_size."""
    flags = (
        "; weight decay decoupled (torch RAdam's decoupled_weight_decay)" if o.decoupled_weight_decay else ""
    )
    if o.amsgrad:
        flags += "; AMSGrad (torch AdamW's amsgrad: the largest second moment so far)"
    if o.dampening:
        flags += f"; momentum dampening {o.dampening:g} (torch SGD's dampening)"
    if o.min_8bit_size != BNB_MIN_8BIT_SIZE:
        flags += f"; tensors under {o.min_8bit_size} elements keep 32-bit state (min_8bit_size)"
    return flags


# plan kind -> the bitsandbytes class it builds (the runtime's BITSANDBYTES_LION_CLASSES)
_BNB_LION_CLASSES = {"lion8bit": "Lion8bit", "paged_lion": "PagedLion", "paged_lion8bit": "PagedLion8bit"}


def _bnb_lion_extras(o) -> str:
    """bitsandbytes' Lion: its class, betas and decoupled weight decay, where its one moment lives."""
    state = "its moment in 8 bits, block-wise" if o.kind.endswith("8bit") else "its moment in 32 bits"
    paged = ", paged to host memory under pressure (CUDA only)" if o.kind.startswith("paged_") else ""
    return (
        f"; bitsandbytes {_BNB_LION_CLASSES[o.kind]}: betas {', '.join(f'{b:g}' for b in o.betas)}, weight "
        f"decay {o.weight_decay:g} (decoupled), {state}{paged}"
    )


def _came_extras(o) -> str:
    c = o.came
    package = "pytorch_optimizer's " if o.kind == "pytorch_optimizer_came" else ""
    return (
        f"; {package}CAME: betas {', '.join(f'{b:g}' for b in o.betas)}, "
        f"clip_threshold {c.clip_threshold:g}, "
        f"eps ({c.eps[0]:g}, {c.eps[1]:g}), weight decay {o.weight_decay:g} (decoupled)"
    )


def _adafactor_extras(o) -> str:
    a = o.adafactor
    if a is None:
        return ""
    shape = [
        f"{name} {value:g}"
        for name, value, default in (
            ("beta1", a.beta1 or 0.0, 0.0),
            ("clip_threshold", a.clip_threshold, 1.0),
            ("decay_rate", a.decay_rate, -0.8),
        )
        if value != default
    ]
    if tuple(a.eps) != (1e-30, 1e-3):
        shape.append(f"eps ({a.eps[0]:g}, {a.eps[1]:g})")
    extra = f"; Adafactor {', '.join(shape)}" if shape else ""
    if a.relative_step:
        rate = "min(1e-6 t, 1/sqrt(t))" if a.warmup_init else "min(1e-2, 1/sqrt(t))"
        scale = " x max(1e-3, RMS of the parameter)" if a.scale_parameter else ""
        return (
            f"; Adafactor relative step: lr = {rate}{scale} at its step t (lr {o.lr:g} only logged first)"
            + extra
        )
    if a.scale_parameter:
        return "; Adafactor scale_parameter: each parameter's lr x max(1e-3, its RMS)" + extra
    return extra


def _torch_schedule(s) -> str:
    """The arguments of torch's StepLR ... OneCycleLR in the lr schedule row."""
    a = s.torch
    if a is None:
        return ""
    if s.lr_schedule == "one_cycle":
        peak = f"max_lr {a.max_lr:g}" if a.peak(a.max_lr, 1.0) == a.max_lr else "max_lr = each group's lr"
        momentum = (
            f", momentum/beta1 cycled {a.max_momentum:g} -> {a.base_momentum:g} -> {a.max_momentum:g}"
            if a.cycle_momentum
            else ""
        )
        if a.groups:
            peak = f"max_lr per group: {_group_bounds(a, ('max_lr',))}"
            cycles = {(g.max_momentum, g.base_momentum) for g in a.groups}
            if a.cycle_momentum and len(cycles) == 1:
                top, low = next(iter(cycles))
                momentum = f", momentum/beta1 cycled {top:g} -> {low:g} -> {top:g}"
            else:
                momentum = ""
        return (
            f" (torch OneCycleLR), total_steps {s.t_max}, {peak}, pct_start {a.pct_start:g}, "
            f"{a.anneal_strategy}, div_factor {a.div_factor:g}, final_div_factor {a.final_div_factor:g}"
            + (", three phases" if a.three_phase else "")
            + momentum
        )
    return {
        "step": f" (torch StepLR), step_size {a.step_size}, gamma {a.gamma:g}",
        "multi_step": f" (torch MultiStepLR), milestones {list(a.milestones)}, gamma {a.gamma:g}",
        "exponential": f" (torch ExponentialLR), gamma {a.gamma:g}",
        "linear_lr": f" (torch LinearLR), start_factor {a.start_factor:g}, end_factor {a.end_factor:g}, "
        f"total_iters {a.total_iters}",
        "constant_lr": f" (torch ConstantLR), factor {a.factor:g}, total_iters {a.total_iters}",
        "polynomial_lr": f" (torch PolynomialLR), total_iters {a.total_iters}, power {s.power:g}",
        "cyclic": _cyclic(a),
    }[s.lr_schedule]


def _lr_rows(s) -> list[tuple[str, str]]:
    """The LR at the plan's points: one row, or one per optimizer group with per-group bounds."""
    if s.group_lr_points:
        return [
            (f"lr at ({name})", ", ".join(f"step {step}: {lr:.3g}" for step, lr in points))
            for name, points in s.group_lr_points
        ]
    name = "lr at" if s.lr_schedule != "adafactor" else "relative step at"
    return [(name, ", ".join(f"step {step}: {lr:.3g}" for step, lr in s.lr_points))]


def _momentum_rows(s) -> list[tuple[str, str]]:
    """The momentum (beta1) OneCycleLR / CyclicLR set: one row, or one per group with per-group bounds."""
    rows = s.group_momentum_points or ((("", s.momentum_points),) if s.momentum_points else ())
    return [
        (
            f"momentum at ({name})" if name else "momentum at",
            ", ".join(f"step {n}: {m:.3g}" for n, m in points),
        )
        for name, points in rows
    ]


def _group_bounds(a, keys: tuple[str, ...]) -> str:
    """Per-group bounds (torch's lists): `name base_lr -> max_lr` for each optimizer group, and its momentum
    cycle when the groups' differ."""
    momenta = len({(g.base_momentum, g.max_momentum) for g in a.groups}) > 1 and a.cycle_momentum
    parts = []
    for g in a.groups:
        peak = f"{g.max_lr:g}" if a.peak(g.max_lr, 1.0) == g.max_lr else f"{g.rate:g} (its lr)"
        part = f"{g.name} {g.base_lr:g} -> {peak}" if "base_lr" in keys else f"{g.name} {peak}"
        parts.append(part + (f" (momentum {g.max_momentum:g} -> {g.base_momentum:g})" if momenta else ""))
    return ", ".join(parts)


def _group_momentum(a) -> str:
    """The momentum cycle of per-group bounds when every group has the same (else each group's shows it)."""
    cycles = {(g.max_momentum, g.base_momentum) for g in a.groups}
    if not a.cycle_momentum or len(cycles) != 1:
        return ""
    top, low = next(iter(cycles))
    return f", momentum/beta1 cycled {top:g} -> {low:g}"


def _face_scale(face_range: tuple[float, float]) -> str:
    """How a face-crop range scales the images (a reversed one: kohya's one scale of [hi, hi], DBS616)."""
    lo, hi = face_range
    if lo > hi:
        return f"reversed range: the one scale of [{hi:g}, {hi:g}], no draw, and kohya's shift"
    return f"scale drawn per step so the face spans 1/{hi:g} to 1/{lo:g} of the resolution"


def _cyclic(a) -> str:
    """torch CyclicLR's arguments in the lr schedule row."""
    if a.groups:
        down = a.step_size_down or a.step_size_up
        gamma = f", gamma {a.gamma:g}" if a.cyclic_mode == "exp_range" else ""
        return (
            f" (torch CyclicLR), per group base_lr -> max_lr: {_group_bounds(a, ('base_lr', 'max_lr'))}; "
            f"{a.cyclic_mode}{gamma}, up {a.step_size_up:g} / down {down:g}" + _group_momentum(a)
        )
    peak = f"max_lr {a.max_lr:g}" if a.peak(a.max_lr, 1.0) == a.max_lr else "max_lr = each group's lr"
    down = a.step_size_down or a.step_size_up
    gamma = f", gamma {a.gamma:g}" if a.cyclic_mode == "exp_range" else ""
    momentum = (
        f", momentum/beta1 cycled {a.max_momentum:g} -> {a.base_momentum:g}" if a.cycle_momentum else ""
    )
    return (
        f" (torch CyclicLR), base_lr {a.base_lr:g} (every group's), {peak}, {a.cyclic_mode}{gamma}, "
        f"up {a.step_size_up:g} / down {down:g}{momentum}"
    )


def select_rule(c) -> str:
    """The best-checkpoint rule as the summary shows it: a metric, or the weighted sum ("the highest -2 x
    eval_loss + 0.5 x clip_t + 1 x dino")."""
    if c.select != "weighted":
        return c.select
    text = ""
    for m, w in c.select_weights:
        sign = "-" if m == "eval_loss" else "+"
        text += f" {sign} {w:g} x {m}" if text else f"{'-' if sign == '-' else ''}{w:g} x {m}"
    return f"the highest {text}"


def _max_norm_row(a) -> str:
    """kohya's --scale_weight_norms as the plan runs it (runtime/max_norm.py)."""
    if a.max_norm_form == "lycoris" and a.kind in ("diag-oft", "boft"):
        fused = " (a fused layer's parts one layer: their blocks' one norm)" if a.fused else ""
        return (
            f"{a.max_norm:g}: after each optimizer step (and micro-batch) a layer whose trained blocks' norm "
            f"exceeds it gets them times limit / norm{fused} (lycoris.kohya's apply_max_norm_regularization; "
            "0, 0 logged when none is)"
        )
    if a.max_norm_form == "lycoris" and a.kind == "tlora":
        return (
            f"{a.max_norm:g}: after each optimizer step (and micro-batch) a layer whose update norm times "
            "alpha / rank exceeds it gets its trained singular values times limit / norm, the frozen start's "
            "not (TLoraModule.apply_max_norm; 0, 0 logged when none is)"
        )
    others = {b.kind for b in (*a.blocks, *a.text_encoder_blocks) if b.kind not in ("adapter", a.kind)}
    if a.max_norm_form == "lycoris" and (others or a.kind in ("glora", "dylora")):  # several kinds
        return (
            f"{a.max_norm:g}: after each optimizer step (and micro-batch) each LoRA, LoHa, LoKr, Diag-OFT or "
            "BOFT layer whose LyCORIS norm exceeds it is scaled as its kind's LyCORIS module scales it; "
            "full, IA^3, GLoRA and DyLoRA layers never are (LyCORIS's base apply_max_norm; lycoris.kohya's "
            "apply_max_norm_regularization, 0, 0 logged when none is scaled)"
        )
    if a.max_norm_form == "lycoris":
        what = (
            "each of its factors times the n-th root of limit / norm"
            if a.kind == "lokr"
            else "its scalar times limit / norm"
            + ("" if a.scalar else " (a fixed scalar at 1, never trained)")
        )
        masked = (
            ", its rank-dropout mask drawn inside the norm"
            if a.rank_dropout and a.kind in ("lora", "loha", "lokr")
            else ""
        )
        return (
            f"{a.max_norm:g}: after each optimizer step (and micro-batch) a layer whose LyCORIS update norm "
            f"exceeds it gets {what} (lycoris.kohya's apply_max_norm_regularization{masked}; 0, 0 logged "
            "when none is)"
        )
    fused = ", a fused layer's parts as one" if a.fused else ""
    # kohya's alpha buffers: the starting file's (plan.adapter.max_norm_alphas)
    alphas = (
        f", the norm at the starting file's alphas ({len(a.max_norm_alphas)})" if a.max_norm_alphas else ""
    )
    return (
        f"{a.max_norm:g}: after each optimizer step (and micro-batch) a layer whose update norm exceeds it "
        f"is scaled down to it, up and down by the square root (kohya's scale_weight_norms{fused}{alphas})"
    )


def _fused_draw(a) -> str:
    """kohya's dropouts on a fused layer: one draw for all its parts (runtime/fused_dropout.py)."""
    on = [
        n
        for n, v in (
            ("down", a.down_dropout),
            ("rank", a.rank_dropout),
            ("module", a.module_dropout),
            ("output", a.output_dropout),
        )
        if v
    ]
    return f"; {', '.join(on)} dropout drawn once per layer" if on else ""


def _block_factor(block, a) -> str:
    """A block's own LoKr split factor and switches, DyLoRA unit, OFT row rescale and bypass_mode (LyCORIS
    preset files' map entries)."""
    out = f", LoKr factor {block.factor}" if block.factor else ""
    out += f", DyLoRA blocks of {block.unit}" if block.unit else ""
    for key in (
        "decompose_both",
        "full_matrix",
        "tucker",
        "unbalanced_factorization",
        "rank_stabilized",
        "rank_dropout_scale",
        "scalar",
        "rescaled",
    ):
        if getattr(block, key) != "adapter":
            out += f", {key} {getattr(block, key)}"
    kind = a.kind if block.kind == "adapter" else block.kind  # a Diag-OFT / BOFT / DyLoRA adapter's own
    if block.bypass is not None and block.bypass != a.bypass and kind in BYPASS_KINDS:
        out += ", bypass_mode on (LyCORIS's bypass forward)" if block.bypass else ", bypass_mode off"
    return out


def _ggpo_rows(a) -> list[tuple[str, str]]:
    """kohya lora_flux's LoRA-GGPO (runtime/ggpo.py)."""
    if a.ggpo_sigma is None:
        return []
    layer = "fused layer" if a.fused else "layer"
    return [
        (
            "  GGPO",
            f"sigma {a.ggpo_sigma:g}, beta {a.ggpo_beta:g}: a normal weight perturbation per {layer} and "
            "forward (while training), scaled by the norms taken before each optimizer step; none in the "
            "first step",
        )
    ]


def _second_name(plan: Plan) -> str:
    """The second text encoder's name in the optimizer row: Flux's is T5-XXL (train.t5)."""
    second = family_spec(plan.model.family).text_encoders[1:2]
    return "T5-XXL" if second and second[0].tokenizer_class.startswith("T5") else "second"


def _random_start(block) -> str:
    """A T-LoRA block's random start (LyCORIS's use_data_init false): drawn as the adapter is built."""
    return "" if block.data_init else ", SVD of a random matrix (drawn from the run's seed)"
