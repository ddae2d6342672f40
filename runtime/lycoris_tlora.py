"""LyCORIS's `algo = tlora` (plan.adapter.kind "tlora", lycoris-lora 4.1.3 lycoris/modules/tlora.py) as a peft
LoRA custom layer, in the form kohya's train_network.py runs it.

TLoraModule starts each layer from the SVD of its frozen weight W = U S Vh (LyCORIS's sig_type "principal" and
use_data_init, the defaults; kohya's create_network never passes either): Q = Vh[:r] (r x in), P = U[:, :r]
(out x r) and learnable singular values λ = S[:r] (1 x r), with a frozen copy Q0, P0, λ0 of that start. Its
update is ΔW = (P diag(λ m) Q - P0 diag(λ0 m) Q0) x alpha / r (alpha 0: r), so a run starts at the base model.
m is a timestep-dependent rank mask that a training loop sets through lycoris's `set_timestep_mask`; kohya's
scripts never call it, so every module runs with LyCORIS's default mask of ones (the product unchanged), as
this layer does. With rank above min(out, in) the missing singular vectors are zero and their λ 1e-6.

The forward is LyCORIS's default (not bypass_mode): the base layer's output plus op(x, (W + ΔW) - W), no
bias, the weight delta rounded through the base weight as TLoraModule.forward computes it. Linear layers and
ungrouped 1x1 Conv2d (q and p as 1x1 kernels, the layer's stride and padding); TLoraModule's k x k
convolution takes 1x1 factors whose output does not fit the layer's (its bypass forward adds tensors of
other sizes: kohya stops), so such a target is refused. The frozen copies ride in the layer as peft's other
parameters (buffers: saved and resumed with the adapter, never trained); LyCORIS's file holds
`q_layer.weight`, `p_layer.weight`, `lambda_layer` and `alpha` and its loader recomputes the copies from the
base model's SVD."""

from __future__ import annotations

from functools import partial
import itertools
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from dbspec.runtime.peft_layer import WeightDelta

_TRAINED = ("lora_tlora_q", "lora_tlora_p", "lora_tlora_lambda")
_BASE = ("lora_tlora_base_q", "lora_tlora_base_p", "lora_tlora_base_lambda")
# TLoraModule's state-dict names of the trained tensors
_LYCORIS_NAMES = {
    "lora_tlora_q": "q_layer.weight",
    "lora_tlora_p": "p_layer.weight",
    "lora_tlora_lambda": "lambda_layer",
}


