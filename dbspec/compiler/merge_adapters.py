"""`model.merge_adapters` (kohya `--base_weights`, `--base_weights_multiplier`): LoRA files merged into the
base weights before training, checked at plan time from their headers (DBS391; DBS392: an SD3 module dbspec
cannot place) and folded into the model's identities, so the caches keyed by a merged component (the text
cache, with a text-encoder LoRA) and the class images follow the merged weights. The VAE is never merged:
latents keep their keys. Flux and SD3 files are in kohya's lora_flux / lora_sd3 layout (the original model's
fused layers; runtime/flow_merge.py)."""

from __future__ import annotations

import attrs

from dbspec.compiler.context import Context
from dbspec.compiler.init_file import flow_component_prefixes, kohya_component_prefixes
from dbspec.compiler.lora_file import read_lora_file
from dbspec.compiler.safetensors_header import ModelFileError, file_fingerprint
from dbspec.families import family_spec
from dbspec.plan.model import MergePlan, ModelPlan

# kohya's lora_sd3 merges the patch embedding (x_embedder, a Conv2d) from a file; diffusers' pos_embed.proj
# is not mapped to it
_UNPLACED = ("lora_unet_x_embedder",)


def _flux_ignored(family: str, name: str) -> bool:
    """A Flux denoiser module outside the double and single blocks: kohya's lora_flux network from weights
    has no such module and never reads it (runtime/flow_merge.py)."""
    scan = family_spec(family).kohya.weights_scan
    return bool(scan) and name.startswith("lora_unet_") and not name.startswith(scan)


def with_merged_adapters(ctx: Context, plan: ModelPlan | None) -> ModelPlan | None:
    """`plan` with the spec's merged LoRA files and identities that include them."""
    given = ctx.spec.model.merge_adapters
    if plan is None or not given:
        return plan
    identity, text_identity = plan.identity, plan.text_identity
    merges = []
    for index, merge in enumerate(given):
        key = ("model", "merge_adapters", index, "path")
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
    fused = bool(family_spec(family).fused_projections)  # Flux, SD3: kohya's lora_flux / lora_sd3 layout
    prefixes = flow_component_prefixes(family) if fused else kohya_component_prefixes(family)
    components: dict[str, int] = {}
    for module in file.modules.values():
        if fused and module.name.startswith(_UNPLACED):
            ctx.report(
                "DBS392",
                "error",
                f"`{path}`: tensor `{module.name}.lora_down.weight` adapts SD3's patch embedding (a Conv2d), "
                "which kohya merges but diffusers' model holds in another form dbspec does not map",
                key,
                help="remove the module from the file, or merge the file with another tool first",
            )
            return None
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
        if fused and module.alpha is None and not _flux_ignored(family, module.name):
            network = family_spec(family).kohya.network.removeprefix("networks.")
            ctx.report(
                "DBS391",
                "error",
                f"`{path}`: module `{module.name}` has no `{module.name}.alpha`; kohya's "
                f"{network} network from weights "
                "needs one for every module it merges (it stops with a KeyError)",
                key,
                help="add the alpha tensors (alpha = rank keeps the update's scale 1)",
            )
            return None
        # the plan names the denoiser "unet" in every family
        component = "unet" if prefixes[prefix] in ("unet", family_spec(family).denoiser) else prefixes[prefix]
        components[component] = components.get(component, 0) + 1
    return MergePlan(
        path=str(path),
        multiplier=float(multiplier),
        fingerprint=file_fingerprint(str(path)),
        components=tuple(sorted(components)),
        layers=sum(components.values()),
    )
