"""The public models' module paths, torch-free: each denoiser's (a diffusers UNet2DConditionModel,
SD3Transformer2DModel, FluxTransformer2DModel or ChromaTransformer2DModel) and each text encoder's
(transformers' CLIP text models and T5-XXL's encoder), generated from the structural keys of their configs.

The compiler checks the spec's adapter targets and block patterns against them (DBS607: a target or pattern
that names no layer of the public model matches nothing at runtime) and counts a block-indexed target per
block (compiler/adapters.py). Paths are the layers that hold parameters (Linear, convolution, norm,
embedding), as diffusers and transformers name them; text-encoder paths as runtime/blocks.py searches them
(`<component>.` + CLIP's path with `text_model.`). tests/runtime/test_denoiser_layout.py builds each model on
the meta device from the same public configs and compares the paths and the parameter counts."""

from __future__ import annotations

import re
from functools import cache

import attrs


@attrs.frozen
class UNetShape:
    """The structural keys of a UNet2DConditionModel config (per down block; up blocks mirror them)."""

    down_block_types: tuple[str, ...]
    block_out_channels: tuple[int, ...]
    transformer_layers: tuple[int, ...]  # transformer_layers_per_block, per down block
    layers_per_block: int = 2
    add_embedding: bool = False  # addition_embed_type "text_time" (SDXL's micro-conditioning)


@attrs.frozen
class TransformerShape:
    """The structural keys of an MM-DiT config: SD3's joint blocks (`num_layers`, the first
    `dual_attention_layers` with a second image attention, qk_norm), or Flux's and Chroma's double
    (`num_layers`) and single (`num_single_layers`) blocks."""

    num_layers: int
    width: int  # the blocks' hidden width (num_attention_heads x attention_head_dim 64 / 128)
    num_single_layers: int = 0  # Flux, Chroma
    dual_attention_layers: int = 0  # SD3.5 medium: blocks 0 .. n-1 have attn2
    qk_norm: bool = False  # SD3.5: RMS norms on q and k (Flux and Chroma always have them)
    guidance_embeds: bool = False  # Flux.1 dev's guidance embedding
    approximator_layers: int = 0  # Chroma's distilled_guidance_layer depth (no modulation Linears)


@attrs.frozen
class PublicLayout:
    """One public model's denoiser layout; `hub_ids` the hub models that have it (() for the family's
    others: a local folder or single file is checked against every layout of its family)."""

    title: str  # as messages name the model: "SD3 medium"
    shape: UNetShape | TransformerShape
    hub_ids: tuple[str, ...] = ()


# --- UNets (diffusers' unet/config.json of each model) -------------------------------------------------
_CROSS, _PLAIN = "CrossAttnDownBlock2D", "DownBlock2D"
# runwayml/stable-diffusion-v1-5, CompVis/stable-diffusion-v1-4, stabilityai/stable-diffusion-2(-1)(-base):
# one layout (SD2's linear projections change a layer's kind, not its path)
SD_UNET = UNetShape((_CROSS, _CROSS, _CROSS, _PLAIN), (320, 640, 1280, 1280), (1, 1, 1, 0))
# stabilityai/stable-diffusion-xl-base-1.0: transformer_layers_per_block [1, 2, 10]
SDXL_UNET = UNetShape((_PLAIN, _CROSS, _CROSS), (320, 640, 1280), (0, 2, 10), add_embedding=True)
# stabilityai/stable-diffusion-xl-refiner-1.0: transformer_layers_per_block 4
SDXL_REFINER_UNET = UNetShape(
    (_PLAIN, _CROSS, _CROSS, _PLAIN), (384, 768, 1536, 1536), (0, 4, 4, 0), add_embedding=True
)
# --- MM-DiTs (transformer/config.json) ------------------------------------------------------------------
# stabilityai/stable-diffusion-3-medium-diffusers: 24 joint blocks, 24 heads of 64
SD3_MEDIUM = TransformerShape(24, 1536)
# stabilityai/stable-diffusion-3.5-medium: 24 joint blocks, dual_attention_layers 0-12, qk_norm rms_norm
SD35_MEDIUM = TransformerShape(24, 1536, dual_attention_layers=13, qk_norm=True)
# stabilityai/stable-diffusion-3.5-large (and -turbo): 38 joint blocks, 38 heads of 64
SD35_LARGE = TransformerShape(38, 2432, qk_norm=True)
# black-forest-labs/FLUX.1-dev: 19 double and 38 single blocks, 24 heads of 128
FLUX_DEV = TransformerShape(19, 3072, 38, guidance_embeds=True)
# lodestones/Chroma1-HD (and -Base): Flux's blocks
CHROMA = TransformerShape(19, 3072, 38, approximator_layers=5)


def denoiser_paths(shape: UNetShape | TransformerShape) -> frozenset[str]:
    """The module paths of the denoiser's layers that hold parameters."""
    return _unet_paths(shape) if isinstance(shape, UNetShape) else _transformer_paths(shape)


