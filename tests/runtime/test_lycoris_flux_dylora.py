"""LyCORIS's lycoris.kohya algo=dylora with flux_train_network.py (convert/kohya/lycoris_flow_dylora.py): one
DyLoraModule per fused Linear, one down and one drawn block per fused layer, its up blocks' rows the parts',
so diffusers' parts share the down blocks and the draw (runtime/dylora.py tie_fused_dylora). On tiny-flux it
trains, resumes bit-exact, and its kohya_lora export (the LoRA layout LyCORIS saves, the down once and the
ups stacked) is what lycoris-lora 4.1.3's LoConModule, which its loader builds for those keys, computes on the
stacked Linear."""

from __future__ import annotations

import torch
from lycoris.modules.locon import LoConModule

from dbspec.runtime.dylora import draw_blocks
from tests.runtime.lycoris_flow_kit import (
    BASE,
    assert_lycoris_computes,
    kohya_export,
    stacked_linear,
    unet_only_spec,
)
from tests.runtime.runspec import whole_and_resumed

# what the converter writes for `--network_dim 4 --network_alpha 2 --network_args algo=dylora block_size=2
# preset=unet-only` (tiny-flux: one single block)
DYLORA = unet_only_spec(
    'kind = "dylora"\nrank = 4\nalpha = 2.0\nunit = 2\ndylora_form = "lycoris"\nfused_projections = true\n'
)


def _theirs(tensors, name: str, parts) -> LoConModule:
    """lycoris-lora's LoConModule on the fused Linear (the parts' weights stacked), loaded from the file."""
    fused = stacked_linear(parts)
    own = {k.removeprefix(name + "."): v.float() for k, v in tensors.items() if k.startswith(name + ".")}
    rank = own["lora_down.weight"].shape[0]
    module = LoConModule(name, fused, 1.0, lora_dim=rank, alpha=float(own["alpha"]))
    module.load_state_dict(own)
    module.apply_to()
    return module.eval()


def test_dylora_on_fused_layers_trains_resumes_bit_exact_and_lycoris_loads_the_export(tmp_path):
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=4, extra=DYLORA)
    assert plan.adapter.kind == "dylora" and len(plan.adapter.fused) == 3
    transformer = whole.components.unet
    block, single = transformer.transformer_blocks[0], transformer.single_transformer_blocks[0]
    attn = block.attn
    for index in range(2):  # one Parameter per down block
        assert attn.to_v.lora_dylora_down["default"][index] is attn.to_q.lora_dylora_down["default"][index]
    transformer.train()
    for seed in range(4):  # every part of a fused layer trains the block its first part draws
        draw_blocks([transformer], torch.Generator().manual_seed(seed))
        fused = (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp)
        assert len({p.drawn["default"] for p in fused}) == 1
    transformer.eval()
    tensors, _names = kohya_export(plan, whole)
    assert_lycoris_computes(transformer, lambda name, parts: _theirs(tensors, name, parts))
