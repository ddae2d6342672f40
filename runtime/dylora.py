"""DyLoRA (plan.adapter.kind "dylora": kohya's networks/dylora.py, LyCORIS's lycoris/modules/dylora.py) as a
peft LoRA custom layer.

The layer is a LoRA whose rank is cut into blocks of `unit` ranks, each block its own pair of parameters
(down: unit x in[ x k x k], up: out x unit[ x 1 x 1]; downs kaiming-uniform with a = sqrt 5, ups zero, as both
tools start them). Before each training micro-batch `draw_blocks` draws one block b per layer, uniformly,
from the run's training generator (checkpointed, so a resumed run draws the same; kohya and LyCORIS draw
from Python's `random` in every forward). Only block b takes part with its gradient; the others are
detached, so their gradient stays None and the optimizer skips them that step, as kohya's `requires_grad`
switch and LyCORIS's `.data` do. The training forward is the plan's `dylora_form`:

- "kohya" (DyLoRAModule.forward): every block in the update, x A^T B^T x alpha / rank x
  sqrt(rank / ((b + 1) unit));
- "lycoris" (DyLoraModule.get_weight): blocks 0..b only, the update op(x, B A) x alpha / (b + 1).

Outside training (validation, sampling, a disabled adapter's prior) the update is every rank at alpha / rank:
the plain LoRA both tools save (`lora_down` / `lora_up` / `alpha`), which is what `dylora_as_lora` writes and
the exports hold.

LyCORIS's switches (plan.adapter): `module_dropout` (DyLoraModule.forward: one `torch.rand(1)` from torch's
global generator per layer and training forward, before anything else; below the rate the layer answers with
its base output alone, so its drawn block gets no gradient; a fused Linear's parts share one draw,
runtime/fused.py FusedSkip) and `bypass` (bypass_mode: one block per layer, the compiler's DBS549, and the
update up(down(x)) (a convolution's stride and padding on down, the up 1x1) with no scale at all, in training
and outside it alike, as DyLoraModule.bypass_forward_diff computes it; merges and exports keep the saved
file's alpha / rank)."""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from dbspec.runtime.peft_layer import WeightDelta

_DOWN, _UP = "lora_dylora_down", "lora_dylora_up"