_RESNET = ("norm1", "conv1", "time_emb_proj", "norm2", "conv2")
_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def _resnet(prefix: str, shortcut: bool) -> list[str]:
    return [f"{prefix}.{p}" for p in (*_RESNET, *(("conv_shortcut",) if shortcut else ()))]


def _attention(prefix: str, depth: int) -> list[str]:
    """A Transformer2DModel: its group norm, projections and `depth` transformer blocks."""
    out = [f"{prefix}.{p}" for p in ("norm", "proj_in", "proj_out")]
    for k in range(depth):
        block = f"{prefix}.transformer_blocks.{k}"
        out += [f"{block}.{p}" for p in ("norm1", "norm2", "norm3", "ff.net.0.proj", "ff.net.2")]
        out += [f"{block}.{a}.{p}" for a in ("attn1", "attn2") for p in _ATTENTION]
    return out


@cache
def _unet_paths(shape: UNetShape) -> frozenset[str]:
    channels, depth, n = shape.block_out_channels, shape.transformer_layers, len(shape.down_block_types)
    out = ["conv_in", "time_embedding.linear_1", "time_embedding.linear_2", "conv_norm_out", "conv_out"]
    if shape.add_embedding:
        out += ["add_embedding.linear_1", "add_embedding.linear_2"]
    for i in range(n):
        before = channels[max(i - 1, 0)]
        for j in range(shape.layers_per_block):
            # a ResNet changing width has a 1x1 shortcut
            out += _resnet(f"down_blocks.{i}.resnets.{j}", j == 0 and before != channels[i])
            if depth[i]:
                out += _attention(f"down_blocks.{i}.attentions.{j}", depth[i])
        if i < n - 1:
            out.append(f"down_blocks.{i}.downsamplers.0.conv")
    out += _resnet("mid_block.resnets.0", False) + _resnet("mid_block.resnets.1", False)
    out += _attention("mid_block.attentions.0", depth[-1] or max(depth))
    for i in range(n):  # the up blocks mirror the down blocks; every ResNet joins a skip: a shortcut
        level = n - 1 - i
        for j in range(shape.layers_per_block + 1):
            out += _resnet(f"up_blocks.{i}.resnets.{j}", True)
            if depth[level]:
                out += _attention(f"up_blocks.{i}.attentions.{j}", depth[level])
        if i < n - 1:
            out.append(f"up_blocks.{i}.upsamplers.0.conv")
    return frozenset(out)


_JOINT_ATTENTION = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0")
_QK_NORMS = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")


@cache
def _transformer_paths(shape: TransformerShape) -> frozenset[str]:
    if shape.num_single_layers:
        return _flux_paths(shape)
    out = ["pos_embed.proj", "context_embedder", "norm_out.linear", "proj_out"]
    out += [f"time_text_embed.{e}.linear_{k}" for e in ("timestep_embedder", "text_embedder") for k in (1, 2)]
    for i in range(shape.num_layers):
        b = f"transformer_blocks.{i}"
        last = i == shape.num_layers - 1  # context_pre_only: no context output projection or MLP
        out += [f"{b}.norm1.linear", f"{b}.norm1_context.linear", f"{b}.ff.net.0.proj", f"{b}.ff.net.2"]
        out += [f"{b}.attn.{p}" for p in _JOINT_ATTENTION]
        if not last:
            out += [f"{b}.attn.to_add_out", f"{b}.ff_context.net.0.proj", f"{b}.ff_context.net.2"]
        if shape.qk_norm:
            out += [f"{b}.attn.{p}" for p in _QK_NORMS]
        if i < shape.dual_attention_layers:
            out += [f"{b}.attn2.{p}" for p in (*_ATTENTION, *(("norm_q", "norm_k") if shape.qk_norm else ()))]
    return frozenset(out)


def _flux_paths(shape: TransformerShape) -> frozenset[str]:
    """Flux's (and Chroma's: no modulation Linears, an approximator instead of the embedders) blocks."""
    chroma = shape.approximator_layers > 0
    out = ["x_embedder", "context_embedder", "proj_out"]
    if chroma:
        a = "distilled_guidance_layer"
        out += [f"{a}.in_proj", f"{a}.out_proj"]
        for i in range(shape.approximator_layers):
            out += [f"{a}.layers.{i}.linear_1", f"{a}.layers.{i}.linear_2", f"{a}.norms.{i}"]
    else:
        embedders = ("timestep_embedder", "text_embedder", *(("guidance_embedder",) * shape.guidance_embeds))
        out += [f"time_text_embed.{e}.linear_{k}" for e in embedders for k in (1, 2)]
        out.append("norm_out.linear")
    for i in range(shape.num_layers):
        b = f"transformer_blocks.{i}"
        out += [f"{b}.attn.{p}" for p in (*_JOINT_ATTENTION, "to_add_out", *_QK_NORMS)]
        out += [f"{b}.{f}.net.{p}" for f in ("ff", "ff_context") for p in ("0.proj", "2")]
        if not chroma:
            out += [f"{b}.norm1.linear", f"{b}.norm1_context.linear"]
    for i in range(shape.num_single_layers):
        b = f"single_transformer_blocks.{i}"
        out += [f"{b}.attn.{p}" for p in ("to_q", "to_k", "to_v", "norm_q", "norm_k")]
        out += [f"{b}.proj_mlp", f"{b}.proj_out", *((f"{b}.norm.linear",) if not chroma else ())]
    return frozenset(out)


