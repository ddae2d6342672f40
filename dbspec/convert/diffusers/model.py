"""What the diffusers scripts read from the base model before they train, read here torch-free.

`train_dreambooth_lora_sdxl.py` (`determine_scheduler_type`) reads `model_index.json`'s scheduler class from
the local folder or the hub (`hf_hub_download` at `--revision`): a class name containing "EDM" sets
`args.do_edm_style_training = True` and trains EDM-style. All three scripts take the training target from
`scheduler/scheduler_config.json`'s `prediction_type` (the Min-SNR weights depend on it). The converter reads
the same files from a local pipeline folder, a snapshot in the local Hugging Face cache, or a built-in model;
for a hub id not in the cache only well-known ids are known.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import attrs

from dbspec.builtin import BUILTIN_MODELS, is_builtin
from dbspec.compiler.modelinfo import hub_cache_dir
from dbspec.convert.common.paths import PathMapper
from dbspec.families import hub_model

# Hub ids whose pipeline is EDM (diffusers' README_sdxl.md DreamBooths Playground v2.5 EDM-style).
KNOWN_EDM = {"playgroundai/playground-v2.5-1024px-aesthetic"}


@attrs.frozen(kw_only=True)
class SchedulerFacts:
    scheduler: str | None  # model_index.json's scheduler class; None when it could not be read
    prediction: str | None  # scheduler_config.json's prediction_type (epsilon when unset); None: not read
    where: str  # what was read, or why nothing could be
    known_edm: bool | None = None  # for well-known hub ids not in the cache: the registry's answer

    @property
    def edm(self) -> bool | None:
        """Whether the SDXL LoRA script trains this model EDM-style (`"EDM" in scheduler_type`)."""
        if self.known_edm is not None:
            return self.known_edm
        return None if self.scheduler is None else "EDM" in self.scheduler


def scheduler_facts(base: str, revision: str | None, paths: PathMapper) -> SchedulerFacts:
    if is_builtin(base):
        model = BUILTIN_MODELS.get(base)
        if model is None:
            return SchedulerFacts(scheduler=None, prediction=None, where=f"{base} is no built-in model")
        return SchedulerFacts(
            scheduler=model.scheduler["_class_name"], prediction=model.prediction, where=f"built-in {base}"
        )
    local = paths.local(base)
    if local is not None and local.is_dir():
        return _read_folder(local, f"{local / 'model_index.json'}")
    if local is not None and local.exists():  # a single weights file: the SDXL scripts cannot load it
        return SchedulerFacts(
            scheduler=None, prediction=None, where=f"{base} is a file, not a pipeline folder"
        )
    snapshot = _hub_snapshot(base, revision or "main")
    if snapshot is not None:
        return _read_folder(snapshot, f"the Hugging Face cache's snapshot {snapshot}")
    if base in KNOWN_EDM:
        return SchedulerFacts(
            scheduler="an EDM scheduler",
            prediction=None,
            where=f"{base}, a well-known EDM model",
            known_edm=True,
        )
    known = hub_model(base)
    if known is not None:  # the registry's well-known ids: DDPM-family pipelines, their prediction known
        return SchedulerFacts(
            scheduler="a DDPM-family scheduler",
            prediction=known[1],
            where=f"{base}, a well-known model",
            known_edm=False,
        )
    return SchedulerFacts(
        scheduler=None,
        prediction=None,
        where=f"{base} is neither a local folder nor in the Hugging Face cache ({hub_cache_dir()})",
    )


def _read_folder(root: Path, where: str) -> SchedulerFacts:
    try:
        index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
        scheduler = str(index["scheduler"][1])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        return SchedulerFacts(
            scheduler=None, prediction=None, where=f"{root / 'model_index.json'} cannot be read: {exc}"
        )
    try:
        config = json.loads((root / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        prediction = str(config.get("prediction_type", "epsilon"))
    except (OSError, ValueError, AttributeError):
        prediction = None
    return SchedulerFacts(scheduler=scheduler, prediction=prediction, where=where)


def _hub_snapshot(repo_id: str, revision: str) -> Path | None:
    if repo_id.count("/") != 1:
        return None
    repo_dir = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        commit = revision
    else:
        ref = repo_dir / "refs" / revision
        try:
            commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else ""
        except OSError:
            commit = ""
    snapshot = repo_dir / "snapshots" / commit if commit else None
    return snapshot if snapshot is not None and (snapshot / "model_index.json").is_file() else None