def _patch(conv: nn.Conv2d) -> bool:
    """A k x k patch convolution (stride = kernel, no padding, ungrouped): 1x1 factors at its stride give
    an output of its size wherever the input divides by the stride."""
    kernel = tuple(conv.kernel_size)
    return (
        kernel != (1, 1)
        and tuple(conv.stride) == kernel
        and tuple(conv.padding) == (0, 0)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def svd_start(
    weight: torch.Tensor, rank: int, sig_type: str = "principal"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TLoraModule._initialize_from_svd (use_data_init): (Q, P, λ) of the weight's first `rank` singular
    triplets (`sig_type` "principal"), its last (`last`) or those from (min(out, in) - rank) // 2 on
    (`middle`, sliced as LyCORIS slices), as 2-D (rank, in), (out, rank) and (1, rank) float32 tensors."""
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    return _picked(*torch.linalg.svd(flat, full_matrices=False), rank, sig_type)


def random_start(
    weight: torch.Tensor, rank: int, sig_type: str = "principal"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TLoraModule._initialize_from_svd without use_data_init, drawing from torch's global generator what its
    __init__ draws: its q_layer's and p_layer's own kaiming-uniform init (rank x in and out x rank values,
    overwritten at once), then torch.normal(0, 1 / rank) of (out, in x kernel size) on the CPU, whose SVD
    gives (Q, P, λ) as svd_start does (a convolution's Q: the caller keeps its first in-channel columns)."""
    out, inputs = weight.shape[0], weight.shape[1]
    for count in (rank * inputs, out * rank):  # the draws nn.Linear / nn.Conv2d's reset_parameters make
        torch.empty(count).uniform_()
    drawn = torch.normal(mean=0, std=1 / rank, size=(out, weight[0].numel()))
    return _picked(*torch.linalg.svd(drawn, full_matrices=False), rank, sig_type)


# the order peft builds randomly started T-LoRA layers in (TloraLayer.tlora_rng): a fused Linear draws from
# the generator state its first-built part saw (fit_fused_tlora)
_BUILT = itertools.count()


def _picked(u, s, vh, rank: int, sig_type: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if sig_type == "last":
        q, p, lam = vh[-rank:], u[:, -rank:], s[-rank:]
    elif sig_type == "middle":
        q_at, p_at, s_at = ((n - rank) // 2 for n in (vh.shape[0], u.shape[1], s.shape[0]))
        q, p, lam = vh[q_at : q_at + rank], u[:, p_at : p_at + rank], s[s_at : s_at + rank]
    else:
        q, p, lam = vh[:rank], u[:, :rank], s[:rank]
    if q.shape[0] < rank:  # LyCORIS pads the missing ranks: zero vectors, singular values 1e-6
        pad = rank - q.shape[0]
        q, p, lam = F.pad(q, (0, 0, 0, pad)), F.pad(p, (0, pad)), F.pad(lam, (0, pad), value=1e-6)
    return q.contiguous(), p.contiguous(), lam.unsqueeze(0).contiguous()


class TloraLayer(WeightDelta, nn.Module, LoraLayer):
    """LyCORIS's TLoraModule with no timestep mask: (P diag(λ) Q - P0 diag(λ0) Q0) x alpha / rank."""

    _holds = "lora_tlora_q"
    _title = "LyCORIS's tlora"

    adapter_layer_names = _TRAINED
    other_param_names = (*LoraLayer.other_param_names, *_BASE)

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config=None,
        r: int = 4,
        lora_alpha: float = 1.0,
        bypass: bool = False,
        dropout: float = 0.0,
        sig_types: dict | None = None,
        random_starts: frozenset = frozenset(),
        **kw,
    ):
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        # LyCORIS bypass_mode (plan.adapter.bypass) and its dropout (plan.adapter.bypass_dropout)
        self.tlora_bypass, self.tlora_dropout = bypass, dropout
        # the SVD start (LyCORIS's sig_type) of a block that sets its own: {id(base layer): sig_type}
        self.tlora_sig_type = (sig_types or {}).get(id(self.get_base_layer()), "principal")
        # a block's random SVD start (LyCORIS's use_data_init false): the ids of those base layers
        self.tlora_random = id(self.get_base_layer()) in random_starts
        for part in _TRAINED:
            setattr(self, part, nn.ParameterDict())
        for part in _BASE:
            setattr(self, part, BufferDict(persistent=True))
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, r, lora_alpha)

    def update_layer(self, adapter_name: str, config, r: int, lora_alpha: float, *a: Any, **k: Any):
        base = self.get_base_layer()
        # a patch convolution (SD3's 2x2 at stride 2, no padding): TLoraModule's 1x1 factors at its stride
        # give an output of its size, which kohya trains (TLoraModule.forward's bypass path)
        self.tlora_patch = isinstance(base, nn.Conv2d) and _patch(base)
        if (
            isinstance(base, nn.Conv2d)
            and not self.tlora_patch
            and (base.groups != 1 or tuple(base.kernel_size) != (1, 1) or base.padding_mode != "zeros")
        ):
            raise ValueError(
                "LyCORIS's tlora adapts Linear, ungrouped 1x1 Conv2d and patch (stride = kernel, no padding) "
                f"layers: TLoraModule's factors on a {base.kernel_size[0]}x{base.kernel_size[1]} (or "
                "grouped) convolution give an output of another size and kohya stops; leave such layers out "
                "of the adapter's targets"
            )
        alpha = lora_alpha or r  # TLoraModule: alpha None or 0 is the rank
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = alpha
        self.scaling[adapter_name] = alpha / r
        if self.tlora_random:  # the generator state it draws from, kept for a fused layer's one draw
            self.__dict__["tlora_rng"] = (next(_BUILT), torch.random.get_rng_state())
        start = random_start if self.tlora_random else svd_start
        q, p, lam = start(base.weight, r, self.tlora_sig_type)
        if isinstance(base, nn.Conv2d):  # a patch's Q: the first in-channel columns of its flattened
            q = q[:, : base.in_channels]  # weight's singular vectors, as TLoraModule slices them
            q, p = q.reshape(*q.shape, 1, 1), p.reshape(*p.shape, 1, 1)
        for part, value in zip(_TRAINED, (q, p, lam)):
            getattr(self, part)[adapter_name] = nn.Parameter(value.clone())
        for part, value in zip(_BASE, (q, p, lam)):
            getattr(self, part)[adapter_name] = value.clone()
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=getattr(config, "inference_mode", False))

    def _product(self, q: torch.Tensor, p: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """P diag(λ) Q as LyCORIS's get_diff_weight forms it: (λᵀ x Q) then up @ down (lora diff_weight,
        its gamma 1)."""
        rank = lam.shape[1]
        return (p.reshape(-1, rank) * 1.0) @ (lam.T * q.reshape(rank, -1))

    def tlora_diff(self, adapter: str) -> torch.Tensor:
        """TLoraModule.get_diff_weight (multiplier 1): (P diag(λ) Q - P0 diag(λ0) Q0) x scale, in the weight's
        shape (1x1 kernels for a convolution)."""
        q, p, lam = (getattr(self, part)[adapter] for part in _TRAINED)
        q0, p0, lam0 = (getattr(self, part)[adapter].to(q.device) for part in _BASE)
        diff = self._product(q, p, lam) - self._product(q0, p0, lam0)
        base = self.get_base_layer()
        if self.tlora_patch:  # TLoraModule's 1x1 update of a patch convolution
            return (diff * self.scaling[adapter] * 1.0).reshape(base.out_channels, base.in_channels, 1, 1)
        return (diff * self.scaling[adapter] * 1.0).reshape(base.weight.shape)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """TLoraModule.forward's delta: (W + ΔW) - W in the base weight's dtype."""
        weight = self.get_base_layer().weight
        diff = self.tlora_diff(adapter).to(weight.device, weight.dtype)
        if self.tlora_patch:  # get_merged_weight: the 1x1 update at the kernel's first tap
            kh, kw = weight.shape[2:]
            diff = F.pad(diff, (0, kw - 1, 0, kh - 1))
        return (weight + diff) - weight

    def _added(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        if not (self.tlora_bypass or self.tlora_patch):  # a patch: TLoraModule.forward's bypass path
            return super()._added(x, adapter)
        return self._bypass_diff(x, adapter)

    def _bypass_diff(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """TLoraModule.bypass_forward_diff: P (λ ⊙ Q x) - P0 (λ0 ⊙ Q0 x) on activations (the factors in the
        input's dtype, λ as it is), x scale, then torch's dropout while training; a 1x1 convolution's Q at
        the layer's stride, padding and dilation, its P at 1."""
        base = self.get_base_layer()
        dtype = x.dtype
        q, p, lam = (getattr(self, part)[adapter] for part in _TRAINED)
        q0, p0, lam0 = (getattr(self, part)[adapter].to(x.device) for part in _BASE)
        if isinstance(base, nn.Conv2d):

            def down(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
                return F.conv2d(h, w, None, base.stride, base.padding, base.dilation, base.groups)

            def up(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
                return F.conv2d(h, w, None)

            lam, lam0 = lam.view(1, -1, 1, 1), lam0.view(1, -1, 1, 1)
        else:
            down = up = F.linear
        current = up(down(x, q.to(dtype)) * lam, p.to(dtype))
        start = up(down(x, q0.to(dtype)) * lam0, p0.to(dtype))
        diff = (current - start) * self.scaling[adapter]
        if not (self.tlora_dropout and self.training):
            return diff
        shared = self.__dict__.get("tlora_draws")
        if shared is None:
            return F.dropout(diff, self.tlora_dropout, True)
        # the one module on kohya's layer drops its whole output once (fit_fused_tlora): torch's dropout of
        # ones over its rows, made by the first part called, each part its rows (kohya's order)
        shared.begin()
        start, stop, swap = self.__dict__["tlora_rows"]
        mask = shared.get(
            "out", lambda: F.dropout(diff.new_ones(*diff.shape[:-1], shared.rows), self.tlora_dropout)
        )
        mask = mask[..., start:stop]
        if swap:  # kohya's (shift, scale) rows where diffusers holds (scale, shift)
            mask = torch.cat(mask.chunk(2, dim=-1)[::-1], dim=-1)
        return diff * mask

    def lycoris_weights(self, adapter: str) -> dict[str, torch.Tensor]:
        """TLoraModule's state-dict names for this layer's trained tensors (its alpha: self.lora_alpha)."""
        return {name: getattr(self, part)[adapter] for part, name in _LYCORIS_NAMES.items()}

    def __repr__(self) -> str:
        return "lycoris_tlora." + super().__repr__()


def dispatch_tlora(target: nn.Module, adapter_name: str, config, options=None, **kwargs: Any):
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if isinstance(base, (nn.Linear, nn.Conv2d)):
        return TloraLayer(
            target,
            adapter_name,
            config=config,
            r=kwargs.get("r", config.r),
            lora_alpha=kwargs.get("lora_alpha", config.lora_alpha),
            **(options or {}),
        )
    return None


def with_tlora(config, **options: Any):
    """`config` building TloraLayer; `options`: its switches (bypass, dropout; sig_types: {id(base layer):
    LyCORIS's sig_type} of the layers whose block sets its own; random_starts: the ids of the base layers
    whose block starts them at random, LyCORIS's use_data_init false)."""
    dispatch = partial(dispatch_tlora, options=options)
    config._register_custom_module({nn.Linear: dispatch, nn.Conv2d: dispatch})
    return config


def tlora_config(targets: list[str], rank: int, alpha: float, **options: Any):
    """A LoraConfig building TloraLayer on every target (peft's rank and alpha are T-LoRA's); `options`:
    TloraLayer's switches (bypass: LyCORIS bypass_mode; dropout: its bypass forward's dropout)."""
    from peft import LoraConfig

    return with_tlora(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets), **options)


def is_tlora(config) -> bool:
    customs = (getattr(config, "_custom_modules", None) or {}).values()
    return any(getattr(d, "func", None) is dispatch_tlora for d in customs)


def has_tlora(state: dict[str, torch.Tensor]) -> bool:
    return any(".lora_tlora_q" in key for key in state)


def set_tlora_bypass(module: nn.Module, adapter, component: str = "") -> int:
    """Each T-LoRA layer of a tlora adapter's `module` (the denoiser; a text encoder, `component` named) in
    the LyCORIS bypass_mode of its block (the first whose pattern matches it: its settled `bypass`, a preset
    entry's own), else the adapter's, where some block's differs (TLoraModule reads its entry's bypass_mode
    over the network's). How many layers run the bypass forward."""
    from dbspec.runtime.blocks import block_of
    from dbspec.runtime.exports import clip_path

    blocks = adapter.text_encoder_blocks if component else adapter.blocks
    if not any(b.bypass not in (None, adapter.bypass) for b in blocks if b.kind in ("adapter", "tlora")):
        return 0
    text_path = (lambda p: p) if type(module).__name__.startswith("T5") else clip_path
    count = 0
    for path, layer in module.named_modules():
        if not isinstance(layer, TloraLayer):
            continue
        block = block_of(blocks, f"{component}.{text_path(path)}" if component else path)
        own = block is not None and block.kind in ("adapter", "tlora") and block.bypass is not None
        layer.tlora_bypass = block.bypass if own else adapter.bypass
        count += layer.tlora_bypass
    return count


def _halves_swapped(rows: torch.Tensor) -> torch.Tensor:
    first, second = rows.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _set_start(layer: TloraLayer, adapter: str, q, p, lam) -> None:
    for part, value in zip(_TRAINED, (q, p, lam)):
        old = getattr(layer, part)[adapter]
        new = nn.Parameter(value.to(old.device, old.dtype).clone(), requires_grad=old.requires_grad)
        getattr(layer, part)[adapter] = new
    for part, value in zip(_BASE, (q, p, lam)):
        old = getattr(layer, part)[adapter]
        getattr(layer, part)[adapter] = value.to(old.device, old.dtype).clone()


def _fused_start(weight: torch.Tensor, rank: int, sig_type: str, layers) -> tuple:
    """The start of TLoraModule on kohya's layer of `weight` (its stacked, or swapped, rows): its SVD, or
    where the layers start at random (a block's data_init false) the SVD of ONE random matrix over those rows,
    drawn as random_start draws it from the generator state the first-built of `layers` drew its own from
    (TloraLayer.tlora_rng; the global generator left as it is)."""
    if not layers[0].tlora_random:
        return svd_start(weight, rank, sig_type)
    _, state = min((layer.tlora_rng for layer in layers), key=lambda built: built[0])
    with torch.random.fork_rng(devices=[]):
        torch.random.set_rng_state(state)
        return random_start(weight, rank, sig_type)


def fit_fused_tlora(module: nn.Module, groups, adapter: str, swapped=None) -> int:
    """LyCORIS's TLoraModule on kohya's layers of Flux / SD3 / Chroma (plan.adapter.fused): on a fused Linear
    (Flux's qkv and linear1, SD3's qkv) it starts from ONE SVD of the stacked weight (the parts' rows in
    kohya's order; where the parts' block sets data_init false, of one random matrix over those rows, drawn
    from the generator state the first-built part drew its own from: _fused_start): Q (rank x in) and the
    singular values λ shared by every part, P (rows x rank) cut into each part's rows, and the frozen copy
    alike. So the parts' Q and λ become one Parameter (the first
    part's: the optimizer, resume state and EMA hold it once), their Q0 / λ0 one tensor, each part keeping
    its rows of P and P0; part p's update is (P_p diag(λ) Q - P0_p diag(λ0) Q0) x scale, its rows of the
    fused module's, and bypass_mode's dropout one mask over the stacked rows (the first part called makes
    it, runtime/lycoris_glora.py FusedDraws). `swapped(path)`: a Linear kohya holds with its halves of rows
    the other way round (diffusers' AdaLayerNormContinuous input): its start is the SVD of kohya's rows, P's
    halves swapped back (a random start likewise), its dropout mask drawn over kohya's rows. ValueError when a
    fused layer's parts are adapted in part or at other ranks, scales or SVD starts (the compiler refuses
    those plans). How many fused layers were fitted."""
    from dbspec.runtime.fused import fused_parts
    from dbspec.runtime.lycoris_glora import FusedDraws

    fitted = 0
    tied: set[int] = set()
    for group, index, found in fused_parts(module, groups, lambda m: isinstance(m, TloraLayer)):
        if not found:
            continue
        where = f"{group.blocks}.{index}: the fused {group.name}"
        if len(found) != len(group.parts):
            raise ValueError(f"{where}: T-LoRA on a fused layer needs every part adapted ({group.parts})")
        layers = [layer for _, _, layer in found]
        first = layers[0]
        for _, part, layer in found[1:]:
            own = (layer.r[adapter], layer.scaling[adapter], layer.tlora_sig_type, layer.tlora_random)
            if own != (first.r[adapter], first.scaling[adapter], first.tlora_sig_type, first.tlora_random):
                raise ValueError(
                    f"{where}: {part} has another rank, scale, sig_type or data_init than {found[0][1]}"
                )
        stacked = torch.cat([layer.get_base_layer().weight for layer in layers], dim=0)
        q, p, lam = _fused_start(stacked, first.r[adapter], first.tlora_sig_type, layers)
        at = 0
        for layer in layers:
            rows = layer.get_base_layer().weight.shape[0]
            _set_start(layer, adapter, q, p[at : at + rows], lam)
            at += rows
            tied.add(id(layer))
        draws, at = FusedDraws(len(layers), stacked.shape[0]), 0
        for layer in layers:  # one TLoraModule (runtime/max_norm.py): its parts in row order, one dropout
            layer.__dict__["tlora_fused_parts"] = tuple(layers)
            rows = layer.get_base_layer().weight.shape[0]
            layer.__dict__["tlora_draws"], layer.__dict__["tlora_rows"] = draws, (at, at + rows, False)
            at += rows
        for layer in layers[1:]:  # one Q, one λ (and one frozen Q0, λ0) for every part
            for part in ("lora_tlora_q", "lora_tlora_lambda", "lora_tlora_base_q", "lora_tlora_base_lambda"):
                getattr(layer, part)[adapter] = getattr(first, part)[adapter]
        fitted += 1
    if swapped is not None:
        for path, layer in module.named_modules():
            if isinstance(layer, TloraLayer) and id(layer) not in tied and swapped(path):
                weight = _halves_swapped(layer.get_base_layer().weight)
                q, p, lam = _fused_start(weight, layer.r[adapter], layer.tlora_sig_type, [layer])
                _set_start(layer, adapter, q, _halves_swapped(p), lam)
                rows = weight.shape[0]  # its bypass dropout over kohya's rows
                layer.__dict__["tlora_draws"] = FusedDraws(1, rows)
                layer.__dict__["tlora_rows"] = (0, rows, True)
    return fitted


def set_trained_tlora_bypass(module: nn.Module, adapter, component: str = "") -> int:
    """Each T-LoRA layer of a reloaded `module` (the denoiser; a text encoder, `component` named) in the
    bypass_mode training gave it (adapters.add_lora): built in its kind's pass's bypass (a tlora adapter's,
    or mixed_kinds.kind_adapter's where blocks of other kinds share the component: a tlora adapter's with
    Diag-OFT / BOFT / DyLoRA blocks, another kind's adapter's tlora blocks), then its block's
    (set_tlora_bypass over that pass's adapter, then over a tlora adapter's own). `adapter`: the plan's. How
    many layers run the bypass forward."""
    from dbspec.runtime.mixed_kinds import kind_adapter, other_kinds

    others = other_kinds(adapter, component)
    if "tlora" not in (adapter.kind, *others):
        return 0
    built = kind_adapter(adapter, "tlora", component) if others else adapter
    layers = [m for m in module.modules() if isinstance(m, TloraLayer)]
    for layer in layers:
        layer.tlora_bypass = built.bypass
    set_tlora_bypass(module, built, component)
    if (
        others and adapter.kind == "tlora"
    ):  # add_lora's own pass over the mixed one's (adapters._tlora_bypass)
        set_tlora_bypass(module, adapter, component)
    return sum(layer.tlora_bypass for layer in layers)