_BLOCK_PATH = re.compile(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)")


def block_linear_in_out(shape: UNetShape | TransformerShape, path: str) -> int | None:
    """in + out features of the Linear at `path` inside an MM-DiT's blocks (LoRA's parameters per unit of
    rank there), None for other paths and for UNets. Widths of w-wide blocks: the attention projections
    w -> w, the MLPs w -> 4w -> w, the modulations w -> 6w (SD3.5 medium's dual-attention blocks 9w, the last
    joint block's context stream 2w, a single block's 3w); a single block's proj_out reads 5w (attention and
    MLP joined)."""
    found = _BLOCK_PATH.fullmatch(path)
    if not isinstance(shape, TransformerShape) or found is None or path not in denoiser_paths(shape):
        return None
    w, single, index, layer = shape.width, found[1] != "transformer_blocks", int(found[2]), found[3]
    if layer.rpartition(".")[2] in _QK_NORMS:  # the RMS norms on q and k: no Linear
        return None
    if single:
        return {"proj_mlp": 5 * w, "proj_out": 6 * w, "norm.linear": 4 * w}.get(layer, 2 * w)
    if layer.endswith(("net.0.proj", "net.2")):
        return 5 * w
    if layer == "norm1.linear":
        return (10 if index < shape.dual_attention_layers else 7) * w
    if layer == "norm1_context.linear":
        pre_only = not shape.num_single_layers and index == shape.num_layers - 1  # SD3's last context stream
        return (3 if pre_only else 7) * w
    return 2 * w


def block_ranges(shape: UNetShape | TransformerShape) -> str:
    """The denoiser's block lists and their index ranges, as a message names the valid ones."""
    if isinstance(shape, TransformerShape):
        parts = [f"transformer_blocks 0-{shape.num_layers - 1}"]
        if shape.dual_attention_layers:
            parts[0] += f" (attn2 in 0-{shape.dual_attention_layers - 1})"
        if shape.num_single_layers:
            parts.append(f"single_transformer_blocks 0-{shape.num_single_layers - 1}")
        return ", ".join(parts)
    n, depth = len(shape.down_block_types), shape.transformer_layers
    levels = [i for i in range(n) if depth[i]]

    def attentions(indices: list[int], side: str) -> str:
        return ", ".join(f"{side}.{i}: {depth[i if side == 'down' else n - 1 - i]}" for i in indices)

    return (
        f"down_blocks 0-{n - 1}, mid_block, up_blocks 0-{n - 1}; transformer_blocks per attention "
        f"({attentions(levels, 'down')}, mid: {depth[-1] or max(depth)}, "
        f"{attentions(sorted(n - 1 - i for i in levels), 'up')})"
    )


# --- text encoders (transformers' configs: num_hidden_layers / num_layers) ------------------------------


@cache
def text_encoder_paths(model_class: str, layers: int) -> frozenset[str]:
    """The layers of a CLIP text model (with `text_model.`, as runtime/blocks.py searches them; the projection
    of CLIPTextModelWithProjection) or of T5's encoder."""
    if model_class.startswith("T5"):
        out = ["shared", "encoder.embed_tokens", "encoder.final_layer_norm"]
        out.append("encoder.block.0.layer.0.SelfAttention.relative_attention_bias")
        for i in range(layers):
            b = f"encoder.block.{i}.layer"
            out += [f"{b}.0.SelfAttention.{p}" for p in ("q", "k", "v", "o")]
            out += [f"{b}.1.DenseReluDense.{p}" for p in ("wi_0", "wi_1", "wo")]
            out += [f"{b}.0.layer_norm", f"{b}.1.layer_norm"]
        return frozenset(out)
    t = "text_model"
    out = [f"{t}.embeddings.token_embedding", f"{t}.embeddings.position_embedding", f"{t}.final_layer_norm"]
    if model_class.endswith("WithProjection"):
        out.append("text_projection")
    for i in range(layers):
        b = f"{t}.encoder.layers.{i}"
        out += [f"{b}.self_attn.{p}_proj" for p in ("q", "k", "v", "out")]
        out += [f"{b}.{p}" for p in ("layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2")]
    return frozenset(out)
