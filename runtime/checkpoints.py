"""The run's output folder: plan.json, atomic checkpoints with a `latest` pointer, and weight writers.

```
<out>/run.json, .dbspec.lock    dbspec's run marker and the run's lock (see outdir.py)
<out>/plan.json                 the plan that produced this run
<out>/checkpoints/step-000030/  one complete checkpoint: weights + training_state.pt
<out>/checkpoints/latest        names the newest complete checkpoint folder; replaced atomically
                                (with checkpoints.keep_state N, kept checkpoints older than the newest N
                                lose training_state.pt: weights only, not resumable)
<out>/final/                    the final weights (same format as a checkpoint's weights)
```
A checkpoint is written into a hidden temp folder and renamed into place, so a step folder that exists
is complete; `latest` moves only after that, and pruning happens last and never touches `latest`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from dbspec.plan.io import run_differences
from dbspec.runtime import faults
from dbspec.runtime.outdir import STEP_DIR as _STEP_DIR
from dbspec.runtime.outdir import fsync_dir as _fsync_dir
from dbspec.runtime.outdir import OutputError, prepare_output  # noqa: F401 - the output folder's API, re-exported
from dbspec.util.atomic import write_text_atomic

STATE_FILE = "training_state.pt"
LATEST_FILE = "latest"
BEST_FILE = "best"  # names the best checkpoint by `checkpoints.select`, beside `latest`
BEST_JSON = "best.json"  # its step, metric and value
SCORES_FILE = "metrics.json"  # every checkpoint's evaluation row


# --- checkpoints --------------------------------------------------------------------------------------------
def save_checkpoint(
    out: Path,
    step: int,
    *,
    weights: Callable[[Path], None],
    state: dict[str, Any],
    keep: int,
    scores: dict[str, Any] | None = None,
    select: str = "none",
    select_weights: tuple[tuple[str, float], ...] = (),
    keep_state: int = 0,
) -> Path:
    """Write checkpoint `step` (weights via the callback, `state` via torch.save), point `latest` at it,
    record its evaluation `scores` (metrics.json) and move `best` to it when it beats the best by `select`,
    then prune to the newest `keep` (0 keeps all; the best is kept) and the state of kept ones older than
    the newest `keep_state` (0: all keep it). A failure leaves no step folder and `latest` unchanged."""
    _check_loadable(state, "state")
    root = Path(out) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    staging = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        weights(staging)
        faults.reached("checkpoint.weights")
        torch.save(state, staging / STATE_FILE)
        faults.reached("checkpoint.state")
        _fsync_tree(staging)
        # A folder of this step left by an interrupted run (never named by `latest`) makes way, renamed first.
        replaced = _rename_away(final) if final.exists() else None
        os.replace(staging, final)
        _fsync_dir(root)
        faults.reached("checkpoint.renamed")
        write_text_atomic(root / LATEST_FILE, final.name + "\n")
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if is_write_failure(exc):
            raise OutputError(write_failure(f"checkpoint {final.name}", root, exc)) from exc
        raise
    faults.reached("checkpoint.latest")
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    if scores:
        record_scores(root, final.name, scores)
        update_best(root, final.name, scores, select, select_weights)
    _prune(root, keep, final)
    _prune_state(root, keep_state, final)
    return final


# How torch.save's C++ writer reports a failed write (full disk, quota): a RuntimeError naming its stream.
_TORCH_WRITE_ERRORS = ("PytorchStreamWriter", "inline_container", "iostream error")


def is_write_failure(exc: BaseException) -> bool:
    """A full disk, a quota or a lost permission, as Python (OSError), safetensors (SafetensorError) or
    torch.save (RuntimeError from its writer) report it."""
    if isinstance(exc, (OSError, SafetensorError)):
        return True
    return isinstance(exc, RuntimeError) and any(mark in str(exc) for mark in _TORCH_WRITE_ERRORS)


def write_failure(what: str, folder: Path, exc: BaseException) -> str:
    """What failed, where, how much room there is, and what is still safe."""
    detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    reason = (
        exc.strerror
        if isinstance(exc, OSError) and exc.strerror
        else f"the write failed, usually a full disk or a quota: {detail}"
    )
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    kept = latest_checkpoint(folder.parent if folder.name == "checkpoints" else folder)
    safe = f"the last good checkpoint, {kept}, is intact" if kept else "no checkpoint was written yet"
    return (
        f"cannot write {what} into {folder} ({reason}; {free}); {safe}: free disk space (or lower "
        'checkpoints.keep, or save_precision = "fp16") and run again with --resume'
    )


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint to resume from: the one `latest` names; if that pointer is missing or broken, the
    newest step folder (complete by construction: it is renamed into place only after a full write)."""
    root = Path(out) / "checkpoints"
    try:
        named = (root / LATEST_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        named = ""
    if _STEP_DIR.match(named) and (root / named / STATE_FILE).is_file():
        return root / named
    complete = [folder for folder in _step_dirs(Path(out)) if (folder / STATE_FILE).is_file()]
    return complete[-1] if complete else None


# --- evaluation scores and the best checkpoint (checkpoints.select) -----------------------------------------
LOWER_IS_BETTER = {"eval_loss"}  # every other metric (clip_t, clip_i, dino) is a similarity: higher is better


def record_scores(root: Path, name: str, scores: dict[str, Any]) -> None:
    """The per-checkpoint table `checkpoints/metrics.json`: checkpoint name -> its evaluation row."""
    path = root / SCORES_FILE
    table = _read_json(path) or {}
    table[name] = scores
    write_text_atomic(path, json.dumps(dict(sorted(table.items())), indent=1) + "\n")


def selection_score(scores: dict[str, Any], weights: tuple[tuple[str, float], ...]) -> float | None:
    """select = "weighted": the sum of weight x value over the weighted metrics, eval_loss (LOWER_IS_BETTER)
    negated so that higher is better throughout; None when a weighted metric has no number in `scores`."""
    total = 0.0
    for metric, weight in weights:
        value = scores.get(metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        total += weight * (-float(value) if metric in LOWER_IS_BETTER else float(value))
    return total


def update_best(
    root: Path, name: str, scores: dict[str, Any], select: str, weights: tuple[tuple[str, float], ...] = ()
) -> bool:
    """Point `best` at checkpoint `name` (and write best.json: step, metric, value) when its `select` score
    beats the current best's; the pointer moves as `latest` does (written whole, then renamed). "weighted"
    scores by `selection_score` (higher wins; best.json also holds the weights)."""
    if select == "weighted":
        weighted = selection_score(scores, weights) if weights else None
        if weighted is None:
            return False
        value = weighted
    elif select == "none" or not isinstance(scores.get(select), (int, float)):
        return False
    else:
        value = float(scores[select])
    current = _read_json(root / BEST_JSON)
    same_rule = current and current.get("metric") == select and current.get("weights", []) == _pairs(weights)
    if same_rule and (root / str(current.get("checkpoint"))).is_dir():
        old = float(current["value"])
        if not (value < old if select in LOWER_IS_BETTER else value > old):
            return False
    record = {"checkpoint": name, "step": scores.get("step"), "metric": select, "value": value}
    if select == "weighted":
        record["weights"] = _pairs(weights)
    write_text_atomic(root / BEST_JSON, json.dumps(record, indent=1) + "\n")
    write_text_atomic(root / BEST_FILE, name + "\n")
    return True


def _pairs(weights: tuple[tuple[str, float], ...]) -> list[list]:
    """The weights as best.json holds them (JSON lists)."""
    return [[m, float(w)] for m, w in weights]


def best_checkpoint(out: Path) -> Path | None:
    """The checkpoint `best` names, when it exists."""
    root = Path(out) / "checkpoints"
    try:
        named = (root / BEST_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return root / named if _STEP_DIR.match(named) and (root / named).is_dir() else None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_state(folder: Path) -> dict[str, Any]:
    """The training state saved with a checkpoint, on CPU. weights_only=True is safe and sufficient:
    `save_checkpoint` only accepts plain data (RNG states included, see `capture_rng_state`)."""
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def resume_state(
    out: Path, run_hash: str, plan_json: str, legacy: tuple[str, ...] = ()
) -> dict[str, Any] | None:
    """The state of the checkpoint to resume from (None when there is none), refused (OutputError) unless
    this run saved it: run.json vouches for the folder, not for checkpoints copied in from another run.
    `legacy`: the hashes this run had under older plan versions (a checkpoint an older dbspec saved)."""
    folder = latest_checkpoint(out)
    if folder is None:
        stateless = weights_only_checkpoints(out)
        if stateless:
            raise OutputError(
                f"--resume found {len(stateless)} checkpoint(s) in {Path(out) / 'checkpoints'} but none "
                f"holds its training state ({STATE_FILE}; checkpoints.keep_state prunes it from older "
                f"ones, and the newest, {stateless[-1].name}, lacks it too): they hold weights only and "
                "cannot be continued; pass --overwrite instead of --resume to start afresh (the old run is "
                "moved aside)"
            )
        return None
    state = load_state(folder)
    saved = state.get("run_hash", "")  # noqa: SIM401 - checkpoint data, not config
    if saved != run_hash and saved not in legacy:
        raise OutputError(_other_run(folder, saved, run_hash, state.get("plan", ""), plan_json))
    return state


def _other_run(folder: Path, saved: str, run_hash: str, saved_plan: str, plan_json: str) -> str:
    changes = run_differences(saved_plan, plan_json) if saved_plan else []
    what = f"; what differs: {'; '.join(changes)}" if changes else ""
    held = f"{saved[:19]}…" if saved else "none recorded"
    return (
        f"checkpoint {folder} was saved by another run (run hash {held}, this plan's is {run_hash[:19]}…)"
        f"{what}: it cannot be resumed with this plan; choose another output folder, or pass --overwrite "
        "instead of --resume to move the old run aside and start afresh"
    )


def _step_dirs(out: Path) -> list[Path]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        (int(match.group(1)), entry) for entry in root.iterdir() if (match := _STEP_DIR.match(entry.name))
    ]
    return [folder for _, folder in sorted(found)]


def _prune(root: Path, keep: int, latest: Path) -> None:
    """Keep the newest `keep` step folders and the best one (leftovers of killed runs are `outdir.recover`'s,
    at start)."""
    if keep <= 0:
        return
    best = best_checkpoint(root.parent)
    for folder in _step_dirs(root.parent)[:-keep]:
        if folder != latest and folder != best:
            shutil.rmtree(_rename_away(folder), ignore_errors=True)


def _prune_state(root: Path, keep_state: int, latest: Path) -> None:
    """checkpoints.keep_state: the step folders older than the newest `keep_state` keep their weights and
    lose `training_state.pt` (only dbspec's own file in a folder dbspec wrote; `latest` is never touched).
    Unlinking is atomic: a folder holds its whole state or none."""
    if keep_state <= 0:
        return
    for folder in _step_dirs(root.parent)[:-keep_state]:
        if folder != latest:
            (folder / STATE_FILE).unlink(missing_ok=True)
            faults.reached("checkpoint.state_pruned")
    _fsync_dir(root)


def weights_only_checkpoints(out: Path) -> list[Path]:
    """Step folders whose resume state `checkpoints.keep_state` pruned (weights only), oldest first."""
    return [folder for folder in _step_dirs(Path(out)) if not (folder / STATE_FILE).is_file()]


def _rename_away(folder: Path) -> Path:
    # Rename before deleting: a half-deleted folder must never sit under a step-XXXXXX name.
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    return trash


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(folder)


_PLAIN = (torch.Tensor, int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def _check_loadable(value: Any, where: str) -> None:
    """Fail at the first save, not at resume hours later, when `state` holds what weights_only refuses."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_loadable(key, where)
            _check_loadable(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        for index, item in enumerate(value):
            _check_loadable(item, f"{where}[{index}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(
            f"{where} is a {type(value).__name__}; checkpoint state must be tensors, numbers, "
            "strings, None, lists, tuples and dicts"
        )


# --- RNG state ----------------------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """Every RNG a run draws from (python, numpy, torch CPU/CUDA/MPS), as weights_only-loadable data."""
    version, internal, gauss_next = random.getstate()
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo `capture_rng_state`: the next draws repeat the ones made after the capture."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        count = min(len(state["cuda"]), torch.cuda.device_count())
        torch.cuda.set_rng_state_all(state["cuda"][:count])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])