class DyloraLayer(WeightDelta, nn.Module, LoraLayer):
    """A LoRA in blocks of `unit` ranks; `drawn[adapter]` is the block that trains in this forward (None:
    every rank at alpha / rank)."""

    _holds = _DOWN
    _title = "DyLoRA"

    adapter_layer_names = (_DOWN, _UP)

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config=None,
        r: int = 4,
        lora_alpha: float = 1.0,
        unit: int = 1,
        form: str = "kohya",
        module_dropout: float = 0.0,
        bypass: bool = False,
        zero_scale: bool = False,
        **kw,
    ):
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        setattr(self, _DOWN, nn.ModuleDict())
        setattr(self, _UP, nn.ModuleDict())
        self.unit, self.form = unit, form
        # LyCORIS's alpha buffer loaded as 0 (plan block zero_scale): the update scaled by 0, still built
        self.dylora_zero_scale = zero_scale
        self.dylora_module_dropout, self.dylora_bypass = module_dropout, bypass
        self.drawn: dict[str, int | None] = {}
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, r, lora_alpha)

    def update_layer(self, adapter_name: str, config, r: int, lora_alpha: float, *args: Any, **kwargs: Any):
        base = self.get_base_layer()
        if isinstance(base, nn.Conv2d) and (base.groups != 1 or base.padding_mode != "zeros"):
            raise ValueError("DyLoRA: grouped or non-zero-padded convolutions are not supported")
        if r % self.unit:
            raise ValueError(f"DyLoRA: rank {r} is not a multiple of the block size {self.unit}")
        if self.dylora_bypass and r != self.unit:
            raise ValueError(
                f"DyLoRA bypass: LyCORIS runs it with one block per layer; rank {r}, unit {self.unit}"
            )
        if isinstance(base, nn.Conv2d):
            out_dim, in_dim, kernel = base.out_channels, base.in_channels, list(base.kernel_size)
        else:  # a quantised base's weight may be packed: the layer's sizes, not its weight's shape
            out_dim, in_dim, kernel = base.out_features, base.in_features, []
        self.weight_shape = (out_dim, in_dim, *kernel)
        point = [1] * len(kernel)
        alpha = 0.0 if self.dylora_zero_scale else lora_alpha or r  # both tools build alpha 0 as the rank
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = alpha
        self.scaling[adapter_name] = alpha / r
        downs, ups = nn.ParameterList(), nn.ParameterList()
        for _ in range(r // self.unit):
            down = torch.zeros(self.unit, in_dim, *kernel)
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))  # both tools: "same as microsoft's"
            downs.append(nn.Parameter(down))
            ups.append(nn.Parameter(torch.zeros(out_dim, self.unit, *point)))
        getattr(self, _DOWN)[adapter_name] = downs
        getattr(self, _UP)[adapter_name] = ups
        self.drawn[adapter_name] = None
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=getattr(config, "inference_mode", False))

    def blocks(self, adapter: str) -> int:
        return len(getattr(self, _DOWN)[adapter])

    def full(self, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(lora_down, lora_up) at every rank, kohya's shapes: (rank, in[, k, k]) and (out, rank[, 1, 1])."""
        return (
            torch.cat(tuple(getattr(self, _DOWN)[adapter]), dim=0),
            torch.cat(tuple(getattr(self, _UP)[adapter]), dim=1),
        )

    def _two_ops(self, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """x through lora_down then lora_up (kohya's order; the up a 1x1 convolution on a Conv2d)."""
        if isinstance(self.get_base_layer(), nn.Conv2d):
            return nn.functional.conv2d(self._op(x, down), up)
        return nn.functional.linear(nn.functional.linear(x, down), up)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """AddedOutput's forward, with LyCORIS's module dropout first while training."""
        p = self.dylora_module_dropout
        if not (p and self.training):
            return super().forward(x, *args, **kwargs)
        if self._base_only(x, args, kwargs) or self.merged:
            return self.base_layer(x, *args, **kwargs)
        if any(a in getattr(self, _DOWN) for a in self.active_adapters) and self._skips(p):
            return self.base_layer(x, *args, **kwargs)  # DyLoraModule: the layer's base output alone
        return super().forward(x, *args, **kwargs)

    def _skips(self, p: float) -> bool:
        """This training forward's module dropout: the layer's own `torch.rand(1) < p`, or a fused Linear's
        one draw its parts share (tie_fused_dylora)."""
        shared = self.__dict__.get("dylora_skip")
        return shared.take(p) if shared is not None else bool(torch.rand(1) < p)

    def _added(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        downs, ups = getattr(self, _DOWN)[adapter], getattr(self, _UP)[adapter]
        x = self._cast_input_dtype(x, downs[0].dtype)
        if self.dylora_bypass:  # LyCORIS's bypass forward: the one block, unscaled, in every forward
            down, up = self.full(adapter)
            return self._two_ops(x, down, up)
        b = self.drawn.get(adapter) if self.training else None
        r, alpha = self.r[adapter], self.lora_alpha[adapter]
        if b is None:  # every rank at alpha / rank: the saved LoRA
            down, up = self.full(adapter)
            return self._two_ops(x, down, up) * (alpha / r)
        if self.form == "kohya":  # every block in the update, block b alone with its gradient
            down = torch.cat([d if i == b else d.detach() for i, d in enumerate(downs)], dim=0)
            up = torch.cat([u if i == b else u.detach() for i, u in enumerate(ups)], dim=1)
            return self._two_ops(x, down, up) * (alpha / r * math.sqrt(r / ((b + 1) * self.unit)))
        # LyCORIS: blocks 0..b, the lower ones detached; ΔW = up @ down x alpha / (b + 1), then op(x, ΔW)
        down = torch.cat([*(d.detach() for d in downs[:b]), downs[b]], dim=0)
        up = torch.cat([*(u.detach() for u in ups[:b]), ups[b]], dim=1)
        delta = (up.flatten(1) @ (down.flatten(1) * (alpha / (b + 1)))).view(self.weight_shape)
        return self._op(x, delta)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """Every rank at alpha / rank (what merging, and the saved LoRA, hold)."""
        down, up = self.full(adapter)
        delta = (up.flatten(1) @ down.flatten(1)).view(self.weight_shape)
        return delta * (self.lora_alpha[adapter] / self.r[adapter])

    def __repr__(self) -> str:
        return "dylora." + super().__repr__()


def draw_blocks(modules: list[nn.Module | None], generator: torch.Generator) -> int:
    """Draw the block each DyLoRA layer of `modules` trains in the next micro-batch: uniform over its blocks,
    from `generator` (one draw per layer, in module order: kohya's `random.randint(0, rank - 1)` rounded
    down to a multiple of `unit`, and LyCORIS's `random.randint(0, blocks - 1)`, are uniform over the
    blocks alike). Returns how many layers drew."""
    drawn = 0
    followers = []  # a fused Linear's later parts (tie_fused_dylora): its first part's draw
    for module in modules:
        if module is None:
            continue
        for layer in module.modules():
            if isinstance(layer, DyloraLayer) and "dylora_leader" in layer.__dict__:
                followers.append(layer)
            elif isinstance(layer, DyloraLayer):
                for adapter in layer.drawn:
                    count = layer.blocks(adapter)
                    layer.drawn[adapter] = int(torch.randint(count, (1,), generator=generator))
                    drawn += 1
    for layer in followers:
        layer.drawn.update(layer.__dict__["dylora_leader"].drawn)
    return drawn


def tie_fused_dylora(module: nn.Module, groups, adapter: str) -> int:
    """LyCORIS's DyLoraModule on a fused Linear of the original model (plan.adapter.fused: Flux's qkv and
    linear1, SD3's qkv): one `down_list` of blocks over the fused input, an `up_list` over the stacked rows,
    and one block drawn per fused module and forward. Here the parts' down blocks are one Parameter each (the
    first part's, as runtime/fused.py ties LoRA downs), each part keeps its rows of the up blocks, and the
    later parts take the first part's draw (draw_blocks), so the parts' updates together are the fused
    module's; with module_dropout the parts share one skip draw per forward (runtime/fused.py FusedSkip).
    ValueError when a fused layer's parts are adapted in part or at other ranks, units or alphas (the
    compiler refuses those plans). How many fused layers were tied."""
    from dbspec.runtime.fused import FusedSkip, tie_parts

    def same(layer: DyloraLayer) -> tuple:
        return layer.r[adapter], layer.unit, layer.scaling[adapter]

    def tie(layer: DyloraLayer, first: DyloraLayer) -> None:
        downs, leader = getattr(layer, _DOWN)[adapter], getattr(first, _DOWN)[adapter]
        for block in range(len(downs)):
            downs[block] = leader[block]
        layer.__dict__["dylora_leader"] = first  # not a submodule: its draw, not its parameters
        if first.dylora_module_dropout and "dylora_skip" not in layer.__dict__:  # one draw per fused layer
            skip = first.__dict__.setdefault("dylora_skip", FusedSkip(1))
            skip.parts += 1
            layer.__dict__["dylora_skip"] = skip

    adapted = lambda m: isinstance(m, DyloraLayer)  # noqa: E731
    return tie_parts(module, groups, adapted, "DyLoRA", same, "rank, unit or alpha", tie)


def dispatch_dylora(
    unit: int,
    form: str,
    module_dropout: float = 0.0,
    bypass: bool = False,
    units: dict[int, int] | None = None,
    zeros: frozenset[int] = frozenset(),
):
    """peft's custom dispatcher building DyloraLayer on Linear and Conv2d layers in blocks of `unit` ranks,
    or of `units` ({id(base layer): unit}: the layers whose block sets its own, LyCORIS map entries'
    `block_size`); the layers of `zeros` (ids of base layers) with their update scaled by 0 (zero_scale)."""
    units = units or {}

    def dispatch(target: nn.Module, adapter_name: str, config, **kwargs: Any):
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if isinstance(base, (nn.Linear, nn.Conv2d)):
            return DyloraLayer(
                target,
                adapter_name,
                config=config,
                r=kwargs.get("r", config.r),
                lora_alpha=kwargs.get("lora_alpha", config.lora_alpha),
                unit=units.get(id(base), unit),
                form=form,
                module_dropout=module_dropout,
                bypass=bypass,
                zero_scale=id(base) in zeros,
            )
        return None

    dispatch.dylora = True  # is_dylora tells its configs apart (a run of several kinds: mixed_kinds.py)
    return dispatch


def is_dylora(config) -> bool:
    """`config` builds DyloraLayer: a LoraConfig whose keys are `lora_dylora_*` (a run of several kinds holds
    LoRA's too under one adapter name, runtime/mixed_kinds.py)."""
    customs = (getattr(config, "_custom_modules", None) or {}).values()
    return any(getattr(d, "dylora", False) for d in customs)


def with_state_units(config, module: nn.Module, state: dict[str, torch.Tensor], bypass: bool = False):
    """`config` (a LoraConfig read back from a saved adapter folder) building DyloraLayer on the layers of
    `state` (peft's DyLoRA keys, `<path>.lora_dylora_down.<i>`), each in blocks of the unit its saved
    blocks have; LyCORIS's forward (what a DyLoRA beside other kinds trains: runtime/mixed_kinds.py), its
    bypass forward with `bypass` (the plan's: a LoRA / LoHa / LoKr adapter's DyLoRA blocks, one each)."""
    units = {}
    for key, value in state.items():
        match = re.fullmatch(rf"(.*)\.{_DOWN}\.0", key)
        if match is not None:
            layer = module.get_submodule(match[1])
            units[id(getattr(layer, "base_layer", layer))] = value.shape[0]
    dispatch = dispatch_dylora(1, "lycoris", bypass=bypass, units=units)
    config._register_custom_module({nn.Linear: dispatch, nn.Conv2d: dispatch})
    return config


def with_units(config, adapter, units: dict[int, int], zeros: frozenset[int] = frozenset()):
    """`config` (dylora_config's, after runtime/blocks.py's with_blocks) building the layers of `units`
    ({id(base layer): unit}) in blocks of their own unit, those of `zeros` (ids) scaled by 0."""
    dispatch = dispatch_dylora(
        adapter.dylora_unit, adapter.dylora_form, adapter.module_dropout, adapter.bypass, units, zeros
    )
    config._register_custom_module({nn.Linear: dispatch, nn.Conv2d: dispatch})
    return config


def dylora_config(adapter, targets: list[str], convs: list[str]):
    """A LoraConfig building DyloraLayer on every target (the convolutions at conv_rank / conv_alpha)."""
    from peft import LoraConfig

    patterns = [re.escape(t) for t in convs]
    config = LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.alpha,
        target_modules=[*targets, *convs],
        rank_pattern={p: adapter.conv_rank for p in patterns},
        alpha_pattern={p: adapter.conv_alpha for p in patterns},
    )
    dispatch = dispatch_dylora(
        adapter.dylora_unit, adapter.dylora_form, adapter.module_dropout, adapter.bypass
    )
    config._register_custom_module({nn.Linear: dispatch, nn.Conv2d: dispatch})
    return config


def dylora_as_lora(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft's state dict of DyLoRA layers (`<path>.lora_dylora_down.<i>`, `...up.<i>`) as peft's plain LoRA
    (`<path>.lora_A.weight`, `<path>.lora_B.weight`): the blocks joined, every rank; other keys unchanged."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        match = re.fullmatch(r"(.*)\.(lora_dylora_down|lora_dylora_up)\.(\d+)", key)
        if match is None:
            out[key] = value
            continue
        parts.setdefault((match[1], match[2]), {})[int(match[3])] = value
    for (path, part), blocks in parts.items():
        ordered = [blocks[i] for i in range(len(blocks))]
        if part == _DOWN:
            out[f"{path}.lora_A.weight"] = torch.cat(ordered, dim=0)
        else:
            out[f"{path}.lora_B.weight"] = torch.cat(ordered, dim=1)
    return out


def has_dylora(state: dict[str, torch.Tensor]) -> bool:
    return any(f".{_DOWN}." in key for key in state)
