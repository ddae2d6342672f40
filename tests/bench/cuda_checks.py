"""dbspec's CUDA checks in one short command, for a rented GPU machine: does every precision/quantisation path
train on CUDA, how fast, in how much memory.

    python tests/bench/cuda_checks.py --out DIR [--budget 370]   # on the GPU machine (tools/device_check.sh)
    python tests/bench/cuda_checks.py --reduced --out DIR        # the same machinery on the CPU, fast

Writes DIR/cuda_checks.json (rewritten after every check, so a run cut short keeps what it finished) and
DIR/cuda_checks.log (every child process's output). Parts, each in its own process with its own time box
(`--budget` seconds in all; a part that hangs is killed and recorded as "timeout", and the next one runs):

1. `env`: `dbspec env`'s output (`text`) and exit code.
2. `tiny`: one process trains the built-in tiny SD1/SDXL twins through `execute(plan)` (what `dbspec run`
   calls) for a few steps per case (`TINY_CASES`): mixed bf16 and fp16 (grad scaler), bf16 weights with
   stochastic rounding, fp16 weights (kohya's full_fp16), LoRA with bitsandbytes' AdamW8bit, fp8 bases (cast,
   quanto), quanto int8, bitsandbytes NF4, SDXL LoRA. Each case: `status` passed / failed / skipped /
   timeout, `error` (the exception's last lines), `losses`, `finite`, `seconds_per_step`, `peak_allocated`
   (torch.cuda.max_memory_allocated over the case, bytes) and, for cases with `resume`, a run stopped
   after half its steps and resumed: `resume.equal` (trained weights bit-identical to the uninterrupted
   run's), `resume.max_abs_diff`, `resume.losses_equal`. A resume mismatch is reported, never raised.
3. `isolated`: torchao int8 / fp8 weight-only and torch.compile, in a second process (torchao is installed
   only for it, from `--extra-path`; inductor may compile for a minute).
4. `bench`: tests/bench/bench_gpu.py for sd15-lora-512 and sd15-full-512 (then sdxl-lora-1024 when time is
   left), real-size random models (tests/bench/real_models.py; `build-<model>.build_seconds` is how long
   building and saving one took; the first model builds on the CPU from the start, beside the other
   parts): each row has steps/s, first_step_s, vram_allocated / vram_reserved (peak, bytes) and the plan's
   memory `estimate`.

`--reduced` runs parts 1-3 on the CPU (cases that need CUDA come back "skipped"), 2 steps, and part 4 as
`bench_gpu.py --reduced`; tests/runtime/test_cuda_checks.py runs it so this script keeps working between
GPU rentals. Two-GPU DDP is not checked (one GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LORA = '\n[adapter]\nkind = "lora"\nrank = 4\n'


def _precision(**keys) -> str:
    """A [precision] table of `keys` (strings and booleans)."""
    rows = [f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {str(v).lower()}" for k, v in keys.items()]
    return "\n[precision]\n" + "\n".join(rows) + "\n"


def _case(name, *, extra="", overrides=(), base="builtin:tiny-sd1", needs=(), resume=None):
    return {
        "name": name,
        "base": base,
        "extra": extra,
        "overrides": list(overrides),
        "needs": tuple(needs),
        "resume": resume,  # None | "full" (denoiser parameters) | "lora" (the exported LoRA file)
    }


# needs: "cuda" (skipped on the CPU), "bitsandbytes" / "optimum" / "torchao" (skipped when not importable)
TINY_CASES = [
    _case("full_mixed_bf16", extra=_precision(mixed="bf16"), resume="full"),
    _case("full_mixed_fp16", extra=_precision(mixed="fp16"), needs=["cuda"]),
    _case(
        "full_weights_bf16_stochastic",
        extra=_precision(mixed="bf16", weights="bf16", weights_rounding="stochastic"),
        resume="full",
    ),
    _case(
        "full_weights_fp16",
        extra=_precision(mixed="fp16", weights="fp16", weights_rounding="nearest"),
        overrides=[
            "optimizer.kind=adafactor"
        ],  # fp32 state; AdamW's fp16 moments are refused (they underflow)
        needs=["cuda"],
    ),
    _case("lora_mixed_bf16", extra=LORA + _precision(mixed="bf16"), resume="lora"),
    _case(
        "lora_adamw8bit",
        extra=LORA + _precision(mixed="bf16"),
        overrides=["optimizer.kind=adamw8bit"],
        needs=["bitsandbytes"],
    ),
    _case(
        "lora_fp8_cast",
        extra=LORA + _precision(mixed="bf16", quantize_denoiser="fp8", quantize_backend="cast"),
    ),
    _case(
        "lora_int8_quanto",
        extra=LORA + _precision(mixed="bf16", quantize_denoiser="int8", quantize_backend="quanto"),
        needs=["optimum"],
    ),
    _case(
        "lora_nf4_bitsandbytes",
        extra=LORA + _precision(mixed="bf16", quantize_denoiser="nf4", quantize_backend="bitsandbytes"),
        needs=["cuda", "bitsandbytes"],
    ),
    _case(
        "sdxl_lora_mixed_bf16", base="builtin:tiny-sdxl", extra=LORA + _precision(mixed="bf16"), resume="lora"
    ),
    # last: quanto builds its CUDA fp8 kernels with ninja on first use (may take long)
    _case(
        "lora_fp8_quanto",
        extra=LORA + _precision(mixed="bf16", quantize_denoiser="fp8", quantize_backend="quanto"),
        needs=["cuda", "optimum"],
    ),
]
ISOLATED_CASES = [
    _case(
        "lora_int8_torchao",
        extra=LORA + _precision(mixed="auto", quantize_denoiser="int8", quantize_backend="torchao"),
        needs=["torchao"],
    ),
    _case(
        "lora_fp8_torchao",
        extra=LORA + _precision(mixed="auto", quantize_denoiser="fp8", quantize_backend="torchao"),
        needs=["cuda", "torchao"],
    ),
    _case("lora_compile", extra=LORA + _precision(mixed="bf16", compile=True), needs=["cuda"]),
]
PARTS = {"tiny": TINY_CASES, "isolated": ISOLATED_CASES}
BENCH_CASES = ["sd15-lora-512", "sd15-full-512", "sdxl-lora-1024"]
BENCH_MODEL = {"sd15-lora-512": "sd15", "sd15-full-512": "sd15", "sdxl-lora-1024": "sdxl"}
# seconds a part may take at most (each also stops at the overall budget)
LIMITS = {"env": 45, "tiny": 170, "isolated": 130, "build": 120, "bench": 75}
CASE_LIMITS = {"lora_compile": 100, "lora_fp8_quanto": 90}  # one tiny case on CUDA: 60 s unless named here


def set_limits(items: list[str]) -> None:
    """`NAME=SECONDS` items into LIMITS (a part's name) or CASE_LIMITS (a tiny/isolated case's)."""
    for item in items:
        name, _, seconds = item.partition("=")
        (LIMITS if name in LIMITS else CASE_LIMITS)[name] = float(seconds)


class Results:
    """cuda_checks.json, rewritten whole after every change."""

    def __init__(self, path: Path, data: dict | None = None):
        self.path, self.data = path, data if data is not None else {}

    def set(self, *keys_and_value) -> None:
        *keys, last, value = keys_and_value
        node = self.data
        for key in keys:
            node = node.setdefault(key, {})
        node[last] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


def log(out: Path, text: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {text}"
    print(line, flush=True)
    with open(out / "cuda_checks.log", "a") as f:
        f.write(line + "\n")


# ---- the tiny part (runs in a child process, or in-process with --in-process)


class CaseTimeout(Exception):
    pass


@contextmanager
def time_box(seconds: float):
    """SIGALRM after `seconds` raises CaseTimeout in the main thread (a C call holding the GIL finishes first;
    the parent's own timeout kills the whole process if that never happens)."""

    def fire(signum, frame):
        raise CaseTimeout(f"over {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _importable(name: str) -> bool:
    try:
        __import__({"optimum": "optimum.quanto"}.get(name, name))
    except Exception:  # noqa: BLE001 - any import failure means the backend cannot run here
        return False
    return True


def _missing(case: dict, cuda: bool) -> str:
    for need in case["needs"]:
        if need == "cuda" and not cuda:
            return "needs CUDA"
        if need != "cuda" and not _importable(need):
            return f"{need} is not importable"
    return ""


def _trained_denoiser(result) -> dict:
    return {k: p.detach() for k, p in result.components.unet.named_parameters() if p.requires_grad}


def _lora_file(result) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(result.final) / "pytorch_lora_weights.safetensors"))


