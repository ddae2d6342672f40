"""`model.merge_adapters` (kohya `--base_weights`, `--base_weights_multiplier`): LoRA files merged into the
base weights before training, checked at plan time from their headers (DBS391, DBS392) and folded into the
model's identities, so the caches keyed by a merged component (the text cache, with a text-encoder LoRA) and
the class images follow the merged weights. The VAE is never merged: latents keep their keys."""

from __future__ import annotations

import attrs

from dbspec.compiler.context import Context
from dbspec.compiler.init_weights import kohya_component_prefixes
from dbspec.compiler.lora_file import read_lora_file
from dbspec.compiler.safetensors_header import ModelFileError, file_fingerprint
from dbspec.families import family_spec
from dbspec.plan.model import MergePlan, ModelPlan


def with_merged_adapters(ctx: Context, plan: ModelPlan | None) -> ModelPlan | None:
    """`plan` with the spec's merged LoRA files and identities that include them."""
    given = ctx.spec.model.merge_adapters
    if plan is None or not given:
        return plan
    family = family_spec(plan.family)
    identity, text_identity = plan.identity, plan.text_identity
    merges = []
    for index, merge in enumerate(given):
        key = ("model", "merge_adapters", index, "path")
        if family.fused_projections:
            ctx.report(
                "DBS392",
                "error",
                f"model.merge_adapters[{index}]: merging a {family.title} LoRA (kohya's lora_flux / lora_sd3 "
                "layout, fused layers) into the base is not implemented",
                key,
                help="merge the file into the model with another tool first, or remove it",
            )
            continue
        found = _plan_one(ctx, merge.path, merge.multiplier, key, plan.family)
        if found is None:
            continue
        merges.append(found)
        text = [c for c in found.components if c != "unet"]
        if "unet" in found.components:
            identity += f"+merge:{found.fingerprint}x{merge.multiplier!r}"
        if text:
            text_identity += f"+merge({','.join(text)}):{found.fingerprint}x{merge.multiplier!r}"
    return attrs.evolve(plan, identity=identity, text_identity=text_identity, merge_adapters=tuple(merges))


def _plan_one(ctx: Context, given: str, multiplier: float, key, family: str) -> MergePlan | None:
    path = ctx.resolve(given)
    if not path.is_file():
        ctx.report("DBS391", "error", f"LoRA file `{path}` not found", key, help="check the path")
        return None
    try:
        file = read_lora_file(path)
    except ModelFileError as exc:
        ctx.report("DBS391", "error", f"`{exc.path}` cannot be merged: {exc.reason}", key)
        return None
    prefixes = kohya_component_prefixes(family)
    components: dict[str, int] = {}
    for module in file.modules.values():
        prefix = next((p for p in prefixes if module.name.startswith(p)), None)
        if prefix is None:
            ctx.report(
                "DBS391",
                "error",
                f"`{path}`: tensor `{module.name}.lora_down.weight` belongs to no model of this {family} run "
                f"(kohya prefixes here: {', '.join(prefixes)})",
                key,
                help="merge a LoRA made for this model family",
            )
            return None
        # the plan names the denoiser "unet" in every family
        component = "unet" if prefixes[prefix] == family_spec(family).denoiser else prefixes[prefix]
        components[component] = components.get(component, 0) + 1
    return MergePlan(
        path=str(path),
        multiplier=float(multiplier),
        fingerprint=file_fingerprint(str(path)),
        components=tuple(sorted(components)),
        layers=sum(components.values()),
    )
