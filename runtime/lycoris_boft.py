"""LyCORIS's `algo = boft` (plan.adapter.kind "boft") as a peft LoRA custom layer.

LyCORIS's ButterflyOFTModule (lycoris/modules/boft.py, lycoris/functional/boft.py) rotates a layer's output
rows by a product of m butterfly stages. The out rows split as block_num x block_size
(power2factorization(out, lora_dim): block_size even and at most lora_dim, block_num a power of two; no such
split: refused), m = popcount(block_num - 1) + 1 stages, each with block_num Cayley rotations R = (I + Q)(I -
Q)^-1, Q = B - B^T (COFT: Q over all stages scaled down to norm constraint x out when larger). Stage i
regroups the rows in strides of 2^i x block_size / 2 before applying its block-diagonal R (R W per block, not
diag-oft's R^T W). The weight becomes the rotated W times a trained per-row `rescale` when `rescaled`; the
forward adds op(x, W' - W) with no bias. It saves `oft_blocks` (4-D: stages, blocks, size, size), `rescale`
and `alpha`. `module_dropout` (ButterflyOFTModule.forward's one `torch.rand(1)` per training forward, the
base output alone below it) is add_boft_module_dropout's: a fused Linear's parts share the one draw.

`BoftLayer` is DiagOftLayer (lycoris_oft.py) with the 4-D blocks and the butterfly product: the same
`lora_oft_blocks` / `lora_oft_rescale` ParameterDicts, peft's rank the lora_dim, its alpha the constraint.

On kohya's Flux / SD3 (lycoris.kohya algo=boft, `fused_projections`) a fused Linear (Flux's img_attn.qkv,
txt_attn.qkv, the single blocks' linear1; SD3's qkv) is ONE ButterflyOFTModule over the stacked rows: its
butterfly stages regroup them in strides up to half the stacked width, so each output row of a part mixes
rows of every part's weight. `tie_fused_boft` makes the parts of diffusers' split layer that module: one
4-D `oft_blocks` Parameter (the fused width's split and stages, constraint x fused width) shared by the
parts, each part computing its rows of butterfly(W_stacked) from every part's base weight, times its own
rows of the rescale (LyCORIS's rescale is per output row, applied after the stages), minus its own weight.
A Linear kohya holds with its halves of rows the other way round (SD3's AdaLayerNormContinuous: (scale,
shift) where kohya's (shift, scale), runtime/sd3_kohya.py) rotates them in kohya's order (`boft_swapped`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


import torch
from torch import nn

from dbspec.plan.boft import power2_factorization  # noqa: F401 (LyCORIS's split, torch-free)
from dbspec.runtime.lycoris_oft import DiagOftLayer, oft_config
from dbspec.runtime.peft_layer import WeightDelta


def boft_stages(block_num: int) -> int:
    return bin(block_num - 1).count("1") + 1


class BoftLayer(DiagOftLayer):
    """LyCORIS's ButterflyOFTModule: butterfly products of block-diagonal Cayley rotations of the rows."""

    # a part of a fused Linear (tie_fused_boft): every part's layer in the fused row order, and this one's
    # index there; () for a layer of its own
    boft_parts: tuple = ()
    boft_index: int = 0
    boft_swapped = False  # kohya holds the two halves of its rows the other way round (SD3's last norms)
    defer_split = (
        False  # while fused layers are built (fused_parts_deferred): a part's own width may not split
    )
    boft_unsplit = ""  # why this layer's own width did not split (deferred); "" once it has fused blocks
    boft_module_dropout = 0.0  # LyCORIS's module_dropout (add_boft_module_dropout)

    def update_layer(
        self, adapter_name: str, config, r: int, lora_alpha: float, rescaled: bool = False, *a, **k
    ):
        base = self.get_base_layer()
        if isinstance(base, nn.Conv2d) and (base.groups != 1 or base.padding_mode != "zeros"):
            raise ValueError("LyCORIS's boft: grouped or non-zero-padded convolutions are not supported")
        out_dim = base.weight.shape[0]
        block_size, block_num = power2_factorization(out_dim, r)
        if not block_num:
            where = f" of `{self.oft_name}`" if getattr(self, "oft_name", "") else ""
            why = (
                f"LyCORIS's boft cannot split the {out_dim} output rows{where} with block_size (lora_dim) "
                f"{r}: power2factorization needs an even block size b <= block_size with width / b a "
                "power of two (LyCORIS raises too); choose another block_size or leave the layer out of "
                "the targets"
            )
            if not BoftLayer.defer_split:
                raise ValueError(why)
            self.boft_unsplit = why  # a fused layer's part: tie_fused_boft gives it the fused split
            block_size, block_num = 2, 1
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = 1.0
        self.constraint[adapter_name] = float(lora_alpha) * out_dim  # LyCORIS: constraint x out_dim
        blocks = torch.zeros(boft_stages(block_num), block_num, block_size, block_size)
        self.lora_oft_blocks[adapter_name] = nn.Parameter(blocks)
        if rescaled:
            shape = (out_dim, *[1] * (base.weight.dim() - 1))
            self.lora_oft_rescale[adapter_name] = nn.Parameter(torch.ones(shape))
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=getattr(config, "inference_mode", False))

    def rotation(self, adapter: str) -> torch.Tensor:
        """R per stage and block (LyCORIS's get_r over the 4-D blocks, one norm for all of them)."""
        blocks = self.lora_oft_blocks[adapter]
        eye = torch.eye(blocks.shape[-1], device=blocks.device, dtype=blocks.dtype)
        q = blocks - blocks.transpose(-1, -2)
        constraint = self.constraint[adapter]
        if constraint > 0:
            norm = torch.norm(q) + 1e-8
            if norm > constraint:
                q = q * constraint / norm
        return (eye + q) @ (eye - q).float().inverse()

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """W' - W; a fused Linear's part: its rows of the butterfly over every part's (unmerged) weight."""
        if not self.boft_parts and not self.boft_swapped:
            return super().get_delta_weight(adapter)
        return self._fused_delta(adapter, _unmerged_weight)

    def _fused_delta(self, adapter: str, piece) -> torch.Tensor:
        """A fused Linear's part (or a swapped Linear): `piece(layer)` each part's rows (dimension 0: its
        weight's rows, its bias, or its output's channels), stacked in kohya's order and rotated by the
        butterfly stages; this part's rows of that, times its rescale, minus its own rows."""
        if self.boft_unsplit:
            raise ValueError(self.boft_unsplit)
        rotation = self.rotation(adapter)
        own = piece(self).to(rotation.dtype)
        if self.boft_swapped:  # kohya's (shift, scale) rows: rotated in kohya's order, then back
            half = own.shape[0] // 2
            rows = _butterfly(rotation, own.roll(half, 0)).roll(half, 0)
        else:
            pieces = [own if p is self else piece(p).to(rotation.dtype) for p in self.boft_parts]
            start = sum(r.shape[0] for r in pieces[: self.boft_index])
            rows = _butterfly(rotation, torch.cat(pieces))[start : start + own.shape[0]]
        rescale = self._rescale(adapter, own)
        if rescale is not None:
            rows = rows * rescale
        return (rows - own).to(self.lora_oft_blocks[adapter].dtype)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """DiagOftLayer's forward; a fused part in bypass mode: LyCORIS's bypass forward of the fused Linear,
        the butterfly over every part's output (the parts of kohya's fused Linears read one input), this
        part's channels of it. With `boft_module_dropout`, while training, ButterflyOFTModule.forward's draw
        first: `torch.rand(1) < p` from torch's global generator, the base output alone below it (a fused
        Linear's parts: one draw they share, runtime/fused.py FusedSkip)."""
        p = self.boft_module_dropout
        if p and self.training and not self.disable_adapters and not self.merged:
            held = any(a in self.lora_oft_blocks for a in self.active_adapters)
            if held and self._skips(p):
                kwargs.pop("alora_offsets", None)
                return self.base_layer(x, *args, **kwargs)  # the module's org_forward
        if not self.oft_bypass or not (self.boft_parts or self.boft_swapped):
            return super().forward(x, *args, **kwargs)
        if self._base_only(x, args, kwargs):
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        dtype = result.dtype
        channels = 1 if isinstance(self.get_base_layer(), nn.Conv2d) else -1

        def piece(layer: BoftLayer) -> torch.Tensor:
            out = result if layer is self else layer.get_base_layer()(x, *args, **kwargs)
            return out.movedim(channels, 0)

        for adapter in self.active_adapters:
            if adapter in self.lora_oft_blocks:
                result = result + self._fused_delta(adapter, piece).to(dtype).movedim(0, channels)
        return result.to(dtype)

    def _skips(self, p: float) -> bool:
        """This training forward's module dropout: the layer's own `torch.rand(1) < p`, or a fused Linear's
        one draw its parts share."""
        shared = self.__dict__.get("boft_skip")
        return shared.take(p) if shared is not None else bool(torch.rand(1) < p)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """DiagOftLayer's merge; a fused part's (or swapped Linear's) bias in bypass mode: its rows of the
        butterfly over every part's (unmerged) bias."""
        if not self.boft_parts and not self.boft_swapped:
            return super().merge(safe_merge, adapter_names)
        before = list(self.merged_adapters)
        WeightDelta.merge(self, safe_merge, adapter_names)
        bias = self.get_base_layer().bias
        if not self.oft_bypass or bias is None:
            return None
        for adapter in self.merged_adapters[len(before) :]:
            with torch.no_grad():
                delta = self._fused_delta(adapter, _unmerged_bias).to(bias.dtype)
                bias.data += delta
            self.__dict__.setdefault("_merged_bias", {})[adapter] = delta
        return None

    def _rotated_delta(self, adapter: str, rows: torch.Tensor) -> torch.Tensor:
        """The butterfly stages applied to `rows` (dimension 0: a weight's rows, or the output's channels in
        bypass mode), then the rescale, minus `rows`."""
        if self.boft_unsplit:
            raise ValueError(self.boft_unsplit)
        rotation = self.rotation(adapter)
        org = rows.to(rotation.dtype)
        rows = _butterfly(rotation, org)
        rescale = self._rescale(adapter, org)
        if rescale is not None:
            rows = rows * rescale
        return (rows - org).to(self.lora_oft_blocks[adapter].dtype)

    def __repr__(self) -> str:
        return "lycoris_boft." + super().__repr__()


