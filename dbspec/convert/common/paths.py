"""Legacy paths -> spec paths.

Legacy tools resolve relative paths against the folder they ran in (`cwd`); a spec resolves them against its
own folder. So a relative legacy path is resolved against `cwd`, then written relative to the output spec's
folder; an absolute one is written as it is.
Windows paths (`C:\\data\\10_sks dog`, `\\\\server\\share`) cannot be resolved on another OS: they are written
verbatim (absolute) and read as missing here. A relative path with backslashes and no slash is taken to use
Windows separators.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PureWindowsPath

import attrs

_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\[^\\])")


def is_windows_absolute(path: str) -> bool:
    return bool(_WINDOWS_ABSOLUTE.match(path))


@attrs.frozen(kw_only=True)
class PathMapper:
    cwd: Path  # where the legacy tool ran (absolute)
    out_dir: Path  # the folder of the spec being written (absolute)

    def foreign(self, path: str) -> bool:
        """A Windows path while running elsewhere: kept verbatim, never read here."""
        return os.name != "nt" and is_windows_absolute(path)

    def local(self, path: str) -> Path | None:
        """Where `path` is on this machine, or None when it cannot be here."""
        if self.foreign(path):
            return None
        p = Path(_separators(path)).expanduser()
        return p if p.is_absolute() else (self.cwd / p)

    def for_spec(self, path: str) -> str:
        """The spec's spelling of `path`: a relative legacy path becomes relative to the spec's folder; an
        absolute one stays absolute (the author pinned it; the spec may move)."""
        if self.foreign(path):
            return path
        local = self.local(path)
        assert local is not None
        target = Path(os.path.normpath(local))
        if Path(_separators(path)).expanduser().is_absolute():
            return target.as_posix()
        try:
            rel = os.path.relpath(target, self.out_dir)
        except ValueError:  # another drive on Windows
            return target.as_posix()
        return Path(rel).as_posix()

    def name_of(self, path: str) -> str:
        """The last path component, for Windows paths too."""
        if self.foreign(path):
            return PureWindowsPath(path).name
        return Path(_separators(path)).name


def _separators(path: str) -> str:
    if "\\" in path and "/" not in path and not is_windows_absolute(path):
        return path.replace("\\", "/")
    return path


_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def model_path(value: str, paths: PathMapper) -> str:
    """A hub id stays as written; an existing path, an absolute path or a weights file is a path."""
    local = paths.local(value)
    is_path = (
        local is None
        or local.exists()
        or value.startswith((".", "/", "~"))
        or value.lower().endswith(_FILE_SUFFIXES)
        or value.count("/") > 1
        or "\\" in value
    )
    return paths.for_spec(value) if is_path else value
