"""peft's target-name rule on module paths, for the compiler, the converters and the runtime alike."""

from __future__ import annotations

from collections.abc import Collection, Iterable


def targeted(path: str, targets: Collection[str]) -> bool:
    """peft's rule for a list of target names: the module path is one of them or ends with `.<name>`.
    A lookup per dotted suffix of the path, not a scan of the targets (a set's lookups are constant)."""
    if path in targets:
        return True
    dot = path.find(".")
    while dot != -1:
        if path[dot + 1 :] in targets:
            return True
        dot = path.find(".", dot + 1)
    return False


def suffixes(paths: Iterable[str]) -> frozenset[str]:
    """Every target name that picks one of `paths` by `targeted`'s rule: each path's dotted suffixes."""
    out: set[str] = set()
    for path in paths:
        parts = path.split(".")
        out.update(".".join(parts[-n:]) for n in range(1, len(parts) + 1))
    return frozenset(out)
