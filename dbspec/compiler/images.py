"""Scan a dataset folder: every image that will train, with its size and content hash, and every problem file.

Cost model (why it is fast): one `os.scandir` walk, one `stat` per file, each file's bytes read once
(imagecache.probe_file: hash and header parse from the same bytes, no pixel decode). Facts are cached
per file, so an unchanged dataset re-scans with a stat per file and no read at all; the cache file
is written once, at the end, and only when something changed.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal, NamedTuple

import attrs
from PIL import Image

from dbspec import codes
from dbspec.compiler import imagecache
from dbspec.compiler.imagecache import FileFacts, bad_facts, probe_file
from dbspec.diagnostics import Diagnostic, error, warning

OnBad = Literal["error", "skip"]
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
# Files kept beside images that are not meant to train: captions, and the sidecars kohya (.npz latents, .json
# metadata) and other trainers (.toml) write. Never listed as unusable; a dataset adds its caption_extension.
SIDECAR_EXTENSIONS = (".txt", ".caption", ".json", ".npz", ".toml")
_SKIP_HINT = 'set `on_bad_image = "skip"` in this dataset to leave such files out'


class ImageInfo(NamedTuple):  # NamedTuple, not attrs: one per file per scan, built several times faster
    path: str  # absolute POSIX path
    rel: str  # POSIX path relative to the scanned folder
    width: int  # after EXIF orientation
    height: int
    orientation: int  # EXIF orientation tag (1 if none)
    mode: str
    has_alpha: bool  # alpha channel, or a palette/colour-key transparency
    bytes: int
    stamp: str  # file_stamp(stat): what must be unchanged for cached facts to hold
    sha: str  # blake2b(digest_size=16) of the file's bytes, hex
    frames: int  # more than 1: animated, only the first frame trains


@attrs.frozen(kw_only=True)
class ScanResult:
    images: tuple[ImageInfo, ...]  # usable images, sorted by `rel`
    diagnostics: tuple[Diagnostic, ...]
    cache_hits: int
    cache_misses: int  # files whose bytes were read
    unusable: tuple[
        str, ...
    ] = ()  # relative paths of files that are neither images dbspec reads nor sidecars


class _Found(NamedTuple):
    """One listed image file: its stat, or why it could not be stat'ed (a tuple: made per file, warm path)."""

    rel: str
    path: str
    size: int = 0
    stamp: str = ""
    broken: str = ""  # reason the file cannot be read at all


