"""kohya's max-norm regularisation of LoRA weights (`plan.adapter.max_norm`, kohya `--scale_weight_norms`).

kohya's networks (lora.py, lora_fa.py, lora_flux.py, lora_sd3.py: one `apply_max_norm_regularization`, the
same in each) walk their LoRA modules after every micro-batch (after the optimizer step on the last one of a
step) and, per module, form the update `alpha / rank * up @ down` (a 1x1 convolution as a matrix product, a
k x k one as the convolution of the down kernel with the up matrix), take its Frobenius norm, and where it
exceeds the limit multiply `up` and `down` each by the square root of limit / norm. The arithmetic below runs
those torch operations in that order on the same tensors, so the scaled weights are kohya's to the bit: the
scale is a float32 tensor alpha divided by the rank (kohya keeps alpha as a float32 buffer), the ratio is
taken on the CPU, and the scaling is in place in the weights' own dtype.

A peft LoRA layer's `lora_B` is kohya's `lora_up` and its `lora_A` is `lora_down`. Parts of a fused layer
(`plan.adapter.fused`, their `lora_A` tied by runtime/fused.py) are one kohya module: their `lora_B` rows
stacked in the original layer's row order make its up matrix, and the shared down is scaled once.

It returns what kohya logs: how many modules were scaled, and the mean and largest norm after scaling.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs
import torch

from dbspec.plan.model import FusedPlan
from dbspec.runtime.adapters import ADAPTER_NAME


@attrs.frozen(eq=False)
class NormModule:
    """One kohya LoRA module: its up weights (one, or a fused layer's parts in row order) and its down."""

    name: str
    ups: tuple[torch.nn.Parameter, ...]
    down: torch.nn.Parameter
    alpha: float
    rank: int


def norm_modules(models: Iterable[torch.nn.Module], fused: tuple[FusedPlan, ...] = ()) -> list[NormModule]:
    """The LoRA modules of `models` (text encoders first, then the denoiser, as kohya's network lists them)
    in module order; the parts of a fused layer (one shared `lora_A`) joined into one."""
    from peft.tuners.lora import LoraLayer

    found: dict[int, list[tuple[str, LoraLayer]]] = {}
    for model in models:
        for name, layer in model.named_modules():
            if isinstance(layer, LoraLayer) and ADAPTER_NAME in layer.lora_A:
                down = layer.lora_A[ADAPTER_NAME].weight
                found.setdefault(id(down), []).append((name, layer))
    modules = []
    for parts in found.values():
        parts = sorted(parts, key=lambda part: _row_order(part[0], fused))
        name, first = parts[0]
        modules.append(
            NormModule(
                name=name,
                ups=tuple(layer.lora_B[ADAPTER_NAME].weight for _, layer in parts),
                down=first.lora_A[ADAPTER_NAME].weight,
                alpha=float(first.lora_alpha[ADAPTER_NAME]),
                rank=int(first.r[ADAPTER_NAME]),
            )
        )
    return modules


def _row_order(name: str, fused: tuple[FusedPlan, ...]) -> int:
    """Where a fused part's rows sit in the original layer (its index in the plan's parts); 0 otherwise."""
    for group in fused:
        for index, part in enumerate(group.parts):
            if re.fullmatch(rf"{re.escape(group.blocks)}\.\d+\.{re.escape(part)}", name):
                return index
    return 0


def update_of(module: NormModule) -> torch.Tensor:
    """kohya's `alpha / rank * up @ down` of one module, in the weights' dtype."""
    up = module.ups[0] if len(module.ups) == 1 else torch.cat(list(module.ups))
    down = module.down
    if up.shape[2:] == (1, 1) and down.shape[2:] == (1, 1):
        update = (up.squeeze(2).squeeze(2) @ down.squeeze(2).squeeze(2)).unsqueeze(2).unsqueeze(3)
    elif down.dim() == 4:  # a k x k convolution: the down kernel mapped through the 1x1 up
        update = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
    else:
        update = up @ down
    # kohya's alpha is a float32 buffer; the scale is that tensor divided by the rank
    scale = torch.tensor(module.alpha).to(update.device) / module.rank
    update *= scale
    return update


@torch.no_grad()
def apply_max_norm(modules: list[NormModule], limit: float) -> tuple[int, float, float]:
    """Scale every module whose update's norm exceeds `limit` back to it; returns (modules scaled, mean norm,
    largest norm) after scaling, kohya's keys_scaled, average and max key norm."""
    if modules and isinstance(modules[0], LycorisNormModule):  # plan.adapter.max_norm_form = "lycoris"
        return apply_lycoris_max_norm(modules, limit)
    scaled, norms = 0, []
    for module in modules:
        update = update_of(module)
        norm = update.norm().clamp(min=limit / 2)  # the lower clamp only keeps a zero update from 0 / 0
        ratio = torch.clamp(norm, max=limit).cpu() / norm.cpu()
        if ratio != 1:
            scaled += 1
            root = ratio**0.5
            for up in module.ups:
                up.mul_(root)
            module.down.mul_(root)
        norms.append((update.norm() * ratio).item())  # CPU-GPU sync point per module, as kohya's
    if not norms:
        return 0, 0.0, 0.0
    return scaled, sum(norms) / len(norms), max(norms)


def max_norm_metrics(result: tuple[int, float, float]) -> dict[str, float]:
    """kohya's logged names (generate_step_logs: max_norm/keys_scaled, max_norm/max_key_norm,
    norm/avg_key_norm)."""
    scaled, mean, largest = result
    return {"max_norm/keys_scaled": scaled, "norm/avg_key_norm": mean, "max_norm/max_key_norm": largest}


# --- LyCORIS's form (plan.adapter.max_norm_form = "lycoris": lycoris.kohya's apply_max_norm_regularization)
#
# lycoris.kohya's network walks its modules (the denoiser's, then the text encoders') and calls each
# module's `apply_max_norm`: the norm of the module's own update (LoCon: up @ down with the Tucker core,
# times its scalar, times alpha / rank; LoHa: the Hadamard update at its scale, times its scalar; LoKr: the
# Kronecker update at its scale, without the scalar), clamped below at limit / 2, the ratio clamp(norm,
# max=limit) / norm taken on the CPU. Where the norm changed, LoCon and LoHa multiply the module's scalar by
# the ratio (a fixed buffer at 1 without use_scalar, `add_norm_scalars` below; use_scalar's trained one
# otherwise), LoKr multiplies each of its n factors (w1 or w1_a and w1_b, w2 or w2_a, w2_b and the Tucker
# core) by ratio ** (1 / n). It returns the modules scaled and the mean and largest of `norm * ratio` over
# every module, or 0, 0, 0 when none was scaled. The update is peft's `get_delta_weight` of the layer (with
# LyCORIS's weight decomposition, dora_wd, the update before it: LyCORIS's norm ignores dora_scale), checked
# against lycoris-lora's modules by tests/runtime/test_lycoris_max_norm.py. The fixed scalar lives in the
# layer (lycoris_switches.py's `*_scalar`), so checkpoints resume it; LyCORIS's buffer is not persistent.
# lycoris.kohya on kohya's Flux puts one LoConModule on each fused Linear: the parts of a fused layer (one
# shared `lora_A`, runtime/fused.py, which ties their scalar too) are one module here, its update their rows
# stacked in the fused layer's order, its one scalar multiplied once. A fused LoKr / LoHa likewise
# (runtime/fused_lokr.py, fused_loha.py): LoKr's whole Kronecker product, its shared factors scaled once;
# LoHa's parts' rows stacked, its one scalar (runtime/fused.py tie_fused_scalars) multiplied once.
# Diag-OFT and BOFT (DiagOFTModule, ButterflyOFTModule): the norm of the trained blocks themselves
# (`oft_blocks`, not the rotation they make), the same clamps, the ratio taken on the blocks' device, and
# the blocks multiplied by it in place: parameters, so checkpoints resume them with nothing else to keep.
# A fused Diag-OFT (one DiagOFTModule per fused Linear, runtime/lycoris_oft.py fit_fused_oft) is one module:
# the norm of its parts' blocks concatenated in row order (the fused module's `oft_blocks` itself, so the
# norm is the module's to the bit), each part's blocks times the one ratio; parts whose blocks span parts
# share one Parameter (runtime/fused_oft.py), scaled once. A fused BOFT's parts share their first's blocks.
# A fused T-LoRA (runtime/lycoris_tlora.py fit_fused_tlora) is one module: the norm of its parts' updates
# stacked, the singular values they share scaled once.
# T-LoRA (TLoraModule): the norm of its update (P diag(λ) Q - P0 diag(λ0) Q0) x alpha / rank times alpha /
# rank once more (lycoris-lora 4.1.3 applies the scale twice), the same clamps and CPU ratio, and the trained
# singular values λ multiplied by it: the frozen start's are not, so the update's norm does not become the
# limit; the logged norm is that scaled norm times the ratio, as LyCORIS returns it.
# With a negative alpha (LyCORIS keeps its sign) LoConModule's norm, its unscaled update's times alpha / rank,
# is below 0: the clamp lifts it to half the limit and the module is never scaled, its logged norm that
# negative one; LohaModule's and LokrModule's, the norm of their update at its (negative) scale, are not.
# The norm is taken in training mode: with rank_dropout LoConModule, LohaModule and LokrModule draw their
# row mask inside it (LoCon's on the weights' device, kohya passing accelerator.device; LoHa's and LoKr's on
# the CPU), one draw per module, so the generator streams match kohya's.

LYCORIS_NORM_KINDS = ("lora", "loha", "lokr", "oft", "tlora")


def add_norm_scalars(module: torch.nn.Module) -> int:
    """A fixed scalar at 1 on every LoCon / LoHa layer of `module` without use_scalar's trained one
    (lycoris_switches.py's scalar, frozen); a layer training its own (the adapter's use_scalar, a block's: a
    LyCORIS map entry's) keeps it, which LoConModule's / LohaModule's apply_max_norm multiply in place as
    they multiply the fixed one. LoKr layers (a run of several kinds: runtime/mixed_kinds.py) get none,
    LyCORIS's LoKr norm scaling its factors."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lora import LoraLayer

    from dbspec.runtime.lycoris_switches import add_scalars, layer_scalar

    own = {
        path: isinstance(layer, LoHaLayer) or (isinstance(layer, LoraLayer) and ADAPTER_NAME in layer.lora_A)
        for path, layer in module.named_modules()
    }
    held = {id(layer) for layer in module.modules() if layer_scalar(layer) is not None}
    count = add_scalars(module, init=False, own=own, default=False)
    with torch.no_grad():
        for layer in module.modules():
            scalar = layer_scalar(layer)
            if scalar is None:
                continue
            if id(layer) not in held:  # max norm's own: at 1, marked (a later kind's peft injection turns
                scalar.fill_(1.0)  # its adapter layers' parameters trainable again: frozen once more here)
                layer.__dict__[_NORM_SCALAR] = True
            if layer.__dict__.get(_NORM_SCALAR):
                scalar.requires_grad_(False)
    return count


_NORM_SCALAR = "dbspec_norm_scalar"  # a layer's fixed scalar is max norm's (add_norm_scalars), not trained


@attrs.frozen(eq=False)
class LycorisNormModule:
    """One LyCORIS module: a peft LoRA (LoCon), LoHa or LoKr layer; a fused layer's LoCon, LoKr or LoHa parts
    (their shared factors, plan.adapter.fused) or Diag-OFT parts in row order, `layer` the first."""

    name: str
    layer: torch.nn.Module
    kind: str  # "lora", "loha", "lokr", "oft" (diag-oft and boft), "tlora"
    parts: tuple[torch.nn.Module, ...] = ()
    # LoCon's rank-dropout rate (a lora adapter's plan.adapter.rank_dropout; peft's LoRA layer holds none):
    # LoConModule.make_weight draws its row mask inside the norm in training mode
    rank_dropout: float = 0.0


def locon_norm_rate(adapter) -> float:
    """The rank-dropout rate LyCORIS's LoConModule.apply_max_norm draws its row mask at (make_weight in
    training, whatever its bypass_mode): a lora adapter's LoCon layers', and a LoHa / LoKr adapter's LoCon
    blocks' where the plan gives them LyCORIS's rank dropout (rank_dropout_form "lycoris" /
    "lycoris_bypass", compiler/adapters.py); else none."""
    if adapter.kind == "lora" or adapter.rank_dropout_form in ("lycoris", "lycoris_bypass"):
        return adapter.rank_dropout
    return 0.0


def lycoris_norm_modules(
    denoiser: torch.nn.Module | None,
    text_encoders: Iterable[torch.nn.Module],
    fused: tuple[FusedPlan, ...] = (),
    locon_rank_dropout: float = 0.0,
) -> list:
    """The LyCORIS modules in lycoris.kohya's order: the denoiser's, then the text encoders'; the LoCon parts
    of a fused layer (lycoris.kohya on kohya's Flux: one LoConModule on the fused Linear) joined into one.
    `locon_rank_dropout`: the LoCon layers' rank-dropout rate (a lora adapter's)."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer

    from dbspec.runtime.lycoris_oft import DiagOftLayer
    from dbspec.runtime.lycoris_tlora import TloraLayer

    modules = []
    for model in [denoiser, *text_encoders]:
        if model is None:
            continue
        locon: dict[int, list[tuple[str, torch.nn.Module]]] = {}  # by the shared lora_A
        for name, layer in model.named_modules():
            if isinstance(layer, TloraLayer):  # a peft LoraLayer too, with no lora_A of its own
                parts = tuple(layer.__dict__.get("tlora_fused_parts") or ())  # a fused one's, row order
                if ADAPTER_NAME in layer.lora_tlora_q and (not parts or parts[0] is layer):
                    modules.append(LycorisNormModule(name, layer, "tlora", parts))
            elif isinstance(layer, DiagOftLayer) and ADAPTER_NAME in layer.lora_oft_blocks:  # BOFT's too
                if getattr(layer, "boft_index", 0):  # a fused BOFT's later part: its first's blocks
                    continue
                parts = tuple(layer.__dict__.get("oft_fused_parts") or ())  # a fused Diag-OFT's, row order
                if parts and parts[0] is not layer:  # a later part: one module, at its first part's place
                    continue
                modules.append(LycorisNormModule(name, layer, "oft", parts if len(parts) > 1 else ()))
            elif isinstance(layer, LoraLayer) and ADAPTER_NAME in layer.lora_A:
                down = layer.lora_A[ADAPTER_NAME].weight
                if id(down) not in locon:
                    locon[id(down)] = []
                    modules.append(locon[id(down)])  # its place; the parts joined below
                locon[id(down)].append((name, layer))
            elif isinstance(layer, (LoHaLayer, LoKrLayer)) and ADAPTER_NAME in layer.r:
                kind = "loha" if isinstance(layer, LoHaLayer) else "lokr"
                parts = getattr(layer, "fused_loha_parts", None) or getattr(layer, "fused_lokr_parts", ())
                if parts or not _later_fused_part(layer):  # a fused layer's: one module, its first part's
                    modules.append(LycorisNormModule(name, layer, kind, tuple(parts)))
    return [_locon_module(m, fused, locon_rank_dropout) if isinstance(m, list) else m for m in modules]