def _compare(ours: dict, theirs: dict) -> dict:
    import torch

    if ours.keys() != theirs.keys():
        return {"equal": False, "keys_differ": sorted(set(ours) ^ set(theirs))[:10]}
    worst, unequal = 0.0, 0
    for key, value in ours.items():
        other = theirs[key].to(value.device)
        if not torch.equal(value, other):
            unequal += 1
            worst = max(worst, (value.float() - other.float()).abs().max().item())
    return {"equal": unequal == 0, "tensors": len(ours), "unequal_tensors": unequal, "max_abs_diff": worst}


def run_case(case: dict, folder: Path, target, steps: int) -> dict:
    """Train `case` for `steps` steps through execute(plan); with `resume`, also stop half-way and resume."""
    import torch

    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import compile_spec, write_spec

    cuda = target.device == "cuda"
    spec = write_spec(folder, base=case["base"], steps=steps, extra=case["extra"])
    overrides = [*case["overrides"], "logging.tensorboard=false", "output.dir=whole"]
    plan = compile_spec(spec, overrides, env=target)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    keep = case["resume"] == "full"
    whole = execute(plan, keep_models=keep)
    got = {
        "steps": whole.steps,
        "losses": list(whole.losses),
        "finite": all(math.isfinite(x) for x in whole.losses),
        "seconds": round(whole.seconds, 3),
        "seconds_per_step": round(1 / whole.steps_per_second, 4) if whole.steps_per_second else None,
        "peak_allocated": torch.cuda.max_memory_allocated() if cuda else None,
        "mixed": plan.precision.mixed,
    }
    got["status"] = "passed" if whole.status == "finished" and got["finite"] else "failed"
    if case["resume"] and got["status"] == "passed":
        try:
            got["resume"] = _resume(case, spec, target, whole, steps)
        except Exception as exc:  # noqa: BLE001 - the resume check reports, never fails the case
            got["resume"] = {"error": _error(exc)}
    return got


