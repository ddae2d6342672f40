"""Key paths: tuples of table keys and array indices, printed in the user's spelling."""

from __future__ import annotations

KeyPath = tuple  # tuple[str | int, ...]


def dotted(path: KeyPath) -> str:
    """("datasets", 0, "repeats") -> "datasets[0].repeats"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + (part if _bare(part) else f'"{part}"')
    return out


def table_label(path: KeyPath) -> str:
    """How to name a table in a message: "[optimizer]", "datasets[0]", or "the top level"."""
    if not path:
        return "the top level"
    text = dotted(path)
    return text if any(isinstance(p, int) for p in path) else f"[{text}]"


def _bare(key: str) -> bool:
    return bool(key) and all(c.isalnum() or c in "-_" for c in key)


def has_path(data: dict, path: KeyPath) -> bool:
    """Does `path` exist in the TOML data (tables by key, arrays by index)?"""
    node = data
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return False
        elif not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