def _locon_module(
    parts: list[tuple[str, torch.nn.Module]], fused: tuple[FusedPlan, ...], rank_dropout: float = 0.0
) -> LycorisNormModule:
    """One LoCon module of a layer's LoRA, or of a fused layer's parts in their row order."""
    parts = sorted(parts, key=lambda part: _row_order(part[0], fused))
    name, first = parts[0]
    layers = tuple(layer for _, layer in parts) if len(parts) > 1 else ()
    return LycorisNormModule(name, first, "lora", layers, rank_dropout)


def _later_fused_part(layer: torch.nn.Module) -> bool:
    """A fused LoKr's / LoHa's part after the first (runtime/fused_lokr.py, fused_loha.py)."""
    rows = getattr(layer, "fused_lokr_rows", None)
    return (rows is not None and rows[0] != 0) or getattr(layer, "fused_loha_later", False)


_LOKR_FACTORS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def lycoris_update(module: LycorisNormModule) -> torch.Tensor:
    """The update LyCORIS's apply_max_norm takes the norm of (LoCon's and LoHa's with the scalar, LoKr's
    without)."""
    from dbspec.runtime.lycoris_switches import _ScalarLayer

    layer = module.layer
    if module.kind == "tlora":  # TLoraModule.get_diff_weight: the update with its frozen start subtracted
        if module.parts:  # one TLoraModule on the fused Linear: its parts' rows stacked
            return torch.cat([part.tlora_diff(ADAPTER_NAME) for part in module.parts])
        return layer.tlora_diff(ADAPTER_NAME)
    if module.kind == "oft":  # DiagOFTModule's and ButterflyOFTModule's norm: of the blocks themselves
        blocks = _oft_blocks(module)
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)
    # LoHa's and LoKr's get_weight in training mode: the rank-dropout mask drawn inside the norm
    drop = {"apply_rank_dropout": _draws_rank_dropout(module)} if module.kind in ("loha", "lokr") else {}
    if module.kind in ("lokr", "loha") and module.parts:  # lycoris.kohya on kohya's fused Flux / SD3 Linear
        return _fused_update(module)
    if module.kind == "lokr" and isinstance(layer, _ScalarLayer):  # LoKr's norm leaves its scalar out
        return super(_ScalarLayer, layer).get_delta_weight(ADAPTER_NAME, **drop)
    if module.kind == "lora" and module.rank_dropout and layer.training:
        return _locon_dropped(module)
    if module.parts:  # the fused Linear's update: the parts' rows stacked (with dora_wd, before it)
        return torch.cat([_own_update(part, **drop) for part in module.parts])
    return _own_update(layer, **drop)


