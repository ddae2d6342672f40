"""A --network_weights file that is not on this machine or cannot be read here: every reader of it (the ranks
of --dim_from_weights, DyLoRA's alphas) reports that alike, as unreadable (DBS401: convert where the file
is), not as something dbspec does not express; a file that is here and read, but of a layout dbspec cannot
use, stays each reader's own refusal (DBS403)."""

from __future__ import annotations

from pathlib import Path

from dbspec.convert.common.core import Conversion, Legacy


def not_here(local: Path | None, exc: BaseException) -> str:
    """Why the file `local` (None: a path of another machine) could not be read here, or "" when `exc` is
    about its content (read_safetensors_header wraps the OSError of a file it cannot open)."""
    if local is None:
        return "a Windows path, not on this machine"
    if not local.is_file():
        return "not on this machine"
    if isinstance(exc, OSError) or isinstance(exc.__cause__, OSError):
        return f"it cannot be read here ({exc})"
    return ""


def report_weights(
    weights: Legacy, local: Path | None, exc: BaseException, need: str, conv: Conversion
) -> bool:
    """Reports `weights` unreadable (`need`: what reads the file) when `exc` came of a file that is not
    here or cannot be read; True when it did, False when the caller reports its own refusal."""
    why = not_here(local, exc)
    if why:
        conv.unreadable(weights, f"{need}: {why}")
    return bool(why)
