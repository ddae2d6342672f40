"""Start-up (issue 17): a full fine-tune without quantisation imports none of the optional heavy libraries
before its first optimizer step: not peft, optimum-quanto, bitsandbytes, torchao nor matplotlib. Run through
the CLI in a fresh interpreter, with a global optimizer step pre-hook that records `sys.modules` at the first
step.

test_quantize_backends' former check, folded in here (a quantisation backend's library is imported only when a
run quantises): the probe imports dbspec.runtime.quantize before the run, which imports
dbspec.runtime.prepare (checked), and neither brings in optimum-quanto, torchao or bitsandbytes. (Imported
on its own, outside the run's runtime/imports.py hidden_libraries, prepare imports diffusers, which imports
peft, bitsandbytes and torchao because they are installed: the run is the import that counts.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from dbspec.runtime.imports import unused_libraries
from tests.runtime.runspec import make_plan, write_spec

HEAVY = ("peft", "optimum", "bitsandbytes", "torchao", "matplotlib")

PROBE = """
import json, os, sys
import torch.optim.optimizer as optimizer
seen = []
def at_first_step(opt, args, kwargs):
    if not seen:
        seen.append(sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY)))
        assert "dbspec.runtime.prepare" in sys.modules
        print("FIRSTSTEP " + json.dumps(seen[0]), flush=True)
        os._exit(0)  # what follows (the step, saving the full pipeline, the report) imports nothing checked
optimizer.register_optimizer_step_pre_hook(at_first_step)
import dbspec.runtime.quantize  # importing it imports no backend library
from dbspec.cli import main
sys.argv = ["dbspec", "run", "spec.toml"]
main()
"""


def _first_step_modules(tmp_path) -> list[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code = f"HEAVY = {HEAVY!r}\n" + PROBE
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("FIRSTSTEP "))
    return json.loads(line.removeprefix("FIRSTSTEP "))


def test_full_finetune_imports_no_optional_library_before_its_first_step(tmp_path):
    write_spec(tmp_path, steps=1)
    assert _first_step_modules(tmp_path) == []


def test_unused_libraries_follow_the_plan(tmp_path):
    full = make_plan(tmp_path / "full")
    assert unused_libraries(full) == ("peft", "bitsandbytes", "torchao")
    lora = make_plan(tmp_path / "lora", extra='[adapter]\nkind = "lora"\nrank = 2\n')
    assert unused_libraries(lora) == ()