def _locon_dropped(module: LycorisNormModule) -> torch.Tensor:
    """LoConModule.make_weight in training mode, as apply_max_norm calls it: the update's output rows (a
    fused Linear's rows stacked) times one mask `torch.rand(out, device=device) > rank_dropout`, drawn from
    the generator of the weights' device (kohya passes accelerator.device) and divided by its mean where the
    layer's block rescales (rank_dropout_scale). The mask is 0 / 1, so masking after alpha / rank and the
    scalar equals LyCORIS's masking before them; with LyCORIS's weight decomposition the update before it."""
    from dbspec.runtime.kohya_rows import in_kohya_rows
    from dbspec.runtime.lora_dropout import rescaled

    parts = module.parts or (module.layer,)
    update = torch.cat([_own_update(part, own_rank_dropout=False) for part in parts])
    keep = (torch.rand(update.size(0), device=update.device) > module.rank_dropout).to(update.dtype)
    keep = in_kohya_rows(keep, module.layer)  # SD3 / Flux's swapped modulation rows (never a fused part)
    keep = keep / keep.mean() if rescaled(module.layer) else keep
    return update * keep.view(-1, *[1] * (update.dim() - 1))


def _oft_blocks(module: LycorisNormModule) -> list[torch.Tensor]:
    """The trained blocks of an OFT module: a layer's, or a fused Diag-OFT's parts' in row order (their
    concatenation is the fused DiagOFTModule's `oft_blocks`), a Parameter the parts share (their blocks span
    parts: runtime/fused_oft.py) once."""
    found = [layer.lora_oft_blocks[ADAPTER_NAME] for layer in module.parts or (module.layer,)]
    return list({id(blocks): blocks for blocks in found}.values())


