"""kohya networks.lora_flux's LoRA-GGPO on peft LoRA layers (`plan.adapter.ggpo_sigma` / `ggpo_beta`).

kohya's LoRAModule with both `ggpo_sigma` and `ggpo_beta` keeps, per module (one Linear, or one fused Linear
of the original model: Flux's `img_attn.qkv`, which dbspec's `plan.adapter.fused` parts make up):
- at construction, the mean L2 norm of up to 1000 rows of the base weight, drawn with `torch.randperm` from
  torch's global CPU generator (every row when it has fewer), read in float32;
- after each optimizer step's backward (its last micro-batch, after gradient clipping, before the step), the
  row norms of the update's approximate gradient, scale * (up @ down.grad + up.grad @ down), computed under
  `torch.autocast` of the device's type (reduced precision matmuls, as kohya's code does), and the combined
  weight norms sqrt(mean_norm² + Σ_j (up @ down)_ij²) (up @ down unscaled: kohya's `mul` is not in place);
- in each training forward once both norms exist (from the second optimizer step on), a draw
  P = torch.randn(base weight's shape, LoRA dtype, LoRA device) from torch's global generator, after the
  module's dropout draws (none when module dropout skips the layer), each row i scaled by
  (sigma * sqrt(combined_i²) + beta * grad_i²) / sqrt(out rows), and adds x @ Pᵀ to the output.
Validation (layers in eval mode) is never perturbed and no norm is taken. A fused layer's parts share one
draw per forward, drawn by the first part called, each adding its own rows (kept until every part ran, so
gradient checkpointing's recomputation, the generator restored, draws it again alike). The norms are
running state: `state` / `restore` put them in the checkpoint so a resumed run perturbs as an uninterrupted
one (the draws come from the global generator, which checkpoints save)."""

from __future__ import annotations

import math

import torch
from peft.tuners.lora import LoraLayer

from dbspec.plan.model import AdapterPlan, FusedPlan
from dbspec.runtime.adapters import ADAPTER_NAME
from dbspec.runtime.fused import fused_layers


class GgpoModule:
    """One kohya LoRAModule's GGPO state: `parts` (peft LoRA layers sharing one down, in the original fused
    weight's row order; one layer for an unfused Linear)."""

    def __init__(self, parts: list, sigma: float, beta: float):
        self.parts = parts
        self.sigma, self.beta = sigma, beta
        bounds, start = [], 0
        for layer in parts:
            rows = layer.get_base_layer().weight.shape[0]
            bounds.append((start, start + rows))
            start += rows
        self.bounds = bounds
        self.rows = start
        self.columns = parts[0].get_base_layer().weight.shape[1]
        self.norm_factor = 1.0 / math.sqrt(self.rows)
        self.mean_norm = self._mean_norm()
        self.combined: torch.Tensor | None = None  # (rows, 1)
        self.grads: torch.Tensor | None = None  # (rows, 1)
        self.left = 0  # parts still to add the current draw
        self.noise: torch.Tensor | None = None

    @property
    def down(self) -> torch.nn.Parameter:
        return self.parts[0].lora_A[ADAPTER_NAME].weight

    def ups(self) -> list[torch.nn.Parameter]:
        return [layer.lora_B[ADAPTER_NAME].weight for layer in self.parts]

    @torch.no_grad()
    def _mean_norm(self) -> torch.Tensor:
        weight = torch.cat([_float_weight(layer.get_base_layer()) for layer in self.parts])
        indices = torch.randperm(self.rows)[: min(1000, self.rows)]
        sampled = weight[indices].to(device=self.down.device)
        return torch.norm(sampled, dim=1, keepdim=True).mean()

    @torch.no_grad()
    def update(self) -> None:
        """kohya's update_grad_norms then update_norms (training mode only)."""
        if not self.parts[0].training:
            return
        down, ups = self.down, self.ups()
        scale = self.parts[0].scaling[ADAPTER_NAME]
        if down.grad is not None and all(up.grad is not None for up in ups):
            up, up_grad = torch.cat(list(ups)), torch.cat([u.grad for u in ups])
            with torch.autocast(down.device.type):
                approx = scale * ((up @ down.grad) + (up_grad @ down))
                self.grads = torch.norm(approx, dim=1, keepdim=True)
        weights = torch.cat(list(ups)) @ down
        self.combined = torch.sqrt(self.mean_norm**2 + torch.sum(weights**2, dim=1, keepdim=True))

    def take(self) -> torch.Tensor:
        """This forward's scaled draw (rows, columns), drawn when no part has it left."""
        if self.left == 0:
            with torch.no_grad():
                down = self.down
                scale = self.sigma * torch.sqrt(self.combined**2) + self.beta * (self.grads**2)
                factor = (scale * self.norm_factor).to(down.device)
                noise = torch.randn((self.rows, self.columns), dtype=down.dtype, device=down.device)
                self.noise = noise.mul_(factor)
            self.left = len(self.parts)
        self.left -= 1
        return self.noise

    def state(self) -> dict:
        return {"mean_norm": self.mean_norm, "combined": self.combined, "grads": self.grads}

    def restore(self, saved: dict) -> None:
        device = self.down.device
        self.mean_norm = saved["mean_norm"].to(device)
        self.combined = None if saved["combined"] is None else saved["combined"].to(device)
        self.grads = None if saved["grads"] is None else saved["grads"].to(device)