def scan_folder(
    folder: Path,
    *,
    recursive: bool,
    min_size: int,
    on_bad: OnBad,
    cache_dir: Path | None,
    key_path: str,
    max_pixels: int | None = None,
    sidecars: tuple[str, ...] = SIDECAR_EXTENSIONS,
) -> ScanResult:
    """List the images of `folder` with sizes and hashes; problem files become diagnostics.

    `on_bad`: "error" reports problem files as errors, "skip" as warnings; either way they are left
    out of `images`. `max_pixels` defaults to Pillow's `Image.MAX_IMAGE_PIXELS` (None there: no limit).
    Other files (a .gif, a .heic) are listed in `unusable`, except hidden ones and names ending in `sidecars`.
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', not {on_bad!r}")
    root = os.path.abspath(folder)
    found, unusable, walk_errors = _walk(root, recursive, key_path, tuple(e.lower() for e in sidecars))
    if found is None:
        return ScanResult(images=(), diagnostics=tuple(walk_errors), cache_hits=0, cache_misses=0)
    cache_file = imagecache.cache_file_for(cache_dir, _posix(root)) if cache_dir is not None else None
    old = imagecache.load_entries(cache_file, _posix(root)) if cache_file is not None else {}
    new = {} if recursive else _out_of_scope(old, _posix(root))
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    images, problems, hits, misses = _probe_all(found, old, new, min_size, limit)
    diagnostics = walk_errors + _file_diagnostics(problems, root, on_bad, key_path)
    # Without misses, `new` holds a subset of `old`'s entries, unchanged: equal exactly when
    # no entry was dropped.
    if cache_file is not None and (misses or len(new) != len(old)):
        imagecache.save_entries(cache_file, _posix(root), new)
    if not images and not any(d.severity == "error" for d in diagnostics):
        diagnostics.append(_no_images(root, bool(found), recursive, key_path))
    return ScanResult(
        images=tuple(images),
        diagnostics=tuple(diagnostics),
        cache_hits=hits,
        cache_misses=misses,
        unusable=tuple(unusable),
    )


def scan_files(
    files: list[tuple[str, str]],
    *,
    label: str,
    min_size: int,
    on_bad: OnBad,
    cache_dir: Path | None,
    key_path: str,
) -> ScanResult:
    """`scan_folder` for a list of (rel, absolute path) image files, kept in that order (a metadata file's
    images); `label` names them in grouped diagnostics and keys their cache file. A file that is not there
    is a DBS303 problem; no DBS302 when nothing is usable (the caller says what the list was)."""
    found = []
    for rel, path in files:
        try:
            st = os.stat(path)
        except OSError as e:
            found.append(_Found(rel=rel, path=_posix(path), broken=f"cannot be read ({e.strerror or e})"))
            continue
        found.append(_Found(rel=rel, path=_posix(path), size=st.st_size, stamp=imagecache.file_stamp(st)))
    cache_file = imagecache.cache_file_for(cache_dir, label) if cache_dir is not None else None
    old = imagecache.load_entries(cache_file, label) if cache_file is not None else {}
    new: imagecache.Entries = {}
    images, problems, hits, misses = _probe_all(found, old, new, min_size, Image.MAX_IMAGE_PIXELS)
    if cache_file is not None and (misses or len(new) != len(old)):
        imagecache.save_entries(cache_file, label, new)
    return ScanResult(
        images=tuple(images),
        diagnostics=tuple(_file_diagnostics(problems, label, on_bad, key_path)),
        cache_hits=hits,
        cache_misses=misses,
    )


def _probe_all(
    found: list[_Found], old: imagecache.Entries, new: imagecache.Entries, min_size: int, limit: int | None
) -> tuple[list[ImageInfo], list[tuple[str, str, str]], int, int]:
    """The usable images, the problem files (code, rel, reason), cache hits and misses; `new` gets the
    entries to store."""
    images: list[ImageInfo] = []
    problems: list[tuple[str, str, str]] = []  # (code, rel, reason) per problem file
    hits = misses = 0
    with warnings.catch_warnings():
        # Pillow warns about the very files we report (bombs, odd EXIF); the diagnostics say it once.
        warnings.simplefilter("ignore")
        for item in found:
            info = _cached_image(item, old, min_size, limit)
            if info is not None:  # the warm path: a valid, unchanged, unproblematic cached file
                hits += 1
                new[item.path] = old[item.path]
                images.append(info)
                continue
            facts, cached = _facts(item, old, new)
            hits, misses = hits + (cached is True), misses + (cached is False)
            problem, reason = _problem(facts, min_size, limit)
            if problem:
                problems.append((problem, item.rel, reason))
            else:
                images.append(_image_info(item, facts))
    return images, problems, hits, misses


def _cached_image(
    item: _Found, old: imagecache.Entries, min_size: int, limit: int | None
) -> ImageInfo | None:
    """The ImageInfo straight from a cache entry when nothing needs looking at (one call per file, warm)."""
    entry = old.get(item.path)
    if (
        type(entry) is not list
        or len(entry) != imagecache.ENTRY_LENGTH
        or entry[0] != item.size
        or entry[1] != item.stamp
        or not item.size
        or item.broken
        or entry[8]
    ):
        return None
    _, _, width, height, orientation, mode, has_alpha, sha, _, _, frames = entry
    if (
        type(width) is not int
        or type(height) is not int
        or type(orientation) is not int
        or type(mode) is not str
        or type(has_alpha) is not bool
        or type(sha) is not str
        or type(frames) is not int
        or min(width, height) < min_size
        or (limit is not None and width * height > limit)
    ):
        return None  # the slow path validates the entry fully and reports the problem
    return ImageInfo(
        item.path, item.rel, width, height, orientation, mode, has_alpha, item.size, item.stamp, sha, frames
    )


def _facts(item: _Found, old: imagecache.Entries, new: imagecache.Entries) -> tuple[FileFacts, bool | None]:
    """A file's facts and whether they came from the cache (None: known without reading it).

    Records each read or cached file's entry in `new`, the cache as it will be written.
    """
    facts = _zero_or_broken(item)
    if facts is not None:
        return facts, None
    facts = imagecache.lookup(old, item.path, item.size, item.stamp)
    if facts is not None:
        new[item.path] = old[item.path]
        return facts, True
    facts = probe_file(item.path)
    new[item.path] = imagecache.make_entry(item.size, item.stamp, facts)
    return facts, False


def _zero_or_broken(item: _Found) -> FileFacts | None:
    """Facts known without reading the file (not cached: they cost nothing)."""
    if item.broken:
        problem, reason = "DBS303", item.broken
    elif item.size == 0:
        problem, reason = "DBS304", "is empty (0 bytes)"
    else:
        return None
    return bad_facts(problem, reason)


def _problem(facts: FileFacts, min_size: int, max_pixels: int | None) -> tuple[str, str]:
    """The file's own problem, else the policy checks (which depend on arguments, so are not cached)."""
    if facts.problem:
        return facts.problem, facts.reason
    if max_pixels is not None and facts.width * facts.height > max_pixels:
        pixels = facts.width * facts.height
        return (
            "DBS307",
            f"has {pixels} pixels, more than the limit of {max_pixels} (possible decompression bomb)",
        )
    short = min(facts.width, facts.height)
    if short < min_size:
        size = f"{facts.width}x{facts.height}"
        return "DBS306", f"is {size}: its short side {short} is below min_image_size = {min_size}"
    return "", ""


