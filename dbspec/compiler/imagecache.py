"""Facts of one image file (read from its bytes without decoding pixels), and their per-folder cache.

The probe and the cache live together because a change to the checks must bump VERSION.
The cache lets re-planning an unchanged dataset open no image.

One JSON file per scanned folder (named by a hash of the folder's absolute path, so datasets never
rewrite each other's), mapping each image's absolute path to the facts its bytes gave last time.
An entry is reused only while the file's size and stamp (mtime, ctime and inode, as git's index
compares them) are unchanged: a picture replaced by another of the same size and mtime (`cp -p`,
`rsync -t`, `touch -r`) gets a new ctime or inode, which user programs cannot set back. The file is
a header line (format, versions, folder, and a hash of the entries' text) and the entries' JSON on the
next: an entry edited or damaged on disk fails the hash, and the whole file is rebuilt. Anything
unexpected (corrupt JSON, another version, malformed entry) means a miss and a rebuild, never a crash.
Written once per scan, atomically (temp file + os.replace), and only when something changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

from typing import NamedTuple

import PIL
from PIL import ExifTags, Image, UnidentifiedImageError

FORMAT = "dbspec-image-scan"
VERSION = 3  # 3: frames. Bump when FileFacts, the entry layout or the checks that produce them change

# A stored entry: [size, stamp, width, height, orientation, mode, has_alpha, sha, problem, reason, frames]
Entry = list
Entries = dict[str, Entry]
ENTRY_LENGTH = 11
_ENTRY_TYPES = (int, str, int, int, int, str, bool, str, str, str, int)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


class FileFacts(NamedTuple):
    """What one file's bytes say, independent of scan policy (min size, pixel limit, on_bad).

    A NamedTuple, not attrs: one is made per file on every scan, and tuples build several times faster.
    """

    width: int  # after EXIF orientation
    height: int
    orientation: int  # EXIF orientation, 1..8 (1 if none or invalid)
    mode: str
    has_alpha: bool
    sha: str  # blake2b(digest_size=16) of the bytes, hex
    problem: str = ""  # diagnostic code when the file is broken, "" when fine
    reason: str = ""  # what is wrong, in words ("is truncated: ...")
    frames: int = 1  # more than 1: an animation, of which only the first frame trains


def probe_image(data: bytes) -> FileFacts:
    """Facts of one image from its bytes: header only, no pixel decode (except rare PNGs,
    see _orientation)."""
    sha = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        reason = f"claims more pixels than Pillow will open, a possible decompression bomb ({e})"
        return bad_facts("DBS307", reason, sha)
    except UnidentifiedImageError:
        return bad_facts("DBS303", "is not an image Pillow can identify", sha)
    except Exception as e:  # noqa: BLE001 - plugins raise SyntaxError, struct.error, ValueError... on bad headers
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and _webp_declared(data) > len(data):
            reason = (
                f"is truncated: its header declares {_webp_declared(data)} bytes, the file has {len(data)}"
            )
            return bad_facts("DBS308", reason, sha)  # libwebp refuses to open a cut file
        return bad_facts("DBS303", f"has a corrupt header ({type(e).__name__}: {e})", sha)
    with im:
        try:
            cut, late_metadata = _truncation(im, data)
            if cut:
                return bad_facts("DBS308", f"is truncated: {cut}", sha)
            orientation = _orientation(im, late_metadata)
        except Exception as e:  # noqa: BLE001 - any failure reading a hostile file is that file's problem
            return bad_facts("DBS303", f"has corrupt data or metadata ({type(e).__name__}: {e})", sha)
        width, height = im.size
        if orientation >= 5:  # 5..8 turn the image a quarter: width and height swap
            width, height = height, width
        has_alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
        return FileFacts(
            width=width,
            height=height,
            orientation=orientation,
            mode=im.mode,
            has_alpha=has_alpha,
            sha=sha,
            frames=_frames(im),
        )


def _frames(im: Image.Image) -> int:
    """Frames of an animated PNG (APNG) or WebP, read from the header (acTL chunk, ANIM header: no decode).

    JPEGs are 1: a camera's MPO holds a preview or second view after the picture, not an animation.
    """
    if im.format not in ("PNG", "WEBP"):
        return 1
    frames = getattr(im, "n_frames", 1)
    return frames if type(frames) is int and frames > 1 else 1


def _truncation(im: Image.Image, data: bytes) -> tuple[str, bool]:
    """(why the data is cut short, or ""; whether PNG metadata chunks follow the pixel data).

    Costs: PNG walks the chunk headers (a few per file, no CRC check); JPEG walks the markers to
    the first scan, then searches backwards for EOI (immediate when the file ends with it); WebP
    and BMP compare the size the header declares with the file's. Other formats (a .png that holds
    a GIF, say) fall back to Pillow's verify(), which checks little for most of them.
    """
    n = len(data)
    if im.format == "PNG":
        complete, late_metadata = _png_chunks(data)
        return ("" if complete else "the PNG data ends before its IEND chunk"), late_metadata
    if im.format in ("JPEG", "MPO"):
        return (
            "" if _jpeg_complete(data) else "the JPEG data ends before its end-of-image marker (FFD9)"
        ), False
    if im.format == "WEBP":
        declared = _webp_declared(data)
        return ("" if n >= declared else f"its header declares {declared} bytes, the file has {n}"), False
    if im.format == "BMP":
        codec, _, offset, args = im.tile[0]
        declared = offset + args[1] * im.size[1] if codec == "raw" else 0  # RLE: size unknown up front
        return ("" if n >= declared else f"its header needs {declared} bytes, the file has {n}"), False
    try:
        with Image.open(io.BytesIO(data)) as fresh:
            fresh.verify()
    except Exception as e:  # noqa: BLE001 - verify() raises whatever the format's plugin raises
        return f"Pillow's verify() failed ({type(e).__name__}: {e})", False
    return "", False


def _webp_declared(data: bytes) -> int:
    return int.from_bytes(data[4:8], "little") + 8  # RIFF size field counts from byte 8


_PNG_TEXT = frozenset({b"tEXt", b"zTXt", b"iTXt"})
# Text keywords Pillow's getexif reads orientation from (besides the eXIf chunk).
_PNG_EXIF_KEYWORDS = frozenset({b"exif", b"Raw profile type exif", b"XML:com.adobe.xmp"})


def _png_chunks(data: bytes) -> tuple[bool, bool]:
    """(whether the chunks reach IEND inside the file; whether EXIF-bearing chunks follow IDAT)."""
    pos, end, after_idat, late_metadata = 8, len(data), False, False
    while pos + 8 <= end:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"IEND":
            return True, late_metadata
        after_idat = after_idat or kind == b"IDAT"
        if after_idat and (kind == b"eXIf" or kind in _PNG_TEXT):
            late_metadata = late_metadata or kind == b"eXIf" or _png_keyword(data, pos) in _PNG_EXIF_KEYWORDS
        pos += 12 + length  # length, type, data, CRC
    return False, late_metadata


def _png_keyword(data: bytes, pos: int) -> bytes:
    return data[pos + 8 : pos + 8 + 80].partition(b"\0")[0]  # keywords are 1..79 bytes, NUL-ended


def _jpeg_complete(data: bytes) -> bool:
    """Whether an EOI marker follows the first scan's start.

    Encoders (libjpeg, Pillow, OpenCV, cameras) end the file with FFD9, but some add bytes after
    it: zero padding, Samsung trailers, a whole MP4 in Motion Photos. So search backwards for FFD9
    and require it after the first SOS: an FFD9 before it belongs to an embedded EXIF thumbnail,
    and inside entropy-coded data FF is always stuffed, so FFD9 there can only be the real EOI.
    """
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan
            return data.rfind(b"\xff\xd9") > pos
        if marker == 0xFF:  # fill byte
            pos += 1
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False


def _orientation(im: Image.Image, late_metadata: bool) -> int:
    if im.format == "PNG" and not late_metadata:
        # PngImageFile.getexif decodes every pixel to look for EXIF after them; the chunk walk
        # found no metadata there, so what the header gave is all there is.
        exif = Image.Image.getexif(im)
    else:
        exif = im.getexif()  # lazy for JPEG/WebP; decodes a PNG with metadata after IDAT (rare)
    value = exif.get(ExifTags.Base.Orientation, 1)
    return value if type(value) is int and 1 <= value <= 8 else 1


def bad_facts(code: str, reason: str, sha: str = "") -> FileFacts:
    return FileFacts(
        width=0, height=0, orientation=1, mode="", has_alpha=False, sha=sha, problem=code, reason=reason
    )


def probe_file(path: str) -> FileFacts:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return bad_facts("DBS303", f"cannot be read ({e.strerror or e})")
    return probe_image(data)


def cache_file_for(cache_dir: Path, folder: str) -> Path:
    """The cache file of one scanned folder (`folder` absolute)."""
    digest = hashlib.blake2b(folder.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
    return cache_dir / f"images-{digest}.json"


def file_stamp(st: os.stat_result) -> str:
    """What changes whenever a file's content may have: mtime, ctime (set by the kernel on every write, rename
    or metadata change) and inode (a file copied or moved into place)."""
    return f"{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def load_entries(cache_file: Path, folder: str) -> Entries:
    """The stored entries, or {} when the file is missing, unreadable, corrupt, edited or
    from another version."""
    try:
        with open(cache_file, "rb") as f:
            head, _, body = f.read().partition(b"\n")
        doc = json.loads(head)
    except (OSError, ValueError):
        return {}
    expected = {**_header(folder), "entries_blake2b": _digest(body)}
    if not isinstance(doc, dict) or doc != expected:
        return {}
    try:
        entries = json.loads(body)
    except ValueError:
        return {}
    return entries if isinstance(entries, dict) else {}


def lookup(entries: Entries, path: str, size: int, stamp: str) -> FileFacts | None:
    """The cached facts of `path` if its size and stamp are unchanged and the entry is well-formed."""
    entry = entries.get(path)
    # One call per file on every warm scan: compare the exact type tuple (cheaper than ten isinstance calls).
    if type(entry) is not list or len(entry) != ENTRY_LENGTH or entry[0] != size or entry[1] != stamp:
        return None
    if tuple(map(type, entry)) != _ENTRY_TYPES:
        return None
    return FileFacts._make(entry[2:])


def make_entry(size: int, stamp: str, facts: FileFacts) -> Entry:
    f = facts
    return [
        size,
        stamp,
        f.width,
        f.height,
        f.orientation,
        f.mode,
        f.has_alpha,
        f.sha,
        f.problem,
        f.reason,
        f.frames,
    ]


def save_entries(cache_file: Path, folder: str, entries: Entries) -> None:
    """Write atomically; a cache that cannot be written only costs speed, so errors are ignored."""
    # ensure_ascii keeps undecodable file names (surrogate escapes) round-trippable.
    body = json.dumps(entries, separators=(",", ":")).encode("ascii")
    head = json.dumps({**_header(folder), "entries_blake2b": _digest(body)}, separators=(",", ":"))
    tmp = ""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=cache_file.name + ".", suffix=".tmp", dir=cache_file.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(head.encode("ascii") + b"\n" + body)
        os.replace(tmp, cache_file)
    except OSError:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _digest(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def _header(folder: str) -> dict:
    # Pillow's version is part of the key: another Pillow may identify or size files differently.
    return {"format": FORMAT, "version": VERSION, "pillow": PIL.__version__, "folder": folder}
