"""What the LyCORIS-on-Flux runtime tests (test_lycoris_flux_dylora / _glora / _oft / _ia3) share: the spec
the converter writes for a preset=unet-only algorithm on tiny-flux, the stacked Linear kohya's Flux holds
for a fused layer, and the check that lycoris-lora's own module, loaded from the kohya_lora export, computes
what the trained parts compute."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.families import family_spec

BASE = "builtin:tiny-flux"
_TARGETS = [t for t in family_spec("flux").kohya_lora_targets if t != "proj_out"]


def unet_only_spec(fields: str) -> str:
    """The [adapter] table (its `fields` lines, then preset unet-only's denoiser targets on tiny-flux: one
    single block) and a kohya_lora export every 2 steps."""
    return (
        f"[adapter]\n{fields}denoiser_targets = ["
        + ", ".join(f'"{t}"' for t in [*_TARGETS, "single_transformer_blocks.0.proj_out"])
        + ']\n\n[checkpoints]\nevery = 2\nexports = ["kohya_lora"]\n'
    )


def stacked_linear(parts) -> nn.Linear:
    """The fused Linear of kohya's Flux: the parts' base weights and biases stacked."""
    base = [getattr(p, "base_layer", p) for p in parts]
    fused = nn.Linear(base[0].in_features, sum(b.out_features for b in base))
    with torch.no_grad():
        fused.weight.copy_(torch.cat([b.weight for b in base]))
        fused.bias.copy_(torch.cat([b.bias for b in base]))
    return fused


def kohya_export(plan, whole) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The final kohya_lora export's tensors and module names, checked to hold kohya's names only."""
    tensors = load_file(str(Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    names = {k.split(".")[0] for k in tensors}
    assert not any("to_q" in n or "proj_mlp" in n or "final_layer" in n for n in names)
    return tensors, names


def assert_lycoris_computes(transformer, theirs: Callable[[str, tuple], nn.Module]) -> None:
    """On tiny-flux's fused layers (and a plain one), `theirs(kohya name, parts)`, lycoris-lora's module on
    the stacked Linear, computes the trained parts' output, which differs from the base's."""
    block, single = transformer.transformer_blocks[0], transformer.single_transformer_blocks[0]
    attn = block.attn
    torch.manual_seed(0)
    x = torch.randn(3, attn.to_q.base_layer.in_features)
    for name, parts in (
        ("lora_unet_double_blocks_0_img_attn_qkv", (attn.to_q, attn.to_k, attn.to_v)),
        ("lora_unet_double_blocks_0_txt_attn_qkv", (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)),
        (
            "lora_unet_single_blocks_0_linear1",
            (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp),
        ),
        ("lora_unet_double_blocks_0_img_mod_lin", (block.norm1.linear,)),
    ):
        with torch.no_grad():
            trained = torch.cat([p(x) for p in parts], dim=-1)
            plain = torch.cat([p.base_layer(x) for p in parts], dim=-1)
            ours = theirs(name, parts)(x)
        assert not torch.allclose(trained, plain, atol=1e-7), name  # the module trained
        torch.testing.assert_close(ours, trained, rtol=0, atol=1e-5)
