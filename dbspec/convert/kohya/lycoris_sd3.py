"""LyCORIS's lycoris.kohya network with sd3_train_network.py (lycoris-lora 4.1.3 lycoris/kohya.py and
config.py, on kohya's library/sd3_models.py MMDiT): what differs from Flux (lycoris_flux.py, which maps it).

What LyCORIS builds on kohya's SD3 (checked in a scratch run of lycoris-lora 4.1.3's create_network on a
2-block MMDiT with RMS q/k norms and SD3.5 medium's second image attention, and sd3_train_network.py's
text-encoder list [CLIP-L, CLIP-G, T5-XXL], for algo locon, lokr and loha alike):

- presets full-lin, attn-mlp, unet-transformer-only: every Linear of each joint block's context_block and
  x_block (class SingleDiTBlock, "SD3.5" in LyCORIS's lists: attn.qkv, attn.proj, attn2.qkv / proj where the
  block has them, mlp.fc1, mlp.fc2, adaLN_modulation.1; the last block's pre-only context stream its qkv and
  modulation only): networks.lora_sd3's set; and the timestep embedder's two Linears (t_embedder.mlp.0 and
  .2: 4.1.3 lists TimestepEmbedding, kohya's class name, for Anima), diffusers'
  time_text_embed.timestep_embedder.linear_1 / linear_2. Nothing else of the MMDiT (context_embedder and
  y_embedder are no listed class, the final layer is UnPatch, not FinalLayer).
- full, unet-only: the same and, their convolutions on (enable_conv), the patch convolution x_embedder.proj
  (4.1.3 lists PatchEmbed; diffusers' pos_embed.proj, a 2x2 stride-2 Conv2d) at conv_dim / conv_alpha: for
  algo=lora / locon LoConModule's 2x2 `lora_down` and 1x1 `lora_up`, peft's LoRA on a convolution
  (conv_targets, written as kohya's lora_unet_x_embedder_proj); for lokr / loha LokrModule / LohaModule,
  peft's LoKr / LoHa on it, their Tucker form (use_tucker) peft's use_effective_conv2d; LoCon's Tucker
  form (lora_mid) runtime/locon_tucker.py's layer, its lora_mid written by the lora_sd3 writer; algo=full
  FullModule's copy of it.
- attn-only: no MMDiT module (its attention class is AttentionLinears; CrossAttention / SelfAttention match
  nothing): CLIP-L's and CLIP-G's CLIPAttention only, the denoiser untouched (train.denoiser = false).
- full, full-lin, attn-mlp: CLIP-L's and CLIP-G's CLIPAttention and CLIPMLP Linears (lora_te1_, lora_te2_);
  unet-only, unet-transformer-only: no text-encoder module.
- unet-convblock-only, ia3: no module at all. T5-XXL (lora_te3): never, train_t5xxl or not (no T5 class).

The fused q/k/v Linears get one module each, as on Flux: algo=lora / locon is networks.lora_sd3's network
with shared down-projections (fused_projections), written in kohya's lora_sd3 layout (runtime/sd3_kohya.py);
LoKr / LoHa one Kronecker / Hadamard update per fused Linear, written in LyCORIS's layout under kohya's SD3
names (runtime/lycoris_export.py), the last block's context modulation with its (scale, shift) rows put back
in kohya's (shift, scale) order. lycoris-lora's create_network_from_weights loads all three files onto
kohya's MMDiT blocks (sd3_models.MMDiTBlock and TimestepEmbedding at tiny-sd3's width, scratch run): every
module found (19 of 19, 20 with the patch convolution, both CLIPs' too), each module's update on kohya's
layer the trained parts' to 1.3e-7
(tests/runtime/test_lycoris_sd3.py checks lycoris-lora's modules on the stacked fused Linears)."""

from __future__ import annotations

from typing import Any

from dbspec.convert.kohya.lycoris_flux import CLIP_ATTENTION, LycorisLayout
from dbspec.convert.kohya.network import KOHYA_TEXT_TARGETS
from dbspec.families import family_spec

# kohya's TimestepEmbedding (t_embedder.mlp.0 / .2) in diffusers' names
TIMESTEP = ("timestep_embedder.linear_1", "timestep_embedder.linear_2")


def _sd3_targets(layers: str, lokr: bool) -> tuple[list[str], list[dict[str, Any]], str]:
    """SD3's denoiser targets: networks.lora_sd3's joint-block Linears and the timestep embedder's (LoKr and
    LoHa the same: no suffix names a layer outside them), or none ("none": attn-only)."""
    if layers == "none":
        return [], [], "LyCORIS's attn-only classes match no module of kohya's MMDiT (AttentionLinears)"
    targets = [*family_spec("sd3").kohya_lora_targets, *TIMESTEP]
    note = "every Linear of the joint blocks (SingleDiTBlock) and the timestep embedder (TimestepEmbedding)"
    if layers == "blocks+patch":
        note += "; the patch convolution (PatchEmbed) in conv_targets"
    return targets, [], note


SD3 = LycorisLayout(
    title="SD3",
    script="sd3_train_network.py",
    presets={
        "full": ("blocks+patch", list(KOHYA_TEXT_TARGETS)),
        "unet-only": ("blocks+patch", []),
        "full-lin": ("blocks", list(KOHYA_TEXT_TARGETS)),
        "attn-mlp": ("blocks", list(KOHYA_TEXT_TARGETS)),
        "unet-transformer-only": ("blocks", []),
        "attn-only": ("none", CLIP_ATTENTION),
    },
    nothing={
        "unet-convblock-only": "its classes (ResnetBlock2D, Downsample2D, Upsample2D) and names (conv_in, "
        "conv_out) match nothing in kohya's MMDiT, CLIP-L or CLIP-G",
        "ia3": "its names (to_k, to_v, ff.net.2; k_proj, v_proj, mlp.fc2) are patterns matched from the "
        "start of each module path, which match nothing in kohya's MMDiT, CLIP-L or CLIP-G",
    },
    refused={},
    targets=_sd3_targets,
    convs={"blocks+patch": family_spec("sd3").kohya_conv_targets},  # kohya's x_embedder.proj
    bare_norms={
        layers: "joint blocks' norm1 / norm2 (SingleDiTBlock)" for layers in ("blocks", "blocks+patch")
    },
)
