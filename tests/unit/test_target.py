"""dbspec.compiler.target: `--target` parsing, and probing this machine with real (fake)
nvidia-smi binaries."""

from __future__ import annotations

import shutil
import stat
import sys
import time
from pathlib import Path

import pytest

from dbspec.compiler.target import parse_target, probe_target, query_nvidia_smi

GIB = 2**30
MIB = 2**20
SLEEP = shutil.which("sleep")  # looked up before the tests empty PATH


@pytest.mark.parametrize(
    ("text", "device", "memory", "cc", "bf16", "processes"),
    [
        ("cpu", "cpu", 0, "", True, 1),
        ("cuda", "cuda", 0, "8.6", True, 1),  # default compute capability: Ampere, has bf16
        ("cuda:24GB", "cuda", 24 * GIB, "8.6", True, 1),
        ("cuda:16GiB:7.5", "cuda", 16 * GIB, "7.5", False, 1),  # Turing: no bf16
        ("cuda:11GB:6.1", "cuda", 11 * GIB, "6.1", False, 1),
        ("cuda:80GB:9.0:x4", "cuda", 80 * GIB, "9.0", True, 4),
        ("cuda:8.9:12GB", "cuda", 12 * GIB, "8.9", True, 1),  # fields in any order
        ("cuda:12.0:32GB", "cuda", 32 * GIB, "12.0", True, 1),
        ("CUDA:24gb", "cuda", 24 * GIB, "8.6", True, 1),
        ("cuda:7.5GB", "cuda", int(7.5 * GIB), "8.6", True, 1),
        ("cuda:24576MiB", "cuda", 24 * GIB, "8.6", True, 1),
        ("mps", "mps", 0, "", True, 1),
        ("mps:32GB", "mps", 32 * GIB, "", True, 1),
        ("cpu:64GB", "cpu", 64 * GIB, "", True, 1),
        ("cpu:x2", "cpu", 0, "", True, 2),  # two gloo processes on this CPU (torchrun)
    ],
)
def test_parse_target_forms(text, device, memory, cc, bf16, processes):
    env = parse_target(text)
    assert (env.device, env.memory_bytes, env.compute_capability, env.bf16, env.processes) == (
        device,
        memory,
        cc,
        bf16,
        processes,
    )
    assert env.free_disk_bytes == 0 and not env.measure_disk  # another machine: its disk is unknown here
    assert env.description.startswith(device)


def test_parse_target_says_what_it_assumed():
    assert "assumed" in parse_target("cuda:24GB").description
    assert "assumed" not in parse_target("cuda:24GB:8.9").description
    assert "macOS 14" in parse_target("mps:32GB").description


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tpu",
        "gpu:24GB",
        "cuda:",
        "cuda:24XB",
        "cuda:24",
        "cuda:0GB",
        "cuda:24GB:24GB",
        "cuda:7.5:8.0",
        "cuda:x0",
        "cuda:x2:x2",
        "cuda:8.9.1",
        "mps:8.9",
        "mps:x2",
        "cuda:-24GB",
    ],
)
def test_parse_target_rejects_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match="accepted: cpu, cuda, cuda:24GB"):
        parse_target(text)


# --- probing --------------------------------------------------------------------------------------------


def _fake_nvidia_smi(folder: Path, body: str) -> Path:
    """An executable `nvidia-smi` shell script in `folder`."""
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.fixture
def bare_path(tmp_path, monkeypatch):
    """PATH holding only an empty folder (add fakes to it); no launcher or CUDA_VISIBLE_DEVICES variables."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return folder


not_on_mac = pytest.mark.skipif(sys.platform == "darwin", reason="Apple silicon probes as mps")


@not_on_mac
def test_probe_without_nvidia_smi_is_the_cpu_and_fast(bare_path):
    start = time.perf_counter()
    env = probe_target()
    elapsed = time.perf_counter() - start
    assert env.device == "cpu"
    assert env.memory_bytes > 256 * MIB
    assert env.measure_disk  # the compiler measures at the spec's output and cache folders
    assert env.processes == 1 and env.bf16
    assert elapsed < 1.0


@not_on_mac
def test_probe_cpu_takes_the_launchers_world_size(bare_path, monkeypatch):
    """torchrun --nproc_per_node 2 on a machine without GPUs: each process plans for 2 processes."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    env = probe_target()
    assert (env.device, env.processes) == ("cpu", 2)
    assert "2 processes" in env.description


@not_on_mac
def test_probe_this_machine_is_fast():
    start = time.perf_counter()
    env = probe_target()
    assert time.perf_counter() - start < 1.0 + (5.0 if env.device == "cuda" else 0.0)
    assert env.measure_disk and env.free_disk_bytes == 0  # measured by the compiler, once folders are known
    assert env.description


TWO_GPUS = 'echo "NVIDIA GeForce RTX 4090, 24564, 8.9"\necho "Tesla T4, 15360, 7.5"'


@not_on_mac
def test_probe_reads_the_first_gpu(bare_path):
    _fake_nvidia_smi(bare_path, TWO_GPUS)
    env = probe_target()
    assert (env.device, env.memory_bytes, env.compute_capability, env.bf16) == (
        "cuda",
        24564 * MIB,
        "8.9",
        True,
    )
    assert env.processes == 1  # two GPUs, but no launcher says so
    assert env.measure_disk
    assert "RTX 4090" in env.description and "1 of 2 GPUs" in env.description


@not_on_mac
def test_probe_follows_cuda_visible_devices_and_world_size(bare_path, monkeypatch):
    _fake_nvidia_smi(bare_path, TWO_GPUS)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    env = probe_target()
    assert (env.memory_bytes, env.compute_capability, env.bf16, env.processes) == (
        15360 * MIB,
        "7.5",
        False,
        2,
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert probe_target().device == "cpu"


@not_on_mac
def test_probe_old_driver_without_compute_cap(bare_path):
    _fake_nvidia_smi(
        bare_path,
        'case "$1" in *compute_cap*) echo "Field compute_cap is not valid" >&2; exit 2;; '
        'esac\necho "Tesla V100-SXM2-16GB, 16160"',
    )
    env = probe_target()
    assert (env.device, env.memory_bytes, env.compute_capability, env.bf16) == (
        "cuda",
        16160 * MIB,
        "",
        False,
    )


@not_on_mac
@pytest.mark.parametrize(
    "body",
    [
        "exit 9",
        'echo "NVIDIA-SMI has failed because it could not communicate"',
        'echo "garbage, not-a-number, 8.9"',
    ],
)
def test_probe_falls_back_to_cpu_when_nvidia_smi_fails(bare_path, body):
    _fake_nvidia_smi(bare_path, body)
    assert probe_target().device == "cpu"


@pytest.mark.skipif(SLEEP is None, reason="needs a sleep binary")
def test_query_nvidia_smi_gives_up_on_a_hung_binary(bare_path):
    _fake_nvidia_smi(bare_path, f"exec {SLEEP} 5")
    start = time.perf_counter()
    assert query_nvidia_smi(0.2) == []
    assert time.perf_counter() - start < 1.5  # two attempts (with and without compute_cap) of 0.2 s each
