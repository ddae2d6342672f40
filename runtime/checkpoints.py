"""The run's output folder: plan.json, atomic checkpoints with a `latest` pointer, and weight writers.

```
<out>/run.json, .dbspec.lock    dbspec's run marker and the run's lock (see outdir.py)
<out>/plan.json                 the plan that produced this run
<out>/checkpoints/step-000030/  one complete checkpoint: weights + training_state.pt
<out>/checkpoints/latest        names the newest complete checkpoint folder; replaced atomically
<out>/final/                    the final weights (same format as a checkpoint's weights)
```
A checkpoint is written into a hidden temp folder and renamed into place, so a step folder that exists
is complete; `latest` moves only after that, and pruning happens last and never touches `latest`.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from dbspec.families import FAMILIES, Family, family_spec
from dbspec.plan.io import run_differences
from dbspec.runtime import faults
from dbspec.runtime.dtypes import to_dtype
from dbspec.runtime.outdir import STEP_DIR as _STEP_DIR
from dbspec.runtime.outdir import fsync_dir as _fsync_dir
from dbspec.runtime.outdir import OutputError, prepare_output  # noqa: F401 - the output folder's API, re-exported
from dbspec.util.atomic import write_text_atomic

STATE_FILE = "training_state.pt"
LATEST_FILE = "latest"


# --- checkpoints ----------------------------------------------------------------------------------------------
def save_checkpoint(
    out: Path, step: int, *, weights: Callable[[Path], None], state: dict[str, Any], keep: int
) -> Path:
    """Write checkpoint `step` (weights via the callback, `state` via torch.save), point `latest` at it,
    then prune to the newest `keep` (0 keeps all). A failure leaves no step folder and `latest` unchanged."""
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
    _prune(root, keep, final)
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


def load_state(folder: Path) -> dict[str, Any]:
    """The training state saved with a checkpoint, on CPU. weights_only=True is safe and sufficient:
    `save_checkpoint` only accepts plain data (RNG states included, see `capture_rng_state`)."""
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def resume_state(
    out: Path, run_hash: str, plan_json: str, legacy: tuple[str, ...] = ()
) -> dict[str, Any] | None:
    """The state of the checkpoint to resume from (None when there is none), refused (OutputError) unless
    this run saved it: run.json vouches for the folder, not for checkpoints copied in from another run. `legacy`:
    the hashes this run had under older plan versions (a checkpoint an older dbspec saved)."""
    folder = latest_checkpoint(out)
    if folder is None:
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
    """Keep the newest `keep` step folders (leftovers of killed runs are `outdir.recover`'s, at start)."""
    if keep <= 0:
        return
    for folder in _step_dirs(root.parent)[:-keep]:
        if folder != latest:
            shutil.rmtree(_rename_away(folder), ignore_errors=True)


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


# --- RNG state ------------------------------------------------------------------------------------------------
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


# --- weight writers -------------------------------------------------------------------------------------------
def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    return to_dtype(dtype)


def save_full_weights(
    folder: Path, unet: nn.Module | None, text_encoders: dict[str, nn.Module] | None, dtype: str | torch.dtype
) -> None:
    """`save_pretrained` (safetensors) of each trained component into `folder/<name>/`, cast to `dtype`.

    Saving never needs a second copy of the model in accelerator memory; the live modules are untouched.
    """
    components = {"unet": unet, **(text_encoders or {})}
    for name, module in components.items():
        if module is not None:
            _cast_copy(module, torch_dtype(dtype)).save_pretrained(
                Path(folder) / name, safe_serialization=True
            )


def _cast_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A save-only copy: built on the meta device, filled from a cast CPU state dict. Non-persistent
    buffers (CLIP's position_ids) stay on meta: save_pretrained writes the state dict only."""
    cast = {
        key: value.detach().to("cpu", dtype if value.is_floating_point() else value.dtype, copy=True)
        for key, value in module.state_dict().items()
    }
    build = getattr(
        type(module), "from_config", type(module)
    )  # diffusers: from_config; transformers: __init__
    with torch.device("meta"):
        copy = build(module.config)
    copy.load_state_dict(cast, assign=True, strict=True)
    return copy


def save_lora_weights(
    folder: Path,
    unet: nn.Module | None,
    text_encoder: nn.Module | None,
    dtype: str | torch.dtype,
    *,
    family: Family,
    text_encoder_2: nn.Module | None = None,
) -> Path:
    """`pytorch_lora_weights.safetensors` in diffusers' format (as examples/dreambooth/train_dreambooth_lora.py
    writes it), with each adapter's LoraConfig as metadata so `pipe.load_lora_weights(folder)` restores
    rank, alpha and targets exactly. Modules are peft-adapted (`inject_lora` or `get_peft_model`) or None."""
    import diffusers

    spec = family_spec(family)
    if text_encoder_2 is not None and len(spec.text_encoders) < 2:
        two = ", ".join(name for name, f in FAMILIES.items() if len(f.text_encoders) > 1)
        raise ValueError(
            f"text_encoder_2 LoRA given for family {family!r}; only {two} has a second text encoder"
        )
    layers = {spec.denoiser: unet, **dict(zip(spec.text_encoder_names, (text_encoder, text_encoder_2)))}
    kwargs: dict[str, Any] = {}
    for name, module in layers.items():
        if module is not None:
            kwargs[f"{name}_lora_layers"], kwargs[f"{name}_lora_adapter_metadata"] = _diffusers_lora_layers(
                module, dtype
            )
    pipeline_class = getattr(diffusers, spec.pipeline_class)
    pipeline_class.save_lora_weights(Path(folder), safe_serialization=True, **kwargs)
    return Path(folder) / "pytorch_lora_weights.safetensors"


def _diffusers_lora_layers(
    module: nn.Module, dtype: str | torch.dtype
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The adapter's weights in diffusers' key layout, cast to `dtype`, and its LoraConfig as a dict."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from dbspec.runtime.adapters import lora_adapter

    found = lora_adapter(module)
    if found is None:
        raise ValueError("no LoRA adapter to save: the module carries no peft adapter")
    module, adapter = found
    state = get_peft_model_state_dict(module, adapter_name=adapter)
    cast = {key: value.detach().to("cpu", torch_dtype(dtype)).contiguous() for key, value in state.items()}
    return convert_state_dict_to_diffusers(cast), module.peft_config[adapter].to_dict()


def save_peft_adapters(folder: Path, modules: dict[str, nn.Module], dtype: str | torch.dtype) -> list[Path]:
    """LoHa and LoKr adapters (diffusers' LoRA format has no place for them) in peft's own layout, one folder per
    component: `<folder>/<component>/adapter_model.safetensors` + `adapter_config.json`, what
    `peft.set_peft_model_state_dict` and `PeftModel.from_pretrained` read. The kohya_lora export holds the same
    weights in the LyCORIS layout A1111 and ComfyUI load."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from dbspec.runtime.adapters import lora_adapter

    written = []
    for name, module in modules.items():
        found = lora_adapter(module)
        if found is None:
            raise ValueError(f"no adapter to save: {name} carries no peft adapter")
        plain, adapter = found
        state = get_peft_model_state_dict(plain, adapter_name=adapter)
        cast = {k: v.detach().to("cpu", torch_dtype(dtype)).contiguous() for k, v in state.items()}
        target = Path(folder) / name
        target.mkdir(parents=True, exist_ok=True)
        save_file(cast, str(target / "adapter_model.safetensors"), metadata={"format": "pt"})
        plain.peft_config[adapter].save_pretrained(str(target))
        written.append(target)
    return written


def load_peft_adapters(folder: Path, modules: dict[str, nn.Module]) -> list[str]:
    """Attach what `save_peft_adapters` wrote to the matching modules (by component name); the names loaded."""
    from peft import PeftConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    loaded = []
    for name, module in modules.items():
        source = Path(folder) / name
        if not (source / "adapter_config.json").exists():
            continue
        config = PeftConfig.from_pretrained(str(source))
        training = module.training
        inject_adapter_in_model(config, module, adapter_name="default")
        module.train(training)  # new layers start in training mode: rank/module dropout would stay on
        result = set_peft_model_state_dict(module, load_file(str(source / "adapter_model.safetensors")))
        missing = [k for k in result.missing_keys if any(m in k for m in ("lora_", "hada_", "lokr_"))]
        if result.unexpected_keys or missing:
            raise ValueError(
                f"{source}: adapter weights do not fit the model ({(result.unexpected_keys or missing)[0]})"
            )
        loaded.append(name)
    return loaded
