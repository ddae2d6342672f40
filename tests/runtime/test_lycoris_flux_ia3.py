"""LyCORIS's lycoris.kohya algo=ia3 with flux_train_network.py (convert/kohya/lycoris_flux.py `_ia3`): the
spec it converts to (kind = "ia3" on the full preset's Linears, the single blocks' proj_out by full path)
trains on tiny-flux, resumes bit-exact, and its kohya_lora export is what lycoris-lora's own IA3Module, built
on each fused Linear (the parts' base weights stacked, as kohya's Flux holds them) and loaded from the file,
computes: one scale per output row of the fused weight is the parts' rows, concatenated."""

from __future__ import annotations

from pathlib import Path

import torch
from lycoris.modules.ia3 import IA3Module
from safetensors.torch import load_file

from dbspec.families import family_spec
from tests.runtime.runspec import whole_and_resumed

BASE = "builtin:tiny-flux"
# what the converter writes for `--network_args algo=ia3 preset=unet-only` (tiny-flux: one single block)
_TARGETS = [t for t in family_spec("flux").kohya_lora_targets if t != "proj_out"]
IA3 = (
    '[adapter]\nkind = "ia3"\ndenoiser_targets = ['
    + ", ".join(f'"{t}"' for t in [*_TARGETS, "single_transformer_blocks.0.proj_out"])
    + ']\n\n[checkpoints]\nevery = 2\nexports = ["kohya_lora"]\n'
)


def _their_ia3(tensors, name: str, parts) -> IA3Module:
    """lycoris-lora's IA3Module on the fused Linear (kohya's Flux layer), loaded from the file."""
    base = [getattr(p, "base_layer", p) for p in parts]
    fused = torch.nn.Linear(base[0].in_features, sum(b.out_features for b in base))
    with torch.no_grad():
        fused.weight.copy_(torch.cat([b.weight for b in base]))
        fused.bias.copy_(torch.cat([b.bias for b in base]))
    module = IA3Module(name, fused, 1.0)
    module.load_state_dict(
        {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
    )
    module.apply_to()
    return module.eval()


def test_ia3_on_fused_layers_trains_resumes_bit_exact_and_lycoris_loads_the_export(tmp_path):
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=4, extra=IA3)
    assert plan.adapter.kind == "ia3"
    transformer = whole.components.unet

    tensors = load_file(str(Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    names = {k.split(".")[0] for k in tensors}
    assert {"lora_unet_single_blocks_0_linear1", "lora_unet_double_blocks_0_img_attn_qkv"} <= names
    assert "lora_unet_single_blocks_0_linear2" in names and "lora_unet_double_blocks_0_img_mod_lin" in names
    assert not any("to_q" in n or "proj_mlp" in n or "final_layer" in n for n in names)
    block, single = transformer.transformer_blocks[0], transformer.single_transformer_blocks[0]
    attn = block.attn
    torch.manual_seed(0)
    x = torch.randn(3, attn.to_q.base_layer.in_features)
    for name, layer_parts in (
        ("lora_unet_double_blocks_0_img_attn_qkv", (attn.to_q, attn.to_k, attn.to_v)),
        ("lora_unet_double_blocks_0_txt_attn_qkv", (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)),
        (
            "lora_unet_single_blocks_0_linear1",
            (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp),
        ),
        ("lora_unet_double_blocks_0_img_mod_lin", (block.norm1.linear,)),
    ):
        with torch.no_grad():
            trained = torch.cat([p(x) for p in layer_parts], dim=-1)
            plain = torch.cat([p.base_layer(x) for p in layer_parts], dim=-1)
            theirs = _their_ia3(tensors, name, layer_parts)(x)
        assert not torch.allclose(trained, plain, atol=1e-7), name  # the scales trained
        torch.testing.assert_close(theirs, trained, rtol=0, atol=1e-5)
