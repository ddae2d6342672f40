"""Steps/s and peak VRAM of real-size training runs on a GPU, dbspec against diffusers' DreamBooth scripts.

    python tests/bench/bench_gpu.py [--diffusers ~/src/diffusers] [--cases sd15-full-512 sd15-lora-512
        sdxl-lora-1024] [--steps 50] [--warmup 5] [--mixed bf16] [--caches on] [--models DIR] [--json F]
    python tests/bench/bench_gpu.py --reduced      # CPU, tiny built-in models at 64 px, 2 steps

Cases (batch 1, AdamW, the bundled sample images):

- sd15-full-512: SD1.5 UNet fine-tune at 512 px (diffusers: train_dreambooth.py)
- sd15-lora-512: SD1.5 LoRA rank 16 on the attention projections at 512 px (train_dreambooth_lora.py)
- sdxl-lora-1024: SDXL LoRA rank 16 at 1024 px with gradient checkpointing (train_dreambooth_lora_sdxl.py)

The models are full-size SD1.5 and SDXL with random weights built from the public configs
(`tests/bench/real_models.py`; nothing is downloaded), saved as diffusers folders both tools load. Every
process gets a `sitecustomize.py` that records the wall time of each optimizer step (bench_vs_diffusers.py's)
and the peaks `torch.cuda.max_memory_allocated()` / `max_memory_reserved()` over the run, with each optimizer
step's own allocated peak (`vram_allocated_per_step`: a first epoch that fills the caches shows apart from
the training steps). steps/s = the steps after
`--warmup` over their wall time; the table also shows the plan's memory estimate against the peak.
dbspec runs with its caches on by default (filled in the run's first epoch; `--caches off` encodes every
step, as diffusers does). `--diffusers` is a diffusers source checkout (the folder holding
`examples/dreambooth`); without it only dbspec runs.

`--reduced` runs the same machinery on the CPU with the built-in tiny SD1 and SDXL twins at 64 px for 2 steps,
so that a test in the suite (tests/bench/test_bench_gpu.py) keeps this script working without a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_vs_diffusers import INSTANCE_PROMPT, SITECUSTOMIZE, TRANSFORMS  # noqa: E402

GIB = 2**30
VRAM_SITE = """
_vram = os.environ.get("DBSPEC_BENCH_VRAM")
if _vram:
    _peaks = {"allocated": 0, "reserved": 0, "step_allocated": []}

    def _cuda():
        torch = sys.modules.get("torch")
        ready = torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
        return torch if ready else None

    def _take_peaks():
        torch = _cuda()
        if torch is not None:
            allocated = torch.cuda.max_memory_allocated()
            _peaks["allocated"] = max(_peaks["allocated"], allocated)
            _peaks["reserved"] = max(_peaks["reserved"], torch.cuda.max_memory_reserved())
            return allocated

    def _step_peak():
        # each optimizer step's own peak (a cache-filling first epoch apart from the training steps)
        allocated = _take_peaks()
        if allocated is not None:
            _peaks["step_allocated"].append(allocated)
            _cuda().cuda.reset_peak_memory_stats()

    _after_step.append(_step_peak)

    def _write_vram():
        import json
        _take_peaks()
        with open(_vram, "w") as f:
            f.write(json.dumps(_peaks if _cuda() is not None else {}))

    atexit.register(_write_vram)
"""
# bench_vs_diffusers.py's runner, with the SDXL script's second torchvision import pointed at the stand-in.
RUNNER = """\
import sys

script = sys.argv[1]
source = open(script, encoding="utf-8").read()
line = "from torchvision import transforms"
if line not in source:
    raise SystemExit(f"{script}: no `{line}` line to point at the stand-in")
source = source.replace(line, "import bench_transforms as transforms")
functional = "from torchvision.transforms.functional import crop"
source = source.replace(functional, "from bench_transforms import crop")
sys.argv = sys.argv[1:]
code = compile(source, script, "exec")
exec(code, {"__name__": "__main__", "__file__": script})
"""


class Case:
    def __init__(self, name: str, model: str, size: int, adapter: bool, checkpointing: bool, script: str):
        self.name, self.model, self.size = name, model, size
        self.adapter, self.checkpointing, self.script = adapter, checkpointing, script

    @property
    def lr(self) -> float:
        return 1e-4 if self.adapter else 5e-6


CASES = {
    c.name: c
    for c in (
        Case("sd15-full-512", "sd15", 512, False, False, "train_dreambooth.py"),
        Case("sd15-lora-512", "sd15", 512, True, False, "train_dreambooth_lora.py"),
        Case("sdxl-lora-1024", "sdxl", 1024, True, True, "train_dreambooth_lora_sdxl.py"),
    )
}
FAMILY = {"sd15": "sd1", "sdxl": "sdxl"}
TINY = {"sd15": "builtin:tiny-sd1", "sdxl": "builtin:tiny-sdxl"}
RANK = 16


def dbspec_spec(case: Case, model: Path, size: int, steps: int, mixed: str, caches: str) -> str:
    on = "true" if caches == "on" else "false"
    text = f"""spec_version = 2