def _walk(
    root: str, recursive: bool, key_path: str, sidecars: tuple[str, ...]
) -> tuple[list[_Found] | None, list[str], list[Diagnostic]]:
    """Image files under `root` and the unusable files' relative paths, each sorted; None (and DBS301) when
    `root` cannot be listed."""
    if not os.path.isdir(root):
        what = "is not a folder" if os.path.exists(root) else "does not exist"
        return None, [], [_folder_error(root, what, key_path)]
    found: list[_Found] = []
    unusable: list[str] = []
    problems: list[Diagnostic] = []
    pending = [("", root)]
    while pending:
        prefix, directory = pending.pop()
        try:
            with os.scandir(directory) as listing:
                for entry in listing:
                    if not _visit(entry, prefix, recursive, found, pending):
                        _note_unusable(entry, prefix, sidecars, unusable)
        except OSError as e:
            failure = _folder_error(directory, f"cannot be read ({e.strerror or e})", key_path)
            if directory == root:
                return None, [], [failure]
            problems.append(failure)
    found.sort(key=lambda item: item.rel)
    unusable.sort()
    return found, unusable, problems


def _visit(entry: os.DirEntry, prefix: str, recursive: bool, found: list[_Found], pending: list) -> bool:
    """Lists an image file or queues a folder; False for a name this does not look at (maybe unusable)."""
    name = entry.name
    if name.startswith("."):  # hidden files and folders (.git, .DS_Store, editor backups)
        return True
    rel = prefix + name
    is_image_name = "." + name.rpartition(".")[2].lower() in IMAGE_EXTENSIONS
    if not is_image_name:
        if recursive and entry.is_dir(follow_symlinks=False):  # never follow folder links: no cycles
            pending.append((rel + "/", entry.path))
            return True
        return False
    try:
        is_file = entry.is_file()
    except OSError as e:  # a symbolic link loop (ELOOP): name the link, never fail the whole folder
        found.append(_Found(rel=rel, path=_posix(entry.path), broken=f"cannot be read ({e.strerror or e})"))
        return True
    if is_file:
        try:
            st = entry.stat()
        except OSError as e:  # vanished or unreadable between listing and stat
            found.append(
                _Found(rel=rel, path=_posix(entry.path), broken=f"cannot be read ({e.strerror or e})")
            )
            return True
        found.append(
            _Found(rel=rel, path=_posix(entry.path), size=st.st_size, stamp=imagecache.file_stamp(st))
        )
    elif recursive and entry.is_dir(follow_symlinks=False):  # never follow folder links: no cycles
        pending.append((rel + "/", entry.path))
    elif entry.is_symlink() and not entry.is_dir():
        found.append(_Found(rel=rel, path=_posix(entry.path), broken="is a broken symbolic link"))
    return True


