"""Flux LoRAs in kohya's networks/lora_flux.py layout (runtime/flux_kohya.py): a trained tiny-flux run's
export loads back through diffusers' FluxPipeline.load_lora_weights (its kohya-Flux converter) with the
trained model's outputs; the fused layers (q/k/v, single blocks' linear1) carry the parts' updates at
their trained scale under the loaders' rule W += alpha / rank * up @ down; at the real model's widths
diffusers' converter splits them back into the trained LoRAs."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers
from peft import LoraConfig
from safetensors import safe_open

from dbspec.families import family_spec
from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.flux_kohya import flux_kohya_lora_state, fused_parts, kohya_flux_tensors
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import make_plan

BASE = "builtin:tiny-flux"
PARTS = fused_parts(family_spec("flux"))  # the registry's fused layers
# Every block Linear kohya's layout names except single blocks' q/k/v/proj_mlp (linear1): diffusers' converter
# splits linear1 at FLUX.1's widths (3072 x 3 + 12288), which the tiny twin does not have; and no top-level
# layer (img_in, txt_in, time_in, final_layer...): diffusers' converter names them without the `transformer.`
# prefix and its loader drops them (tests below check them against the loaders' rule and the converter).
TARGETS = [
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_k",
    "transformer_blocks.0.attn.to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "norm1.linear",
    "norm1_context.linear",
    "norm.linear",
    "single_transformer_blocks.0.proj_out",
]


def _predict(transformer) -> torch.Tensor:
    family = family_runtime("flux")
    generator = torch.Generator().manual_seed(0)
    noisy = torch.randn(1, 16, 8, 8, generator=generator)
    text = {
        "prompt_embeds": torch.randn(1, 12, 64, generator=generator),
        "pooled": torch.randn(1, 32, generator=generator),
    }
    with torch.no_grad():
        return family.predict(
            transformer, noisy, torch.tensor([400.0]), text, family.conditioning(text, [], "cpu")
        )


def _clip(encoder) -> torch.Tensor:
    ids = torch.randint(0, 500, (1, 77), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return encoder(ids).pooler_output


def test_trained_flux_lora_exports_kohya_keys_diffusers_loads(tmp_path):
    targets = ", ".join(f'"{t}"' for t in TARGETS)
    extra = (
        f'[adapter]\nkind = "lora"\nrank = 4\nalpha = 2\ndenoiser_targets = [{targets}]\n\n'
        '[train]\ntext_encoder = true\n\n[checkpoints]\nexports = ["kohya_lora"]\n'
    )
    plan = make_plan(tmp_path, base=BASE, steps=2, extra=extra)
    result = execute(plan, keep_models=True)
    assert result.status == "finished"
    path = Path(result.final) / f"{plan.checkpoints.name}.kohya.safetensors"
    with safe_open(str(path), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
        qkv = handle.get_tensor("lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight")
        alphas = {k: handle.get_tensor(k).item() for k in keys if k.endswith(".alpha")}
    assert qkv.shape == (48, 12)  # q, k, v (16 rows each) on the block diagonal of rank 3 x 4
    assert alphas["lora_unet_double_blocks_0_img_attn_qkv.alpha"] == 6.0  # 3 x 2: alpha / 12 = 2 / 4
    assert alphas["lora_unet_double_blocks_0_img_attn_proj.alpha"] == 2.0
    for name in ("unet_single_blocks_0_linear2", "unet_single_blocks_0_modulation_lin",
                 "unet_double_blocks_0_txt_mod_lin",
                 "te1_text_model_encoder_layers_0_self_attn_q_proj"):  # fmt: skip
        assert f"lora_{name}.lora_down.weight" in keys
    assert not any("single_blocks_0_linear1" in k for k in keys)
    assert (metadata["ss_network_module"], metadata["ss_base_model_version"]) == (
        "networks.lora_flux",
        "flux1",
    )
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("4", "2.0")

    pipe = build_pipeline(BASE)
    plain = _predict(pipe.transformer)
    pipe.load_lora_weights(str(path))
    ours = _predict(result.components.unet)
    torch.testing.assert_close(_predict(pipe.transformer), ours, rtol=0, atol=1e-4)
    assert not torch.allclose(plain, ours, atol=1e-4)  # the adapter really changes the output
    torch.testing.assert_close(
        _clip(pipe.text_encoder), _clip(result.components.text_encoders[0]), rtol=0, atol=1e-4
    )


def _merged_delta(layer) -> torch.Tensor:
    """A peft LoRA layer's weight update: scaling * B @ A."""
    return layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight


