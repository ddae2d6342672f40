"""Flux's kohya LoRA export and kohya's Flux loss options in the compiler (no torch)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_compile import codes, compile_in, image, planned_ok, write_spec

FLUX = {"base": "builtin:tiny-flux"}


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    image(tmp_path / "inst" / "a.png", (64, 64))
    return tmp_path


def test_flux_lora_runs_plan_the_kohya_export(toy: Path):
    write_spec(toy, model=FLUX, adapter={"kind": "lora"}, checkpoints={"exports": ["kohya_lora"]})
    assert planned_ok(toy).checkpoints.exports == ("kohya_lora",)


@pytest.mark.parametrize(
    ("adapter", "kind"),
    [
        ({"kind": "lora", "dora": True}, "DoRA"),
        ({"kind": "loha"}, "LoHa"),
        ({"kind": "lokr"}, "LoKr"),
    ],
)
def test_flux_kohya_export_is_plain_lora_only(toy: Path, adapter, kind):
    write_spec(toy, model=FLUX, adapter=adapter, checkpoints={"exports": ["kohya_lora"]})
    planned = compile_in(toy)
    assert "DBS381" in codes(planned, "error")
    message = next(d.message for d in planned.diagnostics if d.code == "DBS381")
    assert kind in message and "networks/lora_flux.py" in message


def test_what_flux_and_sd3_still_cannot_write(toy: Path):
    write_spec(toy, model=FLUX, train={"denoiser": True}, checkpoints={"exports": ["single_file"]})
    planned = compile_in(toy)
    message = next(d.message for d in planned.diagnostics if d.code == "DBS381")
    assert '"single_file"' in message and 'it writes "kohya_lora"' in message
    write_spec(
        toy,
        model={"base": "builtin:tiny-sd3"},
        adapter={"kind": "lora"},
        checkpoints={"exports": ["kohya_lora"]},
    )
    planned = compile_in(toy)
    message = next(d.message for d in planned.diagnostics if d.code == "DBS381")
    assert "only the diffusers layouts" in message
