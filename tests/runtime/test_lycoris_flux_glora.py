"""LyCORIS's lycoris.kohya algo=glora with flux_train_network.py (convert/kohya/lycoris_flow_glora.py): one
GLoRAModule per fused Linear, ΔW = (W a1 a2 + b1 b2) x alpha / rank over the stacked rows, so diffusers' parts
share a1, a2, b2 and the use_scalar scalar and each keeps its rows of b1 (runtime/lycoris_glora.py
tie_fused_glora). On tiny-flux it trains, resumes bit-exact, and its kohya_lora export is what lycoris-lora
4.1.3's own GLoRAModule on the stacked Linear, loaded from the file, computes."""

from __future__ import annotations

from lycoris.modules.glora import GLoRAModule

from tests.runtime.lycoris_flow_kit import (
    BASE,
    assert_lycoris_computes,
    kohya_export,
    stacked_linear,
    unet_only_spec,
)
from tests.runtime.runspec import whole_and_resumed

# what the converter writes for `--network_dim 4 --network_alpha 2 --network_args algo=glora
# preset=unet-only use_scalar=True` (tiny-flux: one single block)
GLORA = unet_only_spec('kind = "glora"\nrank = 4\nalpha = 2.0\nscalar = true\nfused_projections = true\n')


def _theirs(tensors, name: str, parts) -> GLoRAModule:
    """lycoris-lora's GLoRAModule on the fused Linear (the parts' weights stacked), loaded from the file."""
    fused = stacked_linear(parts)
    own = {k.removeprefix(name + "."): v.float() for k, v in tensors.items() if k.startswith(name + ".")}
    module = GLoRAModule(name, fused, 1.0, lora_dim=own["a2.weight"].shape[0], alpha=float(own["alpha"]))
    module.load_state_dict(own)
    module.apply_to()
    return module.eval()


def test_glora_on_fused_layers_trains_resumes_bit_exact_and_lycoris_loads_the_export(tmp_path):
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=4, extra=GLORA)
    assert plan.adapter.kind == "glora" and len(plan.adapter.fused) == 3
    transformer = whole.components.unet
    attn = transformer.transformer_blocks[0].attn
    for key in ("lora_glora_a1", "lora_glora_a2", "lora_glora_b2", "lora_glora_scalar"):  # one Parameter
        assert getattr(attn.to_v, key)["default"] is getattr(attn.to_q, key)["default"], key
    assert attn.to_v.lora_glora_b1["default"] is not attn.to_q.lora_glora_b1["default"]
    tensors, _names = kohya_export(plan, whole)
    assert_lycoris_computes(transformer, lambda name, parts: _theirs(tensors, name, parts))
