"""LyCORIS's LoKr `full_matrix` and `use_scalar` (LoCon, LoHa, LoKr) on peft's adapter layers.

`full_matrix` (plan.adapter.full_matrix, kind "lokr"; lycoris/modules/lokr.py): both Kronecker factors of
every layer are full matrices whatever the rank: `lokr_w1` (a, c) and `lokr_w2` (b, d[, k, k]) where peft
would split the second (and with decompose_both the first) low-rank. LyCORIS then trains at scale 1 (its alpha
is replaced by the rank) and inits `lokr_w1` kaiming-uniform (a = sqrt 5), `lokr_w2` zero. `lokr_full_matrix`
swaps each low-rank factor peft made for the full one, LyCORIS's init, scale 1.

`use_scalar` (plan.adapter.scalar): LyCORIS multiplies each layer's update by a trained scalar that starts at
0, and starts the factor it otherwise zeroes random, so the run starts at the base model with every factor
moving. LoCon: `lora_up` kaiming-uniform (a = sqrt 5); LoHa: LyCORIS's normal init (`hada_w1_b`, `hada_w2_b`
std 1, `hada_w1_a`, `hada_w2_a` and the Tucker cores std 0.1); LoKr: `lokr_w2` (or `lokr_w2_b`)
kaiming-uniform. LyCORIS saves the scalar folded into one factor (`lora_up`, `hada_w1_a`, `lokr_w1` /
`lokr_w1_a`, each linear in the update) and loads with scalar 1; lycoris_export.py does the same.

Where the scalar lives: in a ParameterDict beside the layer's factors, `lora_scalar` / `hada_scalar` /
`lokr_scalar`. The names carry peft's prefixes, so peft's adapter state dicts, dbspec's trainable-weight
filter and its checkpoints hold them (and LoRA+ leaves LoCon's out of its `lora_B` group, as LyCORIS's
LoRA+ leaves the scalar out of its `lora_up` one). Each adapted layer's class becomes a subclass whose
`get_delta_weight` (LoHa's and LoKr's forward, every merge) multiplies by the scalar; LoCon's up
projection becomes `ScaledLinear` / `ScaledConv2d`, whose output is multiplied by it (every LoRA forward,
peft's, the Tucker layer's and lora_dropout.py's, calls the up projection), reading the layer's scalar
through an unregistered reference (one parameter, one state-dict key)."""

from __future__ import annotations

import math

import torch
from torch import nn

from dbspec.runtime.adapters import ADAPTER_NAME

SCALAR_ATTRS = {"LoraLayer": "lora_scalar", "LoHaLayer": "hada_scalar", "LoKrLayer": "lokr_scalar"}


def lokr_full_matrix(
    module: nn.Module,
    state: dict[str, torch.Tensor] | None = None,
    own: dict[str, bool] | None = None,
    default: bool = True,
) -> int:
    """Every LoKr layer of `module` with both factors full (LyCORIS full_matrix), scale 1; how many layers
    changed. With `state` (a peft adapter state dict, keys without the adapter name) only the factors it
    holds in full are made full (what `weights.load_peft_adapters` needs), at no new random draw. `own`:
    {path: full_matrix} of layers whose block sets its own (LyCORIS map entries); the others take
    `default`."""
    from peft.tuners.lokr import LoKrLayer

    changed = 0
    for path, layer in module.named_modules():
        if not isinstance(layer, LoKrLayer) or ADAPTER_NAME not in layer.r:
            continue
        if not (own or {}).get(path, default):
            continue
        full = {
            key: state is None or any(k.endswith(f"{path}.{key}") for k in state)
            for key in ("lokr_w1", "lokr_w2")
        }
        if _full_factors(layer, ADAPTER_NAME, full["lokr_w1"], full["lokr_w2"], init=state is None):
            changed += 1
        elif state is not None:  # as peft built it: the plan's lokr_unit_scale says its scale
            continue
        if ADAPTER_NAME in layer.lokr_w1 and ADAPTER_NAME in layer.lokr_w2:
            layer.scaling[ADAPTER_NAME] = 1.0  # LyCORIS: both factors full, scale 1
    return changed


