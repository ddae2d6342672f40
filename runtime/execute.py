"""`execute(plan)`: the runtime's entry point. Runtime failures come back as RunError naming the spec line."""

from __future__ import annotations

from dbspec.plan.model import Plan
from dbspec.runtime.blocks import BlocksError
from dbspec.runtime.cache import CacheWriteError
from dbspec.runtime.checkpoints import OutputError
from dbspec.runtime.data import DataError
from dbspec.runtime.loop import NonFiniteLoss, RunResult, train
from dbspec.runtime.models import ModelLoadError
from dbspec.runtime.optim import OptimizerError
from dbspec.runtime.device import DeviceError
from dbspec.runtime.wandb_log import WandbError


class RunError(Exception):
    """A run that cannot go on: `message` says why, `where` points at the spec value behind it. `peer`: this
    process stops because another one failed (that one reports the cause)."""

    def __init__(self, message: str, where: str = "", hint: str = "", *, peer: bool = False):
        self.message, self.where, self.hint, self.peer = message, where, hint, peer
        super().__init__(message)


# What gloo raises in a collective whose peer process ended (its sockets closed); NCCL words it otherwise.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote worker crash")


def peer_failed(exc: BaseException) -> bool:
    """Whether `exc` is a collective failing because another process of the run ended (it failed, or the
    launcher stopped it), rather than this process's own problem."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    text = str(exc)
    return isinstance(exc, (RuntimeError, dist.DistError)) and any(gone in text for gone in _PEER_GONE)


def quiet_libraries() -> None:
    """Our progress bars and messages replace the libraries' own (weight-shard bars, torchvision notices)."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def execute(
    plan: Plan,
    *,
    overwrite: bool = False,
    resume: bool = False,
    console=None,
    stop_after: int | None = None,
    keep_models: bool = False,
) -> RunResult:
    quiet_libraries()
    try:
        return train(
            plan,
            overwrite=overwrite,
            resume=resume,
            console=console,
            stop_after=stop_after,
            keep_models=keep_models,
        )
    except DataError as exc:
        raise RunError(
            str(exc), _dataset_origin(plan, exc.path), "fix or remove the file, then run again with --resume"
        ) from exc
    except BlocksError as exc:
        raise RunError(str(exc), _origin(plan, exc.key)) from exc
    except NonFiniteLoss as exc:
        raise RunError(
            str(exc),
            _origin(plan, "optimizer.lr"),
            'the last good checkpoint is intact; lower optimizer.lr or use mixed = "bf16"/"no", then resume',
        ) from exc
    except (ModelLoadError, DeviceError, OutputError, OptimizerError, CacheWriteError, WandbError) as exc:
        key = {
            ModelLoadError: "model.base",
            OutputError: "output.dir",
            OptimizerError: "optimizer.kind",
            CacheWriteError: "cache.dir",
            WandbError: "logging.wandb",
        }
        raise RunError(str(exc), _origin(plan, key.get(type(exc), ""))) from exc
    except RuntimeError as exc:  # gloo's dead-peer errors (torch's DistError is a RuntimeError)
        if peer_failed(exc):  # the process that failed names the cause; this one only stops
            raise RunError(f"stopped: another process failed ({_first_line(exc)})", peer=True) from exc
        raise


def _first_line(exc: BaseException) -> str:
    """What this process's collective reported (gloo: which connection closed), short: when no process
    names another cause (one was killed, or crashed in native code), this is the failure's only trace."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def _origin(plan: Plan, key: str) -> str:
    origin = plan.origins.get(key)  # noqa: SIM401 - plan data, not user config
    return origin.where if origin is not None else ""


def _dataset_origin(plan: Plan, path: str) -> str:
    for i, d in enumerate(plan.datasets):
        if any(img.path == path or img.mask == path for img in d.images):
            return _origin(plan, f"datasets[{i}].path")
    return ""