def _fused_update(module: LycorisNormModule) -> torch.Tensor:
    """A fused LoKr's whole Kronecker product (without its scalar) or a fused LoHa's parts' rows stacked
    (with it), in training mode times one rank-dropout mask over the fused rows (LyCORIS's get_weight:
    `torch.rand(out)` on the CPU, divided by its mean with rank_dropout_scale)."""
    layer = module.layer
    if module.kind == "lokr":
        from dbspec.runtime.fused_lokr import fused_lokr_update

        update = fused_lokr_update(layer)
    else:
        update = torch.cat([_own_update(part) for part in module.parts])
    if _draws_rank_dropout(module):
        mask = (torch.rand(update.size(0)) > layer.rank_dropout[ADAPTER_NAME]).to(update.dtype)
        if layer.rank_dropout_scale.get(ADAPTER_NAME):
            mask = mask / mask.mean()
        update = update * mask.to(update.device).view(-1, 1)
    return update


def _own_update(layer: torch.nn.Module, own_rank_dropout: bool = True, **drop: bool) -> torch.Tensor:
    """A layer's update, with LyCORIS's weight decomposition the update before it (its rank dropout drawn
    by the layer's mode too, unless `own_rank_dropout` is False: the caller draws it)."""
    from dbspec.runtime.lycoris_dora import LycorisDora

    if isinstance(layer, LycorisDora):
        return layer._update(ADAPTER_NAME, own_rank_dropout=own_rank_dropout)
    return layer.get_delta_weight(ADAPTER_NAME, **drop)


