"""LyCORIS's lycoris.kohya algo=ia3 with flux_train_network.py (convert/kohya/lycoris_flux.py `_ia3`): the
spec it converts to (kind = "ia3" on the full preset's Linears, the single blocks' proj_out by full path)
trains on tiny-flux, resumes bit-exact, and its kohya_lora export is what lycoris-lora's own IA3Module, built
on each fused Linear (the parts' base weights stacked, as kohya's Flux holds them) and loaded from the file,
computes: one scale per output row of the fused weight is the parts' rows, concatenated."""

from __future__ import annotations

from lycoris.modules.ia3 import IA3Module

from tests.runtime.lycoris_flow_kit import (
    BASE,
    assert_lycoris_computes,
    kohya_export,
    stacked_linear,
    unet_only_spec,
)
from tests.runtime.runspec import whole_and_resumed

# what the converter writes for `--network_args algo=ia3 preset=unet-only` (tiny-flux: one single block)
IA3 = unet_only_spec('kind = "ia3"\n')


def _their_ia3(tensors, name: str, parts) -> IA3Module:
    """lycoris-lora's IA3Module on the fused Linear (kohya's Flux layer), loaded from the file."""
    module = IA3Module(name, stacked_linear(parts), 1.0)
    module.load_state_dict(
        {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
    )
    module.apply_to()
    return module.eval()


def test_ia3_on_fused_layers_trains_resumes_bit_exact_and_lycoris_loads_the_export(tmp_path):
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=4, extra=IA3)
    assert plan.adapter.kind == "ia3"
    transformer = whole.components.unet

    tensors, names = kohya_export(plan, whole)
    assert {"lora_unet_single_blocks_0_linear1", "lora_unet_double_blocks_0_img_attn_qkv"} <= names
    assert "lora_unet_single_blocks_0_linear2" in names and "lora_unet_double_blocks_0_img_mod_lin" in names
    assert_lycoris_computes(transformer, lambda name, parts: _their_ia3(tensors, name, parts))
