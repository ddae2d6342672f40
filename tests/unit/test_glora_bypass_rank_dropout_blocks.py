"""A glora adapter's `bypass` with its `rank_dropout` beside blocks of kind lora / loha / lokr (a LyCORIS
GLoRA network's bypass_mode and rank_dropout beside a preset file's LoCon / LoHa / LoKr entries; was
DBS578): each kind's layers draw their LyCORIS class's own bypass mask, the GLoRA layers theirs (ranks kept
below the rate), the blocks' form settled in the plan (rank_dropout_form "lycoris_bypass": LoCon's ranks
kept above it, LoHa's rows, LoKr's none) and named by its summary; a decomposed block stays DBS578. The
layers are checked against lycoris-lora 4.1.3 in
tests/runtime/test_lycoris_glora_bypass_rank_dropout_entries.py."""

from __future__ import annotations

import pytest

from dbspec.plan.io import plan_from_json, plan_to_json
from dbspec.plan.summary import adapter_rows
from dbspec.plan.validate import plan_problems
from tests.unit.hubspecs import SD15, empty_hub_cache, plan_hub_spec  # noqa: F401 - the fixture

BLOCK = '\n[[adapter.blocks]]\npattern = "ff"\nkind = "{kind}"\nrank = 4\nalpha = 2.0\n{extra}'


def _planned(tmp_path, kind: str, extra: str = "", bypass: str = "true"):
    table = f'kind = "glora"\nbypass = {bypass}\nrank_dropout = 0.3\nmodule_dropout = 0.1\n'
    table += BLOCK.format(kind=kind, extra=extra)
    return plan_hub_spec(tmp_path, f"[adapter]\n{table}\n[optimizer]\nlr = 1e-4\n", SD15)


@pytest.mark.parametrize("kind", ["lora", "loha", "lokr"])
def test_glora_bypass_rank_dropout_beside_blocks_settles_their_form(tmp_path, kind):
    planned = _planned(tmp_path, kind)
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    assert not [d for d in planned.diagnostics if d.code == "DBS578"]
    a = planned.plan.adapter
    assert (a.bypass, a.rank_dropout, a.rank_dropout_form) == (True, 0.3, "lycoris_bypass")
    assert plan_from_json(plan_to_json(planned.plan)).adapter == a
    assert not plan_problems(planned.plan)
    row = dict(adapter_rows(a))["  dropout"]
    assert "GLoRA layers keep the ranks drawn below the rate, LoRA blocks those above it" in row


def test_glora_rank_dropout_outside_bypass_keeps_the_row_form(tmp_path):
    """Outside bypass the LoCon blocks draw LoConModule's row mask (rank_dropout_form "lycoris")."""
    planned = _planned(tmp_path, "lora", bypass="false")
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    assert planned.plan.adapter.rank_dropout_form == "lycoris"


def test_glora_bypass_rank_dropout_beside_a_decomposed_block_stays_refused(tmp_path):
    planned = _planned(tmp_path, "lora", 'dora = "on"\n')
    assert "adapter.bypass" in {d.path for d in planned.diagnostics if d.code == "DBS578"}, [
        (d.code, d.path, d.message) for d in planned.diagnostics
    ]
