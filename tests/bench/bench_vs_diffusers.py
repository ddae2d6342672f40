"""dbspec against diffusers' DreamBooth example scripts on identical work, side by side in one run.

    python tests/bench/bench_vs_diffusers.py --diffusers ~/src/diffusers [--steps 200] [--repeats 7]
        [--sizes 64 128] [--scenarios full prior lora] [--caches on off] [--core 0]

`--diffusers` is a diffusers source checkout (the example scripts are not in the wheel): the folder that holds
`examples/dreambooth/train_dreambooth.py`. Both tools train the built-in tiny SD1 model, saved as an ordinary
diffusers folder they both load, on the bundled sample images (specs/data/toy, class images from
specs/data/class-toy), batch 2, fp32, the same learning rate, no validation, one process pinned to one core
(`taskset`, one thread each). Scenarios: `full` (train_dreambooth.py), `prior` (the same with prior
preservation), `lora` (train_dreambooth_lora.py, rank 4). dbspec runs with its caches warm (`on`, filled
by an earlier run, as after a first epoch) and off; diffusers has no caches.

Every process gets the same `sitecustomize.py` on its path: it records the wall time of each optimizer step
(torch's global step hook), so the figures come from the processes themselves, not from their logs:
first step = seconds from the launch to the end of the first optimizer step (imports, loading, first batch);
steps/s = steps 10 to the last over their wall time; CPU ms/step = the process's CPU seconds
(`time.process_time`) over the same steps, which a busy machine inflates much less than wall time (the CPU
speed ratio is diffusers' CPU time per step over dbspec's: above 1, dbspec does a step's work in less CPU
time); peak RSS = the child's ru_maxrss. Runs alternate (the
order flips each repeat) and each figure is the median of `--repeats`. The scripts import torchvision for
their image transforms; it is not a dependency of dbspec, so a stand-in with the same behaviour (resize the
short side bilinearly, crop, to tensor, normalise) is put on their path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {"full": "train_dreambooth.py", "prior": "train_dreambooth.py", "lora": "train_dreambooth_lora.py"}
LR = {"full": 5e-6, "prior": 5e-6, "lora": 1e-4}
INSTANCE_PROMPT, CLASS_PROMPT = "a photo of ohwx toy", "a photo of a toy"

SITECUSTOMIZE = """\
import atexit, os, sys, time

_log = os.environ.get("DBSPEC_BENCH_LOG")
_after_step = []  # more per-step recorders (bench_gpu.py's VRAM peaks)
if _log:
    _times = []

    def _step_done(*_):
        _times.append((time.time(), time.process_time()))
        for record in _after_step:
            record()

    class _Finder:
        # Registers torch's global optimizer-step hook as soon as torch.optim is imported, without importing
        # torch earlier than the program itself does.
        def find_spec(self, name, path=None, target=None):
            if name != "torch.optim.optimizer":
                return None
            sys.meta_path.remove(self)
            import importlib.util
            spec = importlib.util.find_spec(name)
            loader = spec.loader
            original = loader.exec_module

            def exec_module(module):
                original(module)
                module.register_optimizer_step_post_hook(_step_done)

            loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Finder())
    def _write():
        # wall times in the log (what the other benches read); the process's CPU seconds beside it
        open(_log, "w").write("\\n".join(repr(wall) for wall, _ in _times))
        open(_log + ".cpu", "w").write("\\n".join(repr(cpu) for _, cpu in _times))

    atexit.register(_write)
