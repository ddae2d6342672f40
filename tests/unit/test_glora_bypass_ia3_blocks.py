"""A glora adapter's `bypass` (with its `dropout`, `rank_dropout` and `module_dropout`) beside blocks of kind
ia3 (a LyCORIS GLoRA network's bypass_mode beside a preset file's IA^3 entries; was DBS578): the ia3 blocks
take the adapter's settled `bypass` (IA3Module's bypass forward, which reads neither dropout nor
rank_dropout), a block's own `bypass = "off"` its default forward; a Diag-OFT block too (was DBS578), but
not with the adapter's dropout, which DiagOFTModule's bypass forward cannot apply (LyCORIS raises): DBS578.
The layers are checked against lycoris-lora 4.1.3 in tests/runtime/test_lycoris_glora_bypass_ia3_entries.py
and test_lycoris_glora_bypass_oft_entries.py."""

from __future__ import annotations

import pytest

from dbspec.plan.io import plan_from_json, plan_to_json
from dbspec.plan.validate import plan_problems
from tests.unit.hubspecs import SD15, empty_hub_cache, plan_hub_spec  # noqa: F401 - the fixture

BLOCK = '\n[[adapter.blocks]]\npattern = "{pattern}"\nkind = "{kind}"\nrank = 1\nalpha = 1.0\n{extra}'
ADAPTER = 'kind = "glora"\nbypass = true\ndropout = 0.2\nrank_dropout = 0.3\nmodule_dropout = 0.1\n'


def _planned(tmp_path, blocks: str):
    return plan_hub_spec(tmp_path, f"[adapter]\n{ADAPTER}{blocks}\n[optimizer]\nlr = 1e-4\n", SD15)


@pytest.mark.parametrize("own", ["", 'bypass = "off"\n'])
def test_glora_bypass_beside_ia3_blocks_plans(tmp_path, own):
    blocks = BLOCK.format(pattern="ff.net.2", kind="ia3", extra=own)
    blocks += BLOCK.format(pattern="ff.net.0", kind="ia3", extra="on_input = true\n")
    planned = _planned(tmp_path, blocks)
    assert planned.plan is not None, [(d.code, d.message) for d in planned.diagnostics]
    assert not [d for d in planned.diagnostics if d.code == "DBS578"]
    a = planned.plan.adapter
    assert (a.bypass, a.bypass_dropout, a.output_dropout, a.rank_dropout) == (True, 0.2, 0.0, 0.3)
    assert [(b.kind, b.bypass, b.on_input) for b in a.blocks if b.kind == "ia3"] == [
        ("ia3", not own, False),
        ("ia3", True, True),
    ]
    assert plan_from_json(plan_to_json(planned.plan)).adapter == a
    assert not plan_problems(planned.plan)


def test_glora_bypass_beside_ia3_and_diag_oft_blocks(tmp_path):
    blocks = BLOCK.format(pattern="ff.net.2", kind="ia3", extra="")
    blocks += BLOCK.format(pattern="ff.net.0", kind="diag-oft", extra="")
    planned = _planned(tmp_path, blocks)
    assert {d.path for d in planned.diagnostics if d.code == "DBS578"} == {"adapter.dropout"}, [
        (d.code, d.path, d.message) for d in planned.diagnostics
    ]
    adapter = ADAPTER.replace("\ndropout = 0.2", "\ndropout = 0.0")  # the adapter's own dropout off
    planned = plan_hub_spec(tmp_path, f"[adapter]\n{adapter}{blocks}\n[optimizer]\nlr = 1e-4\n", SD15)
    assert planned.plan is not None, [(d.code, d.message) for d in planned.diagnostics]
    a = planned.plan.adapter
    assert a.bypass and [(b.kind, b.bypass) for b in a.blocks] == [("ia3", True), ("diag-oft", True)]
