"""The denoiser's parameters the cast backend (kohya's --fp8_base) leaves in their float dtype: the layers of
LyCORIS's full algo (a full adapter's, or its blocks of kind full), whose weights kohya's cast after
apply_to finds already taken into FullModule's trained copies (runtime/blocks.py full_layer_paths, which
runtime/prepare.py leaves out of the cast). compiler/memory.py counts them at their held dtype, not at one
byte."""

from __future__ import annotations

import re
from collections.abc import Mapping

from dbspec.plan.model import AdapterPlan, ComponentPlan
from dbspec.util.targets import targeted

__all__ = ["cast_float_params", "keeps_float"]


def cast_float_params(
    adapter: AdapterPlan | None, unet: ComponentPlan | None, backend: str, layers: Mapping[str, int]
) -> tuple[int, bool]:
    """(parameters of the denoiser's full-algo layers, whether that count is exact) under the cast backend;
    (0, True) where nothing is cast or no layer trains as full. `layers`: the denoiser's parameters per
    layer path from the model's files (compile.py model_layers); empty (a single-file checkpoint, a built-in
    model) bounds the count by the whole denoiser. A layer counts as runtime/blocks.py full_layer_paths
    counts it: targeted (denoiser or convolution targets), its first matching block's kind (else the
    adapter's) "full" and that block not at rank 0 (the block's rank or conv_rank: the files do not say
    which of its layers are k x k convolutions)."""
    if not keeps_float(adapter, unet, backend):
        return 0, True
    if not layers:
        return unet.params, False
    targets = frozenset((*adapter.denoiser_targets, *adapter.conv_targets))
    total = 0
    for path, count in layers.items():
        if not targeted(path, targets):
            continue
        block = next((b for b in adapter.blocks if re.search(b.pattern, path)), None)
        kind = adapter.kind if block is None or block.kind == "adapter" else block.kind
        if kind == "full" and (block is None or block.rank or block.conv_rank):
            total += count
    return min(total, unet.params), True


def keeps_float(adapter: AdapterPlan | None, unet: ComponentPlan | None, backend: str) -> bool:
    """Whether the cast backend casts an adapted denoiser (`unet`) some of whose layers train as full."""
    if adapter is None or unet is None or backend != "cast" or unet.quantized == "none":
        return False
    if unet.trainable != "lora":
        return False
    return adapter.kind == "full" or any(b.kind == "full" and (b.rank or b.conv_rank) for b in adapter.blocks)
