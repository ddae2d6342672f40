"""LyCORIS's `algo = glora` (plan.adapter.kind "glora", lycoris/modules/glora.py) as a peft LoRA custom layer.

GLoRAModule trains two low-rank pairs on a layer: A = a1 a2 acting on the weight's input side and B = b1 b2 a
low-rank update, ΔW = (W a1 a2 + b1 b2) x alpha / rank (alpha 0: the rank, scale 1). Shapes as LyCORIS saves
them: `a1.weight` (in, rank[, 1, 1]), `a2.weight` (rank, in[, 1, 1]), `b1.weight` (out, rank[, 1, 1]),
`b2.weight` (rank, in[, k, k]); a1 and b1 start kaiming-uniform (a = sqrt 5), a2 and b2 at zero, so a run
starts at the base model. The forward adds op(x, ΔW) with no bias. Linear and ungrouped, zero-padded Conv2d
layers (its Tucker form LyCORIS never builds). peft's rank and alpha (rank_pattern / alpha_pattern for the
convolutions) are GLoRA's, so they ride in peft's JSON config.

GLoRAModule's switches (plan.adapter): `scalar` (use_scalar: ΔW times a trained scalar from 0, a2 and b2
kaiming-uniform after a1 and b1; saved folded into a2 and b2, `lora_glora_scalar` here), `module_dropout` (one
`torch.rand(1)` on the CPU per forward while training: the update skipped below the rate), `bypass`
(bypass_mode: W (x + drop(a1 m_a(a2 x)) s) + bias + drop(b1 m_b(b2 x)) s on activations, s = scalar x alpha /
rank, b2 a convolution with the layer's kernel, stride and padding, the others 1x1), and in bypass alone
`rank_dropout` (m_a, m_b: one `torch.rand(rank)` each on the input's device, a rank KEPT where its draw is
below the rate, as GLoRAModule's `<`; unscaled: kohya never passes rank_dropout_scale) and `bypass_dropout`
(torch's dropout on each pair's output). Every draw is torch's global generator's, LyCORIS's order."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from dbspec.runtime.peft_layer import WeightDelta

_PARTS = ("lora_glora_a1", "lora_glora_a2", "lora_glora_b1", "lora_glora_b2")


class GloraLayer(WeightDelta, nn.Module, LoraLayer):
    """LyCORIS's GLoRAModule: W a1 a2 + b1 b2, scaled by alpha / rank."""

    _holds = "lora_glora_a1"
    _title = "LyCORIS's glora"

    adapter_layer_names = _PARTS

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config=None,
        r: int = 4,
        lora_alpha: float = 1.0,
        scalar: bool = False,
        bypass: bool = False,
        rank_dropout: float = 0.0,
        module_dropout: float = 0.0,
        dropout: float = 0.0,
        **kw,
    ):
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        for part in (*_PARTS, "lora_glora_scalar"):
            setattr(self, part, nn.ParameterDict())
        # LyCORIS's forward switches (one adapter per layer in dbspec)
        self.glora_bypass, self.glora_rank_dropout = bypass, rank_dropout
        self.glora_module_dropout, self.glora_dropout = module_dropout, dropout
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, r, lora_alpha, scalar)

    def update_layer(
        self, adapter_name: str, config, r: int, lora_alpha: float, scalar: bool = False, *a: Any, **k: Any
    ):
        base = self.get_base_layer()
        conv = isinstance(base, nn.Conv2d)
        if conv and (base.groups != 1 or base.padding_mode != "zeros"):
            raise ValueError("LyCORIS's glora: grouped or non-zero-padded convolutions are not supported")
        out_dim, in_dim, *kernel = base.weight.shape
        point = (1, 1) if conv else ()
        alpha = lora_alpha or r
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = alpha
        self.scaling[adapter_name] = alpha / r
        shapes = {
            "lora_glora_a1": (in_dim, r, *point),
            "lora_glora_a2": (r, in_dim, *point),
            "lora_glora_b1": (out_dim, r, *point),
            "lora_glora_b2": (r, in_dim, *kernel),
        }
        weights = {part: torch.zeros(shape) for part, shape in shapes.items()}
        # LyCORIS: a1, b1 "same as microsoft's"; with use_scalar a2, b2 too (after them), else zero
        for part in (
            "lora_glora_a1",
            "lora_glora_b1",
            *(("lora_glora_a2", "lora_glora_b2") if scalar else ()),
        ):
            nn.init.kaiming_uniform_(weights[part], a=math.sqrt(5))
        for part in _PARTS:
            getattr(self, part)[adapter_name] = nn.Parameter(weights[part])
        if scalar:
            self.lora_glora_scalar[adapter_name] = nn.Parameter(torch.tensor(0.0))
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=getattr(config, "inference_mode", False))

    def _scalar(self, adapter: str) -> torch.Tensor | float:
        return self.lora_glora_scalar[adapter] if adapter in self.lora_glora_scalar else 1.0

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """(W a1 a2 + b1 b2) x scale: LyCORIS's get_diff_weight."""
        a1, a2, b1, b2 = (getattr(self, part)[adapter] for part in _PARTS)
        weight = self.get_base_layer().weight.to(a1.dtype)
        wb = (b1.flatten(1) @ b2.flatten(1)).view(weight.shape)
        wa = torch.einsum("o i ..., i j -> o j ...", weight, a1.flatten(1))
        wa = torch.einsum("o i ..., i j -> o j ...", wa, a2.flatten(1))
        return (wb + wa) * self.scaling[adapter] * self._scalar(adapter)

    def lycoris_weights(self, adapter: str) -> dict[str, torch.Tensor]:
        """GLoRAModule's state-dict names for this layer's tensors (its alpha: self.lora_alpha), the scalar
        folded into a2 and b2 as its custom_state_dict saves them."""
        scalar = self.lora_glora_scalar[adapter] if adapter in self.lora_glora_scalar else None
        weights = {
            f"{part.removeprefix('lora_glora_')}.weight": getattr(self, part)[adapter] for part in _PARTS
        }
        if scalar is not None:
            for key in ("a2.weight", "b2.weight"):
                weights[key] = weights[key] * scalar
        return weights

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """AddedOutput's forward with GLoRAModule's module dropout and bypass forward."""
        if not (self.glora_bypass or self.glora_module_dropout):
            return super().forward(x, *args, **kwargs)
        if self._base_only(x, args, kwargs):
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        (adapter,) = [a for a in self.active_adapters if a in self.lora_glora_a1] or [None]
        if adapter is None:
            return self.base_layer(x, *args, **kwargs)
        p = self.glora_module_dropout
        shared = self.__dict__.get("glora_draws") if self.training else None
        if shared is not None:  # a part of a fused Linear: the fused module's draws, made once
            shared.begin()
        draw = (lambda key, make: make()) if shared is None else shared.get  # noqa: E731
        if self.training and p and draw("skip", lambda: bool(torch.rand(1) < p)):  # LyCORIS: update skipped
            return self.base_layer(x, *args, **kwargs)
        if self.glora_bypass:
            return self._bypass(x, adapter, *args, shared=shared, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        return (result + self._added(x, adapter)).to(result.dtype)

    def _bypass(
        self, x: torch.Tensor, adapter: str, *args: Any, shared: FusedDraws | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """GLoRAModule's bypass_forward: the pairs on activations, A's output added to the layer's input.
        `shared`: a fused Linear's draws (FusedDraws), its masks made by the first part called."""
        base = self.get_base_layer()
        a1, a2, b1, b2 = (getattr(self, part)[adapter].to(x.dtype) for part in _PARTS)
        if isinstance(base, nn.Conv2d):
            ax_mid, bx_mid = F.conv2d(x, a2), F.conv2d(x, b2, None, base.stride, base.padding)
        else:
            ax_mid, bx_mid = F.linear(x, a2), F.linear(x, b2)
        p = self.glora_rank_dropout
        draw = (lambda key, make: make()) if shared is None else shared.get  # noqa: E731
        if p and self.training:  # LyCORIS keeps the ranks drawn below the rate
            rank = self.r[adapter]
            drop_a = draw("a", lambda: (torch.rand(rank, device=ax_mid.device) < p).to(ax_mid.dtype))
            drop_b = draw("b", lambda: (torch.rand(rank, device=bx_mid.device) < p).to(bx_mid.dtype))
            shape = (1, -1, 1, 1) if x.dim() == 4 else (*[1] * (x.dim() - 1), -1)
            ax_mid, bx_mid = ax_mid * drop_a.view(shape), bx_mid * drop_b.view(shape)
        if isinstance(base, nn.Conv2d):
            ax, bx = F.conv2d(ax_mid, a1), F.conv2d(bx_mid, b1)
        else:
            ax, bx = F.linear(ax_mid, a1), F.linear(bx_mid, b1)
        scalar = self._scalar(adapter)
        scalar = scalar.to(ax) if isinstance(scalar, torch.Tensor) else scalar
        scale = scalar * self.scaling[adapter]
        training = self.training and self.glora_dropout > 0
        drop = partial(F.dropout, p=self.glora_dropout, training=training)
        if shared is not None and training:  # the fused module's masks: ax's, and bx's over every part's rows
            mask_a = draw("ax", lambda: drop(torch.ones_like(ax)))
            mask_b = draw("bx", lambda: drop(ax.new_ones((*bx.shape[:-1], shared.rows), dtype=bx.dtype)))
            start, stop = self.__dict__["glora_rows"]
            ax, bx = ax * mask_a, bx * mask_b[..., start:stop]
        elif training:  # bx's Dropout over kohya's rows (SD3 / Flux's swapped modulation: kohya_rows.py)
            from dbspec.runtime.kohya_rows import dropped_in_kohya_rows

            ax, bx = drop(ax), dropped_in_kohya_rows(bx, self.glora_dropout, self)
        return self.base_layer(x + ax * scale, *args, **kwargs) + bx * scale

    def __repr__(self) -> str:
        return "lycoris_glora." + super().__repr__()


def dispatch_glora(target: nn.Module, adapter_name: str, config, options: dict | None = None, **kwargs: Any):
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if isinstance(base, (nn.Linear, nn.Conv2d)):
        options = dict(options or {})
        own = options.pop("scalars", {})  # {id(base layer): use_scalar} where a block sets its own
        if id(base) in own:
            options["scalar"] = own[id(base)]
        return GloraLayer(
            target,
            adapter_name,
            config=config,
            r=kwargs.get("r", config.r),
            lora_alpha=kwargs.get("lora_alpha", config.lora_alpha),
            **options,
        )
    return None


def glora_config(targets: list[str], rank: int, alpha: float, **options: Any):
    """A LoraConfig building GloraLayer on every target (peft's rank and alpha are GLoRA's); `options`:
    GloraLayer's switches (scalar, bypass, rank_dropout, module_dropout, dropout; scalars: {id(base layer):
    use_scalar} of the layers whose block sets its own, a LyCORIS map entry's)."""
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets)
    return with_glora(config, **options)


def with_glora(config, **options: Any):
    dispatch = partial(dispatch_glora, options=options)
    config._register_custom_module({nn.Linear: dispatch, nn.Conv2d: dispatch})
    return config


def glora_options(adapter) -> dict[str, Any]:
    """GloraLayer's switches from the plan's adapter."""
    return {
        "scalar": adapter.scalar,
        "bypass": adapter.bypass,
        "rank_dropout": adapter.rank_dropout,
        "module_dropout": adapter.module_dropout,
        "dropout": adapter.bypass_dropout,
    }


def is_glora(config) -> bool:
    """`config` builds GloraLayer (with_glora): a LoraConfig whose keys are `lora_glora_*` (a run of several
    kinds holds LoRA's too under one adapter name, runtime/mixed_kinds.py)."""
    customs = (getattr(config, "_custom_modules", None) or {}).values()
    return any(getattr(d, "func", None) is dispatch_glora for d in customs)


def glora_scalar_layers(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[int, bool]:
    """{id(layer): True} of `module`'s layers a saved GLoRA state holds a use_scalar scalar for (each layer
    its own: a block may set its own, a LyCORIS map entry's): with_glora's `scalars`."""
    paths = {key.split(".lora_glora_scalar")[0] for key in state if ".lora_glora_scalar" in key}
    return {id(module.get_submodule(path)): True for path in paths}


def has_glora(state: dict[str, torch.Tensor]) -> bool:
    return any(".lora_glora_a1" in key for key in state)


# the tensors LyCORIS's GLoRAModule on a fused Linear holds once for all its rows (b1 is the parts' rows)
SHARED = ("lora_glora_a1", "lora_glora_a2", "lora_glora_b2", "lora_glora_scalar")


def tie_fused_glora(module: nn.Module, groups, adapter: str) -> int:
    """LyCORIS's GLoRAModule on a fused Linear of the original model (plan.adapter.fused: Flux's qkv and
    linear1, SD3's qkv): ΔW = (W a1 a2 + b1 b2) x scale over the stacked rows, so part p's rows are
    (W_p a1 a2 + b1_p b2) x scale: a1, a2 and b2 (and use_scalar's scalar) one Parameter for every part (the
    first's, as runtime/fused.py ties LoRA downs: the optimizer, resume state and EMA hold it once), b1 each
    part's own rows. ValueError when a fused layer's parts are adapted in part or at other ranks (the
    compiler refuses those plans). How many fused layers were tied."""
    from dbspec.runtime.fused import tie_parts

    def same(layer: GloraLayer) -> tuple:
        return layer.r[adapter], layer.scaling[adapter]

    def tie(layer: GloraLayer, first: GloraLayer) -> None:
        for name in SHARED:
            own, theirs = getattr(layer, name), getattr(first, name)
            if adapter in theirs:
                own[adapter] = theirs[adapter]

    adapted = lambda m: isinstance(m, GloraLayer)  # noqa: E731
    tied = tie_parts(module, groups, adapted, "GLoRA", same, "rank or scale", tie)
    share_fused_draws(module, groups)
    return tied


class FusedDraws:
    """The draws of LyCORIS's GLoRAModule on a fused Linear, made once per training forward for its parts:
    the first part called (begin) makes each (get) as GLoRAModule does, in its order and from torch's
    generators (module_dropout's `torch.rand(1)`, bypass_mode's rank masks over the shared rank and its
    dropout's masks: over `ax`, the same input's for every part, and over `bx`'s stacked rows, `rows` of
    them, each part its slice), the others take them. As runtime/fused.py FusedSkip, they are kept until
    every part has taken them, so gradient checkpointing's recomputation (the generator restored) makes
    them again alike. A dropout mask is torch's dropout of ones (the bernoulli draw scaled by 1 / (1 - p),
    which dropout multiplies the input by on the CPU; CUDA's fused dropout kernel scales in float, which
    rounds otherwise in half precision)."""

    def __init__(self, parts: int, rows: int):
        self.parts, self.rows, self.left, self.drawn = parts, rows, 0, {}

    def begin(self) -> None:
        if self.left == 0:
            self.left, self.drawn = self.parts, {}
        self.left -= 1

    def get(self, key: str, make):
        if key not in self.drawn:
            self.drawn[key] = make()
        return self.drawn[key]


def share_fused_draws(module: nn.Module, groups) -> int:
    """One FusedDraws per fused Linear whose GLoRA parts draw (module_dropout, or bypass_mode's rank_dropout
    or dropout), each part's rows of the stacked layer (`glora_rows`, the group's part order: kohya's)
    beside it; how many."""
    from dbspec.runtime.fused import fused_parts

    shared = 0
    for _, _, found in fused_parts(module, groups, lambda m: isinstance(m, GloraLayer)):
        layers = [layer for _, _, layer in found]
        first = layers[0] if layers else None
        if first is None or not (
            first.glora_module_dropout
            or (first.glora_bypass and (first.glora_rank_dropout or first.glora_dropout))
        ):
            continue
        widths = [layer.get_base_layer().weight.shape[0] for layer in layers]
        draws = FusedDraws(len(layers), sum(widths))
        start = 0
        for layer, width in zip(layers, widths):
            layer.__dict__["glora_draws"] = draws  # not a submodule
            layer.__dict__["glora_rows"] = (start, start + width)
            start += width
        shared += 1
    return shared
