"""The plan's memory estimate against the measured peak of real-size training steps on the CPU.

    python tests/bench/bench_memory.py [--cases sd15-lora-512 sd15-full-512 sdxl-lora-1024]
        [--steps 2] [--models /tmp/dbspec-real-models] [--threads 2] [--json out.json]

Builds full-size SD1.5 and SDXL model folders with random weights from the public configs
(`tests/bench/real_models.py`, nothing downloaded; ~4 GB and ~13.6 GB on disk, reused between runs), then
for each case writes a spec over the bundled sample images, asks `dbspec plan --json` for the estimate and
runs `dbspec run` in a fresh process. From that process it measures:

- peak RSS: the child's `ru_maxrss` (everything resident: weights, activations, the Python and torch code,
  and safetensors pages mapped while loading);
- peak anonymous RSS: the highest `RssAnon` of /proc/<pid>/status, sampled every 50 ms (tensors without
  the mapped files and code: what a device would hold);
- seconds per optimizer step: from torch's global optimizer-step hook (the `sitecustomize.py` of
  bench_vs_diffusers.py), the time between the last two steps (none with `--steps 1`);
- when the anonymous peak came: up to the end of step 1 (loading, caching, the first step), between step 1
  and the last, or after the last step (the final checkpoint and weights being written), with a trace of
  RssAnon every 5 s in `--json`.

A case whose estimate exceeds 90% of the memory available now (`MemAvailable`) is skipped, not run.
The estimate counts a CUDA context (0.5 GiB) that the CPU does not have, and the CPU process holds the
interpreter and torch's code (~0.5 GiB) that a device does not: the two are compared as they stand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_vs_diffusers import SITECUSTOMIZE  # noqa: E402
from tests.bench.real_models import build_real_model  # noqa: E402

GIB = 2**30
# case -> (model, resolution, spec tables appended to the base spec)
CASES: dict[str, tuple[str, int, str]] = {
    "sd15-lora-512": ("sd15", 512, '[adapter]\nkind = "lora"\nrank = 16\n\n[optimizer]\nlr = 1e-4\n'),
    "sd15-lora-512-ckpt": (
        "sd15",
        512,
        '[adapter]\nkind = "lora"\nrank = 16\n\n[optimizer]\nlr = 1e-4\n\n'
        "[precision]\ngradient_checkpointing = true\n",
    ),
    "sd15-full-512": ("sd15", 512, ""),
    "sd15-full-512-ckpt": ("sd15", 512, "[precision]\ngradient_checkpointing = true\n"),
    "sdxl-lora-1024": (
        "sdxl",
        1024,
        '[adapter]\nkind = "lora"\nrank = 16\n\n[optimizer]\nlr = 1e-4\n\n'
        "[precision]\ngradient_checkpointing = true\n",
    ),
}
FAMILY = {"sd15": "sd1", "sdxl": "sdxl"}


def write_spec(folder: Path, model: Path, family: str, size: int, steps: int, extra: str) -> Path:
    # Only as many images as steps: the latent cache is filled before step 1, and each image costs a
    # VAE encode at full size (minutes on two shared cores at 1024 px).
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for image in sorted((ROOT / "specs" / "data" / "toy").glob("*.png"))[:steps]:
        shutil.copy(image, data / image.name)
    text = f"""spec_version = 2

[model]
base = "{model}"
family = "{family}"

[[datasets]]
name = "toy"
path = "{data}"
prompt = "a photo of ohwx toy"
resolution = {size}

[buckets]
mode = "square"

[schedule]
steps = {steps}
batch_size = 1

[cache]
dir = "cache"

[logging]
tensorboard = false

[output]
dir = "out"