"""

TRANSFORMS = '''\
"""Compose, Resize (short side), CenterCrop, RandomCrop, ToTensor and Normalize, as torchvision does them on
PIL images, for tests/bench/bench_vs_diffusers.py."""
import enum
import random

import numpy as np
import torch
from PIL import Image


class InterpolationMode(enum.Enum):
    BILINEAR = Image.BILINEAR
    BICUBIC = Image.BICUBIC
    LANCZOS = Image.LANCZOS
    NEAREST = Image.NEAREST


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class Resize:
    def __init__(self, size, interpolation=InterpolationMode.BILINEAR):
        self.size, self.interpolation = size, interpolation

    def __call__(self, img):
        w, h = img.size
        if w <= h:
            new = (self.size, int(self.size * h / w))
        else:
            new = (int(self.size * w / h), self.size)
        return img.resize(new, self.interpolation.value)


def crop(img, top, left, height, width):
    return img.crop((left, top, left + width, top + height))


class CenterCrop:
    def __init__(self, size):
        self.size = size

    def __call__(self, img):
        w, h = img.size
        top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
        return crop(img, top, left, self.size, self.size)


class RandomCrop(CenterCrop):
    @staticmethod
    def get_params(img, output_size):
        w, h = img.size
        th, tw = output_size
        return random.randint(0, h - th), random.randint(0, w - tw), th, tw

    def __call__(self, img):
        return crop(img, *self.get_params(img, (self.size, self.size)))


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, img):
        return img.transpose(Image.FLIP_LEFT_RIGHT) if random.random() < self.p else img


class ToTensor:
    def __call__(self, img):
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = mean[0], std[0]

    def __call__(self, x):
        return (x - self.mean) / self.std
'''


RUNNER = """\
import sys

# Run a diffusers example script as __main__ with its torchvision import pointed at the stand-in. Only the
# script sees it: transformers and diffusers change their behaviour when a torchvision is importable.
script = sys.argv[1]
source = open(script, encoding="utf-8").read()
line = "from torchvision import transforms"
if line not in source:
    raise SystemExit(f"{script}: no `{line}` line to point at the stand-in")
