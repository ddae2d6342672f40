"""Benchmark `scan_folder` against the floor of what any scan must do (a script, not a test).

    python tests/bench/bench_scan.py --n 20000

Generates N small images (half PNG, half JPEG, 64..128 px, noisy so they do not compress to
nothing) in a temp folder, then times, each on the same files:

  floor  one os.scandir walk + per file: stat + open + read all bytes + PIL header parse
         (Image.open(BytesIO(bytes)).size). No hash, no EXIF, no checks, no cache.
  cold   scan_folder with an empty cache dir (reads, hashes and checks every file; writes the cache)
  warm   scan_folder again, everything cached (a stat per file, no file opened)

Each is run --repeat times and the best kept, as wall time and as this process's CPU time (steadier
when other work shares the machine). Targets: cold <= 3x floor, warm <= 0.2x cold. The page cache
is warm for all three (the files were just written), so this measures CPU cost, not disk.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import tempfile
import time
from pathlib import Path

from PIL import Image

from dbspec.compiler.images import scan_folder


def make_images(folder: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    for i in range(n):
        size = (rng.randint(64, 128), rng.randint(64, 128))
        im = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
        if i % 2:
            im.save(folder / f"img_{i:06d}.png")
        else:
            im.save(folder / f"img_{i:06d}.jpg", quality=90)


def floor_scan(folder: Path) -> int:
    count = 0
    with os.scandir(folder) as listing:
        for entry in listing:
            entry.stat()
            with open(entry.path, "rb") as f:
                data = f.read()
            with Image.open(io.BytesIO(data)) as im:
                count += im.size[0] > 0
    return count


def timed(fn) -> tuple[tuple[float, float], object]:
    """((wall seconds, CPU seconds of this process), fn's result). CPU time is steadier on a busy machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return (time.perf_counter() - wall, time.process_time() - cpu), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="number of images to generate")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        (gen_s, _), _ = timed(lambda: make_images(folder, args.n))
        print(f"generated {args.n} images in {gen_s:.1f} s")
        runs = [measure(folder, Path(tmp) / f"cache{run}", args.n) for run in range(args.repeat)]
        best = {name: tuple(min(r[name][i] for r in runs) for i in (0, 1)) for name in runs[0]}
        report(best, args.n)


def measure(folder: Path, cache_dir: Path, n: int) -> dict[str, tuple[float, float]]:
    """One run of floor, cold scan (empty cache_dir) and warm scan: {name: (wall s, cpu s)}."""

    def scan():
        return scan_folder(
            folder, recursive=False, min_size=1, on_bad="error", cache_dir=cache_dir, key_path="bench"
        )

    floor_t, _ = timed(lambda: floor_scan(folder))
    cold_t, cold = timed(scan)
    warm_t, warm = timed(scan)
    assert len(cold.images) == len(warm.images) == n and not cold.diagnostics
    assert warm.cache_misses == 0 and warm.cache_hits == n
    return {"floor": floor_t, "cold": cold_t, "warm": warm_t}


def report(best: dict[str, tuple[float, float]], n: int) -> None:
    print(f"\n{'':<8}{'wall s':>9}{'us/file':>9}{'cpu s':>9}{'us/file':>9}")
    for name, (wall, cpu) in best.items():
        print(f"{name:<8}{wall:>9.3f}{wall / n * 1e6:>9.1f}{cpu:>9.3f}{cpu / n * 1e6:>9.1f}")
    for label, i in (("wall", 0), ("cpu", 1)):
        floor, cold, warm = (best[k][i] for k in ("floor", "cold", "warm"))
        print(
            f"{label:<5} cold/floor = {cold / floor:.2f} (target <= 3)   warm/cold = "
            f"{warm / cold:.3f} (target <= 0.2)"
        )


if __name__ == "__main__":
    main()
