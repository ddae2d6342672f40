"""kohya's Flux (library/flux_models.py), Chroma (library/chroma_models.py) and SD3 (library/sd3_models.py)
Linears in diffusers' names: one table per model, shared by the converters that read kohya's module names
(LyCORIS preset files walked over kohya's model, `--dim_from_weights` files). Keys are kohya's module paths
with `.`; kohya's LoRA names write them with `_` (`img_attn.qkv` -> `lora_unet_double_blocks_0_img_attn_qkv`).
A fused Linear is all its diffusers parts, in row order."""

from __future__ import annotations

# a double block's Linear -> its diffusers parts
FLUX_DOUBLE = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_mod.lin": ("norm1_context.linear",),
}
FLUX_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
# the Linears outside the blocks: the embedders and the final layer
FLUX_TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}
# Chroma (library/chroma_models.py; diffusers' ChromaTransformer2DModel): Flux's blocks without the
# modulation Linears; outside them the embedders, the final layer and the approximator
# (distilled_guidance_layer: Chroma1-HD's 5 MLPEmbedder layers, diffusers' PixArtAlphaTextProjection)
CHROMA_APPROXIMATOR_DEPTH = 5
CHROMA_TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "distilled_guidance_layer.in_proj": "distilled_guidance_layer.in_proj",
    **{
        f"distilled_guidance_layer.layers.{i}.{kohya}": f"distilled_guidance_layer.layers.{i}.{ours}"
        for i in range(CHROMA_APPROXIMATOR_DEPTH)
        for kohya, ours in (("in_layer", "linear_1"), ("out_layer", "linear_2"))
    },
    "distilled_guidance_layer.out_proj": "distilled_guidance_layer.out_proj",
    "final_layer.linear": "proj_out",
}
# a joint block's Linear -> its diffusers parts
SD3_BLOCK = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "x_block.attn.proj": ("attn.to_out.0",),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
    "x_block.attn2.proj": ("attn2.to_out.0",),
    "x_block.mlp.fc1": ("ff.net.0.proj",),
    "x_block.mlp.fc2": ("ff.net.2",),
    "x_block.adaLN_modulation.1": ("norm1.linear",),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "context_block.attn.proj": ("attn.to_add_out",),
    "context_block.mlp.fc1": ("ff_context.net.0.proj",),
    "context_block.mlp.fc2": ("ff_context.net.2",),
    "context_block.adaLN_modulation.1": ("norm1_context.linear",),
}
# outside the blocks: the patch convolution, the embedders and the final layer
SD3_TOP = {
    "x_embedder.proj": "pos_embed.proj",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "context_embedder": "context_embedder",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}


def underscored(table: dict, keep=lambda key: True) -> dict:
    """The table keyed by kohya's LoRA names (`.` as `_`), the keys `keep` accepts."""
    return {key.replace(".", "_"): value for key, value in table.items() if keep(key)}
