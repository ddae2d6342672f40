"""LyCORIS's lycoris.kohya algo=glora with flux_train_network.py (convert/kohya/lycoris_flow_glora.py): one
GLoRAModule per fused Linear, ΔW = (W a1 a2 + b1 b2) x alpha / rank over the stacked rows, so diffusers' parts
share a1, a2, b2 and the use_scalar scalar and each keeps its rows of b1 (runtime/lycoris_glora.py
tie_fused_glora). On tiny-flux it trains, resumes bit-exact, and its kohya_lora export is what lycoris-lora
4.1.3's own GLoRAModule on the stacked Linear, loaded from the file, computes."""

from __future__ import annotations

from pathlib import Path

import torch
from lycoris.modules.glora import GLoRAModule
from safetensors.torch import load_file
from torch import nn

from dbspec.families import family_spec
from tests.runtime.runspec import whole_and_resumed

_TARGETS = [t for t in family_spec("flux").kohya_lora_targets if t != "proj_out"]
# what the converter writes for `--network_dim 4 --network_alpha 2 --network_args algo=glora
# preset=unet-only use_scalar=True` (tiny-flux: one single block)
GLORA = (
    '[adapter]\nkind = "glora"\nrank = 4\nalpha = 2.0\nscalar = true\nfused_projections = true\n'
    "denoiser_targets = ["
    + ", ".join(f'"{t}"' for t in [*_TARGETS, "single_transformer_blocks.0.proj_out"])
    + ']\n\n[checkpoints]\nevery = 2\nexports = ["kohya_lora"]\n'
)


def _theirs(tensors, name: str, parts) -> GLoRAModule:
    """lycoris-lora's GLoRAModule on the fused Linear (the parts' weights stacked), loaded from the file."""
    base = [p.base_layer for p in parts]
    fused = nn.Linear(base[0].in_features, sum(b.out_features for b in base))
    with torch.no_grad():
        fused.weight.copy_(torch.cat([b.weight for b in base]))
        fused.bias.copy_(torch.cat([b.bias for b in base]))
    own = {k.removeprefix(name + "."): v.float() for k, v in tensors.items() if k.startswith(name + ".")}
    module = GLoRAModule(name, fused, 1.0, lora_dim=own["a2.weight"].shape[0], alpha=float(own["alpha"]))
    module.load_state_dict(own)
    module.apply_to()
    return module.eval()


def test_glora_on_fused_layers_trains_resumes_bit_exact_and_lycoris_loads_the_export(tmp_path):
    plan, whole = whole_and_resumed(tmp_path, base="builtin:tiny-flux", steps=4, extra=GLORA)
    assert plan.adapter.kind == "glora" and len(plan.adapter.fused) == 3
    transformer = whole.components.unet
    block, single = transformer.transformer_blocks[0], transformer.single_transformer_blocks[0]
    attn = block.attn
    for key in ("lora_glora_a1", "lora_glora_a2", "lora_glora_b2", "lora_glora_scalar"):  # one Parameter
        assert getattr(attn.to_v, key)["default"] is getattr(attn.to_q, key)["default"], key
    assert attn.to_v.lora_glora_b1["default"] is not attn.to_q.lora_glora_b1["default"]
    tensors = load_file(str(Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    names = {k.split(".")[0] for k in tensors}
    assert not any("to_q" in n or "proj_mlp" in n or "final_layer" in n for n in names)
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
            theirs = _theirs(tensors, name, parts)(x)
        assert not torch.allclose(trained, plain, atol=1e-7), name  # the module trained
        torch.testing.assert_close(theirs, trained, rtol=0, atol=1e-5)