def _note_unusable(entry: os.DirEntry, prefix: str, sidecars: tuple[str, ...], unusable: list[str]) -> None:
    """A regular file (or a link to one) that is neither an image dbspec reads nor a sidecar: it will not
    train, and the user should know (a folder of .heic photos is not an empty dataset by intent)."""
    if entry.name.lower().endswith(sidecars):
        return
    try:
        if entry.is_file():  # d_type from the listing: no extra system call on most file systems
            unusable.append(prefix + entry.name)
    except OSError:
        pass  # a link loop with an odd name: nothing would read it anyway


def _out_of_scope(entries: imagecache.Entries, root: str) -> imagecache.Entries:
    """Entries in sub-folders, kept by a non-recursive scan that did not look at them."""
    start = len(root) + 1
    return {path: entry for path, entry in entries.items() if "/" in path[start:]}


def _image_info(item: _Found, facts: FileFacts) -> ImageInfo:
    # Positional: the field order of ImageInfo (per file, per scan; keyword construction costs more).
    return ImageInfo(
        item.path,
        item.rel,
        facts.width,
        facts.height,
        facts.orientation,
        facts.mode,
        facts.has_alpha,
        item.size,
        item.stamp,
        facts.sha,
        facts.frames,
    )


GROUP_AT = 4  # this many files with one problem in one folder become one diagnostic listing them
LISTED = 20  # files named in a grouped diagnostic; the count says how many more


def _file_diagnostics(
    problems: list[tuple[str, str, str]], root: str, on_bad: OnBad, key_path: str
) -> list[Diagnostic]:
    """One diagnostic per problem file, or one per code when many files share it (10,000 empty files are one
    block, not 10,000)."""
    by_code: dict[str, list[tuple[str, str]]] = {}
    for code, rel, reason in problems:
        by_code.setdefault(code, []).append((rel, reason))
    out = []
    for code, rel, reason in problems:  # file order; a grouped code stands where its first file would
        files = by_code[code]
        if len(files) < GROUP_AT:
            out.append(_file_diagnostic(code, f"image `{rel}` {reason}", (), on_bad, key_path))
        elif files[0][0] == rel:
            notes = tuple(f"`{name}` {why}" for name, why in files[:LISTED])
            more = (f"... and {len(files) - LISTED} more",) if len(files) > LISTED else ()
            message = f"{len(files)} images in `{_posix(root)}` have this problem ({code})"
            out.append(_file_diagnostic(code, message, notes + more, on_bad, key_path))
    return out


def _file_diagnostic(
    code: str, message: str, notes: tuple[str, ...], on_bad: OnBad, key_path: str
) -> Diagnostic:
    if on_bad == "skip":
        return warning(code, message, path=key_path, notes=notes + ('left out (on_bad_image = "skip")',))
    return error(code, message, path=key_path, help=f"{codes.help(code)}; {_SKIP_HINT}", notes=notes)


def _folder_error(folder: str, what: str, key_path: str) -> Diagnostic:
    return error(
        "DBS301",
        f"dataset folder `{_posix(folder)}` {what}",
        path=key_path,
        help="check the path; relative paths resolve against the spec file's folder",
    )


def _no_images(root: str, any_listed: bool, recursive: bool, key_path: str) -> Diagnostic:
    if any_listed:
        return error(
            "DBS302",
            f"dataset folder `{_posix(root)}` has no usable images: every one was skipped",
            path=key_path,
            help="fix or replace the skipped images listed above",
        )
    exts = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
    notes = () if recursive else ("sub-folders are not scanned unless `recursive = true`",)
    return error(
        "DBS302",
        f"dataset folder `{_posix(root)}` has no images ({exts})",
        path=key_path,
        notes=notes,
        help="put images in the folder, or point `path` at the folder that holds them",
    )


def _posix(path: str) -> str:
    return path if os.sep == "/" else path.replace(os.sep, "/")