def test_fused_layers_carry_each_parts_update_at_its_scale():
    """Default targets (single blocks' q/k/v fused into linear1 with a zero proj_mlp block), q at another
    alpha: the loaders' rule alpha / rows(lora_down) * up @ down gives the original layer's rows of each
    update."""
    transformer = build_pipeline(BASE).transformer
    torch.manual_seed(5)
    config = LoraConfig(
        r=4,
        lora_alpha=2,
        alpha_pattern={"single_transformer_blocks.0.attn.to_q": 8},
        target_modules=[*family_spec("flux").lora_targets, "x_embedder", "norm_out.linear", "proj_out"],
        init_lora_weights=False,  # random B: every update non-zero
    )
    transformer.add_adapter(config)
    tensors, _ = flux_kohya_lora_state(denoiser=transformer, text_encoders=[], dtype="fp32", parts=PARTS)

    def update(name: str) -> torch.Tensor:
        down, up = tensors[f"lora_unet_{name}.lora_down.weight"], tensors[f"lora_unet_{name}.lora_up.weight"]
        return tensors[f"lora_unet_{name}.alpha"] / down.shape[0] * up @ down

    single, double = transformer.single_transformer_blocks[0], transformer.transformer_blocks[0]
    attn = single.attn
    linear1 = [_merged_delta(attn.to_q), _merged_delta(attn.to_k), _merged_delta(attn.to_v)]
    linear1.append(torch.zeros(single.proj_mlp.out_features, single.proj_mlp.in_features))
    with torch.no_grad():
        torch.testing.assert_close(update("single_blocks_0_linear1"), torch.cat(linear1), rtol=0, atol=1e-6)
        qkv = torch.cat([_merged_delta(getattr(double.attn, f"add_{c}_proj")) for c in "qkv"])
        torch.testing.assert_close(update("double_blocks_0_txt_attn_qkv"), qkv, rtol=0, atol=1e-6)
        torch.testing.assert_close(
            update("double_blocks_0_img_mlp_0"), _merged_delta(double.ff.net[0].proj), rtol=0, atol=1e-6
        )
        torch.testing.assert_close(update("img_in"), _merged_delta(transformer.x_embedder), rtol=0, atol=1e-6)
        torch.testing.assert_close(
            update("final_layer_linear"), _merged_delta(transformer.proj_out), rtol=0, atol=1e-6
        )
        scale, shift = _merged_delta(transformer.norm_out.linear).chunk(2)  # diffusers: (scale, shift)
        torch.testing.assert_close(
            update("final_layer_adaLN_modulation_1"), torch.cat([shift, scale]), rtol=0, atol=1e-6
        )
    assert tensors["lora_unet_final_layer_linear.alpha"].item() == 4.0  # the scale is in lora_up
    assert attn.to_q.scaling["default"] != attn.to_k.scaling["default"]  # the fold was exercised


def _layer(out: int, inp: int, rank: int, alpha: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(rank, inp, generator=generator),
        torch.randn(out, rank, generator=generator),
        rank,
        alpha,
    )


def test_real_flux_widths_split_back_in_diffusers_converter():
    """FLUX.1-dev's widths (3072, MLP 12288): diffusers' own kohya converter returns each trained LoRA's
    update (q/k/v and linear1 split back, the final layer's rows swapped back, alphas applied)."""
    width, mlp = 3072, 12288
    layers = {
        "transformer_blocks.0.attn.to_q": _layer(width, width, 4, 2.0, 1),
        "transformer_blocks.0.attn.to_k": _layer(width, width, 4, 2.0, 2),
        "transformer_blocks.0.attn.to_v": _layer(width, width, 4, 2.0, 3),
        "transformer_blocks.0.attn.to_out.0": _layer(width, width, 4, 2.0, 4),
        "single_transformer_blocks.1.attn.to_q": _layer(width, width, 4, 2.0, 5),
        "single_transformer_blocks.1.attn.to_k": _layer(width, width, 4, 2.0, 6),
        "single_transformer_blocks.1.attn.to_v": _layer(width, width, 4, 2.0, 7),
        "single_transformer_blocks.1.proj_out": _layer(width, width + mlp, 4, 2.0, 8),
        "norm_out.linear": _layer(2 * width, width, 4, 2.0, 9),
        "proj_out": _layer(64, width, 4, 2.0, 10),
    }
    widths = {path: layer[1].shape[0] for path, layer in layers.items()}
    widths["single_transformer_blocks.1.proj_mlp"] = mlp
    converted = _convert_kohya_flux_lora_to_diffusers(
        kohya_flux_tensors(layers, widths, torch.float32, PARTS)
    )
    probe = torch.randn(width + mlp, 1, generator=torch.Generator().manual_seed(0))
    for path, (down, up, rank, alpha) in layers.items():
        # diffusers' converter names top-level layers without `transformer.` (its loader drops them)
        prefix = "transformer." if f"transformer.{path}.lora_A.weight" in converted else ""
        a, b = converted[f"{prefix}{path}.lora_A.weight"], converted[f"{prefix}{path}.lora_B.weight"]
        x = probe[: down.shape[1]]
        expected = alpha / rank * up @ (down @ x)  # norm_out.linear too: the converter swaps its rows back
        torch.testing.assert_close(b @ (a @ x), expected, rtol=1e-5, atol=1e-4)
    assert converted["transformer.single_transformer_blocks.1.attn.to_q.lora_A.weight"].shape == (4, width)
    mlp_a = converted["transformer.single_transformer_blocks.1.proj_mlp.lora_A.weight"]
    mlp_b = converted["transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight"]
    assert not (mlp_b @ mlp_a).any()  # the part the run did not adapt stays unchanged


def test_exported_file_is_what_the_state_holds(tmp_path):
    """Precision: lora_down / lora_up in save_precision, alphas fp32 (a fractional fused alpha stays
    exact)."""
    transformer = build_pipeline(BASE).transformer
    transformer.add_adapter(LoraConfig(r=3, lora_alpha=1.5, target_modules=["to_q", "to_k", "to_v"]))
    tensors, _ = flux_kohya_lora_state(denoiser=transformer, text_encoders=[], dtype="bf16", parts=PARTS)
    assert tensors["lora_unet_single_blocks_0_linear1.lora_up.weight"].dtype == torch.bfloat16
    assert tensors["lora_unet_single_blocks_0_linear1.alpha"].dtype == torch.float32
    assert tensors["lora_unet_single_blocks_0_linear1.alpha"].item() == 6.0  # 1.5 x 4 parts: 6 / 12 = 1.5 / 3
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.alpha"].item() == 4.5
