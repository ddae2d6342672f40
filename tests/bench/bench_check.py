"""Benchmark: `dbspec check specs/quickstart.toml` wall time against `python -c "import torch"`.

    python tests/bench/bench_check.py [--repeats 10]

Both run as fresh processes (what a user waits for), alternating so machine load hits both alike; the
median of each is reported. Target (issue 2): check <= 0.3x the torch import.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = [sys.executable, "-m", "dbspec.cli", "check", "specs/quickstart.toml"]
TORCH = [sys.executable, "-c", "import torch"]


def wall(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    wall(CHECK), wall(TORCH)  # warm the OS file cache
    check, torch = [], []
    for _ in range(args.repeats):
        check.append(wall(CHECK))
        torch.append(wall(TORCH))
    c, t = statistics.median(check), statistics.median(torch)
    print(f"dbspec check quickstart: median {c * 1000:.0f} ms (min {min(check) * 1000:.0f})")
    print(f"python -c 'import torch': median {t * 1000:.0f} ms (min {min(torch) * 1000:.0f})")
    print(f"ratio: {c / t:.2f} (target <= 0.30)")


if __name__ == "__main__":
    main()