def _full_factors(layer, name: str, w1: bool, w2: bool, init: bool) -> bool:
    """Replace a low-rank factor by a full one (LyCORIS's order: w2 zero, then w1 kaiming-uniform)."""
    base = layer.get_base_layer()
    out_dim, in_dim, *kernel = base.weight.shape
    if name in layer.lokr_w1:
        a, c = layer.lokr_w1[name].shape
    else:
        a, c = layer.lokr_w1_a[name].shape[0], layer.lokr_w1_b[name].shape[1]
    like = next(getattr(layer, key)[name] for key in ("lokr_w1", "lokr_w1_a") if name in getattr(layer, key))
    changed = False
    if w2 and name not in layer.lokr_w2:
        for key in ("lokr_w2_a", "lokr_w2_b", "lokr_t2"):
            if name in getattr(layer, key):
                del getattr(layer, key)[name]
        weight = torch.zeros(out_dim // a, in_dim // c, *kernel, dtype=like.dtype, device=like.device)
        layer.lokr_w2[name] = nn.Parameter(weight, requires_grad=like.requires_grad)
        changed = True
    if w1 and name not in layer.lokr_w1:
        del layer.lokr_w1_a[name], layer.lokr_w1_b[name]
        weight = torch.empty(a, c, dtype=like.dtype, device=like.device)
        if init:
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        layer.lokr_w1[name] = nn.Parameter(weight, requires_grad=like.requires_grad)
        changed = True
    return changed


class _ScaledUp:
    """LoCon's up projection times its layer's trained scalar (`_scalars`, the layer's `lora_scalar`
    ParameterDict, held outside the module registry so that its one parameter has one state-dict key)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.__dict__["_scalars"][ADAPTER_NAME]


class ScaledLinear(_ScaledUp, nn.Linear):
    pass


class ScaledConv2d(_ScaledUp, nn.Conv2d):
    pass


class _ScalarLayer:
    """A peft adapter layer whose update (get_delta_weight) is multiplied by its trained scalar."""

    def get_delta_weight(self, adapter_name: str, *args, **kwargs) -> torch.Tensor:
        return super().get_delta_weight(adapter_name, *args, **kwargs) * layer_scalar(self, adapter_name)


_SCALAR_CLASSES: dict[type, type] = {}


def _scalar_class(cls: type, attr: str) -> type:
    if cls not in _SCALAR_CLASSES:
        names = {"adapter_layer_names": (*cls.adapter_layer_names, attr)}
        _SCALAR_CLASSES[cls] = type(f"Scalar{cls.__name__}", (_ScalarLayer, cls), names)
    return _SCALAR_CLASSES[cls]


def layer_scalar(layer, name: str = ADAPTER_NAME) -> torch.Tensor | None:
    """The layer's trained scalar, or None where it has none."""
    for attr in SCALAR_ATTRS.values():
        scalars = layer._modules.get(attr)
        if scalars is not None and name in scalars:
            return scalars[name]
    return None


def add_scalars(
    module: nn.Module, init: bool = True, own: dict[str, bool] | None = None, default: bool = True
) -> int:
    """LyCORIS's use_scalar on every adapter layer of `module` (LoRA without DoRA, LoHa, LoKr); how many.
    `init`: restart the factor LyCORIS otherwise zeroes with its random init (False when loading weights).
    `own`: {path: use_scalar} of layers whose block sets its own (LyCORIS map entries); the others take
    `default`."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer

    count = 0
    for path, layer in list(module.named_modules()):
        if layer_scalar(layer) is not None or not (own or {}).get(path, default):
            continue
        if isinstance(layer, LoraLayer) and ADAPTER_NAME in layer.lora_A:
            if layer.use_dora.get(ADAPTER_NAME):  # LyCORIS's weight decomposition (lycoris_dora.py) is not
                raise ValueError("LyCORIS's use_scalar with peft's DoRA is not expressed")
            up = layer.lora_B[ADAPTER_NAME]
            scalars = _add_scalar(layer, "lora_scalar", up.weight)
            up.__class__ = ScaledConv2d if isinstance(up, nn.Conv2d) else ScaledLinear
            up.__dict__["_scalars"] = scalars
            if init:
                nn.init.kaiming_uniform_(up.weight, a=math.sqrt(5))
            layer.__class__ = _scalar_class(type(layer), "lora_scalar")
        elif isinstance(layer, (LoHaLayer, LoKrLayer)) and ADAPTER_NAME in layer.r:
            loha = isinstance(layer, LoHaLayer)
            attr = SCALAR_ATTRS["LoHaLayer" if loha else "LoKrLayer"]
            like = next(p for n, p in layer.named_parameters() if n.startswith(attr.split("_")[0] + "_"))
            _add_scalar(layer, attr, like)
            if init:
                (_init_loha if loha else _init_lokr)(layer, ADAPTER_NAME)
            layer.__class__ = _scalar_class(type(layer), attr)
        else:
            continue
        count += 1
    return count


def _add_scalar(layer, attr: str, like: torch.Tensor) -> nn.ParameterDict:
    if attr not in layer._modules:
        setattr(layer, attr, nn.ParameterDict())
    scalars = getattr(layer, attr)
    scalars[ADAPTER_NAME] = _zero_like(like)
    return scalars


def _zero_like(weight: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(
        torch.zeros((), dtype=weight.dtype, device=weight.device), requires_grad=weight.requires_grad
    )


def _init_loha(layer, name: str) -> None:
    """LyCORIS's LoHa init with use_scalar (lycoris/modules/loha.py), in its order."""
    if name in layer.hada_t1:
        nn.init.normal_(layer.hada_t1[name], std=0.1)
        nn.init.normal_(layer.hada_t2[name], std=0.1)
    nn.init.normal_(layer.hada_w1_b[name], std=1)
    nn.init.normal_(layer.hada_w1_a[name], std=0.1)
    nn.init.normal_(layer.hada_w2_b[name], std=1)
    nn.init.normal_(layer.hada_w2_a[name], std=0.1)


def _init_lokr(layer, name: str) -> None:
    """LyCORIS's LoKr init with use_scalar: the second factor's zeroed part kaiming-uniform too."""
    second = layer.lokr_w2 if name in layer.lokr_w2 else layer.lokr_w2_b
    nn.init.kaiming_uniform_(second[name], a=math.sqrt(5))


def has_scalars(state: dict[str, torch.Tensor]) -> bool:
    """A peft adapter state dict with LyCORIS use_scalar scalars."""
    return any(f".{attr}" in k for k in state for attr in SCALAR_ATTRS.values())


def apply_switches(
    module: nn.Module,
    full_matrix: bool,
    scalar: bool,
    own_full: dict[str, bool] | None = None,
    own_scalar: dict[str, bool] | None = None,
) -> None:
    """The plan's LyCORIS switches on a freshly adapted module (seeded by the caller): full_matrix first
    (the scalar's init then restarts the full second factor); `own_full` / `own_scalar`: {path:
    full_matrix / use_scalar} of the layers whose block sets its own."""
    if full_matrix or any((own_full or {}).values()):
        lokr_full_matrix(module, own=own_full, default=full_matrix)
    if scalar or any((own_scalar or {}).values()):
        add_scalars(module, own=own_scalar, default=scalar)


def apply_switches_for_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The switches a saved peft adapter state dict shows (its full LoKr factors, its scalars), before it is
    loaded into `module`'s fresh adapter layers."""
    if any(".lokr_" in k for k in state):
        lokr_full_matrix(module, state)
    if has_scalars(state):  # the layers saved with one (a block's own scalar: some layers only)
        held = {
            k[: -len(attr) - 1] for k in state for attr in SCALAR_ATTRS.values() if k.endswith(f".{attr}")
        }
        own = {
            path: any(h == path or h.endswith(f".{path}") for h in held)
            for path, _ in module.named_modules()
            if path
        }
        add_scalars(module, init=False, own=own, default=False)