def _draws_rank_dropout(module: LycorisNormModule) -> bool:
    """LohaModule's and LokrModule's get_weight draw their rank-dropout mask (one `torch.rand(out)` from
    torch's global CPU generator, which dbspec seeds and keeps in its checkpoints) whenever the module is in
    training mode, apply_max_norm's call too."""
    return module.layer.training and bool(module.layer.rank_dropout.get(ADAPTER_NAME))


@torch.no_grad()
def apply_lycoris_max_norm(modules: list[LycorisNormModule], limit: float) -> tuple[int, float, float]:
    """lycoris.kohya's apply_max_norm_regularization over `modules`: (modules scaled, mean norm, largest
    norm), or (0, 0.0, 0.0) when none was scaled."""
    from dbspec.runtime.lycoris_switches import layer_scalar

    scaled_count, norms = 0, []
    for module in modules:
        orig_norm = lycoris_update(module).norm()
        if module.kind == "tlora":  # TLoraModule.apply_max_norm scales the (scaled) update's norm again
            orig_norm = orig_norm * module.layer.scaling[ADAPTER_NAME]
        elif module.kind == "lora" and module.layer.scaling[ADAPTER_NAME] < 0:  # LoConModule's: the norm of
            orig_norm = -orig_norm  # its unscaled update times alpha / rank, below 0 with a negative alpha
        norm = torch.clamp(orig_norm, limit / 2)
        desired = torch.clamp(norm, max=limit)
        oft = module.kind == "oft"
        ratio = desired / norm if oft else desired.cpu() / norm.cpu()  # the OFT modules' stays on device
        scaled = norm != desired
        if scaled:
            if oft:  # a fused Diag-OFT's parts: each its rows of the fused module's blocks, or the shared
                for blocks in _oft_blocks(module):  # Parameter once
                    blocks.mul_(ratio)
            elif module.kind == "tlora":  # the trained singular values alone (not the frozen start's; a
                module.layer.lora_tlora_lambda[ADAPTER_NAME].mul_(ratio)  # fused one's parts share them)
            elif module.kind == "lokr":
                factors = [
                    getattr(module.layer, key)[ADAPTER_NAME]
                    for key in _LOKR_FACTORS
                    if ADAPTER_NAME in getattr(module.layer, key)
                ]
                for factor in factors:
                    factor.mul_(ratio ** (1 / len(factors)))
            else:  # a fused layer's parts hold the one module's scalar (runtime/fused.py ties it): once
                scalars = [layer_scalar(layer) for layer in module.parts or (module.layer,)]
                for scalar in {id(s): s for s in scalars}.values():
                    scalar.mul_(ratio)
        norms.append(orig_norm * ratio)
        scaled_count += int(scaled)
    if scaled_count == 0:
        return 0, 0.0, 0.0
    return scaled_count, float(sum(norms) / len(norms)), float(max(norms))
