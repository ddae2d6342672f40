"""A device-memory estimate for one training step, from parameter counts alone (no torch, no weights).

What is counted (bytes on the training device, per process):

- weights: every component's parameters in the dtype it is held in; quantised bases at 1 byte (int8, fp8)
  or 0.5 byte (int4) plus their scales, with embeddings and norms left in the held dtype; LoRA adapters fp32
  (bf16 with precision.weights = "bf16").
- gradients: one per trainable parameter, in that parameter's dtype (fp32 master weights and adapters: 4;
  bf16 weights or adapters, precision.weights: 2).
- optimizer state per trainable parameter (`OPTIMIZER_STATE_BYTES`).
- EMA: an fp32 copy of the trainable parameters, unless it is offloaded to the CPU.
- teacher: the frozen base copies the plan lists in `loss.teacher` (a base-model prior in a full fine-tune),
  in the mixed dtype.
- activations: the heuristic in `activation_bytes` (see its docstring and docs/memory.md).
- sharding (`[distributed]`, see compiler/distributed.py): FSDP or DeepSpeed ZeRO over N processes divide the
  trained models' optimizer state and gradients (and with full_shard / ZeRO-3 their weights, plus a gathered
  working set) by N; CPU offload moves those shards to host memory (named in the notes, not counted).
- overhead: `OVERHEAD_FRACTION` of the sum plus `OVERHEAD_FIXED` for the CUDA context, cuBLAS/cuDNN
  workspaces and caching-allocator fragmentation; part of `total`, reported in the notes.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from dbspec.compiler.distributed import Sharding
from dbspec.families import FAMILIES, family_spec

from dbspec.plan.model import ComponentPlan, MemoryPlan
from dbspec.spec.model import DADAPT_KINDS, SCHEDULEFREE_KINDS

__all__ = ["activation_bytes", "estimate_memory", "lora_param_count"]

GIB = 2**30
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
MIXED_BYTES = {"no": 4, "fp16": 2, "bf16": 2}
# Stored bytes per quantised weight, plus scales: quanto int8/fp8 scale per output channel (~0), int4 a
# bf16 scale and shift per group of 128 (4 / 128 = 0.03 bytes); rounded up.
QUANTIZED_BYTES = {"int8": 1.0 + 0.01, "fp8": 1.0 + 0.01, "int4": 0.5 + 0.04, "nf4": 0.5 + 0.02}
# bitsandbytes NF4 (Linear4bit, its default double quantisation): 4 bits per weight, then per block of 64 an
# int8 absmax (1/64 byte per weight) and per 256 blocks an fp32 scale of those (4/16384): 0.516, rounded up.
# torchao int8 weight-only and bitsandbytes LLM.int8 keep one fp32/bf16 scale per output row, as quanto does.
# quanto quantises Linear and Conv2d weights only; token embeddings, norms and biases stay in the held dtype.
# Shares from the real models: CLIP-L token embedding 37.9M of 123.1M (31%), OpenCLIP-bigG 63.2M of 694.7M
# (9%), OpenCLIP-H (SD2) 50.6M of 340.4M (15%); UNet biases and norms < 1%.
# T5-XXL (SD3's text_encoder_3): its shared embedding is 131.6M of 4762.3M (3%).
UNQUANTIZED_SHARE = {"unet": 0.01, "text_encoder": 0.31, "text_encoder_2": 0.10, "text_encoder_3": 0.03}
# torchao and bitsandbytes quantise Linear layers only: a denoiser's convolutions stay in float too, the
# family's `non_linear_denoiser_share` (dbspec/families.py).
LINEAR_ONLY_BACKENDS = ("torchao", "bitsandbytes")
# The cast backend (kohya's fp8_base): every weight, bias and norm a plain float8_e4m3fn, 1 byte and no scale;
# only embeddings (a text encoder's) stay in the held dtype.
CAST_BYTES = 1.0
OPTIMIZER_STATE_BYTES = {
    "adamw": 8,  # exp_avg + exp_avg_sq, fp32
    "radam": 8,  # exp_avg + exp_avg_sq, fp32 (torch RAdam)
    "adamw8bit": 2,  # bitsandbytes blockwise 8-bit moments (tensors < 4096 elements keep 8 bytes)
    # bitsandbytes' paged AdamW: the same state, counted on the device (paging moves it only under pressure)
    "paged_adamw": 8,
    "paged_adamw8bit": 2,
    "adafactor": 4,  # upper bound: a first moment when beta1 is set; the factored second moment is small
    # prodigyopt 1.1: exp_avg (only with betas[0] > 0), exp_avg_sq like the parameter; s and p0 hold every
    # slice_p-th element (flatten()[::slice_p]), so 16 bytes at slice_p 1 and 8 + 8 / slice_p above
    # (PRODIGY_SLICED_BYTES), 4 fewer at betas[0] = 0 (_prodigy_state_bytes)
    "prodigy": 16,
    "lion": 4,  # exp_avg only
    # bitsandbytes' Lion: its one moment, 8-bit block-wise (1 byte, plus one fp32 absmax per block of 256:
    # 4/256) or fp32 (paged_lion); tensors under 4096 elements keep 4 bytes
    "lion8bit": 1 + 4 / 256,
    "paged_lion": 4,
    "paged_lion8bit": 1 + 4 / 256,
    # dadaptation: the moments plus s (and the start point x0, the previous gradient), fp32
    "dadapt_adam": 12,  # s, exp_avg, exp_avg_sq
    "dadapt_adam_preprint": 12,  # s, exp_avg, exp_avg_sq
    "dadapt_adagrad": 12,  # alphak, sk, x0
    "dadapt_adan": 20,  # s, exp_avg, exp_avg_diff, exp_avg_sq, pre_grad
    "dadapt_adan_ip": 20,  # s, exp_avg, exp_avg_diff, exp_avg_sq, pre_grad
    "dadapt_lion": 8,  # exp_avg, s
    "dadapt_sgd": 12,  # z, s, x0
    # bitsandbytes AdEMAMix: exp_avg, exp_avg_sq and the slow EMA (8-bit: one byte each, blockwise); the
    # paged ones sit on the device until it runs short
    "ademamix": 12,
    "paged_ademamix": 12,
    "ademamix8bit": 3,
    "paged_ademamix8bit": 3,
    # schedulefree: z (and exp_avg_sq for the Adam ones), fp32
    "adamw_schedulefree": 8,
    "radam_schedulefree": 8,
    "sgd_schedulefree": 4,
    # came_pytorch CAME: exp_avg (4) plus, per >=2-D tensor, row and column vectors of the squared gradient
    # and of the instability (twice Adafactor's factored state), per 1-D tensor a full exp_avg_sq
    "came": 8,
    # pytorch_optimizer's CAME: the same tensors (and a 0-d RMS per parameter)
    "pytorch_optimizer_came": 8,
    # prodigy-plus-schedule-free's ProdigyPlusScheduleFree: z like the parameter (4), p0 and s over every 11th
    # element in bf16 (4/11), the second moment factored (small) where a side reaches 32, else full (4)
    "prodigy_plus_schedulefree": 5,
}
SGD_MOMENTUM_BYTES = 4
PRODIGY_SLICED_BYTES = 8  # Prodigy's s and p0 per element they keep (fp32)
PRODIGY_P0_BYTES = 4  # p0's share of them: a scalar instead where the tensor is all zero at its first step
# The share of an adapter's parameters in tensors that start all zero (a fresh adapter, no init_weights):
# LoRA's / DyLoRA's up matrices (out x rank of rank x (in + out): half on square layers, and on an MLP's two
# layers together; an estimate elsewhere, e.g. cross-attention's k / v), IA^3's scales, Diag-OFT's and BOFT's
# blocks (their rescales of ones aside). Other kinds (LoHa, LoKr, GLoRA, T-LoRA, full) and LoRA's
# convolutions (their down is in x k x k) claim none: their p0 counted in full, an upper bound.
ZERO_START_SHARE = {"lora": 0.5, "dylora": 0.5, "ia3": 1.0, "diag-oft": 1.0, "boft": 1.0}
# Optimizers that create their state like the parameter (zeros_like / clone): over bf16 weights stepped
# directly (precision.weights_rounding = "nearest", kohya's full_bf16) the state is bf16 too, half the bytes.
# Measured by stepping each on bf16 parameters; transformers' Adafactor, came_pytorch and every bitsandbytes
# optimizer keep fp32 (or 8-bit) state whatever the parameter's dtype; pytorch_optimizer's CAME follows the
# parameter (its 1-D and factored statistics take the gradient's dtype).
PARAM_DTYPE_STATE_OPTIMIZERS = (
    "adamw",
    "pytorch_optimizer_came",
    "sgd",
    "radam",
    "prodigy",
    "lion",
    *DADAPT_KINDS,
    *SCHEDULEFREE_KINDS,
)
OVERHEAD_FRACTION = 0.10
OVERHEAD_FIXED = GIB // 2
FP32_ACTIVATION_FACTOR = (
    1.7  # mixed = "no": measured fp32 / autocast ratio (not 2: autocast keeps norms fp32)
)
_ACTIVATION_NOTE = {
    "pixel": "activations are a heuristic calibrated on SD1.5/SDXL UNets (docs/memory.md); expect +-40%",
    "token": "activations: bytes per token measured at real width on the CPU, extrapolated from a few blocks "
    "(docs/memory.md); expect +-25%",
}
# Trained text encoders' activations per sample (77 tokens): CLIP-L ~31 MB, OpenCLIP-bigG ~140 MB, rounded up.
TEXT_ENCODER_ACTIVATION_BYTES = {"text_encoder": 64 * 2**20, "text_encoder_2": 256 * 2**20}


def lora_param_count(
    linear_shapes: Mapping[str, tuple[int, int]], targets: tuple[str, ...], rank: int
) -> int:
    """Adapter parameters: rank * (in + out) for each Linear (or 1x1 conv) whose name matches a target.

    `linear_shapes` maps module name -> (out_features, in_features). Matching is peft's suffix rule for a list
    of target names: the module name equals the target or ends with "." + target.
    """
    if rank < 0:
        raise ValueError(f"LoRA rank must be >= 0, got {rank}")
    total = 0
    for name, (out_features, in_features) in linear_shapes.items():
        if any(name == target or name.endswith("." + target) for target in targets):
            total += rank * (in_features + out_features)
    return total


def estimate_memory(
    *,
    components: tuple[ComponentPlan, ...],
    trainable_params: Mapping[str, int],
    optimizer: str,
    momentum: float = 0.0,
    batch_size: int,
    max_bucket: tuple[int, int],
    family: str,
    gradient_checkpointing: bool,
    mixed: str,
    ema: bool,
    ema_offload: bool,
    teacher: tuple[str, ...],
    available: int,
    quantize_backend: str = "quanto",
    sharding: Sharding | None = None,
    t5_tokens: int = 0,
    stochastic_rounding: bool = True,
    adapter_dtype: str = "fp32",
    slice_p: int = 1,
    held_params: int = 0,
    zero_start: int = 0,
    cast_float: tuple[int, bool] = (0, True),
) -> MemoryPlan:
    """Peak device bytes of one training step at the largest bucket.

    `trainable_params` maps a fully trained component's name to its parameter count, and a LoRA-trained
    component's name (or "lora", for all adapters together) to its adapter parameter count. `batch_size` is
    the samples in one forward pass per process, class images included. `available` 0 means unknown.
    `sharding`: what each process holds of the trained models under FSDP or ZeRO (None: DDP, all of it).
    `t5_tokens`: the T5 sequence length of families that join it to the denoiser's tokens (SD3, Flux).
    `stochastic_rounding`: bf16 trained weights are updated through an fp32 state (True), or stepped directly
    by the optimizer, whose state then takes their dtype where it creates it like the parameter (False; fp16
    weights always).
    `adapter_dtype`: the dtype adapters are held in (precision.weights; peft's default fp32).
    `slice_p`: Prodigy's slice_p (its s and p0 keep every slice_p-th element of each tensor).
    `held_params`: adapter parameters among `trainable_params` held out of the optimizer (a denoiser held
    whole at lr_scale 0): their weights and gradients count, no optimizer state.
    `zero_start`: stepped adapter parameters in tensors that are all zero at the optimizer's first step
    (prodigy_zero_start): Prodigy keeps a scalar p0 for each such tensor, not a copy.
    `cast_float`: (the denoiser's parameters the cast backend leaves in their held dtype, whether that count
    is exact; compiler/cast_float.py): LyCORIS full layers, whose weights kohya's cast finds moved into
    FullModule's copies.
    """
    notes: list[str] = []
    groups = _trained_groups(components, trainable_params, DTYPE_BYTES[adapter_dtype])
    trainable = sum(g.count for g in groups)
    adapters = sum(g.count * g.param_bytes for g in groups if g.adapter)
    weights = sum(_weight_bytes(c, notes, quantize_backend, family, cast_float) for c in components)
    weights += adapters
    gradients = sum(g.count * g.param_bytes for g in groups)
    state_bytes = _optimizer_state_bytes(optimizer, momentum, notes, slice_p)
    optimizer_bytes = int((trainable - held_params) * state_bytes)
    bf16_trained = sum(g.count for g in groups if g.param_bytes == 2)
    bf16_state = bool(bf16_trained) and not stochastic_rounding and optimizer in PARAM_DTYPE_STATE_OPTIMIZERS
    if bf16_state:  # that state is bf16 for the bf16 weights: half of it (the held ones have none)
        stepped = bf16_trained - (held_params if DTYPE_BYTES[adapter_dtype] == 2 else 0)
        optimizer_bytes -= int(stepped * state_bytes / 2)
    if optimizer == "prodigy" and zero_start:  # p0 a scalar for an all-zero tensor (prodigyopt 1.1)
        halved = bf16_state and DTYPE_BYTES[adapter_dtype] == 2
        optimizer_bytes -= int(zero_start * PRODIGY_P0_BYTES / slice_p / (2 if halved else 1))
        notes.append(
            f"prodigy keeps no p0 copy of the {zero_start:,} adapter parameters that start at zero (LoRA's "
            "up matrices, IA^3's scales, OFT's blocks): prodigyopt stores a scalar for an all-zero tensor"
        )
    if sharding is not None and sharding.sharded:
        # the models that go through accelerate's prepare (every trained one, its frozen base included)
        wrapped = sum(
            _weight_bytes(c, [], quantize_backend, family, cast_float)
            for c in components
            if c.trainable != "frozen"
        )
        weights, gradients, optimizer_bytes = _sharded(
            sharding, weights, wrapped + adapters, gradients, optimizer_bytes, notes
        )
    if bf16_trained:
        held = [c.dtype for c in components if c.trainable == "full" and c.dtype in ("bf16", "fp16")]
        notes.append(
            _bf16_weights_note(optimizer, stochastic_rounding, bf16_state, (held or [adapter_dtype])[0])
        )
    ema_bytes = _ema_bytes(trainable, ema, ema_offload, notes)
    teacher_bytes = _teacher_bytes(components, teacher, mixed)
    # The UNet's activations count whenever anything trains: a text encoder's gradients flow back through it.
    full_fp32 = sum(c.params for c in components if c.trainable == "full" and c.dtype == "fp32")
    trained_text = tuple(
        c.name for c in components if c.name.startswith("text_encoder") and c.trainable != "frozen"
    )
    activations = (
        activation_bytes(
            family=family,
            batch_size=batch_size,
            max_bucket=max_bucket,
            gradient_checkpointing=gradient_checkpointing,
            mixed=mixed,
            autocast_weight_params=full_fp32,
            text_encoders=trained_text,
            denoiser_params=sum(c.params for c in components if c.name == "unet"),
            t5_tokens=t5_tokens,
        )
        if trainable
        else 0
    )
    subtotal = weights + gradients + optimizer_bytes + ema_bytes + teacher_bytes + activations
    overhead = int(subtotal * OVERHEAD_FRACTION) + OVERHEAD_FIXED
    notes.append(
        f"total includes {_gib(overhead)} overhead: {OVERHEAD_FRACTION:.0%} for allocator fragmentation plus "
        f"{_gib(OVERHEAD_FIXED)} for the CUDA context and cuBLAS/cuDNN workspaces"
    )
    by_token = family in FAMILIES and FAMILIES[family].token_activation is not None
    notes.append(_ACTIVATION_NOTE["token" if by_token else "pixel"])
    total = subtotal + overhead
    if available <= 0:
        notes.append("device memory unknown (pass --target cuda:24GB to check): assumed to fit")
    return MemoryPlan(
        weights=weights,
        gradients=gradients,
        optimizer=optimizer_bytes,
        activations=activations,
        ema=ema_bytes,
        teacher=teacher_bytes,
        total=total,
        available=max(available, 0),
        fits=available <= 0 or total <= available,
        notes=tuple(notes),
    )


def activation_bytes(
    *,
    family: str,
    batch_size: int,
    max_bucket: tuple[int, int],
    gradient_checkpointing: bool,
    mixed: str,
    autocast_weight_params: int = 0,
    text_encoders: tuple[str, ...] = (),
    denoiser_params: int = 0,
    t5_tokens: int = 0,
) -> int:
    """Activation bytes held at the peak of the backward pass, for one step at the largest bucket.

    bytes = batch_size x latent_pixels x C[family][checkpointing] x (1.7 when mixed = "no")
            + 2 x autocast_weight_params when mixed precision runs without checkpointing
            + batch_size x per-sample activations of each trained text encoder

    latent_pixels = (width / 8) x (height / 8). Where C comes from (docs/memory.md has the tables):

    - Measured: one training step of the real SD1.5 and SDXL UNets (diffusers, random weights, bf16 autocast
      with GroupNorm/LayerNorm in fp32 as CUDA autocast runs them, SDPA) on the CPU at 32x32 and 64x64
      latents; peak resident memory with every tensor in its own mmap and parameter gradients dropped.
      Without checkpointing the cost is linear: SD1.5 300 KB, SDXL 525 KB per latent pixel. With
      checkpointing it is ~30 KB per pixel plus ~0.2 GB for the block being recomputed: 87 KB per pixel
      for SD1.5 at 512 px, 43 KB for SDXL at 1024 px.
    - Published: ShivamShrirao's T4 table for SD1.x (fp16, xformers, checkpointing) puts a second sample at
      +0.48 GB, 126 KB per latent pixel, and +2.5 GB without checkpointing.
    - Chosen between the two, rounded up: SD1/SD2 350 KB plain, 100 KB checkpointed; SDXL 600 KB, 60 KB.

    mixed = "no" keeps fp32 activations: 1.7x (measured; not 2x, as norms already run in fp32). Fully trained
    fp32 weights under autocast are cast to 16-bit copies that the backward pass keeps (measured: +1.72 GB
    for SD1.5) unless checkpointing recomputes them. LoRA runs save somewhat less (frozen Linear layers
    outside the targets keep no inputs); the estimate does not credit that.

    Transformer families (SD3, Flux: the family's `token_activation`) count tokens instead of latent pixels:
    latent_pixels / 4 image patches + the text tokens of the joint sequence (SD3: 77 CLIP + `t5_tokens`;
    Flux: `t5_tokens`), times the bytes per token of the public model whose denoiser size is nearest
    `denoiser_params` (measured at real width with few blocks and extrapolated, docs/memory.md).
    """
    if mixed not in MIXED_BYTES:
        raise ValueError(f"unknown mixed precision {mixed!r}; known: {sorted(MIXED_BYTES)}")
    width, height = max_bucket
    latent_pixels = (width // 8) * (height // 8)
    try:
        plain, checkpointed = family_spec(family).activation_bytes_per_latent_pixel
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    per_pixel = checkpointed if gradient_checkpointing else plain
    precision = FP32_ACTIVATION_FACTOR if mixed == "no" else 1.0
    unet = batch_size * latent_pixels * per_pixel * precision
    tokens = family_spec(family).token_activation
    if tokens is not None:  # transformer families: (image patches + text tokens) x bytes per token
        count = latent_pixels // tokens.patch**2 + tokens.clip_tokens + t5_tokens
        unet = batch_size * count * tokens.per_token(denoiser_params, gradient_checkpointing) * precision
    casts = autocast_weight_params * 2 if mixed != "no" and not gradient_checkpointing else 0
    text = batch_size * sum(
        TEXT_ENCODER_ACTIVATION_BYTES[name] for name in text_encoders if name in TEXT_ENCODER_ACTIVATION_BYTES
    )
    return int(unet + casts + text)


@attrs.frozen(kw_only=True)
class _Trained:
    name: str  # component name, or "lora" for all adapters together
    count: int
    param_bytes: int  # bytes per trainable parameter; its gradient has the same dtype
    adapter: bool


def _bf16_weights_note(
    optimizer: str, stochastic_rounding: bool, bf16_state: bool, dtype: str = "bf16"
) -> str:
    """bf16 or fp16 (`dtype`, precision.weights) trained weights: what they and the optimizer state take."""
    head = f"{dtype} weights: weights and gradients take 2 bytes per trained parameter; "
    if stochastic_rounding:
        return head + (
            "the optimizer state stays fp32 (stochastic rounding computes each update in fp32, one "
            "parameter at a time)"
        )
    if bf16_state:
        return head + (
            f"{optimizer} steps them directly (round-to-nearest) and creates its state like them: {dtype}, "
            "half its fp32 bytes"
        )
    return head + (
        f"{optimizer} steps them directly (round-to-nearest) but keeps its own state dtype (fp32, or 8-bit "
        "for bitsandbytes): counted as with fp32 weights"
    )


def _trained_groups(
    components: tuple[ComponentPlan, ...], trainable_params: Mapping[str, int], adapter_bytes: int = 4
) -> list[_Trained]:
    """Check `trainable_params` against the components: a typo must not silently drop a gradient."""
    by_name = {c.name: c for c in components}
    groups = []
    for name, count in trainable_params.items():
        component = by_name[name] if name in by_name else None
        if count < 0:
            raise ValueError(f"trainable_params[{name!r}] is negative: {count}")
        if name == "lora" or (component is not None and component.trainable == "lora"):
            groups.append(
                _Trained(name=name, count=count, param_bytes=adapter_bytes, adapter=True)
            )  # adapters in fp32 (peft's), or bf16 with precision.weights
        elif component is not None and component.trainable == "full":
            groups.append(
                _Trained(name=name, count=count, param_bytes=DTYPE_BYTES[component.dtype], adapter=False)
            )
        else:
            raise ValueError(
                f"trainable_params names {name!r}, which is not a trained component "
                f"(trained: {sorted(c.name for c in components if c.trainable != 'frozen')}, or 'lora')"
            )
    missing = [c.name for c in components if c.trainable == "full" and c.name not in trainable_params]
    if missing:
        raise ValueError(f"trainable_params lacks the fully trained component(s) {missing}")
    return groups


def _weight_bytes(
    component: ComponentPlan,
    notes: list[str],
    backend: str = "quanto",
    family: str = "",
    cast_float: tuple[int, bool] = (0, True),
) -> int:
    held = DTYPE_BYTES[component.dtype]
    if component.quantized == "none":
        return component.params * held
    share = UNQUANTIZED_SHARE[component.name] if component.name in UNQUANTIZED_SHARE else 0.0
    kept = "embeddings, norms and biases"
    stored = QUANTIZED_BYTES[component.quantized]
    if backend in LINEAR_ONLY_BACKENDS and component.name == "unet" and family:
        share = max(share, family_spec(family).non_linear_denoiser_share)
        kept = "convolutions, norms and biases"
    if backend == "cast":
        stored, kept = CAST_BYTES, "embeddings"
        share = 0.0 if component.name == "unet" else share
    per_param = (1 - share) * stored + share * held
    notes.append(
        f"{component.name} {component.quantized} ({backend}): "
        f"{stored:.2f} bytes "
        f"per quantised weight including scales; {kept} (~{share:.0%}) stay {component.dtype}"
    )
    kept_float = cast_float[0] if backend == "cast" and component.name == "unet" else 0
    if kept_float:
        notes.append(_cast_float_note(component, kept_float, cast_float[1]))
    return int(component.params * per_param + kept_float * (held - stored))


def _cast_float_note(component: ComponentPlan, count: int, exact: bool) -> str:
    """The plan note for the full-algo layers the cast backend leaves float (compiler/cast_float.py)."""
    how = (
        "counted from the model's files"
        if exact
        else "an upper bound, the whole denoiser (no diffusers folder to read the matched layers' sizes from)"
    )
    return (
        f"{component.name}: {count:,} parameters of LyCORIS full layers stay {component.dtype} under the "
        f"cast backend (kohya's --fp8_base casts after FullModule took their weights; {how})"
    )


# CAME's factored state has Adafactor's shape twice over (squared gradient and instability; 1-D tensors
# keep one full exp_avg_sq, no instability). Measured from the stock shapes (meta device): SD1.5 UNet 4.26
# bytes per parameter, SDXL UNet 0.76, a CLIP text encoder under 0.1; a rank-r LoRA matrix about 8/r.
_CAME_NOTE = (
    "came state counted as 8 bytes per parameter: exp_avg (4) plus the factored second moment and "
    "instability (row and column vectors per matrix, a full vector per bias or norm), which take about 4.3 "
    "bytes per parameter of an SD1.5 UNet (its total 3% above this count), 0.8 of an SDXL UNet, under 0.1 of "
    "a text encoder and about 8/rank of LoRA matrices (rank 1: above this count)"
)

# pytorch_optimizer 4.1's CAME steps each group's tensors of one shape class at once (foreach): the squared
# gradients and the residuals are two temporaries as large as those gradients while optimizer.step runs
# (after backward has freed the activations, which are usually larger)
_PYTORCH_OPTIMIZER_CAME_NOTE = (
    "pytorch_optimizer_came: "
    + _CAME_NOTE.removeprefix("came ")
    + "; its foreach step also holds two gradient-sized temporaries per parameter group (8 bytes per "
    "parameter) during optimizer.step, after the activations are freed: not counted"
)

_PRODIGY_PLUS_NOTE = (
    "prodigy_plus_schedulefree state counted as 5 bytes per parameter: z (4), Prodigy's p0 and s over every "
    "11th element in bf16 (0.36) and the second moment, factored where a side reaches 32 elements (about "
    "4/rank of LoRA matrices, so above this count at rank 4 or less) and full for smaller tensors (4)"
)


def _prodigy_state_bytes(beta1: float, slice_p: int, notes: list[str]) -> float:
    """prodigyopt 1.1's state per parameter: exp_avg_sq, exp_avg only where betas[0] > 0 (Prodigy.step
    creates and reads it under `if beta1 > 0`), and s and p0 over every slice_p-th element."""
    moments = OPTIMIZER_STATE_BYTES["prodigy"] - PRODIGY_SLICED_BYTES
    kept = "exp_avg and exp_avg_sq"
    if beta1 <= 0:
        moments, kept = moments // 2, "exp_avg_sq (no exp_avg at betas[0] = 0)"
    elif slice_p == 1:
        return OPTIMIZER_STATE_BYTES["prodigy"]
    notes.append(
        f"prodigy state counted as {moments} + {PRODIGY_SLICED_BYTES}/{slice_p} bytes per parameter: "
        f"{kept}, and s and p0 over every {slice_p}th element (slice_p)"
    )
    return moments + PRODIGY_SLICED_BYTES / slice_p


def prodigy_zero_start(adapter, params: int) -> int:
    """How many of an adapter's `params` (its stepped parameters) sit in tensors that are all zero at
    Prodigy's first step (ZERO_START_SHARE), where prodigyopt 1.1 keeps a scalar p0 (`if p.any()` ... else
    `torch.tensor(0)`): none with a starting file (init_weights), blocks of another kind or LoRA's
    convolutions."""
    blocks = (*getattr(adapter, "blocks", ()), *getattr(adapter, "text_encoder_blocks", ()))
    if getattr(adapter, "init_weights", "") or getattr(adapter, "conv_rank", 0):
        return 0
    if any(getattr(b, "kind", "adapter") not in ("adapter", adapter.kind) for b in blocks):
        return 0
    return int(params * ZERO_START_SHARE.get(adapter.kind, 0.0))


def _optimizer_state_bytes(optimizer: str, momentum: float, notes: list[str], slice_p: int = 1) -> float:
    """Optimizer state bytes per trainable (fp32) parameter."""
    if optimizer == "sgd":
        return SGD_MOMENTUM_BYTES if momentum > 0 else 0
    if optimizer == "prodigy":  # `momentum` is Prodigy's betas[0] here
        return _prodigy_state_bytes(momentum, slice_p, notes)
    if optimizer not in OPTIMIZER_STATE_BYTES:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {sorted([*OPTIMIZER_STATE_BYTES, 'sgd'])}")
    if optimizer == "adafactor" and momentum > 0:  # `momentum` is Adafactor's beta1 here
        notes.append(
            "adafactor state counted as 8 bytes per parameter, an upper bound: beta1's first moment (4) and "
            "the factored second moment (at most 4)"
        )
        return 2 * OPTIMIZER_STATE_BYTES["adafactor"]
    if optimizer == "adafactor":
        # Values kept per parameter (rows + columns of each tensor's last two dimensions, full vectors for
        # biases and norms), measured on the stock architectures: SD1.5 UNet 0.53 (its 3x3 convolutions keep
        # 2/3, 1x1 ones 2x), SDXL UNet 0.095, CLIP text encoders under 0.01; LoRA matrices about 1/rank.
        notes.append(
            "adafactor state counted as 4 bytes per parameter, an upper bound: without beta1 "
            "the state is the factored second moment, about 2.1 bytes per parameter of an SD1.5 UNet, 0.4 of "
            "an SDXL UNet, under 0.04 of a text encoder and about 4/rank for LoRA matrices"
        )
    if optimizer == "came":
        notes.append(_CAME_NOTE)
    if optimizer == "pytorch_optimizer_came":
        notes.append(_PYTORCH_OPTIMIZER_CAME_NOTE)
    if optimizer == "prodigy_plus_schedulefree":
        notes.append(_PRODIGY_PLUS_NOTE)
    if optimizer in ("adamw8bit", "paged_adamw8bit"):
        notes.append(
            f"{optimizer}: 2 bytes per parameter; bitsandbytes keeps tensors under 4096 elements at 8 bytes"
        )
    if optimizer in ("lion8bit", "paged_lion8bit"):
        notes.append(
            f"{optimizer}: 1.02 bytes per parameter (Lion's one moment in 8 bits plus an fp32 absmax per "
            "block of 256); bitsandbytes keeps tensors under 4096 elements at 4 bytes"
        )
    if optimizer.startswith("paged_"):
        notes.append(
            f"{optimizer}: its state counted on the device; on CUDA bitsandbytes may page the state of "
            "tensors of 100k elements or more to host memory when the GPU runs out (slower steps, no "
            "out-of-memory)"
        )
    return OPTIMIZER_STATE_BYTES[optimizer]


def _sharded(
    sharding: Sharding, weights: int, wrapped: int, gradients: int, optimizer: int, notes: list[str]
) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes on one device when `sharding` splits the `wrapped` weights (of
    `weights`), the gradients and the optimizer state across processes or moves them to host memory."""
    n, s = sharding.processes, sharding
    shard_w = int(wrapped * s.weights)
    gathered = int(wrapped * s.gathered) if s.weights < 1.0 or s.host_weights else 0
    device_w = weights - wrapped + (0 if s.host_weights else shard_w) + gathered
    shard_g, shard_o = int(gradients * s.gradients), int(optimizer * s.optimizer)
    parts = ["optimizer state", "gradients"] + (["weights"] if s.weights < 1.0 else [])
    notes.append(
        f"{s.label} over {n} process(es): each holds 1/{n} of the trained models' {', '.join(parts)}"
        + (f" (whole: {_gib(optimizer)} optimizer state, {_gib(gradients)} gradients)" if n > 1 else "")
        + (
            f"; {_gib(gathered)} of gathered blocks (the running and the prefetched one, a heuristic share)"
            if gathered
            else ""
        )
    )
    host = [
        (what, size)
        for what, size, moved in (
            ("optimizer state", shard_o, s.host_optimizer),
            ("gradients", shard_g, s.host_gradients),
            ("weights", shard_w, s.host_weights),
        )
        if moved
    ]
    if host:
        listed = ", ".join(f"{_gib(size)} {what}" for what, size in host)
        notes.append(
            f"CPU offload: {listed} in host memory per process ({n} process(es) on a machine: {n} x that), "
            "0 on the device"
        )
    return device_w, 0 if s.host_gradients else shard_g, 0 if s.host_optimizer else shard_o


def _ema_bytes(trainable: int, ema: bool, offload: bool, notes: list[str]) -> int:
    if not ema:
        return 0
    if offload:
        notes.append(f"EMA weights offloaded: {_gib(trainable * 4)} in CPU memory, 0 on the device")
        return 0
    return trainable * 4


def _teacher_bytes(components: tuple[ComponentPlan, ...], teacher: tuple[str, ...], mixed: str) -> int:
    """The frozen copies the plan decided on (loss.teacher), held in the mixed dtype (fp32 without)."""
    return sum(c.params for c in components if c.name in teacher) * MIXED_BYTES[mixed]


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"