def _resume(case: dict, spec: Path, target, whole, steps: int) -> dict:
    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import compile_spec

    overrides = [*case["overrides"], "logging.tensorboard=false", "output.dir=parts"]
    parts = compile_spec(spec, overrides, env=target)
    stop = max(1, steps // 2)
    first = execute(parts, stop_after=stop)
    keep = case["resume"] == "full"
    second = execute(parts, resume=True, keep_models=keep)
    losses_equal = list(first.losses + second.losses) == list(whole.losses)
    if keep:
        got = _compare(_trained_denoiser(whole), _trained_denoiser(second))
    else:
        got = _compare(_lora_file(whole), _lora_file(second))
    return {"stopped_after": stop, "losses_equal": losses_equal, **got}


def _error(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc))
    return text[-2500:]


def run_part(part: str, out: Path, work: Path, reduced: bool, steps: int, only: list[str] | None) -> dict:
    """Run one part's cases in this process; results go to out/part-<part>.json after each case."""
    import torch

    from dbspec.compiler.target import probe_target
    from dbspec.runtime.imports import startup_gc

    if reduced:
        from tests.runtime.runspec import CPU as target
    else:
        target = probe_target()
    results = Results(out / f"part-{part}.json")
    results.set("target", target.description)
    cuda = target.device == "cuda"
    cases = [c for c in PARTS[part] if only is None or c["name"] in only]
    with startup_gc():
        import dbspec.runtime.execute  # noqa: F401 - the heavy imports, once, outside every case's time box
    for case in cases:
        name = case["name"]
        started = time.time()
        skip = _missing(case, cuda)
        if skip:
            got = {"status": "skipped", "why": skip}
        else:
            try:
                with time_box(LIMITS[part] if reduced else CASE_LIMITS.get(name, 60)):
                    got = run_case(case, work / name, target, steps)
            except CaseTimeout as exc:
                got = {"status": "timeout", "error": str(exc)}
            except BaseException as exc:  # noqa: BLE001 - a failing case is a result, not the end
                if isinstance(exc, KeyboardInterrupt):
                    raise
                got = {"status": "failed", "error": _error(exc)}
                if cuda and isinstance(exc, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
        got["wall_s"] = round(time.time() - started, 2)
        results.set("cases", name, got)
        print(f"{part}/{name}: {got['status']} ({got['wall_s']} s)", flush=True)
        if cuda:
            torch.cuda.empty_cache()
    results.set("facts", _facts(cuda))
    return results.data


def _facts(cuda: bool) -> dict:
    """The torch build and GPU, and which native libraries the cases loaded (bitsandbytes picks one of its
    CUDA builds by torch.version.cuda)."""
    import torch

    facts = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if cuda:
        facts |= {"gpu": torch.cuda.get_device_name(), "capability": torch.cuda.get_device_capability()}
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    names = ("libbitsandbytes", "quanto", "torchao")
    facts["native_libraries"] = sorted(
        {line.split()[-1] for line in maps.splitlines() if any(n in line for n in names)}
    )
    return facts


# ---- the parent: parts as child processes, each with a time box


class Budget:
    def __init__(self, seconds: float):
        self.end = time.time() + seconds

    def left(self) -> float:
        return self.end - time.time()

    def box(self, limit: float) -> float:
        return max(0.0, min(limit, self.left() - 5))


def start_child(cmd: list[str], out: Path, env: dict) -> tuple[subprocess.Popen, float]:
    """`cmd` started in a process group of its own, its output appended to the log."""
    with open(out / "cuda_checks.log", "ab") as sink:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    return proc, time.time()


def finish_child(proc: subprocess.Popen, started: float, timeout: float) -> dict:
    """Wait up to `timeout` s for a started child, then kill its whole process group (inductor's compile
    workers, bench_gpu's `dbspec run`); its exit code, seconds since it started and whether it timed out."""
    try:
        code = proc.wait(timeout=max(timeout, 0.1))
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code, timed_out = proc.wait(), True
    return {"returncode": code, "timed_out": timed_out, "seconds": round(time.time() - started, 1)}


def child(cmd: list[str], out: Path, timeout: float, env: dict) -> dict:
    """Run `cmd` with its output appended to the log; its exit code, seconds and whether it timed out."""
    return finish_child(*start_child(cmd, out, env), timeout)


def build_model(model: str, args, out: Path) -> tuple[subprocess.Popen, float]:
    """Start building real-size `model` (CPU only: it overlaps the tiny part's GPU work)."""
    code = (  # writes the build's own seconds beside the model (the parent may look later)
        "import sys, time; t = time.time(); from tests.bench.real_models import build_real_model; "
        f"build_real_model({model!r}, sys.argv[1] + '/' + {model!r}); "
        f"open(sys.argv[1] + '/{model}.build_seconds', 'w').write(str(time.time() - t))"
    )
    env = child_env(False) | {"CUDA_VISIBLE_DEVICES": ""}
    return start_child([sys.executable, "-c", code, str(args.models)], out, env)


def child_env(reduced: bool, extra_path: str = "") -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    paths = [p for p in (extra_path, str(ROOT), env.get("PYTHONPATH", "")) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if reduced:
        env |= {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return env


def check_env(results: Results, out: Path, budget: Budget, reduced: bool) -> None:
    timeout = budget.box(LIMITS["env"])
    try:
        done = subprocess.run(
            [sys.executable, "-m", "dbspec.cli", "env"],
            cwd=ROOT,
            env=child_env(reduced),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        got = {"returncode": done.returncode, "text": done.stdout + done.stderr}
    except subprocess.TimeoutExpired:
        got = {"returncode": None, "timed_out": True}
    results.set("env", got)
    log(out, f"env: exit {got['returncode']}")


def check_part(part: str, results: Results, out: Path, work: Path, budget: Budget, args) -> None:
    timeout = budget.box(LIMITS[part])
    if timeout < 10:
        results.set(part, {"status": "skipped", "why": "no time left"})
        return
    cmd = [sys.executable, __file__, "--child", part, "--out", str(out), "--work", str(work / part)]
    cmd += ["--steps", str(args.steps)] + (["--reduced"] if args.reduced else [])
    cmd += ["--cases", *args.cases] if args.cases else []
    cmd += ["--limit", *args.limit] if args.limit else []
    extra = args.extra_path if part == "isolated" else ""
    proc = child(cmd, out, timeout, child_env(args.reduced, extra))
    partial = out / f"part-{part}.json"
    data = json.loads(partial.read_text()) if partial.is_file() else {}
    results.set(part, {"process": proc, **data})
    statuses = {k: v["status"] for k, v in data.get("cases", {}).items()}
    log(out, f"{part}: {proc} {statuses}")


def check_bench(results: Results, out: Path, budget: Budget, args, building: dict) -> None:
    """bench_gpu.py case by case; `building`: model -> its build already started (by main)."""
    models = Path(args.models)
    bench = [sys.executable, str(ROOT / "tests" / "bench" / "bench_gpu.py")]
    built: dict[str, dict] = {}
    for case in args.bench:
        model = BENCH_MODEL[case]
        if not args.reduced and model not in built:
            if model in building:  # started at the beginning, beside the tiny part
                built[model] = finish_child(*building.pop(model), budget.box(LIMITS["build"]))
            else:
                timeout = budget.box(LIMITS["build"] * (2.5 if model == "sdxl" else 1))
                if timeout < (150 if model == "sdxl" else 40):
                    results.set(
                        "bench", case, {"status": "skipped", "why": "no time left to build the model"}
                    )
                    continue
                built[model] = finish_child(*build_model(model, args, out), timeout)
            seconds = Path(args.models) / f"{model}.build_seconds"
            if built[model]["returncode"] == 0 and seconds.is_file():
                built[model]["build_seconds"] = round(float(seconds.read_text()), 1)
            results.set("bench", f"build-{model}", built[model])
            log(out, f"bench: built {model} {built[model]}")
        if not args.reduced and built[model]["returncode"] != 0:
            results.set("bench", case, {"status": "skipped", "why": f"building {model} failed"})
            continue
        timeout = budget.box(LIMITS["bench"] * (2 if model == "sdxl" else 1))
        if timeout < 30:
            results.set("bench", case, {"status": "skipped", "why": "no time left"})
            continue
        rows = out / f"bench-{case}.json"
        cmd = [*bench, "--cases", case, "--json", str(rows), "--models", str(models)]
        cmd += ["--reduced"] if args.reduced else ["--steps", str(args.bench_steps), "--warmup", "3"]
        proc = child(cmd, out, timeout, child_env(args.reduced))
        got = {"process": proc, "status": "passed" if proc["returncode"] == 0 else "failed"}
        if rows.is_file():
            got["rows"] = json.loads(rows.read_text())
            rows.unlink()
        results.set("bench", case, got)
        log(out, f"bench {case}: {got}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "cuda-checks-out")))
    ap.add_argument("--reduced", action="store_true", help="the CPU, 2 steps, tiny bench")
    ap.add_argument("--budget", type=float, default=370, help="seconds for all parts together")
    ap.add_argument("--steps", type=int, help="steps per tiny case (default 6; 2 reduced)")
    ap.add_argument("--cases", nargs="+", help="only these tiny/isolated cases")
    ap.add_argument("--parts", nargs="+", default=["env", "tiny", "isolated", "bench"])
    ap.add_argument("--bench", nargs="+", default=BENCH_CASES, choices=BENCH_CASES)
    ap.add_argument("--bench-steps", type=int, default=12)
    ap.add_argument("--models", default="/tmp/dbspec-real-models", help="real-size model folders")
    ap.add_argument("--extra-path", default="", help="prepended to PYTHONPATH of the isolated part (torchao)")
    ap.add_argument("--work", type=Path, help="run folders (default: a folder under /tmp)")
    ap.add_argument("--child", choices=list(PARTS), help=argparse.SUPPRESS)
    ap.add_argument("--in-process", action="store_true", help="tiny/isolated parts in this process")
    ap.add_argument("--limit", nargs="+", default=[], help="NAME=SECONDS: a part's or a tiny case's time box")
    args = ap.parse_args(argv)
    set_limits(args.limit)
    args.steps = args.steps or (2 if args.reduced else 6)
    args.out.mkdir(parents=True, exist_ok=True)
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="cuda-checks-"))
    if args.child:
        return run_part(args.child, args.out, work, args.reduced, args.steps, args.cases)
    budget = Budget(args.budget)
    results = Results(args.out / "cuda_checks.json")
    results.set("meta", {"argv": sys.argv, "reduced": args.reduced, "started": time.time()})
    log(args.out, f"cuda_checks: parts {args.parts}, budget {args.budget} s, work {work}")
    building = {}
    if "bench" in args.parts and not args.reduced:  # the first model builds on the CPU meanwhile
        building[BENCH_MODEL[args.bench[0]]] = build_model(BENCH_MODEL[args.bench[0]], args, args.out)
    if "env" in args.parts:
        check_env(results, args.out, budget, args.reduced)
    for part in ("tiny", "isolated"):
        if part not in args.parts:
            continue
        if args.in_process:
            data = run_part(part, args.out, work / part, args.reduced, args.steps, args.cases)
            results.set(part, data)
        else:
            check_part(part, results, args.out, work, budget, args)
    if "bench" in args.parts:
        check_bench(results, args.out, budget, args, building)
    results.set("meta", "seconds", round(args.budget - budget.left(), 1))
    log(args.out, f"done in {results.data['meta']['seconds']} s")
    return results.data


if __name__ == "__main__":
    main()
