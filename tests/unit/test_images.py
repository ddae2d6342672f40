"""scan_folder: listing rules, header facts, every problem kind, the skip/error policy and the cache."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageFile, WebPImagePlugin

from dbspec.compiler import imagecache
from dbspec.compiler.imagecache import file_stamp, probe_image
from dbspec.compiler.images import ScanResult, scan_folder

KEY = "datasets[0].path"


def scan(
    folder: Path,
    *,
    cache_dir: Path | None = None,
    recursive: bool = False,
    on_bad: str = "error",
    min_size: int = 1,
    max_pixels: int | None = None,
) -> ScanResult:
    return scan_folder(
        folder,
        recursive=recursive,
        min_size=min_size,
        on_bad=on_bad,
        cache_dir=cache_dir,
        key_path=KEY,
        max_pixels=max_pixels,
    )


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rgb(size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, (200, 30, 30))


def codes(result: ScanResult) -> list[tuple[str, str]]:
    return [(d.code, d.severity) for d in result.diagnostics]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_chunks(data: bytes) -> list[bytes]:
    chunks, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunks.append(data[pos : pos + 12 + length])
        pos += 12 + length
    return chunks


# --- listing -------------------------------------------------------------------------------------


def test_lists_images_sorted_with_sizes_hashes_and_any_case_extension(tmp_path):
    png = write(tmp_path / "b.PNG", encode(rgb(), "PNG"))
    write(tmp_path / "a.JPEG", encode(rgb((50, 60)), "JPEG"))
    write(tmp_path / "c.Jpg", encode(rgb(), "JPEG"))
    write(tmp_path / "d.webp", encode(rgb(), "WEBP"))
    write(tmp_path / "e.BMP", encode(rgb(), "BMP"))
    write(tmp_path / "notes.txt", b"not an image")  # other files are ignored silently
    result = scan(tmp_path)
    assert result.diagnostics == ()
    assert [i.rel for i in result.images] == ["a.JPEG", "b.PNG", "c.Jpg", "d.webp", "e.BMP"]
    first, second = result.images[:2]
    assert (first.width, first.height, first.orientation, first.mode) == (50, 60, 1, "RGB")
    assert second.path == png.absolute().as_posix()
    assert second.bytes == png.stat().st_size and second.stamp == file_stamp(png.stat())
    assert second.sha == hashlib.blake2b(png.read_bytes(), digest_size=16).hexdigest()


def test_many_files_keep_their_order_and_facts(tmp_path):
    for i in range(70):
        write(tmp_path / f"{i:03d}.png", encode(rgb((20 + i, 30)), "PNG"))
    write(tmp_path / "050b.png", b"")
    result = scan(tmp_path, cache_dir=tmp_path / ".cache")
    assert [i.rel for i in result.images] == [f"{i:03d}.png" for i in range(70)]
    assert [i.width for i in result.images] == [20 + i for i in range(70)]
    assert all(i.sha == probe_image((tmp_path / i.rel).read_bytes()).sha for i in result.images)
    assert codes(result) == [("DBS304", "error")] and "050b.png" in result.diagnostics[0].message
    assert (result.cache_hits, result.cache_misses) == (0, 70)


def test_png_holding_a_jpeg_is_fine(tmp_path):
    write(tmp_path / "photo.png", encode(rgb(), "JPEG"))
    result = scan(tmp_path)
    assert result.diagnostics == () and result.images[0].width == 40


def test_hidden_files_and_folders_are_ignored(tmp_path):
    write(tmp_path / "a.png", encode(rgb(), "PNG"))
    write(tmp_path / ".hidden.png", b"broken")
    write(tmp_path / ".cache" / "b.png", b"broken")
    result = scan(tmp_path, recursive=True)
    assert [i.rel for i in result.images] == ["a.png"] and result.diagnostics == ()


def test_recursive_only_on_request(tmp_path):
    write(tmp_path / "top.png", encode(rgb(), "PNG"))
    write(tmp_path / "sub" / "deep" / "x.jpg", encode(rgb(), "JPEG"))
    assert [i.rel for i in scan(tmp_path).images] == ["top.png"]
    assert [i.rel for i in scan(tmp_path, recursive=True).images] == ["sub/deep/x.jpg", "top.png"]


def test_files_dbspec_does_not_read_are_listed_but_not_sidecars_hidden_files_or_folders(tmp_path):
    write(tmp_path / "a.png", encode(rgb(), "PNG"))
    write(tmp_path / "b.gif", encode(rgb(), "GIF"))
    write(tmp_path / "c.TIFF", encode(rgb(), "TIFF"))
    for name in ("d.heic", "e.avif", "README", "notes.md"):
        write(tmp_path / name, b"not read")
    for name in ("a.txt", "a.caption", "a.json", "a.npz", "dataset.toml", "a.TXT", "a.tags", ".DS_Store"):
        write(tmp_path / name, b"sidecar or hidden")
    write(tmp_path / "sub" / "f.gif", encode(rgb(), "GIF"))
    write(tmp_path / "sub.old.png" / "g.png", encode(rgb(), "PNG"))  # a folder with an image's name
    flat = scan_folder(
        tmp_path,
        recursive=False,
        min_size=1,
        on_bad="error",
        cache_dir=None,
        key_path=KEY,
        sidecars=(".txt", ".caption", ".json", ".npz", ".toml", ".tags"),
    )
    assert flat.unusable == ("README", "b.gif", "c.TIFF", "d.heic", "e.avif", "notes.md")
    assert [i.rel for i in flat.images] == ["a.png"] and flat.diagnostics == ()
    deep = scan(tmp_path, recursive=True)  # the default sidecars: a.tags is not one
    assert deep.unusable == (
        "README",
        "a.tags",
        "b.gif",
        "c.TIFF",
        "d.heic",
        "e.avif",
        "notes.md",
        "sub/f.gif",
    )
    assert [i.rel for i in deep.images] == ["a.png", "sub.old.png/g.png"]


def apng(frames: int) -> bytes:
    images = [Image.new("RGB", (40, 30), (40 * i, 0, 0)) for i in range(frames)]
    return encode(images[0], "PNG", save_all=True, append_images=images[1:])


def test_animated_png_and_webp_count_their_frames_cold_and_warm(tmp_path):
    folder = tmp_path / "data"
    write(folder / "moving.png", apng(3))
    moving = [Image.new("RGB", (40, 30), (0, 50 * i, 0)) for i in range(4)]
    write(folder / "moving.webp", encode(moving[0], "WEBP", save_all=True, append_images=moving[1:]))
    write(folder / "still.png", apng(1))
    mpo = write(folder / "photo.jpg", encode(rgb(), "MPO", save_all=True, append_images=[rgb()]))
    with Image.open(mpo) as im:
        assert (
            im.n_frames == 2
        )  # a camera's multi-picture JPEG (a preview or a second view): not an animation
    cold = scan(folder, cache_dir=tmp_path / "cache")
    warm = scan(folder, cache_dir=tmp_path / "cache")
    assert warm.cache_misses == 0 and warm.images == cold.images
    assert {i.rel: i.frames for i in warm.images} == {
        "moving.png": 3,
        "moving.webp": 4,
        "photo.jpg": 1,
        "still.png": 1,
    }
    assert cold.diagnostics == ()  # animations train (their first frame); the compiler warns


# --- header facts --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_6_swaps_width_and_height(tmp_path, fmt):
    exif = Image.Exif()
    exif[0x0112] = 6
    write(tmp_path / f"rot.{fmt.lower()}", encode(rgb((40, 30)), fmt, exif=exif))
    (info,) = scan(tmp_path).images
    assert (info.width, info.height, info.orientation) == (30, 40, 6)


def test_png_exif_after_pixel_data_is_found(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8
    chunks = png_chunks(encode(rgb((40, 30)), "PNG", exif=exif))
    exif_chunk = next(c for c in chunks if c[4:8] == b"eXIf")
    rest = [c for c in chunks if c is not exif_chunk]
    moved = b"\x89PNG\r\n\x1a\n" + b"".join(rest[:-1]) + exif_chunk + rest[-1]  # eXIf between IDAT and IEND
    facts = probe_image(moved)
    assert (facts.width, facts.height, facts.orientation, facts.problem) == (30, 40, 8, "")


@pytest.mark.parametrize(
    "image, alpha",
    [
        (Image.new("RGBA", (8, 8)), True),
        (Image.new("LA", (8, 8)), True),
        (Image.new("RGB", (8, 8)), False),
        (Image.new("P", (8, 8)), False),
    ],
)
def test_mode_and_alpha(image, alpha):
    facts = probe_image(encode(image, "PNG"))
    assert (facts.mode, facts.has_alpha) == (image.mode, alpha)


def test_palette_with_transparency_has_alpha():
    facts = probe_image(encode(Image.new("P", (8, 8)), "PNG", transparency=0))
    assert (facts.mode, facts.has_alpha) == ("P", True)


# --- problem files -------------------------------------------------------------------------------


def truncated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 1
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG", exif=exif)
    return data[: len(data) // 2]


def png_header_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims width x height pixels, with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )


BROKEN = {
    "empty.png": (lambda: b"", "DBS304"),
    "text.jpg": (lambda: b"hello, I am text\n" * 20, "DBS303"),
    "cut.png": (lambda: encode(rgb(), "PNG")[:-20], "DBS308"),
    "cut.jpg": (truncated_jpeg, "DBS308"),
    "cut.webp": (lambda: encode(rgb(), "WEBP")[:-10], "DBS308"),
    "cut.bmp": (lambda: encode(rgb(), "BMP")[:-10], "DBS308"),
    "bad_header.png": (lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "DBS303"),
    "bomb.png": (lambda: png_header_claiming(100_000, 100_000), "DBS307"),  # Pillow refuses to open it
    "big.png": (lambda: png_header_claiming(15_000, 10_000), "DBS307"),  # Pillow warns; default limit
}


@pytest.mark.parametrize("name", sorted(BROKEN))
@pytest.mark.parametrize("on_bad, severity", [("error", "error"), ("skip", "warning")])
def test_each_broken_kind_is_reported_and_left_out(tmp_path, name, on_bad, severity):
    make, code = BROKEN[name]
    write(tmp_path / name, make())
    write(tmp_path / "good.png", encode(rgb(), "PNG"))
    result = scan(tmp_path, on_bad=on_bad)
    assert codes(result) == [(code, severity)]
    (diagnostic,) = result.diagnostics
    assert f"`{name}`" in diagnostic.message and diagnostic.path == KEY
    assert "on_bad_image" in (diagnostic.help if on_bad == "error" else " ".join(diagnostic.notes))
    assert [i.rel for i in result.images] == ["good.png"]


def test_broken_symlink_with_image_name(tmp_path):
    write(tmp_path / "ok.png", encode(rgb(), "PNG"))
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    result = scan(tmp_path)
    assert codes(result) == [("DBS303", "error")] and "symbolic link" in result.diagnostics[0].message


def test_headers_are_read_without_decoding_pixels(tmp_path, monkeypatch):
    for fmt in ("PNG", "JPEG", "WEBP", "BMP"):
        write(tmp_path / f"x.{fmt.lower()}", encode(rgb(), fmt))
    exif = Image.Exif()
    exif[0x0112] = 6
    write(tmp_path / "rotated.png", encode(rgb(), "PNG", exif=exif))
    chunks = png_chunks(encode(rgb(), "PNG"))  # ImageMagick-style text after the pixels: no EXIF in it
    late_text = png_chunk(b"tEXt", b"date:modify\x002024-01-01")
    write(tmp_path / "late_text.png", b"\x89PNG\r\n\x1a\n" + b"".join(chunks[:-1]) + late_text + chunks[-1])

    def no_decode(self):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "load", no_decode)
    result = scan(tmp_path)
    assert result.diagnostics == () and len(result.images) == 6


def test_jpeg_with_bytes_after_eoi_is_not_truncated(tmp_path):
    data = encode(rgb(), "JPEG")
    write(tmp_path / "padded.jpg", data + b"\x00" * 100)
    write(tmp_path / "trailer.jpg", data + b"ftypmp42" + os.urandom(2000))  # Motion Photo style
    result = scan(tmp_path)
    assert result.diagnostics == () and len(result.images) == 2


def test_small_images_against_min_size(tmp_path):
    write(tmp_path / "tiny.png", encode(rgb((63, 200)), "PNG"))
    write(tmp_path / "ok.png", encode(rgb((64, 64)), "PNG"))
    result = scan(tmp_path, min_size=64)
    assert codes(result) == [("DBS306", "error")]
    assert "63x200" in result.diagnostics[0].message and [i.rel for i in result.images] == ["ok.png"]


def test_max_pixels_from_header(tmp_path):
    write(tmp_path / "big.png", encode(rgb((100, 100)), "PNG"))
    write(tmp_path / "ok.png", encode(rgb((50, 50)), "PNG"))
    result = scan(tmp_path, max_pixels=5000, on_bad="skip")
    assert codes(result) == [("DBS307", "warning")] and [i.rel for i in result.images] == ["ok.png"]


# --- folder problems -----------------------------------------------------------------------------


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    missing = scan(tmp_path / "nope")
    assert codes(missing) == [("DBS301", "error")] and missing.diagnostics[0].path == KEY
    file = write(tmp_path / "x.png", encode(rgb(), "PNG"))
    assert codes(scan(file, on_bad="skip")) == [("DBS301", "error")]


def test_folder_without_images(tmp_path):
    write(tmp_path / "readme.txt", b"hi")
    write(tmp_path / "sub" / "a.png", encode(rgb(), "PNG"))
    result = scan(tmp_path, on_bad="skip")
    assert codes(result) == [("DBS302", "error")] and "recursive = true" in result.diagnostics[0].notes[0]


def test_every_image_skipped_is_an_error(tmp_path):
    write(tmp_path / "a.png", b"")
    result = scan(tmp_path, on_bad="skip")
    assert codes(result) == [("DBS304", "warning"), ("DBS302", "error")]


def test_unknown_policy_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError):
        scan(tmp_path, on_bad="ignore")


# --- cache ---------------------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path) -> Path:
    folder = tmp_path / "data"
    for i in range(3):
        write(folder / f"img{i}.png", encode(rgb((40 + i, 30 + i)), "PNG"))
    write(folder / "broken.jpg", b"not a jpeg")
    write(folder / "sub" / "deep.png", encode(rgb(), "PNG"))
    return folder


def cache_file(cache_dir: Path, folder: Path) -> Path:
    return imagecache.cache_file_for(cache_dir, folder.absolute().as_posix())


def test_second_scan_opens_no_image_and_does_not_rewrite_the_cache(tmp_path, dataset):
    cache_dir = tmp_path / "cache"
    cold = scan(dataset, cache_dir=cache_dir, on_bad="skip")
    assert (cold.cache_hits, cold.cache_misses) == (0, 4)
    stamp = cache_file(cache_dir, dataset).stat().st_mtime_ns
    warm = scan(dataset, cache_dir=cache_dir, on_bad="skip")
    assert (warm.cache_hits, warm.cache_misses) == (4, 0)  # the broken file's verdict is cached too
    assert warm.images == cold.images and warm.diagnostics == cold.diagnostics
    assert cache_file(cache_dir, dataset).stat().st_mtime_ns == stamp


def test_policy_changes_apply_to_cached_facts(tmp_path, dataset):
    cache_dir = tmp_path / "cache"
    scan(dataset, cache_dir=cache_dir, on_bad="skip")
    strict = scan(dataset, cache_dir=cache_dir, on_bad="error", min_size=31)
    assert strict.cache_misses == 0
    assert codes(strict) == [("DBS303", "error"), ("DBS306", "error")]


def test_touched_or_rewritten_file_is_read_again(tmp_path, dataset):
    cache_dir = tmp_path / "cache"
    before = {i.rel: i.sha for i in scan(dataset, cache_dir=cache_dir, on_bad="skip").images}
    touched = dataset / "img0.png"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    again = scan(dataset, cache_dir=cache_dir, on_bad="skip")
    assert (again.cache_hits, again.cache_misses) == (3, 1)
    write(dataset / "img1.png", encode(rgb((90, 90)), "PNG"))
    rewritten = scan(dataset, cache_dir=cache_dir, on_bad="skip")
    assert rewritten.cache_misses == 1
    info = {i.rel: i for i in rewritten.images}["img1.png"]
    assert (info.width, info.height) == (90, 90) and info.sha != before["img1.png"]


@pytest.mark.parametrize("garbage", [b"{not json", b"[1, 2]", b'{"format": "other"}', b"\xff\xfe\x00"])
def test_corrupt_cache_file_is_rebuilt(tmp_path, dataset, garbage):
    cache_dir = tmp_path / "cache"
    first = scan(dataset, cache_dir=cache_dir, on_bad="skip")
    cache_file(cache_dir, dataset).write_bytes(garbage)
    rebuilt = scan(dataset, cache_dir=cache_dir, on_bad="skip")
    assert rebuilt.cache_misses == 4 and rebuilt.images == first.images
    assert scan(dataset, cache_dir=cache_dir, on_bad="skip").cache_misses == 0


def stored_entries(file: Path) -> dict:
    return json.loads(file.read_bytes().partition(b"\n")[2])


def rewrite_entries(file: Path, entries: dict, *, rehash: bool) -> None:
    """Write edited entries back, with the header's entries hash recomputed (a well-formed
    file) or left stale."""
    head = json.loads(file.read_bytes().partition(b"\n")[0])
    body = json.dumps(entries, separators=(",", ":")).encode()
    if rehash:
        head["entries_blake2b"] = hashlib.blake2b(body, digest_size=16).hexdigest()
    file.write_bytes(json.dumps(head).encode() + b"\n" + body)


def test_malformed_entry_is_a_miss(tmp_path, dataset):
    cache_dir = tmp_path / "cache"
    scan(dataset, cache_dir=cache_dir, on_bad="skip")
    file = cache_file(cache_dir, dataset)
    entries = stored_entries(file)
    entries[(dataset / "img0.png").absolute().as_posix()][2] = "wide"
    rewrite_entries(file, entries, rehash=True)
    assert scan(dataset, cache_dir=cache_dir, on_bad="skip").cache_misses == 1


def test_an_edited_or_damaged_entry_fails_the_hash_and_the_file_is_rebuilt(tmp_path, dataset):
    # A well-typed entry with a wrong size would otherwise be trusted on every re-plan, and every run would
    # stop with "the file changed after the plan was made".
    cache_dir = tmp_path / "cache"
    first = scan(dataset, cache_dir=cache_dir, on_bad="skip")
    file = cache_file(cache_dir, dataset)
    entries = stored_entries(file)
    entries[(dataset / "img0.png").absolute().as_posix()][2] += 7  # width
    rewrite_entries(file, entries, rehash=False)
    again = scan(dataset, cache_dir=cache_dir, on_bad="skip")
    assert again.cache_misses == 4 and again.images == first.images
    assert scan(dataset, cache_dir=cache_dir, on_bad="skip").cache_misses == 0


def test_a_picture_replaced_by_another_of_the_same_size_and_mtime_is_read_again(tmp_path, dataset):
    cache_dir = tmp_path / "cache"
    path = dataset / "img0.png"
    before = {i.rel: i for i in scan(dataset, cache_dir=cache_dir, on_bad="skip").images}["img0.png"]
    data = bytearray(path.read_bytes())
    replacement = encode(Image.new("RGB", (40, 30), (30, 200, 30)), "PNG")
    assert len(replacement) == len(data), "the test needs two PNGs of one byte size"
    st = path.stat()
    staged = dataset / ".staged"
    staged.write_bytes(replacement)
    os.utime(staged, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(staged, path)  # same size, same mtime, new inode and ctime
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    after = {i.rel: i for i in scan(dataset, cache_dir=cache_dir, on_bad="skip").images}["img0.png"]
    assert after.sha != before.sha


def test_removed_files_leave_the_cache_and_folders_have_separate_caches(tmp_path, dataset):
    cache_dir = tmp_path / "cache"
    scan(dataset, cache_dir=cache_dir, recursive=True, on_bad="skip")
    (dataset / "img2.png").unlink()
    scan(dataset, cache_dir=cache_dir, on_bad="skip")  # not recursive: sub/ entries stay
    keys = stored_entries(cache_file(cache_dir, dataset))
    root = dataset.absolute().as_posix()
    assert sorted(k[len(root) + 1 :] for k in keys) == ["broken.jpg", "img0.png", "img1.png", "sub/deep.png"]
    scan(dataset / "sub", cache_dir=cache_dir)
    assert len(list(cache_dir.iterdir())) == 2
    assert scan(dataset, cache_dir=cache_dir, recursive=True, on_bad="skip").cache_misses == 0


def test_unwritable_cache_dir_is_not_fatal(tmp_path, dataset):
    blocker = write(tmp_path / "cache", b"a file where the cache folder should be")
    result = scan(dataset, cache_dir=blocker, on_bad="skip")
    assert len(result.images) == 3 and result.cache_misses == 4


def test_many_files_with_one_problem_are_one_diagnostic_listing_them(tmp_path):
    folder = tmp_path / "many"
    write(folder / "good.png", encode(rgb(), "PNG"))
    for i in range(30):
        write(folder / f"empty{i:02d}.png", b"")
    write(folder / "broken.jpg", b"not a jpeg")
    result = scan(folder, on_bad="skip")
    assert codes(result) == [("DBS303", "warning"), ("DBS304", "warning")]
    grouped = result.diagnostics[1]
    assert grouped.message == f"30 images in `{folder.as_posix()}` have this problem (DBS304)"
    assert grouped.notes[0] == "`empty00.png` is empty (0 bytes)" and grouped.notes[20] == "... and 10 more"
    assert len(scan(folder).diagnostics) == 2 and len(result.images) == 1


def test_a_symbolic_link_loop_is_named_and_skippable(tmp_path):
    folder = tmp_path / "links"
    write(folder / "good.png", encode(rgb(), "PNG"))
    (folder / "a.png").symlink_to(folder / "b.png")
    (folder / "b.png").symlink_to(folder / "a.png")
    strict = scan(folder)
    assert [d.message.split(" cannot")[0] for d in strict.diagnostics] == ["image `a.png`", "image `b.png`"]
    assert [i.rel for i in scan(folder, on_bad="skip").images] == ["good.png"]
