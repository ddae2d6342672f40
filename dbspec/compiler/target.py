"""The machine a plan is compiled for: parsed from `--target`, or probed from this one without torch.

`parse_target("cuda:24GB:8.9")` lets a laptop plan for a GPU box; `probe_target()` asks `nvidia-smi`,
`sysctl` and `/proc/meminfo`, so `dbspec plan` stays fast and runs where torch is not installed.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys

import attrs

from dbspec.plan.model import TargetEnv

__all__ = ["DEFAULT_COMPUTE_CAPABILITY", "parse_target", "probe_target"]

DEFAULT_COMPUTE_CAPABILITY = "8.6"  # Ampere consumer cards (RTX 30xx): the common case, and it has bf16
BF16_MIN_CC = (8, 0)
NVIDIA_SMI_TIMEOUT_S = 5.0  # nvidia-smi can hang on a wedged driver; never let it stall `dbspec plan`
SYSCTL_TIMEOUT_S = 2.0
GIB = 2**30
MIB = 2**20
# GPU vendors label cards in binary units (a "24 GB" RTX 4090 holds 24 GiB), so GB means GiB here.
_UNITS = {"gb": GIB, "gib": GIB, "mb": MIB, "mib": MIB}
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*(gb|gib|mb|mib)$", re.IGNORECASE)
_CC = re.compile(r"^\d{1,2}\.\d$")
_PROCESSES = re.compile(r"^x(\d{1,3})$", re.IGNORECASE)
ACCEPTED_FORMS = (
    "cpu, cuda, cuda:24GB, cuda:16GiB:7.5 (compute capability), cuda:80GB:9.0:x4 (4 processes), "
    "cpu:x2 (2 processes), mps, mps:32GB; GB and GiB both mean 2**30 bytes, MB and MiB 2**20"
)


def parse_target(text: str) -> TargetEnv:
    """TargetEnv from a `--target` value; ValueError naming the accepted forms when it is not one."""
    device, *fields = [part.strip() for part in text.strip().split(":")]
    device = device.lower()
    if device not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown target device {device!r} in {text!r}; accepted: {ACCEPTED_FORMS}")
    memory, cc, processes = _parse_fields(text, device, fields)
    if device == "cuda":
        cc_text = cc or DEFAULT_COMPUTE_CAPABILITY
        bf16 = _cc_tuple(cc_text) >= BF16_MIN_CC
        assumed = "" if cc else " (assumed)"
        description = _describe("cuda", memory, f"cc {cc_text}{assumed}", bf16, processes)
        return TargetEnv(
            device="cuda",
            memory_bytes=memory,
            bf16=bf16,
            compute_capability=cc_text,
            processes=processes,
            description=description,
        )
    description = _describe(device, memory, "", True, processes)
    if (
        device == "mps"
    ):  # MPS has bf16 from macOS 14; a --target names the machine to run on: assume a current one
        description += " (macOS 14+)"
    processes = processes if device == "cpu" else 1
    return TargetEnv(
        device=device, memory_bytes=memory, bf16=True, processes=processes, description=description
    )


def _parse_fields(text: str, device: str, fields: list[str]) -> tuple[int, str, int]:
    """(memory bytes, compute capability, processes) from the fields after the device, in any order."""
    memory, cc, processes = 0, "", 0
    for field in fields:
        if (match := _MEMORY.match(field)) and not memory:
            memory = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
            if memory <= 0:
                raise ValueError(f"memory must be positive in {text!r}; accepted: {ACCEPTED_FORMS}")
        elif _CC.match(field) and device == "cuda" and not cc:
            cc = field
        elif (match := _PROCESSES.match(field)) and device in ("cuda", "cpu") and not processes:
            processes = int(match.group(1))
            if processes < 1:
                raise ValueError(f"process count must be >= 1 in {text!r}; accepted: {ACCEPTED_FORMS}")
        else:
            raise ValueError(
                f"cannot read {field!r} in target {text!r} (unknown, repeated or not for "
                f"{device}); accepted: {ACCEPTED_FORMS}"
            )
    return memory, cc, processes or 1


def _cc_tuple(cc: str) -> tuple[int, int]:
    major, minor = cc.split(".")
    return int(major), int(minor)


def _describe(device: str, memory: int, detail: str, bf16: bool, processes: int) -> str:
    parts = [device]
    if memory:
        parts.append(f"{memory / GIB:.1f} GiB")
    if detail:
        parts.append(detail)
    parts.append("bf16" if bf16 else "no bf16")
    if processes > 1:
        parts.append(f"{processes} processes")
    return ", ".join(parts)


# --- probing this machine ------------------------------------------------------------------------------


def probe_target() -> TargetEnv:
    """This machine: the first visible CUDA GPU, else Apple MPS, else the CPU. Never imports torch.

    `measure_disk` is set: the run writes here, so the compiler's disk pass measures the free space at the
    output and cache folders once it has resolved them (the CLI cannot: they come from the spec).
    """
    gpu = _probe_cuda()
    if gpu is not None:
        return attrs.evolve(gpu, measure_disk=True)
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return _probe_mps()
    memory = _physical_memory_bytes()
    processes = _launcher_world_size()  # torchrun / accelerate launch --cpu: gloo processes on this CPU
    return TargetEnv(
        device="cpu",
        memory_bytes=memory,
        bf16=True,
        measure_disk=True,
        processes=processes,
        description=_describe(f"cpu ({platform.machine() or 'unknown'})", memory, "", True, processes),
    )


def _probe_cuda() -> TargetEnv | None:
    """The first visible GPU as nvidia-smi reports it; None without a usable nvidia-smi or visible GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return None
    rows = query_nvidia_smi(NVIDIA_SMI_TIMEOUT_S)
    if not rows:
        return None
    # CUDA_VISIBLE_DEVICES indices follow nvidia-smi's (PCI) order when CUDA_DEVICE_ORDER=PCI_BUS_ID; close
    # enough for a memory estimate. UUIDs fall back to the first GPU.
    first = visible.split(",")[0].strip() if visible else ""
    row = rows[int(first)] if first.isdigit() and int(first) < len(rows) else rows[0]
    name, memory_mib, cc = row
    if len(rows) > 1:
        name = f"{name}, 1 of {len(rows)} GPUs"
    memory = memory_mib * MIB
    bf16 = bool(cc) and _cc_tuple(cc) >= BF16_MIN_CC
    processes = _launcher_world_size()
    return TargetEnv(
        device="cuda",
        memory_bytes=memory,
        bf16=bf16,
        compute_capability=cc,
        processes=processes,
        description=_describe(f"cuda ({name})", memory, f"cc {cc or 'unknown'}", bf16, processes),
    )