source = source.replace(line, "import bench_transforms as transforms")
sys.argv = sys.argv[1:]
code = compile(source, script, "exec")
exec(code, {"__name__": "__main__", "__file__": script})
"""


def write_support(folder: Path) -> tuple[Path, Path]:
    """The step recorder (both tools); the stand-in transforms and their runner (the diffusers scripts)."""
    site, vision = folder / "site", folder / "vision"
    for sub in (site, vision):
        sub.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (vision / "bench_transforms.py").write_text(TRANSFORMS)
    (vision / "bench_runner.py").write_text(RUNNER)
    return site, vision


def measure(cmd: list[str], cwd: Path, env: dict, log: Path, core: int) -> dict:
    """Launch `cmd` pinned to `core`; first-step seconds, steady steps/s and peak RSS from the child."""
    log.unlink(missing_ok=True)
    Path(f"{log}.cpu").unlink(missing_ok=True)
    output = log.with_suffix(".out")
    with open(output, "wb") as sink:
        started = time.time()
        proc = subprocess.Popen(
            ["taskset", "-c", str(core), *cmd],
            cwd=cwd,
            env={**env, "DBSPEC_BENCH_LOG": str(log)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} (in {cwd}) failed:\n{output.read_text()[-3000:]}")
    times = [float(t) for t in log.read_text().split()]
    cpu = [float(t) for t in Path(f"{log}.cpu").read_text().split()]
    steady = (len(times) - 10) / (times[-1] - times[9])
    return {
        "first_step": times[0] - started,
        "steps_per_s": steady,
        "cpu_ms_per_step": 1000 * (cpu[-1] - cpu[9]) / (len(cpu) - 10),
        "rss_mib": usage.ru_maxrss / 1024,
        "load": os.getloadavg()[0],
    }


def diffusers_cmd(
    runner: Path, scripts: Path, model: Path, data: Path, out: Path, scenario: str, size: int, steps: int
):
    cmd = [sys.executable, str(runner), str(scripts / SCRIPTS[scenario])]
    cmd += ["--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(data / "toy")]
    cmd += ["--instance_prompt", INSTANCE_PROMPT, "--resolution", str(size), "--train_batch_size", "2"]
    cmd += ["--max_train_steps", str(steps), "--learning_rate", str(LR[scenario]), "--lr_warmup_steps", "0"]
    cmd += ["--output_dir", str(out), "--seed", "0", "--mixed_precision", "no", "--center_crop"]
    cmd += ["--checkpointing_steps", str(steps + 1), "--dataloader_num_workers", "0"]
    if scenario == "prior":
        count = len(list((data / "class-toy").iterdir()))
        cmd += ["--with_prior_preservation", "--class_data_dir", str(data / "class-toy")]
        cmd += ["--class_prompt", CLASS_PROMPT, "--num_class_images", str(count)]
    if scenario == "lora":
        cmd += ["--rank", "4"]
    return cmd


def dbspec_spec(model: Path, data: Path, scenario: str, size: int, steps: int, caches: str) -> str:
    """The spec doing diffusers' work: square center crops, batch 2 (4 with a prior: diffusers stacks
    as many class images as instance images), constant LR, no validation, no step checkpoints."""
    on = "true" if caches == "on" else "false"
    lines = [
        "spec_version = 2",
        f'[model]\nbase = "{model}"\nfamily = "sd1"',  # the tiny model's widths are no real family's
        f'[[datasets]]\nname = "toy"\npath = "{data / "toy"}"\n'
        f'prompt = "{INSTANCE_PROMPT}"\nresolution = {size}',
        f'[buckets]\nmode = "square"\nstep = {min(size, 64)}',
        f"[optimizer]\nlr = {LR[scenario]}",
        f"[schedule]\nsteps = {steps}\nbatch_size = {4 if scenario == 'prior' else 2}\n"
        'lr_schedule = "constant"',
        f'[cache]\nlatents = {on}\ntext_embeddings = {on}\ndir = "cache"',
        "[logging]\ntensorboard = false",
        '[output]\ndir = "out"',
    ]
    if scenario == "prior":
        lines.insert(
            3,
            f'[[datasets]]\nname = "toys"\nrole = "class"\npath = "{data / "class-toy"}"\n'
            f'prompt = "{CLASS_PROMPT}"\nresolution = {size}',
        )
    if scenario == "lora":
        lines.append('[adapter]\nkind = "lora"\nrank = 4\nalpha = 4')
    return "\n\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--diffusers", type=Path, required=True, help="a diffusers source checkout")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--scenarios", nargs="+", default=["full", "prior", "lora"], choices=sorted(SCRIPTS))
    ap.add_argument("--caches", nargs="+", default=["on", "off"], choices=["on", "off"])
    ap.add_argument("--core", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    args = ap.parse_args()
    scripts = args.diffusers / "examples" / "dreambooth"
    if not (scripts / "train_dreambooth.py").is_file():
        raise SystemExit(
            f"{scripts}/train_dreambooth.py: not found; --diffusers is a diffusers source checkout"
        )
    if shutil.which("taskset") is None:
        raise SystemExit("taskset (util-linux) is needed to pin both processes to one core")

    sys.path.insert(0, str(ROOT))
    from dbspec.runtime.tiny import materialize

    tmp = Path(tempfile.mkdtemp(prefix="bench-vs-diffusers-"))
    support, data = tmp / "support", tmp / "data"
    site, vision = write_support(support)
    for name in ("toy", "class-toy"):
        shutil.copytree(ROOT / "specs" / "data" / name, data / name)
    model = materialize("builtin:tiny-sd1", tmp / "model")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    dbspec = [sys.executable, "-m", "dbspec.cli", "run", "spec.toml", "--overwrite"]
    cases = [(sc, size) for sc in args.scenarios for size in args.sizes]
    rows: dict = {}
    for sc, size in cases:
        for caches in args.caches:
            folder = tmp / f"dbspec-{sc}-{size}-{caches}"
            folder.mkdir()
            (folder / "spec.toml").write_text(dbspec_spec(model, data, sc, size, args.steps, caches))
            if caches == "on":  # fill the caches once, outside the measurement
                measure(dbspec, folder, env, tmp / "warm.log", args.core)
    for rep in range(args.repeats):
        for sc, size in cases:
            runs = [("diffusers", None)] + [("dbspec", c) for c in args.caches]
            for tool, caches in runs if rep % 2 == 0 else runs[::-1]:
                if tool == "diffusers":
                    out = tmp / "diffusers-out"
                    shutil.rmtree(out, ignore_errors=True)
                    cmd, cwd = (
                        diffusers_cmd(
                            vision / "bench_runner.py", scripts, model, data, out, sc, size, args.steps
                        ),
                        tmp,
                    )
                    run_env = {**env, "PYTHONPATH": os.pathsep.join([str(site), str(vision)])}
                else:
                    cmd, cwd, run_env = dbspec, tmp / f"dbspec-{sc}-{size}-{caches}", env
                got = measure(cmd, cwd, run_env, tmp / "steps.log", args.core)
                rows.setdefault((sc, size, tool, caches), []).append(got)
                print(
                    f"rep {rep + 1} {sc} {size}px {tool} {caches or ''}: {got}", file=sys.stderr, flush=True
                )
    report(rows, cases, args)
    if args.json:
        args.json.write_text(json.dumps([{"case": list(k), "runs": v} for k, v in rows.items()], indent=1))
    shutil.rmtree(tmp, ignore_errors=True)


def report(rows: dict, cases: list, args) -> None:
    def med(key, field):
        return statistics.median(r[field] for r in rows[key])

    print(
        f"\n{args.steps} steps, batch 2, fp32, one core, median of {args.repeats}; ratio = dbspec / diffusers"
    )
    print(
        "| case | caches | first step (s) dbspec / diffusers | steps/s dbspec / diffusers | speed ratio "
        "| CPU ms/step dbspec / diffusers | CPU speed ratio | peak RSS (MiB) dbspec / diffusers |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for sc, size in cases:
        base = (sc, size, "diffusers", None)
        for caches in args.caches:
            key = (sc, size, "dbspec", caches)
            print(
                f"| {sc} {size}px | {caches} | {med(key, 'first_step'):.2f} / {med(base, 'first_step'):.2f} "
                f"| {med(key, 'steps_per_s'):.2f} / {med(base, 'steps_per_s'):.2f} "
                f"| **{med(key, 'steps_per_s') / med(base, 'steps_per_s'):.2f}x** "
                f"| {med(key, 'cpu_ms_per_step'):.0f} / {med(base, 'cpu_ms_per_step'):.0f} "
                f"| **{med(base, 'cpu_ms_per_step') / med(key, 'cpu_ms_per_step'):.2f}x** "
                f"| {med(key, 'rss_mib'):.0f} / {med(base, 'rss_mib'):.0f} |"
            )
    report_repetitions(rows, cases, args)


def report_repetitions(rows: dict, cases: list, args) -> None:
    """Each repetition's dbspec / diffusers ratios: the two ran back to back, so on a machine whose load
    changes these pair better than medians taken over different loads."""
    print(
        "\nper repetition, dbspec / diffusers (first step, steps/s, peak RSS); load average at the end: "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print("| case | caches | rep | first step | steps/s | CPU speed | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for sc, size in cases:
        base = rows[(sc, size, "diffusers", None)]
        for caches in args.caches:
            for rep, (ours, theirs) in enumerate(zip(rows[(sc, size, "dbspec", caches)], base), start=1):
                print(
                    f"| {sc} {size}px | {caches} | {rep} "
                    f"| {ours['first_step'] / theirs['first_step']:.2f}x "
                    f"| {ours['steps_per_s'] / theirs['steps_per_s']:.2f}x "
                    f"| {theirs['cpu_ms_per_step'] / ours['cpu_ms_per_step']:.2f}x "
                    f"| {ours['rss_mib'] / theirs['rss_mib']:.2f}x |"
                )


if __name__ == "__main__":
    main()