[model]
base = "{model}"
family = "{FAMILY[case.model]}"

[[datasets]]
name = "toy"
path = "{ROOT / "specs" / "data" / "toy"}"
prompt = "{INSTANCE_PROMPT}"
resolution = {size}

[buckets]
mode = "square"
step = {min(size, 64)}

[optimizer]
lr = {case.lr}

[schedule]
steps = {steps}
batch_size = 1
lr_schedule = "constant"

[precision]
mixed = "{mixed}"
gradient_checkpointing = {"true" if case.checkpointing else "false"}

[cache]
latents = {on}
text_embeddings = {on}
dir = "cache"

[logging]
tensorboard = false

[output]
dir = "out"
"""
    if case.adapter:
        text += f'\n[adapter]\nkind = "lora"\nrank = {RANK}\nalpha = {RANK}\n'
    return text


def diffusers_cmd(
    runner: Path, scripts: Path, case: Case, model: Path, out: Path, size: int, steps: int, mixed: str
) -> list[str]:
    cmd = [sys.executable, str(runner), str(scripts / case.script)]
    cmd += ["--pretrained_model_name_or_path", str(model)]
    cmd += ["--instance_data_dir", str(ROOT / "specs" / "data" / "toy"), "--instance_prompt", INSTANCE_PROMPT]
    cmd += ["--resolution", str(size), "--train_batch_size", "1", "--max_train_steps", str(steps)]
    cmd += ["--learning_rate", str(case.lr), "--lr_scheduler", "constant", "--lr_warmup_steps", "0"]
    cmd += ["--output_dir", str(out), "--seed", "0", "--mixed_precision", mixed, "--center_crop"]
    cmd += ["--checkpointing_steps", str(steps + 1), "--dataloader_num_workers", "0"]
    if case.adapter:
        cmd += ["--rank", str(RANK)]
    if case.checkpointing:
        cmd += ["--gradient_checkpointing"]
    return cmd


def measure(cmd: list[str], cwd: Path, env: dict, work: Path, warmup: int) -> dict:
    """Run `cmd`; steps/s after `warmup` steps, first-step seconds, peak VRAM (CUDA) and peak RSS."""
    log, vram, output = work / "steps.log", work / "vram.json", work / "run.out"
    for f in (log, vram):
        f.unlink(missing_ok=True)
    with open(output, "wb") as sink:
        started = time.time()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env={**env, "DBSPEC_BENCH_LOG": str(log), "DBSPEC_BENCH_VRAM": str(vram)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} (in {cwd}) failed:\n{output.read_text()[-3000:]}")
    times = [float(t) for t in log.read_text().split()]
    skip = min(warmup, len(times) - 2)  # at least one interval
    steps_per_s = (len(times) - 1 - skip) / (times[-1] - times[skip]) if len(times) > 1 else math.nan
    stats = json.loads(vram.read_text()) if vram.is_file() else {}
    return {
        "steps": len(times),
        "steps_per_s": steps_per_s,
        "first_step_s": times[0] - started,
        "vram_allocated": stats.get("allocated"),
        "vram_reserved": stats.get("reserved"),
        "vram_allocated_per_step": stats.get("step_allocated"),
        "rss": usage.ru_maxrss * 1024,
    }


def prepare_models(args, cases: list[Case], tmp: Path) -> dict[str, Path]:
    models = {}
    for name in sorted({c.model for c in cases}):
        if args.reduced:
            from dbspec.runtime.tiny import materialize

            models[name] = materialize(TINY[name], tmp / "models" / name)
        else:
            from tests.bench.real_models import build_real_model

            models[name] = build_real_model(name, args.models / name)
    return models


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reduced", action="store_true", help="CPU, tiny built-in models, 64 px, 2 steps")
    ap.add_argument("--diffusers", type=Path, help="a diffusers source checkout (optional)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--steps", type=int, help="optimizer steps per run (default 50; 2 reduced)")
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of steps/s")
    ap.add_argument("--mixed", choices=["bf16", "fp16", "no"], help="default bf16 (no when reduced)")
    ap.add_argument("--caches", choices=["on", "off"], default="on", help="dbspec's latent/text caches")
    ap.add_argument("--models", type=Path, default=Path(tempfile.gettempdir()) / "dbspec-real-models")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    args = ap.parse_args(argv)
    steps = args.steps or (2 if args.reduced else 50)
    mixed = args.mixed or ("no" if args.reduced else "bf16")
    scripts = None
    if args.diffusers:
        scripts = args.diffusers / "examples" / "dreambooth"
        if not (scripts / "train_dreambooth.py").is_file():
            raise SystemExit(f"{scripts}/train_dreambooth.py: not found; --diffusers is a diffusers checkout")
    if not args.reduced:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(
                "no CUDA device: bench_gpu.py measures VRAM on a GPU (--reduced runs on the CPU)"
            )
    cases = [CASES[name] for name in args.cases]
    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        site, vision = tmp / "site", tmp / "vision"
        site.mkdir()
        vision.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE + VRAM_SITE)
        (vision / "bench_transforms.py").write_text(TRANSFORMS)
        (vision / "bench_runner.py").write_text(RUNNER)
        # the caller's PYTHONPATH last: packages installed there (a GPU machine's carried wheels) stay visible
        inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), *inherited]),
            "HF_HUB_OFFLINE": "1",
            "WANDB_MODE": "disabled",
        }
        if args.reduced:
            env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        models = prepare_models(args, cases, tmp)
        rows = []
        for case in cases:
            size = 64 if args.reduced else case.size
            folder = tmp / case.name
            folder.mkdir()
            (folder / "spec.toml").write_text(
                dbspec_spec(case, models[case.model], size, steps, mixed, args.caches)
            )
            cmd = [sys.executable, "-m", "dbspec.cli", "run", "spec.toml", "--overwrite"]
            got = measure(cmd, folder, env, folder, args.warmup)
            plan = json.loads((folder / "out" / "plan.json").read_text())
            got["estimate"] = plan["memory"]["total"]
            rows.append({"case": case.name, "tool": "dbspec", "size": size, **got})
            print(f"{case.name} dbspec: {got}", file=sys.stderr, flush=True)
            if scripts is not None:
                out = folder / "diffusers-out"
                cmd = diffusers_cmd(
                    vision / "bench_runner.py", scripts, case, models[case.model], out, size, steps, mixed
                )
                run_env = {**env, "PYTHONPATH": os.pathsep.join([str(site), str(vision), *inherited])}
                got = measure(cmd, folder, run_env, folder, args.warmup)
                rows.append({"case": case.name, "tool": "diffusers", "size": size, **got})
                print(f"{case.name} diffusers: {got}", file=sys.stderr, flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(rows, mixed, steps)
    return rows


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def report(rows: list[dict], mixed: str, steps: int) -> None:
    print(f"batch 1, {steps} steps, mixed {mixed}; GiB")
    print(
        f"{'case':<16} {'px':>5} {'tool':<10} {'steps/s':>8} {'first step s':>12} {'VRAM alloc':>10} "
        f"{'VRAM resv':>9} {'estimate':>8} {'peak RSS':>8}"
    )
    for r in rows:
        print(
            f"{r['case']:<16} {r['size']:>5} {r['tool']:<10} {r['steps_per_s']:>8.3f} "
            f"{r['first_step_s']:>12.1f} "
            f"{_gib(r['vram_allocated']):>10} {_gib(r['vram_reserved']):>9} {_gib(r.get('estimate')):>8} "
            f"{_gib(r['rss']):>8}"
        )
    tools = {r["tool"] for r in rows}
    if {"dbspec", "diffusers"} <= tools:
        print("dbspec / diffusers:")
        for case in dict.fromkeys(r["case"] for r in rows):
            ours, theirs = (next(r for r in rows if r["case"] == case and r["tool"] == t) for t in tools)
            if ours["tool"] != "dbspec":
                ours, theirs = theirs, ours
            vram = (
                f"{ours['vram_allocated'] / theirs['vram_allocated']:.2f}x VRAM"
                if ours["vram_allocated"] and theirs["vram_allocated"]
                else f"{ours['rss'] / theirs['rss']:.2f}x RSS"
            )
            print(f"  {case}: {ours['steps_per_s'] / theirs['steps_per_s']:.2f}x steps/s, {vram}")


if __name__ == "__main__":
    main()