def _float_weight(base: torch.nn.Module) -> torch.Tensor:
    """The base weight in float32, as kohya reads it (`weight.to(float32)`; a float8 weight's values), a
    quantised backend's weight dequantised first."""
    weight = base.weight
    if type(weight).__name__ in ("Params4bit", "Int8Params"):  # bitsandbytes
        from peft.utils.integrations import dequantize_module_weight

        weight = dequantize_module_weight(base)
    elif type(weight) not in (torch.Tensor, torch.nn.Parameter) and hasattr(weight, "dequantize"):
        weight = weight.dequantize()  # quanto / torchao tensors
    weight = weight.detach().to(dtype=torch.float32)
    if weight.shape != (base.out_features, base.in_features):
        raise ValueError(
            f"LoRA-GGPO reads the base weight of a {base.out_features}x{base.in_features} Linear, but its "
            f"{type(base.weight).__name__} weight reads as {tuple(weight.shape)}"
        )
    return weight


def add_ggpo(module: torch.nn.Module, adapter: AdapterPlan, fused: tuple[FusedPlan, ...] = ()) -> int:
    """Wrap the forward of every plain LoRA Linear in `module` (after the dropouts' wrappers) with GGPO's
    perturbation; a fused layer's tied parts (`fused`) form one module. Keeps the modules, in order, as
    `module.dbspec_ggpo`; returns how many."""
    sigma, beta = adapter.ggpo_sigma, adapter.ggpo_beta
    found: list[GgpoModule] = []
    grouped: set[int] = set()
    for _, layers in fused_layers(module, fused):
        parts = [layer for _, layer in layers if _plain(layer)]
        tied = [p for p in parts if p.lora_A[ADAPTER_NAME].weight is parts[0].lora_A[ADAPTER_NAME].weight]
        if len(tied) >= 2:
            found.append(GgpoModule(tied, sigma, beta))
            grouped.update(id(p) for p in tied)
    for layer in module.modules():
        if _plain(layer) and id(layer) not in grouped:
            found.append(GgpoModule([layer], sigma, beta))
    for ggpo in found:
        for index, layer in enumerate(ggpo.parts):
            layer.forward = _forward(layer, layer.forward, ggpo, *ggpo.bounds[index])
    module.dbspec_ggpo = found
    return len(found)


def _plain(layer) -> bool:
    return (
        isinstance(layer, LoraLayer)
        and ADAPTER_NAME in layer.lora_A
        and not layer.use_dora.get(ADAPTER_NAME)
        and isinstance(layer.get_base_layer(), torch.nn.Linear)
    )


def _skipped(layer) -> bool:
    """Whether this forward's module dropout skipped the layer (runtime/lora_dropout.py, fused_dropout.py)."""
    draw = getattr(layer, "dbspec_fused_draw", None)
    if draw is not None:
        return draw.skip
    return getattr(layer, "dbspec_module_skipped", False)


def _forward(layer, inner, ggpo: GgpoModule, start: int, end: int):
    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = inner(x, *args, **kwargs)
        if (
            not layer.training
            or layer.disable_adapters
            or layer.merged
            or kwargs.get("adapter_names")
            or ggpo.combined is None
            or ggpo.grads is None
            or _skipped(layer)
        ):
            return out
        rows = ggpo.take()[start:end]
        return out + (x @ rows.T.to(x.dtype)).to(out.dtype)

    return forward


def modules_of(models) -> list[GgpoModule]:
    """The GGPO modules of `models` (None skipped), in order."""
    return [g for m in models if m is not None for g in getattr(m, "dbspec_ggpo", ())]


def update_norms(models) -> None:
    """kohya's network.update_grad_norms() and update_norms(), at the end of an optimizer step's backward."""
    for ggpo in modules_of(models):
        ggpo.update()


def ggpo_state(models) -> list[dict] | None:
    found = modules_of(models)
    return [g.state() for g in found] if found else None


def restore_ggpo(models, saved: list[dict] | None) -> None:
    found = modules_of(models)
    if not saved:
        return
    if len(saved) != len(found):
        raise ValueError(f"the checkpoint holds GGPO norms of {len(saved)} layers; this run has {len(found)}")
    for ggpo, state in zip(found, saved, strict=True):
        ggpo.restore(state)
