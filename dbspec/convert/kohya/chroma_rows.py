"""kohya's Chroma (library/chroma_models.py Chroma, `--model_type chroma`: Chroma1-HD's 19 double and 38
single blocks, the approximator's 5 layers) as a torch-free inventory, its named_modules() in order, for the
LyCORIS preset-file walk (lycoris_flow_file.py), and its Linears in diffusers' ChromaTransformer2DModel names.

Chroma is Flux's transformer with its own block classes (named DoubleStreamBlock and SingleStreamBlock too,
the SelfAttention, QKNorm, RMSNorm and MLPEmbedder classes imported from library/flux_models.py) without any
modulation Linear: one Approximator (`distilled_guidance_layer`: in_proj, MLPEmbedder layers under RMSNorms,
out_proj) computes every block's modulation, and no time / vector / guidance embedder is left. The final
layer (LastLayer) holds norm_final and linear only. flux_train_network.py hands LyCORIS a dummy CLIP-L
(flux_utils.DummyCLIPL: parameters, no Linear) and T5-XXL, so T5's modules would be LyCORIS's `lora_te2_`."""

from __future__ import annotations

from dbspec.convert.kohya.flux_rows import block_parts, flux_blocks, mlp_embedder
from dbspec.convert.kohya.lycoris_file import Row, _add
from dbspec.flow_layout import CHROMA_APPROXIMATOR_DEPTH, CHROMA_TOP


def _approximator(rows: list[Row], depth: int) -> None:
    p = "distilled_guidance_layer"
    _add(rows, p, "Approximator")
    _add(rows, f"{p}.in_proj", "Linear", "linear")
    _add(rows, f"{p}.layers", "ModuleList")
    for i in range(depth):
        mlp_embedder(rows, f"{p}.layers.{i}")
    _add(rows, f"{p}.norms", "ModuleList")
    for i in range(depth):
        _add(rows, f"{p}.norms.{i}", "RMSNorm")
    _add(rows, f"{p}.out_proj", "Linear", "linear")


def chroma_model(double: int = 19, single: int = 38, depth: int = CHROMA_APPROXIMATOR_DEPTH) -> list[Row]:
    """kohya's Chroma (library/chroma_models.py Chroma with chroma_params), its named_modules() in order."""
    rows: list[Row] = []
    _add(rows, "", "Chroma")
    _add(rows, "pe_embedder", "EmbedND")
    _add(rows, "img_in", "Linear", "linear")
    _approximator(rows, depth)
    _add(rows, "txt_in", "Linear", "linear")
    flux_blocks(rows, double, single, modulated=False)
    return rows


def dummy_clip_l() -> list[Row]:
    """flux_utils.DummyCLIPL, the CLIP-L flux_train_network.py loads for Chroma: no Linear to adapt."""
    return [("", "DummyCLIPL", ""), ("text_model", "DummyTextModel", "")]


def chroma_parts(path: str) -> tuple[str, ...]:
    """The diffusers ChromaTransformer2DModel Linears that kohya's Chroma Linear `path` is (a fused one: all
    its parts)."""
    return block_parts(path, CHROMA_TOP)
