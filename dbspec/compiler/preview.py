"""Preview pass: live validation previews (`[validation] preview_every`, `preview_model`, `webhook`).

Settles which Tiny AutoEncoder decodes the previews (the spec's, else the family's from the registry), where
it is (a built-in, a diffusers folder, or a hub id found in the local Hugging Face cache; offline, like base
models), and at which sampling steps a preview is decoded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from dbspec.builtin import BUILTIN_PREVIEW_MODELS, is_builtin
from dbspec.compiler.context import Context
from dbspec.compiler.modelinfo import hub_cache_dir
from dbspec.families import family_spec
from dbspec.plan.model import ModelPlan, PreviewPlan

MODEL = ("validation", "preview_model")
_CLASS = "AutoencoderTiny"


def preview_sampling_steps(every: int, steps: int) -> tuple[int, ...]:
    """The 1-based sampling steps whose latents are decoded: every `every`-th of `steps`."""
    return tuple(range(every, steps + 1, every)) if every else ()


def plan_preview(ctx: Context, model: ModelPlan | None) -> PreviewPlan | None:
    v = ctx.spec.validation
    sampling_steps = preview_sampling_steps(v.preview_every, v.steps)
    if not v.prompts or not sampling_steps or model is None:
        return None
    name = v.preview_model or family_spec(model.family).preview_vae
    source, path, revision = _locate(ctx, name, family_spec(model.family).latent_channels)
    if source == "missing":
        return None
    return PreviewPlan(
        every=v.preview_every,
        sampling_steps=sampling_steps,
        model=name,
        source=source,
        path=path,
        resolved=source == "builtin" or bool(path),
        revision=revision,
        webhook=v.webhook,
        webhook_timeout=v.webhook_timeout,
    )


def _locate(ctx: Context, name: str, channels: int) -> tuple[str, str, str]:
    """(source, resolved folder or "", revision); ("missing", "", "") after reporting a problem."""
    if is_builtin(name):
        if name in BUILTIN_PREVIEW_MODELS:
            return "builtin", "", ""
        known = ", ".join(BUILTIN_PREVIEW_MODELS)
        _bad(ctx, f"unknown built-in preview model {name!r}", f"known: {known}")
        return "missing", "", ""
    local = ctx.resolve(name)
    if local.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        return (
            ("diffusers", str(local), "")
            if _is_tiny_autoencoder(ctx, local, channels)
            else ("missing", "", "")
        )
    snapshot = _hub_snapshot(name, "main")
    if snapshot is None:
        ctx.report(
            "DBS370",
            "warning",
            f"the preview model {name} is not in the local Hugging Face cache ({hub_cache_dir()})",
            MODEL,
            help="`dbspec plan --download` fetches it; otherwise the run tries to download it and, if it "
            "cannot, validates without previews",
        )
        return "hub", "", "main"
    return (
        ("hub", str(snapshot), "main")
        if _is_tiny_autoencoder(ctx, snapshot, channels)
        else ("missing", "", "")
    )


def _is_tiny_autoencoder(ctx: Context, folder: Path, channels: int) -> bool:
    config = folder / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        reason = "it is missing" if not folder.exists() else f"{config} cannot be read ({type(exc).__name__})"
        _bad(ctx, f"the preview model folder {folder} is unusable: {reason}", "")
        return False
    found = data.get("_class_name") if isinstance(data, dict) else None  # noqa: SIM401 - file data, not config
    if found != _CLASS:
        _bad(ctx, f"{config} describes {found!r}, not a diffusers {_CLASS}", "")
        return False
    latent_channels = data.get("latent_channels", 4)  # noqa: SIM401 - file data; diffusers' default is 4
    if latent_channels != channels:
        _bad(ctx, f"{config} decodes {latent_channels} latent channels; the base model has {channels}", "")
        return False
    return True


def _bad(ctx: Context, message: str, help: str) -> None:
    ctx.report(
        "DBS371",
        "error",
        message,
        MODEL,
        help=help or 'use a diffusers AutoencoderTiny folder or hub id (e.g. "madebyollin/taesd")',
    )


def _hub_snapshot(repo_id: str, revision: str) -> Path | None:
    repo_dir = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    ref = repo_dir / "refs" / revision
    commit = revision if re.fullmatch(r"[0-9a-f]{40}", revision) else ""
    if not commit and ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
    snapshot = repo_dir / "snapshots" / commit if commit else None
    return snapshot if snapshot is not None and (snapshot / "config.json").is_file() else None
