"""`metadata = "meta.json"`: kohya's fine-tuning dataset (FineTuningDataset, `--in_json` / a subset's
`metadata_file`), its images and captions read from the metadata file at plan time.

kohya (library/train_util.py FineTuningDataset.__init__, sd-scripts 48d368f):
- the file is JSON, `{image key: {"caption": ..., "tags": ..., "image_size": [w, h], ...}}`, or, when its name
  ends in `.jsonl`, one `{"image_path", "caption", "tags", "image_size"}` object per line;
- an absolute key is the image; a relative key is `os.path.join(image_dir, key)`;
- the caption is `caption` (None -> ""), then, with tags, `caption + caption_separator + tags` (tags alone
  when the caption is empty); with enable_wildcard every non-empty caption line gets `caption_separator +
  tags` (tags with newlines replaced by the separator);
- every image repeats `num_repeats` times; buckets are made as for DreamBooth folders (make_buckets), from
  `image_size` where given, else the image. `train_resolution` (prepare_buckets_latents.py) is no longer read
  (since kohya's #2186, 2026-01); `.npz` latents are ignored here: dbspec caches its own.

One difference: a relative key without an image extension (merge_captions_to_metadata.py and
merge_dd_tags_to_metadata.py write the file stem unless `--full_path`) is found as kohya's FineTuningDataset
found it before #2186 (glob_images: `<image_dir>/<key><ext>`), where kohya's current one cannot open it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from dbspec.compiler.context import Context
from dbspec.spec.model import Dataset

# kohya's glob_images tries its IMAGE_EXTENSIONS in this order (lower case, then upper case)
_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LISTED = 10  # missing images named in one diagnostic


class Entry(NamedTuple):
    key: str
    path: str  # the image file, absolute
    rel: str  # relative to the dataset folder when inside it, else the absolute path
    caption: str
    image_size: tuple[int, int] | None


def metadata_entries(ctx: Context, i: int, d: Dataset) -> list[Entry] | None:
    """The images of a metadata dataset in the file's order, each with its kohya caption; None (reported)
    when the file cannot be used or an image is missing."""
    file = ctx.resolve(d.metadata)
    at = ("datasets", i, "metadata")
    raw = _load(ctx, d, file, at)
    if raw is None:
        return None
    folder = ctx.resolve(d.path)
    entries, missing = [], []
    for key, md in raw:
        path = image_path(folder, key)
        if path is None:
            missing.append(key)
            continue
        rel = os.path.relpath(path, folder) if _inside(path, folder) else path
        entries.append(
            Entry(
                key=key,
                path=path,
                rel=Path(rel).as_posix(),
                caption=kohya_caption(md.get("caption"), md.get("tags"), d),
                image_size=tuple(md["image_size"]) if md.get("image_size") is not None else None,
            )
        )
    if missing:
        shown = ", ".join(f"`{k}`" for k in missing[:LISTED])
        more = f" and {len(missing) - LISTED} more" if len(missing) > LISTED else ""
        ctx.report(
            "DBS338",
            "error",
            f"dataset `{d.name}`: {len(missing)} image(s) listed in `{file}` not found: {shown}{more} "
            f"(relative keys are joined to `{folder}`; a key without extension is looked for as "
            f"<key>.png, .jpg, .jpeg, .webp, .bmp)",
            at,
            help="set the dataset's `path` to the folder the keys are relative to (kohya's "
            "--train_data_dir / image_dir), or fix the keys; kohya's .npz latents cannot stand in for images",
        )
        return None
    return entries


def kohya_caption(caption: object, tags: object, d: Dataset) -> str:
    """FineTuningDataset's caption of one entry (caption and tags joined with caption_separator)."""
    text = caption if isinstance(caption, str) else ""
    sep = d.caption_separator
    if d.enable_wildcard:
        if isinstance(tags, str):
            tags = tags.replace("\n", sep)
            return "\n".join(f"{line}{sep}{tags}" for line in text.split("\n") if line.strip() != "")
        return text
    if isinstance(tags, str) and tags:
        return f"{text}{sep}{tags}" if text else tags
    return text


