"""The rows kohya's Flux (lycoris_flow_file.py flux_model) and Chroma (chroma_rows.py chroma_model) share:
library/flux_models.py's MLPEmbedder and QKNorm, and the double / single blocks and final layer, which Flux
modulates with Linears of their own and Chroma does not, and their Linears' diffusers names."""

from __future__ import annotations

from dbspec.convert.kohya.lycoris_file import Row, _add
from dbspec.flow_layout import FLUX_DOUBLE, FLUX_SINGLE


def mlp_embedder(rows: list[Row], p: str) -> None:
    _add(rows, p, "MLPEmbedder")
    _add(rows, f"{p}.in_layer", "Linear", "linear")
    _add(rows, f"{p}.silu", "SiLU")
    _add(rows, f"{p}.out_layer", "Linear", "linear")


def qk_norm(rows: list[Row], p: str) -> None:
    _add(rows, p, "QKNorm")
    _add(rows, f"{p}.query_norm", "RMSNorm")
    _add(rows, f"{p}.key_norm", "RMSNorm")


def _modulation(rows: list[Row], p: str) -> None:
    _add(rows, p, "Modulation")
    _add(rows, f"{p}.lin", "Linear", "linear")


def flux_blocks(rows: list[Row], double: int, single: int, modulated: bool) -> None:
    """The double and single blocks and the final layer, in named_modules() order (`modulated`: Flux's
    Modulation Linears and adaLN_modulation, which Chroma has not)."""
    _add(rows, "double_blocks", "ModuleList")
    for i in range(double):
        p = f"double_blocks.{i}"
        _add(rows, p, "DoubleStreamBlock")
        for stream in ("img", "txt"):
            if modulated:
                _modulation(rows, f"{p}.{stream}_mod")
            _add(rows, f"{p}.{stream}_norm1", "LayerNorm")
            _add(rows, f"{p}.{stream}_attn", "SelfAttention")
            _add(rows, f"{p}.{stream}_attn.qkv", "Linear", "linear")
            qk_norm(rows, f"{p}.{stream}_attn.norm")
            _add(rows, f"{p}.{stream}_attn.proj", "Linear", "linear")
            _add(rows, f"{p}.{stream}_norm2", "LayerNorm")
            _add(rows, f"{p}.{stream}_mlp", "Sequential")
            _add(rows, f"{p}.{stream}_mlp.0", "Linear", "linear")
            _add(rows, f"{p}.{stream}_mlp.1", "GELU")
            _add(rows, f"{p}.{stream}_mlp.2", "Linear", "linear")
    _add(rows, "single_blocks", "ModuleList")
    for i in range(single):
        p = f"single_blocks.{i}"
        _add(rows, p, "SingleStreamBlock")
        _add(rows, f"{p}.linear1", "Linear", "linear")
        _add(rows, f"{p}.linear2", "Linear", "linear")
        qk_norm(rows, f"{p}.norm")
        _add(rows, f"{p}.pre_norm", "LayerNorm")
        _add(rows, f"{p}.mlp_act", "GELU")
        if modulated:
            _modulation(rows, f"{p}.modulation")
    _add(rows, "final_layer", "LastLayer")
    _add(rows, "final_layer.norm_final", "LayerNorm")
    _add(rows, "final_layer.linear", "Linear", "linear")
    if modulated:
        _add(rows, "final_layer.adaLN_modulation", "Sequential")
        _add(rows, "final_layer.adaLN_modulation.0", "SiLU")
        _add(rows, "final_layer.adaLN_modulation.1", "Linear", "linear")


def block_parts(path: str, top: dict[str, str]) -> tuple[str, ...]:
    """The diffusers Linears that kohya's Flux / Chroma Linear `path` is (a fused one: all its parts); `top`:
    the layers outside the blocks, kohya's path to diffusers' name."""
    if path in top:
        return (top[path],)
    group, index, inner = path.split(".", 2)
    table, prefix = (
        (FLUX_DOUBLE, "transformer_blocks")
        if group == "double_blocks"
        else (FLUX_SINGLE, "single_transformer_blocks")
    )
    return tuple(f"{prefix}.{index}.{part}" for part in table[inner])
