"""kohya's max-norm at the starting file's alphas (`plan.adapter.max_norm_alphas`).

With `--network_weights` saved at another alpha, kohya's LoRAModule trains at network_alpha / rank (its scale
is fixed when it is built) while `load_weights` copies the file's `alpha` into the module's buffer, and
`apply_max_norm_regularization` scales each update by that buffer over the rank. The plan carries the file's
alpha per module under kohya's name; each norm module found under one of those names takes it for its norm
(runtime/max_norm.py), the others keep their own alpha (kohya's buffer without a file value: the network's).
Names are the ones the run's start reads the file by (runtime/init_weights.py, flow_init.py)."""

from __future__ import annotations

import math
from importlib import import_module

import attrs
import torch

from dbspec.families import family_spec, flow_text_prefixes, lycoris_text_prefixes
from dbspec.plan.model import Plan
from dbspec.runtime.adapters import lora_adapter
from dbspec.runtime.exports import _kohya_lora_layers, clip_path, kohya_parts


def with_file_alphas(modules: list, plan: Plan, unet: torch.nn.Module | None, text_encoders: list) -> list:
    """`modules` (runtime/max_norm.py NormModules) with each one the file names at the file's alpha."""
    alphas = plan.adapter.max_norm_alphas
    if not alphas:
        return modules
    names = _kohya_names(plan, unet, [e for e in text_encoders if e is not None])
    out = []
    for module in modules:
        name = next((n for n in names.get(id(module.down), ()) if n in alphas), None)
        alpha = float(alphas[name]) if name is not None else module.alpha
        # init_alpha "match": the file's value where it is the layer's within the plan's check (a Flux final
        # layer's alpha = rank in dbspec's export, its scale folded into lora_up and unfolded at the start:
        # the layer's own)
        if plan.adapter.init_alpha == "match" and not math.isclose(alpha, module.alpha, rel_tol=1e-3):
            alpha = module.alpha
        out.append(attrs.evolve(module, alpha=alpha) if alpha != module.alpha else module)
    return out


def _kohya_names(plan: Plan, unet, text_encoders: list) -> dict[int, tuple[str, ...]]:
    """The kohya module names of each LoRA layer's down weight (by id): a fused layer's parts share theirs."""
    family = plan.model.family
    names: dict[int, tuple[str, ...]] = {}
    if not family_spec(family).fused_projections:  # SD 1.x/2.x, SDXL: runtime/init_weights.py's names
        for prefix, module, to_path in kohya_parts(unet=unet, text_encoders=text_encoders, family=family):
            if lora_adapter(module) is None:
                continue
            for name, down, _up, _rank, _alpha in _kohya_lora_layers(module):
                names[id(down)] = (f"{prefix}_{to_path(name).replace('.', '_')}",)
        return names
    # kohya's lora_flux / lora_sd3 layout (runtime/flow_init.py): the original model's names, a fused Linear
    # one module
    if unet is not None and lora_adapter(unet) is not None:
        layout = import_module(
            f"dbspec.runtime.{family_spec(family).kohya.network.removeprefix('networks.lora_')}_kohya"
        )
        for name, down, _up, _rank, _alpha in _kohya_lora_layers(unet):
            names[id(down)] = (f"lora_unet_{layout.original_name(name)[0]}",)
    named = lycoris_text_prefixes if plan.adapter.kohya_names == "lycoris" else flow_text_prefixes
    for prefix, encoder in zip(named(family), text_encoders):
        if lora_adapter(encoder) is None:
            continue
        for name, down, _up, _rank, _alpha in _kohya_lora_layers(encoder):
            # CLIP's original path, or without text_model (CLIPTextModel under transformers 5)
            names[id(down)] = (
                f"{prefix}{clip_path(name).replace('.', '_')}",
                f"{prefix}{name.replace('.', '_')}",
            )
    return names