{extra}"""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.toml"
    path.write_text(text)
    return path


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable")


def estimate(spec: Path, env: dict) -> dict:
    out = spec.parent / "plan.json"
    subprocess.run(
        [sys.executable, "-m", "dbspec.cli", "plan", str(spec), "--json", str(out)],
        cwd=spec.parent,
        env=env,
        check=True,
        capture_output=True,
    )
    plan = json.loads(out.read_text())
    return plan["memory"] | {"mixed": plan["precision"]["mixed"]}


def _anon_peak(pid: int, stop: threading.Event, peak: list) -> None:
    """Sample RssAnon every 50 ms into peak = [bytes, time of the peak, (time, bytes) at most every 5 s]."""
    status = Path(f"/proc/{pid}/status")
    while not stop.is_set():
        try:
            for line in status.read_text().splitlines():
                if line.startswith("RssAnon:"):
                    now, anon = time.time(), int(line.split()[1]) * 1024
                    if anon > peak[0]:
                        peak[0], peak[1] = anon, now
                    if not peak[2] or now - peak[2][-1][0] >= 5:
                        peak[2].append((now, anon))
        except (FileNotFoundError, ProcessLookupError):
            return
        stop.wait(0.05)


def peak_phase(peak_at: float, started: float, steps: list[float]) -> str:
    """When the anonymous peak came: while loading and before the first optimizer step ended, among the
    steps, or after the last step (the final checkpoint and weights being written)."""
    if not steps or peak_at > steps[-1]:
        return "after the last step (saving)"
    if peak_at <= steps[0]:
        return f"up to the end of step 1 ({peak_at - started:.0f} s after launch)"
    return "between steps 1 and the last"


def measure(spec: Path, env: dict) -> dict:
    """Run `dbspec run` on `spec` in a fresh process: peak RSS, peak anonymous RSS, step times."""
    log = spec.parent / "steps.log"
    log.unlink(missing_ok=True)
    output = spec.parent / "run.out"
    with open(output, "wb") as sink:
        started = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "dbspec.cli", "run", str(spec), "--overwrite"],
            cwd=spec.parent,
            env={**env, "DBSPEC_BENCH_LOG": str(log)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        stop, peak = threading.Event(), [0, 0.0, []]
        watcher = threading.Thread(target=_anon_peak, args=(proc.pid, stop, peak), daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        stop.set()
        watcher.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"dbspec run {spec} failed:\n{output.read_text()[-3000:]}")
    times = [float(t) for t in log.read_text().split()]
    return {
        "peak_rss": usage.ru_maxrss * 1024,
        "peak_anon": peak[0],
        "peak_phase": peak_phase(peak[1], started, times),
        "step_times": [t - started for t in times],
        "anon_trace": [(round(t - started, 1), a) for t, a in peak[2]],
        "first_step_s": times[0] - started,
        "step_s": times[-1] - times[-2] if len(times) > 1 else float("nan"),
        "wall_s": time.time() - started,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=["sd15-lora-512", "sd15-full-512", "sdxl-lora-1024"])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--models", type=Path, default=Path(tempfile.gettempdir()) / "dbspec-real-models")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, help="case folders (default: a new temporary folder)")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    ap.add_argument("--force", action="store_true", help="run a case even if it may not fit")
    args = ap.parse_args()
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {sorted(CASES)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-memory-"))
    site = work / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",
    }
    rows = []
    for case in args.cases:
        model_name, size, extra = CASES[case]
        model = build_real_model(model_name, args.models / model_name)
        spec = write_spec(work / case, model, FAMILY[model_name], size, args.steps, extra)
        est = estimate(spec, env)
        free = available_bytes()
        row = {"case": case, "estimate": est}
        if est["total"] > 0.9 * free and not args.force:
            row["skipped"] = f"estimate {est['total'] / GIB:.1f} GiB > 90% of {free / GIB:.1f} GiB available"
            print(f"{case}: skipped, {row['skipped']}", file=sys.stderr, flush=True)
        else:
            row |= measure(spec, env)
            print(f"{case}: {row}", file=sys.stderr, flush=True)
        rows.append(row)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    report(rows)


def report(rows: list[dict]) -> None:
    print(
        f"{'case':<20} {'mixed':>5} {'estimate':>9} {'peak RSS':>9} {'est/RSS':>8} {'peak anon':>10} "
        f"{'est/anon':>9} {'s/step':>7} {'steps/s':>8}"
    )
    for row in rows:
        est = row["estimate"]
        head = f"{row['case']:<20} {est['mixed']:>5} {est['total'] / GIB:>8.2f}G"
        if "skipped" in row:
            print(f"{head} skipped: {row['skipped']}")
            continue
        print(
            f"{head} {row['peak_rss'] / GIB:>8.2f}G {est['total'] / row['peak_rss'] - 1:>+7.1%} "
            f"{row['peak_anon'] / GIB:>9.2f}G {est['total'] / row['peak_anon'] - 1:>+8.1%} "
            f"{row['step_s']:>7.1f} {1 / row['step_s']:>8.3f}  peak: {row['peak_phase']}"
        )


if __name__ == "__main__":
    main()
