"""LyCORIS's `algo = diag-oft` (plan.adapter.kind "diag-oft") as a peft LoRA custom layer.

LyCORIS's DiagOFTModule (lycoris/modules/diag_oft.py) splits a layer's output channels into `block_num`
blocks of `block_size` (factorization(out, lora_dim): the smaller of lora_dim and out / lora_dim when
lora_dim divides out) and rotates each block of rows of the weight by an orthogonal matrix:
R = (I + Q)(I - Q)^-1 (Cayley), Q = B - B^T from the trained block B (starting at 0, so R = I), scaled down
to norm `constraint x out` when larger (COFT; 0: no constraint). The weight becomes W'_k = R_k^T W_k per
block k (its einsum "k n m, k n ... -> k m ..."), times a trained per-row `rescale` (from 1) when `rescaled`;
the forward adds op(x, W' - W) with no bias. It saves `oft_blocks`, `rescale` and `alpha` (the constraint).

peft's OFT rotates the layer's input, from an upper-triangle parameter vector: another update.
`DiagOftLayer` is LyCORIS's form on peft's LoRA machinery (custom modules, as locon_tucker.py),
`lora_oft_blocks` / `lora_oft_rescale` ParameterDicts (peft's `lora_` prefix: peft's adapter state dicts,
dbspec's trainable-weight filter and checkpoints hold them); peft's rank carries LyCORIS's lora_dim and its
alpha the constraint, so both ride in peft's JSON config. Linear and ungrouped, zero-padded Conv2d layers.

`bypass` (plan.adapter.bypass, LyCORIS bypass_mode; lycoris.functional.diag_oft / boft bypass_forward_diff):
the same rotation (and rescale) applied to the layer's output channels, its bias included, where the default
forward rotates the weight alone; merge then rotates the bias too. The rotation of rows is one function
(`_rotated_delta`) for both: a weight's rows, or the output with its channel axis moved first."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from dbspec.runtime.peft_layer import WeightDelta


def lycoris_factorization(dimension: int, factor: int) -> tuple[int, int]:
    """LyCORIS's factorization (lycoris/functional/general.py): (m, n), m <= n, m x n = dimension. A positive
    factor dividing the dimension splits there; otherwise the divisor pair grows from (1, dimension) while
    its sum does not grow and m stays within the factor (any, for a negative one). peft's LoKr copy keeps
    (factor, dimension / factor) unordered: not the same for factors above the square root."""
    if factor > 0 and dimension % factor == 0:
        return tuple(sorted((factor, dimension // factor)))
    limit = dimension if factor < 0 else factor
    m, n = 1, dimension
    while m < n:
        bigger = next(d for d in range(m + 1, dimension + 1) if dimension % d == 0)
        if bigger + dimension // bigger > m + n or bigger > limit:
            break
        m, n = bigger, dimension // bigger
    return (m, n) if m <= n else (n, m)


class DiagOftLayer(WeightDelta, nn.Module, LoraLayer):
    """LyCORIS's DiagOFTModule: block-diagonal Cayley rotations of the layer's output rows."""

    _holds = "lora_oft_blocks"
    _title = "LyCORIS's diag-oft"

    adapter_layer_names = ("lora_oft_blocks", "lora_oft_rescale")
    oft_rank_dropout = 0.0  # LyCORIS's rank_dropout (add_oft_rank_dropout): the rotations' nn.Dropout

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config=None,
        r: int = 4,
        lora_alpha: float = 0.0,
        rescaled: bool = False,
        bypass: bool = False,
        **kwargs: Any,
    ):
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        self.oft_bypass = bypass  # LyCORIS bypass_mode: the output rotated, its bias too
        self.oft_name = kwargs.get("target_name") or ""  # the module's path, for messages
        self.oft_block_size = 0  # 0: LyCORIS's factorization of the layer's own width
        self.lora_oft_blocks = nn.ParameterDict()
        self.lora_oft_rescale = nn.ParameterDict()
        self.constraint: dict[str, float] = {}
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, r, lora_alpha, rescaled)

    def update_layer(
        self, adapter_name: str, config, r: int, lora_alpha: float, rescaled: bool = False, *a, **k
    ):
        base = self.get_base_layer()
        if isinstance(base, nn.Conv2d) and (base.groups != 1 or base.padding_mode != "zeros"):
            raise ValueError("LyCORIS's diag-oft: grouped or non-zero-padded convolutions are not supported")
        out_dim = base.weight.shape[0]
        block_size, block_num = lycoris_factorization(out_dim, r)
        if self.oft_block_size:  # a part of a fused Linear: the fused module's blocks (fit_fused_oft)
            block_size, block_num = self.oft_block_size, out_dim // self.oft_block_size
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = 1.0
        self.constraint[adapter_name] = float(lora_alpha) * out_dim  # LyCORIS: constraint x out_dim
        self.lora_oft_blocks[adapter_name] = nn.Parameter(torch.zeros(block_num, block_size, block_size))
        if rescaled:
            shape = (out_dim, *[1] * (base.weight.dim() - 1))
            self.lora_oft_rescale[adapter_name] = nn.Parameter(torch.ones(shape))
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=getattr(config, "inference_mode", False))

    def rotation(self, adapter: str) -> torch.Tensor:
        """R per block: LyCORIS's get_r (the inverse in float32)."""
        blocks = self.lora_oft_blocks[adapter]
        eye = torch.eye(blocks.shape[-1], device=blocks.device, dtype=blocks.dtype)
        q = blocks - blocks.transpose(1, 2)
        constraint = self.constraint[adapter]
        if constraint > 0:
            norm = self._constrained_norm(adapter, q) + 1e-8
            if norm > constraint:
                q = q * constraint / norm
        return (eye + q) @ (eye - q).float().inverse()

    def _constrained_norm(self, adapter: str, q: torch.Tensor) -> torch.Tensor:
        """The norm the constraint bounds: of this layer's skew-symmetric blocks `q`, or for a part of a
        fused Linear (link_fused_oft) of every part's, in row order, as LyCORIS's one DiagOFTModule on the
        fused layer holds them (each part's rotation then depends on the others' blocks too)."""
        parts = self.__dict__.get("oft_fused_parts")
        if not parts or "oft_tie" in self.__dict__:  # a tied part's blocks are the fused module's, all
            return torch.norm(q)
        qs = []
        for part in parts:
            blocks = part.lora_oft_blocks[adapter]
            qs.append(q if part is self else blocks - blocks.transpose(1, 2))
        return torch.norm(torch.cat([x.reshape(-1) for x in qs]))

    def get_delta_weight(self, adapter: str, dropped: bool = False) -> torch.Tensor:
        """W' - W: LyCORIS's make_weight(diff=True); a part whose fused module's blocks span parts
        (runtime/fused_oft.py): its rows of the rotated stacked weight (the parts' unmerged weights)."""
        if "oft_tie" not in self.__dict__:  # (BoftLayer's _rotated_delta takes no dropout: never drawn)
            weight = self.get_base_layer().weight
            return (
                self._rotated_delta(adapter, weight, dropped=True)
                if dropped
                else self._rotated_delta(adapter, weight)
            )
        from dbspec.runtime.lycoris_boft import _unmerged_weight

        return self._rotated_delta(adapter, _unmerged_weight(self), dropped, _unmerged_weight)

    def _rescale(self, adapter: str, rows: torch.Tensor) -> torch.Tensor | None:
        """The trained per-row rescale shaped to broadcast over `rows` (rows first), None without one."""
        if adapter not in self.lora_oft_rescale:
            return None
        rescale = self.lora_oft_rescale[adapter]
        return rescale.reshape(rescale.shape[0], *[1] * (rows.dim() - 1))

    def _added(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """WeightDelta's added output; while training with `oft_rank_dropout` (the default forward only),
        the delta of the rotations with their dropout (_rotated_delta's `dropped`)."""
        if not (self.training and self.oft_rank_dropout):
            return super()._added(x, adapter)
        delta = self.get_delta_weight(adapter, dropped=True)
        return self._op(self._cast_input_dtype(x, delta.dtype), delta)

    def _rank_mask(self, rotation: torch.Tensor) -> torch.Tensor:
        """DiagOFTModule.make_weight's `rank_drop(r * scale)` (nn.Dropout(rank_dropout) on the (blocks, size,
        size) rotations, from torch's generator on their device) as the factor it multiplies them by: the
        same dropout of ones shaped as the rotations, 0 or 1 / (1 - rate) per entry; a fused Linear's
        parts (add_oft_rank_dropout) take their blocks' rows of one mask over the fused module's."""
        draw = self.__dict__.get("oft_rank_draw")  # a fused Linear's parts' one mask
        if draw is not None:
            return draw.take(self, rotation)
        from dbspec.runtime.kohya_rows import in_kohya_rows  # SD3 / Flux's swapped modulation: kohya's blocks

        mask = nn.functional.dropout(torch.ones_like(rotation), self.oft_rank_dropout, training=True)
        return mask if self._kohya_order(rotation) else in_kohya_rows(mask, self)

    def _kohya_order(self, rotation: torch.Tensor) -> bool:
        """Whether the blocks rotate kohya's rows rather than diffusers': a Linear kohya holds with its halves
        of rows the other way round (runtime/kohya_rows.py, SD3 / Flux's (shift, scale) modulation) split
        into an odd number of blocks, the middle one over the end of one half and the start of the other
        (no block of diffusers' rows is kohya's there). An even count keeps diffusers' rows: kohya's blocks
        are the same blocks, the halves' swapped (the export swaps them back, lycoris_export.py)."""
        from dbspec.runtime.kohya_rows import SWAPPED

        return getattr(self, SWAPPED, False) and rotation.shape[0] % 2 == 1

    def _rotated_delta(
        self, adapter: str, rows: torch.Tensor, dropped: bool = False, piece=None
    ) -> torch.Tensor:
        """R^T per block of `rows` (dimension 0), times the rescale, minus `rows` (in the blocks' dtype);
        `dropped`: R with its rank dropout (_rank_mask) first. A tied part of a fused Linear (its blocks
        span parts: runtime/fused_oft.py): the blocks its rows touch over those stacked rows, `piece(part)`
        a neighbour's rows, and its own rows of the result."""
        rotation = self.rotation(adapter)
        if dropped:
            rotation = rotation * self._rank_mask(rotation)
        org = rows.to(rotation.dtype)
        tie = self.__dict__.get("oft_tie")
        if tie is not None:
            first, end, offset, width = tie.window(self)
            rotation, rows = rotation[first:end], tie.rows(self, org, piece)
        out_dim, *rest = rows.shape
        kohya = tie is None and self._kohya_order(rotation)  # kohya's rows rotated, then back (half: out / 2)
        if kohya:
            rows = rows.roll(out_dim // 2, dims=0)
        blocks, size = rotation.shape[0], rotation.shape[1]
        eye = torch.eye(size, device=rotation.device, dtype=rotation.dtype)
        window = rows.to(rotation.dtype).reshape(blocks, size, *rest)
        delta = torch.einsum("k n m, k n ... -> k m ...", rotation - eye, window).reshape(out_dim, *rest)
        if kohya:
            delta = delta.roll(out_dim // 2, dims=0)
        if tie is not None:
            delta = delta[offset : offset + width]
        rescale = self._rescale(adapter, org)
        if rescale is not None:
            delta = rescale * delta + (rescale - 1) * org
        return delta.to(self.lora_oft_blocks[adapter].dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """AddedOutput's forward, or with `oft_bypass` LyCORIS's bypass forward: the output's channels
        rotated (dimension 1 of a convolution's output, the last of a linear's)."""
        if not self.oft_bypass:
            return super().forward(x, *args, **kwargs)
        if self._base_only(x, args, kwargs):
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        dtype = result.dtype
        channels = 1 if isinstance(self.get_base_layer(), nn.Conv2d) else -1

        def piece(layer: DiagOftLayer) -> torch.Tensor:  # a tied part's neighbour's output (fused_oft.py)
            return layer.get_base_layer()(x, *args, **kwargs).movedim(channels, 0)

        for adapter in self.active_adapters:
            if adapter in self.lora_oft_blocks:
                moved = result.movedim(channels, 0)
                tied = {"piece": piece} if "oft_tie" in self.__dict__ else {}
                delta = self._rotated_delta(adapter, moved, **tied)
                result = result + delta.to(dtype).movedim(0, channels)
        return result.to(dtype)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """WeightDelta's merge; in bypass mode the bias rotated too (kept to unmerge)."""
        before = list(self.merged_adapters)
        super().merge(safe_merge, adapter_names)
        bias = self.get_base_layer().bias
        if not self.oft_bypass or bias is None:
            return
        from dbspec.runtime.lycoris_boft import _unmerged_bias  # a tied part's neighbours' (fused_oft.py)

        for adapter in self.merged_adapters[len(before) :]:
            with torch.no_grad():
                if "oft_tie" in self.__dict__:
                    delta = self._rotated_delta(adapter, _unmerged_bias(self), piece=_unmerged_bias)
                else:
                    delta = self._rotated_delta(adapter, bias)
                delta = delta.to(bias.dtype)
                bias.data += delta
            self.__dict__.setdefault("_merged_bias", {})[adapter] = delta

    def unmerge(self) -> None:
        stash = self.__dict__.get("_merged_bias", {})
        bias = self.get_base_layer().bias
        for adapter in list(self.merged_adapters):
            if adapter in stash:
                with torch.no_grad():
                    bias.data -= stash.pop(adapter)
        super().unmerge()

    def __repr__(self) -> str:
        return "lycoris_diag_oft." + super().__repr__()


def dispatch_oft(
    target: nn.Module,
    adapter_name: str,
    config,
    rescaled: bool = False,
    layer: type | None = None,
    bypass: bool = False,
    own_rescaled: dict[int, bool] | None = None,
    **kwargs: Any,
):
    """peft's custom dispatcher for Linear and Conv2d: `layer` (DiagOftLayer, or BOFT's subclass);
    `own_rescaled`: {id(base layer): rescaled} of the layers whose block sets its own (LyCORIS map
    entries' `rescaled`), the others `rescaled`."""
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if isinstance(base, (nn.Linear, nn.Conv2d)):
        return (layer or DiagOftLayer)(
            target,
            adapter_name,
            config=config,
            r=kwargs.get("r", config.r),
            lora_alpha=kwargs.get("lora_alpha", config.lora_alpha),
            rescaled=(own_rescaled or {}).get(id(base), rescaled),
            bypass=bypass,
            target_name=kwargs.get("target_name"),  # peft's module path
        )
    return None


def oft_config(
    targets: list[str],
    block: int,
    constraint: float,
    rescaled: bool,
    layer: type | None = None,
    bypass: bool = False,
):
    """A LoraConfig building `layer` (DiagOftLayer, or BOFT's) on every target: peft's rank is LyCORIS's
    lora_dim (the block-size hint), its alpha the constraint; `bypass`: LyCORIS's bypass forward."""
    from peft import LoraConfig

    config = LoraConfig(r=block, lora_alpha=constraint, target_modules=targets)
    return with_oft(config, rescaled, layer, bypass)


def with_oft(
    config,
    rescaled: bool,
    layer: type | None = None,
    bypass: bool = False,
    own_rescaled: dict[int, bool] | None = None,
):
    """`config` building `layer` (DiagOftLayer, or BOFT's) on its Linear and Conv2d targets, each with a
    row rescale when `rescaled`, or as `own_rescaled` ({id(base layer): rescaled}) says for its layers."""
    dispatch = partial(dispatch_oft, rescaled=rescaled, layer=layer, bypass=bypass, own_rescaled=own_rescaled)
    config._register_custom_module({nn.Linear: dispatch, nn.Conv2d: dispatch})
    return config


def is_oft(config) -> bool:
    """`config` builds DiagOftLayer or a subclass (with_oft): a LoraConfig whose keys are `lora_oft_*` (a run
    of several kinds holds LoRA's too under one adapter name, runtime/mixed_kinds.py)."""
    return any(
        getattr(d, "func", None) is dispatch_oft
        for d in (getattr(config, "_custom_modules", None) or {}).values()
    )


def has_oft(state: dict[str, torch.Tensor]) -> bool:
    return any(".lora_oft_blocks" in key for key in state)


def has_rescale(state: dict[str, torch.Tensor]) -> bool:
    return any(".lora_oft_rescale" in key for key in state)


def rescale_layers(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[int, bool]:
    """{id(layer): True / False} of `module`'s Diag-OFT layers a peft state dict holds, True for those with a
    trained row rescale (`lora_oft_rescale`): with_oft's `own_rescaled` for a folder whose blocks gave
    some layers one of their own."""
    paths = {key.split(".lora_oft_blocks")[0] for key in state if ".lora_oft_blocks" in key}
    rescaled = {key.split(".lora_oft_rescale")[0] for key in state if ".lora_oft_rescale" in key}
    return {id(module.get_submodule(path)): path in rescaled for path in paths}


class KohyaOftLayer(DiagOftLayer):
    """kohya's own OFT (sd-scripts networks/oft.py, OFTModule), `oft_form = "kohya"`: peft's rank carries
    kohya's `dim`, the NUMBER of blocks (block size out // dim; a width it does not divide is refused, where
    kohya's einops rearrange fails), its alpha kohya's `alpha` (constraint alpha x out). get_weight always
    clamps: Q x (min(|Q|, constraint) + 1e-8) / (|Q| + 1e-8), R = (I + Q)(I - Q)^-1 (the inverse in fp32),
    then multiplier x (R - I) + I (train_network.py builds the network at multiplier 1.0). The forward runs
    the layer on the whole rotated weight R^T W computed in fp32 and cast to the input's dtype, with the
    layer's own bias, not the base output plus a delta. No rescale, no bypass."""

    _title = "kohya's networks.oft"
    multiplier = 1.0

    def update_layer(self, adapter_name: str, config, r: int, lora_alpha: float, *a, **k):
        base = self.get_base_layer()
        if isinstance(base, nn.Conv2d) and (base.groups != 1 or base.padding_mode != "zeros"):
            raise ValueError(
                "kohya's networks.oft: grouped or non-zero-padded convolutions are not supported"
            )
        out_dim = base.weight.shape[0]
        if r < 1 or out_dim % r:
            raise ValueError(
                f"kohya's networks.oft cannot split the {out_dim} output rows of "
                f"`{self.oft_name or 'a layer'}` into {r} blocks"
                " (its dim must divide every targeted layer's width)"
            )
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = 1.0
        self.constraint[adapter_name] = (
            float(lora_alpha) * out_dim
        )  # OFTModule: alpha * out_dim (Python floats)
        size = out_dim // r
        self.lora_oft_blocks[adapter_name] = nn.Parameter(torch.zeros(r, size, size))
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=getattr(config, "inference_mode", False))

    def rotation(self, adapter: str) -> torch.Tensor:
        """OFTModule.get_weight: the weighted R per block (fp32 identity, as kohya's `self.I`)."""
        blocks = self.lora_oft_blocks[adapter]
        count, size = blocks.shape[0], blocks.shape[1]
        eye = torch.eye(size, device=blocks.device).unsqueeze(0).repeat(count, 1, 1)
        q = blocks - blocks.transpose(1, 2)
        norm = torch.norm(q.flatten())
        clamped = torch.clamp(norm, max=self.constraint[adapter])
        q = q * ((clamped + 1e-8) / (norm + 1e-8))
        rotation = torch.matmul(eye + q, (eye - q).float().inverse())
        return self.multiplier * (rotation - eye) + eye

    def rotated_weight(self, adapter: str) -> torch.Tensor:
        """R^T W per block in fp32: OFTModule.forward's einsum (its Linear and its Conv2d string)."""
        rotation = self.rotation(adapter).to(torch.float32)
        weight = self.get_base_layer().weight.to(torch.float32)
        count, size = rotation.shape[0], rotation.shape[1]
        rows = weight.reshape(count, size, *weight.shape[1:])
        if weight.dim() == 4:
            rotated = torch.einsum("k n m, k n ... -> k m ...", rotation, rows)
        else:
            rotated = torch.einsum("k n m, k n p -> k m p", rotation, rows)
        return rotated.reshape(weight.shape)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """R^T W - W (fp32), for peft's merge (kohya's merge_to writes R^T W cast to the weight's dtype)."""
        return self.rotated_weight(adapter) - self.get_base_layer().weight.to(torch.float32)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._base_only(x, args, kwargs):
            return self.base_layer(x, *args, **kwargs)
        held = [a for a in self.active_adapters if a in self.lora_oft_blocks]
        if self.merged or not held:
            return self.base_layer(x, *args, **kwargs)
        if len(held) > 1:
            raise ValueError("kohya's networks.oft: one active adapter per layer")
        base = self.get_base_layer()
        weight = self.rotated_weight(held[0]).to(x.dtype)
        if isinstance(base, nn.Conv2d):
            return nn.functional.conv2d(
                x, weight, base.bias, base.stride, base.padding, base.dilation, base.groups
            )
        return nn.functional.linear(x, weight, base.bias)

    def __repr__(self) -> str:
        return "kohya_oft." + super().__repr__()


def kohya_oft_config(targets: list[str], blocks: int, alpha: float):
    """A LoraConfig building KohyaOftLayer on every target: peft's rank is kohya's dim (the block count),
    its alpha kohya's alpha (the constraint per output row)."""
    return oft_config(targets, blocks, alpha, False, layer=KohyaOftLayer)


class FusedRankDraw:
    """One DiagOFTModule's rank-dropout mask on a fused Linear (plan.adapter.fused), for its `parts` (each
    part's DiagOftLayer, in row order, their blocks the fused module's over their rows: fit_fused_oft): the
    first part called per training forward draws the dropout of ones shaped as every part's blocks stacked,
    (all blocks, size, size), as LyCORIS's module draws it over its rotations (one call, the same generator
    use); each part takes its own blocks' rows, or parts that share the fused module's blocks
    (runtime/fused_oft.py) the whole mask. Kept until every part has taken it (as runtime/fused.py
    FusedSkip), so gradient checkpointing's recomputation draws it again alike."""

    def __init__(self, parts: list, rate: float, adapter: str):
        self.parts, self.rate, self.adapter = parts, rate, adapter
        self.left, self.mask = 0, None

    def take(self, layer: DiagOftLayer, rotation: torch.Tensor) -> torch.Tensor:
        tied = "oft_tie" in layer.__dict__  # the parts' one Parameter: every block, once
        counts = [
            int(part.lora_oft_blocks[self.adapter].shape[0]) for part in self.parts[: 1 if tied else None]
        ]
        if self.left == 0:
            ones = rotation.new_ones((sum(counts), *rotation.shape[1:]))
            self.mask, self.left = nn.functional.dropout(ones, self.rate, training=True), len(self.parts)
        self.left -= 1
        if tied:
            return self.mask
        index = next(i for i, part in enumerate(self.parts) if part is layer)
        start = sum(counts[:index])
        return self.mask[start : start + counts[index]]


def add_oft_rank_dropout(module: nn.Module, rate: float, adapter: str = "default") -> int:
    """LyCORIS's `rank_dropout` on every Diag-OFT layer of `module` (LyCORIS's form; not BOFT's, which never
    reads it): while training, the default forward's rotations through DiagOFTModule.make_weight's
    nn.Dropout, one mask per layer and forward (after module_dropout's draw); the bypass forward draws none,
    as LyCORIS's never reads it. The parts of a fused Linear (linked by fit_fused_oft, called first) share
    one mask over the fused module's blocks (FusedRankDraw). How many layers draw."""
    count = 0
    for layer in module.modules():
        if type(layer) is DiagOftLayer and not layer.oft_bypass:
            layer.oft_rank_dropout = rate
            count += 1
            parts = layer.__dict__.get("oft_fused_parts")
            if parts and "oft_rank_draw" not in layer.__dict__:
                draw = FusedRankDraw(list(parts), rate, adapter)
                for part in parts:
                    part.__dict__["oft_rank_draw"] = draw  # not a submodule: the draw, no parameters
    return count


def _oft_layers(module: nn.Module) -> list[tuple[str, DiagOftLayer]]:
    return [(n, m) for n, m in module.named_modules() if type(m) is DiagOftLayer]


def resize_blocks(layer: DiagOftLayer, adapter: str, size: int) -> None:
    """Give `layer` zero blocks of `size` rows (the identity rotation); ValueError when `size` does not
    divide its rows. Before the optimizer is built: the old Parameter is dropped."""
    out_dim = layer.get_base_layer().weight.shape[0]
    if size < 1 or out_dim % size:
        raise ValueError(
            f"`{layer.oft_name}`: its {out_dim} rows do not split into blocks of {size} (LyCORIS's Diag-OFT "
            "on the fused Linear it is part of would rotate rows of two parts together)"
        )
    old = layer.lora_oft_blocks[adapter]
    layer.oft_block_size = size
    zeros = torch.zeros(out_dim // size, size, size, dtype=old.dtype, device=old.device)
    layer.lora_oft_blocks[adapter] = nn.Parameter(zeros, requires_grad=old.requires_grad)


def _diag_oft(layer: nn.Module) -> bool:
    """A Diag-OFT layer, not a BOFT one (BoftLayer subclasses DiagOftLayer; a run of several kinds holds
    both, and a fused BOFT's parts are lycoris_boft.tie_fused_boft's)."""
    from dbspec.runtime.lycoris_boft import BoftLayer

    return isinstance(layer, DiagOftLayer) and not isinstance(layer, BoftLayer)


def fit_fused_oft(module: nn.Module, groups, adapter: str) -> int:
    """LyCORIS's DiagOFTModule on a fused Linear of the original model (plan.adapter.fused: Flux's qkv and
    linear1, SD3's qkv): one block split of the stacked rows, block size factorization(sum of the parts'
    widths, lora_dim), which each part's DiagOftLayer takes for its own rows (its blocks are the fused
    module's blocks over its rows, in row order). Each block's rotation touches one part's rows alone (the
    rescale is per row), so the parts' rotations are exactly the fused module's; its constraint's one norm
    over all the blocks is shared by linking the parts (link_fused_oft). Where a block spans two parts, the
    parts share the fused module's blocks instead (runtime/fused_oft.py tie_fused_oft; every part adapted).
    How many parts were resized (or tied)."""
    from dbspec.runtime.fused import fused_parts

    resized = 0
    for group, index, found in fused_parts(module, groups, _diag_oft):
        if not found:
            continue
        block = module.get_submodule(group.blocks)[index]
        widths = [_rows(block.get_submodule(part)) for part in group.parts]
        layer = found[0][2]
        size, _ = lycoris_factorization(sum(widths), layer.r[adapter])
        where = f"{group.blocks}.{index}: the fused {group.name} ({' + '.join(map(str, widths))} rows)"
        if any(w % size for w in widths):  # a block spans two parts: one module's blocks, shared
            from dbspec.runtime.fused_oft import tie_fused_oft

            if len(found) != len(group.parts):
                raise ValueError(
                    f"{where} splits into LyCORIS Diag-OFT blocks of {size} rows (factorization of "
                    f"{sum(widths)} by adapter.block_size = {layer.r[adapter]}), which span its parts: "
                    f"every part must be adapted ({', '.join(group.parts)})"
                )
            tie_fused_oft([part for _, _, part in found], size, adapter, where)
            resized += len(found)
            continue
        for _, _, part in found:
            resize_blocks(part, adapter, size)
            resized += 1
    link_fused_oft(module, groups, adapter)
    return resized


def link_fused_oft(module: nn.Module, groups, adapter: str) -> int:
    """Each part of a fused Linear (plan.adapter.fused) knows the fused layer's parts, in row order, and its
    constraint is the fused module's: constraint x the fused width (LyCORIS's DiagOFTModule: constraint x
    out_dim over all its blocks), the norm taken over every part's blocks (DiagOftLayer._constrained_norm).
    Called when the run builds its layers (fit_fused_oft) and when a saved adapter is loaded back
    (runtime/sample.py; parts loaded back each holding the blocks of the stacked rows, saved from parts
    whose blocks spanned them, share them again: runtime/fused_oft.py). How many parts were linked."""
    from dbspec.runtime.fused import fused_parts

    linked = 0
    for group, index, found in fused_parts(module, groups, _diag_oft):
        parts = [part for _, _, part in found if adapter in part.lora_oft_blocks]
        if not parts:
            continue
        block = module.get_submodule(group.blocks)[index]
        width = sum(_rows(block.get_submodule(p)) for p in group.parts)
        if "oft_tie" not in parts[0].__dict__ and len(parts) == len(group.parts):
            from dbspec.runtime.fused_oft import OftTie, share, spans

            size = spans(parts, adapter)
            if size:  # the loaded values are equal (one Parameter when saved): the first part's
                share(parts, parts[0].lora_oft_blocks[adapter], OftTie(parts, size), adapter)
        for part in parts:
            part.__dict__["oft_fused_parts"] = parts  # not a submodule: no state, no second registration
            part.constraint[adapter] = float(part.lora_alpha[adapter]) * width
            linked += 1
    return linked


def fit_oft_to_state(module: nn.Module, state: dict[str, torch.Tensor], adapter: str) -> None:
    """Diag-OFT layers whose saved blocks (peft's state: `<path>.lora_oft_blocks`) have another block size
    than their own factorization (a fused Linear's parts, fit_fused_oft) take the saved size; a part whose
    saved blocks are its fused module's over every part's rows (they spanned parts: runtime/fused_oft.py)
    takes their shape, for link_fused_oft to tie."""
    for name, layer in _oft_layers(module):
        if adapter not in layer.lora_oft_blocks:
            continue
        key = f"{name}.lora_oft_blocks"
        saved = next((v for k, v in state.items() if k == key or k.endswith(f".{key}")), None)
        own = layer.lora_oft_blocks[adapter]
        if saved is not None and saved.shape[0] * saved.shape[-1] != _rows(layer):
            zeros = torch.zeros(saved.shape, dtype=own.dtype, device=own.device)
            layer.oft_block_size = int(saved.shape[-1])
            layer.lora_oft_blocks[adapter] = nn.Parameter(zeros, requires_grad=own.requires_grad)
        elif saved is not None and saved.shape[-1] != own.shape[-1]:
            resize_blocks(layer, adapter, int(saved.shape[-1]))


def _rows(layer: nn.Module) -> int:
    base = layer.get_base_layer() if isinstance(layer, BaseTunerLayer) else layer
    return int(base.weight.shape[0])