def _butterfly(rotation: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """LyCORIS's butterfly stages (its boft diff_weight's loop) applied to `rows` (dimension 0): stage i
    regroups the rows in strides of 2^i x size / 2 and rotates each block of `size` consecutive rows."""
    size = rotation.shape[-1]
    half = size // 2
    for stage, blocks in enumerate(rotation):
        stride = 2**stage * half
        # rows (c, 2, stride) regrouped as (c, stride, 2), then blocks of `size` consecutive rows
        grouped = rows.unflatten(0, (-1, 2, stride)).transpose(1, 2).flatten(0, 2).unflatten(0, (-1, size))
        rotated = torch.einsum("b i j, b j ... -> b i ...", blocks, grouped)
        rows = rotated.flatten(0, 1).unflatten(0, (-1, stride, 2)).transpose(1, 2).flatten(0, 2)
    return rows


def _unmerged_bias(layer: BoftLayer) -> torch.Tensor:
    """The layer's base bias without the bypass deltas merged into it (BoftLayer.merge keeps them)."""
    bias = layer.get_base_layer().bias
    for delta in layer.__dict__.get("_merged_bias", {}).values():
        bias = bias - delta.to(bias.dtype)
    return bias


def _unmerged_weight(layer: BoftLayer) -> torch.Tensor:
    """The layer's base weight without the deltas merged into it (WeightDelta.merge keeps them)."""
    weight = layer.get_base_layer().weight
    merged = getattr(layer, "_merged_deltas", {})
    for adapter in layer.merged_adapters:
        weight = weight - merged[adapter].to(weight.dtype)
    return weight


@contextmanager
def fused_parts_deferred(on: bool = True) -> Iterator[None]:
    """While `on`: BoftLayers whose own width does not split build anyway (a fused Linear's parts, whose
    split is the fused width's: tie_fused_boft); a layer left so raises when it computes."""
    before = BoftLayer.defer_split
    BoftLayer.defer_split = on or before
    try:
        yield
    finally:
        BoftLayer.defer_split = before


def tie_fused_boft(module: nn.Module, groups, adapter: str, swapped=None) -> int:
    """LyCORIS's ButterflyOFTModule on each fused Linear of the original model (plan.adapter.fused: Flux's
    qkv and linear1, SD3's qkv): one zero 4-D `oft_blocks` Parameter over the stacked rows
    (power2factorization(sum of the parts' widths, lora_dim): its blocks and stages), the constraint x the
    stacked width, shared by the parts (the first's: the optimizer, resume state and EMA hold it once); each
    part keeps its own rows of the rescale. `swapped(path)`: the layers kohya holds with their halves of rows
    the other way round (SD3). ValueError when a fused layer's parts are adapted in part, at other block
    sizes, constraints or forwards (bypass_mode), or its stacked width does not split. How many fused
    layers were tied. Before the optimizer is built, and before a saved state is loaded."""
    from dbspec.runtime.fused import fused_parts

    tied = 0
    for group, index, found in fused_parts(module, groups, lambda m: isinstance(m, BoftLayer)):
        if not found:
            continue
        where = f"{group.blocks}.{index}: the fused {group.name}"
        if len(found) != len(group.parts):
            raise ValueError(f"{where}: BOFT on a fused layer needs every part adapted ({group.parts})")
        layers = [layer for _, _, layer in found]
        first = layers[0]
        if len({(layer.r[adapter], float(layer.lora_alpha[adapter])) for layer in layers}) > 1:
            raise ValueError(f"{where}: its parts have other block sizes or constraints (one BOFT module)")
        if len({layer.oft_bypass for layer in layers}) > 1:
            raise ValueError(f"{where}: its parts are in other forwards (bypass_mode: one BOFT module)")
        widths = [int(layer.get_base_layer().weight.shape[0]) for layer in layers]
        total, lora_dim = sum(widths), first.r[adapter]
        size, count = power2_factorization(total, lora_dim)
        if not count:
            raise ValueError(
                f"{where} ({' + '.join(map(str, widths))} rows): LyCORIS's boft cannot split the {total} "
                f"stacked rows with block_size (lora_dim) {lora_dim} (power2factorization needs an even "
                "block size b <= block_size with width / b a power of two; LyCORIS raises too)"
            )
        old = first.lora_oft_blocks[adapter]
        blocks = torch.zeros(boft_stages(count), count, size, size, dtype=old.dtype, device=old.device)
        shared = nn.Parameter(blocks, requires_grad=old.requires_grad)
        for position, layer in enumerate(layers):
            layer.lora_oft_blocks[adapter] = shared
            layer.constraint[adapter] = float(layer.lora_alpha[adapter]) * total  # the fused module's
            layer.boft_parts = tuple(layers)
            layer.boft_index = position
            layer.boft_unsplit = ""
        tied += 1
    if swapped is not None:
        for path, layer in module.named_modules():
            if isinstance(layer, BoftLayer) and not layer.boft_parts and swapped(path):
                layer.boft_swapped = True
    for layer in module.modules():
        if isinstance(layer, BoftLayer) and layer.boft_unsplit:
            raise ValueError(layer.boft_unsplit)
    return tied


def add_boft_module_dropout(module: nn.Module, rate: float) -> int:
    """LyCORIS's `module_dropout` on every BOFT layer of `module` (ButterflyOFTModule.forward: one
    `torch.rand(1)` from torch's global CPU generator per module and training forward, before anything else,
    the base output alone below the rate; nothing drawn outside training): each layer draws its own, the
    parts of a fused Linear (tie_fused_boft, called first) one they share, the first part called drawing
    (runtime/fused.py FusedSkip). How many layers draw."""
    from dbspec.runtime.fused import FusedSkip

    count = 0
    for layer in module.modules():
        if not isinstance(layer, BoftLayer):
            continue
        layer.boft_module_dropout = rate
        count += 1
        if layer.boft_parts and "boft_skip" not in layer.__dict__:
            skip = FusedSkip(len(layer.boft_parts))
            for part in layer.boft_parts:
                part.__dict__["boft_skip"] = skip  # not a submodule: the draw, no parameters
    return count


def boft_config(targets: list[str], block: int, constraint: float, rescaled: bool, bypass: bool = False):
    """A LoraConfig building BoftLayer on every target: peft's rank is LyCORIS's lora_dim, its alpha the
    constraint; `bypass`: LyCORIS's bypass forward (the output rotated)."""
    return oft_config(targets, block, constraint, rescaled, layer=BoftLayer, bypass=bypass)


def has_boft(state: dict[str, torch.Tensor]) -> bool:
    return any(".lora_oft_blocks" in key and value.dim() == 4 for key, value in state.items())