def size_mismatches(entries: list[Entry], sizes: dict[str, tuple[int, int]]) -> list[str]:
    """Entries whose `image_size` is not their file's stored size (kohya buckets by `image_size`)."""
    return [
        f"`{e.key}` says {e.image_size[0]}x{e.image_size[1]}, the file is "
        f"{sizes[Path(e.path).as_posix()][0]}x{sizes[Path(e.path).as_posix()][1]}"
        for e in entries
        if e.image_size is not None
        and Path(e.path).as_posix() in sizes
        and e.image_size != sizes[Path(e.path).as_posix()]
    ]


def _load(ctx: Context, d: Dataset, file: Path, at: tuple) -> list[tuple[str, dict]] | None:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        _bad(ctx, d, file, at, "does not exist", help="check the path (relative to the spec file)")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        _bad(ctx, d, file, at, f"cannot be read: {exc}")
        return None
    try:
        return parse_metadata(text, file.name)
    except ValueError as exc:
        _bad(ctx, d, file, at, str(exc))
        return None


def parse_metadata(text: str, name: str) -> list[tuple[str, dict]]:
    """The (image key, entry) pairs of a metadata file's text, as kohya reads them (JSON Lines when the name
    ends in `.jsonl`); ValueError saying what is wrong (the file "...")."""
    try:
        if name.endswith(".jsonl"):  # kohya: metadata_file.endswith(".jsonl")
            lines: dict[str, dict] = {}  # kohya: metadata[image_path] = entry (a repeated path: the last)
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                md = json.loads(line)
                if not isinstance(md, dict) or not isinstance(md.get("image_path"), str):
                    raise ValueError(f"line {number} is not an object with an `image_path` string")
                entry = {"caption": md.get("caption", "")}
                for key in ("image_size", "tags"):
                    if key in md:
                        entry[key] = md[key]
                lines[md["image_path"]] = entry
            items = list(lines.items())
        else:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("is not a JSON object of `image key: {caption, tags}` entries")
            items = list(data.items())
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON: {exc}") from None
    if not items:
        raise ValueError("lists no image (kohya skips such a subset)")
    for key, md in items:
        problem = _shape_problem(md)
        if problem:
            raise ValueError(f"the entry `{key}` {problem}")
    return items


def _shape_problem(md: object) -> str:
    if not isinstance(md, dict):
        return 'is not an object (`{"caption": ..., "tags": ...}`)'
    for key in ("caption", "tags"):
        if md.get(key) is not None and not isinstance(md[key], str):
            return f"has a `{key}` that is not a string"
    size = md.get("image_size")
    if size is not None and not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in size)
    ):
        return "has an `image_size` that is not [width, height]"
    return ""


def image_path(folder: Path, key: str) -> str | None:
    """kohya's abs_path (an absolute key, else image_dir joined with it), else `<that><ext>` for a key
    without an image extension; None when neither is a file."""
    path = Path(key) if os.path.isabs(key) else folder / key
    if path.is_file():
        return str(path)
    if path.suffix.lower() not in _EXTENSIONS:
        for ext in (*_EXTENSIONS, *(e.upper() for e in _EXTENSIONS)):
            candidate = path.with_name(path.name + ext)
            if candidate.is_file():
                return str(candidate)
    return None


def _inside(path: str, folder: Path) -> bool:
    try:
        Path(path).relative_to(folder)
    except ValueError:
        return False
    return True


def _bad(ctx: Context, d: Dataset, file: Path, at: tuple, what: str, help: str = "") -> None:
    ctx.report(
        "DBS337",
        "error",
        f"dataset `{d.name}`: metadata file `{file}` {what}",
        at,
        help=help
        or "write it as kohya's finetune/merge_captions_to_metadata.py does: "
        '{"image key": {"caption": "...", "tags": "..."}, ...}',
    )
