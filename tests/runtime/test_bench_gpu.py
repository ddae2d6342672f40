"""tests/bench/bench_gpu.py in its reduced CPU mode, so the GPU benchmark cannot rot between GPU runs."""

from __future__ import annotations

import json
import math

import pytest

from tests.bench import bench_gpu


@pytest.mark.slow
def test_reduced_mode_runs_a_case_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "rows.json"
    rows = bench_gpu.main(["--reduced", "--cases", "sd15-lora-512", "--json", str(out)])
    assert json.loads(out.read_text()) == rows
    (row,) = rows
    assert (row["case"], row["tool"], row["size"], row["steps"]) == ("sd15-lora-512", "dbspec", 64, 2)
    assert math.isfinite(row["steps_per_s"]) and row["steps_per_s"] > 0
    assert row["vram_allocated"] is None  # the CPU: no CUDA statistics
    assert row["rss"] > 0 and row["estimate"] > 0
    table = capsys.readouterr().out
    assert "sd15-lora-512" in table and "steps/s" in table


def test_specs_and_diffusers_commands_agree_on_the_work(tmp_path):
    """Both tools get the same resolution, batch, steps, learning rate, rank and checkpointing."""
    for case in bench_gpu.CASES.values():
        spec = bench_gpu.dbspec_spec(case, tmp_path / "m", case.size, 7, "bf16", "on")
        cmd = bench_gpu.diffusers_cmd(
            tmp_path / "r.py", tmp_path, case, tmp_path / "m", tmp_path, case.size, 7, "bf16"
        )
        assert f"resolution = {case.size}" in spec and cmd[cmd.index("--resolution") + 1] == str(case.size)
        assert (
            "steps = 7" in spec
            and "--max_train_steps" in cmd
            and cmd[cmd.index("--max_train_steps") + 1] == "7"
        )
        assert f"lr = {case.lr}" in spec and cmd[cmd.index("--learning_rate") + 1] == str(case.lr)
        assert ('kind = "lora"' in spec) == ("--rank" in cmd) == case.adapter
        assert (f"gradient_checkpointing = {'true' if case.checkpointing else 'false'}") in spec
        assert ("--gradient_checkpointing" in cmd) == case.checkpointing
        assert cmd[cmd.index("--train_batch_size") + 1] == "1" and "batch_size = 1" in spec