def query_nvidia_smi(timeout_s: float, binary: str = "nvidia-smi") -> list[tuple[str, int, str]]:
    """(name, memory MiB, compute capability) per GPU; [] when the binary is missing, fails or hangs.

    Drivers older than ~510 do not know `compute_cap`; those GPUs are listed with compute capability "".
    """
    path = shutil.which(binary)
    if path is None:
        return []
    for fields in ("name,memory.total,compute_cap", "name,memory.total"):
        output = _run([path, f"--query-gpu={fields}", "--format=csv,noheader,nounits"], timeout_s)
        if output is None:
            continue
        rows = [_gpu_row(line) for line in output.splitlines() if line.strip()]
        if rows and all(row is not None for row in rows):
            return rows
    return []


def _gpu_row(line: str) -> tuple[str, int, str] | None:
    cells = [cell.strip() for cell in line.split(",")]
    if len(cells) not in (2, 3) or not cells[1].isdigit():
        return None
    cc = cells[2] if len(cells) == 3 and _CC.match(cells[2]) else ""
    return cells[0], int(cells[1]), cc


def _run(argv: list[str], timeout_s: float) -> str | None:
    """stdout of a successful command; None when it fails, cannot start or outlives timeout_s."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _launcher_world_size() -> int:
    """Processes of a distributed launch (torchrun / accelerate set WORLD_SIZE); 1 for a plain run."""
    world = (os.environ.get("WORLD_SIZE") or "").strip()
    return int(world) if world.isdigit() and int(world) >= 1 else 1


def _probe_mps() -> TargetEnv:
    output = _run(["sysctl", "-n", "hw.memsize"], SYSCTL_TIMEOUT_S)
    memory = int(output.strip()) if output and output.strip().isdigit() else _physical_memory_bytes()
    release = platform.mac_ver()[0]
    bf16 = bool(release) and int(release.split(".")[0]) >= 14  # MPS gained bf16 in macOS 14 (Sonoma)
    detail = f"macOS {release or 'unknown'}, unified memory"
    return TargetEnv(
        device="mps",
        memory_bytes=memory,
        bf16=bf16,
        measure_disk=True,
        description=_describe("mps (Apple silicon)", memory, detail, bf16, 1),
    )


def _physical_memory_bytes() -> int:
    """Total RAM: MemTotal from /proc/meminfo, else sysconf; 0 when neither answers."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
