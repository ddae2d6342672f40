"""A T-LoRA network's `bypass_mode` (with its `dropout` and `rank_dropout`) beside a preset file's LoCon /
LoHa / LoKr / IA^3 / Diag-OFT / BOFT entries, and its `dropout` outside bypass_mode beside any entries (issue
12; were DBS403). The plans here; tests/runtime/test_lycoris_tlora_bypass_entries.py compares the layers with
lycoris-lora 4.1.3's (SD 1.x and Flux)."""

from __future__ import annotations

from pathlib import Path

import pytest
from convert_kit import codes, expressible, fate, messages, plan_of
from test_convert_kohya_refusals_audit import PLAN_BASE, _convert, _flux, _sd

BYPASS = '"bypass_mode=True" "dropout=0.2" "rank_dropout=0.1"'


def _outcome(tmp_path: Path, entry: str, args: str, family: str = "sd", extra: str = ""):
    preset = _sd(entry, extra) if family == "sd" else _flux(entry, extra)
    return _convert(tmp_path, family, f'"algo=tlora" {args}', preset)


@pytest.mark.parametrize(
    ("family", "entry"),
    [(f, e) for f in ("sd", "flux") for e in ("locon", "loha", "lokr", "ia3")] + [("sd", "boft")],
)
def test_bypass_with_dropouts_is_the_adapters_and_its_blocks(tmp_path, family, entry):
    outcome = expressible(_outcome(tmp_path, entry, BYPASS, family, "dim = 8" if entry == "boft" else ""))
    a = plan_of(outcome, tmp_path, PLAN_BASE[family]).adapter
    low_rank = entry in ("locon", "loha", "lokr")
    # TLoraModule's bypass Dropout (bypass_dropout), LoConModule's / LohaModule's / LokrModule's of their
    # update (output_dropout); IA3Module and ButterflyOFTModule never read it
    assert (a.kind, a.bypass, a.bypass_dropout) == ("tlora", True, 0.2)
    assert a.output_dropout == (0.2 if low_rank else 0.0)
    assert [b.kind for b in a.blocks] == [{"locon": "lora"}.get(entry, entry)]
    # LoCon's ranks, LoHa's rows: the adapter's, their bypass form; LoKr, IA^3 and BOFT beside T-LoRA read it
    # nowhere there (DBS405)
    rank_dropout = (0.1, "lycoris_bypass") if entry in ("locon", "loha") else (0.0, "kohya")
    assert (a.rank_dropout, a.rank_dropout_form) == rank_dropout


def test_diag_oft_entries_in_bypass_mode_with_the_dropout_stop_kohya(tmp_path):
    outcome = _outcome(tmp_path, "diag-oft", BYPASS)
    assert "DBS402" in codes(outcome) and "DiagOFTModule" in messages(outcome, "DBS402")


def test_decomposed_entries_in_bypass_mode_stop_kohyas_file_from_matching(tmp_path):
    """LyCORIS's bypass forward never decomposes, yet the saved file carries dora_scale: DBS402."""
    outcome = _outcome(tmp_path, "locon", '"bypass_mode=True" "dora_wd=True"')
    assert "DBS402" in codes(outcome) and "dora_scale" in messages(outcome, "DBS402")


@pytest.mark.parametrize(("entry", "extra"), [("glora", ""), ("dylora", "dim = 4")])
def test_glora_and_dylora_entries_in_bypass_mode(tmp_path, entry, extra):
    """GLoRAModule's bypass forward drops its pairs' outputs (the adapter's bypass_dropout) and masks their
    ranks; DyLoraModule's adds its one block unscaled, reading neither (was DBS403;
    tests/runtime/test_lycoris_network_dropouts_entries.py)."""
    outcome = expressible(_outcome(tmp_path, entry, BYPASS, extra=extra))
    a = plan_of(outcome, tmp_path, PLAN_BASE["sd"]).adapter
    assert (a.bypass, a.bypass_dropout, a.output_dropout) == (True, 0.2, 0.0)
    assert a.rank_dropout == (0.1 if entry == "glora" else 0.0)
    assert [b.kind for b in a.blocks] == [entry]


@pytest.mark.parametrize("entry", ["locon", "loha", "lokr", "ia3", "glora", "full", "dylora", "diag-oft"])
def test_dropout_outside_bypass_mode_is_read_by_no_module(tmp_path, entry):
    outcome = expressible(_outcome(tmp_path, entry, '"dropout=0.2"'))
    a = plan_of(outcome, tmp_path, PLAN_BASE["sd"]).adapter
    assert (a.bypass, a.bypass_dropout, a.output_dropout) == (False, 0.0, 0.0)
    assert fate(outcome, "network_args dropout") == "inert"
    assert "their bypass forward alone" in messages(outcome, "DBS405")


def test_dropout_outside_bypass_mode_beside_a_tlora_entrys_own_bypass(tmp_path):
    """A T-LoRA entry's own bypass_mode (the transformer blocks' attention; their feed-forwards the LoCon
    entry's, as create_modules_ recurses) drops its layers at the rate; the LoCon layers read none."""
    text = _sd("locon") + '[module_algo_map.BasicTransformerBlock]\nalgo = "tlora"\nbypass_mode = true\n'
    outcome = expressible(_convert(tmp_path, "sd", '"algo=tlora" "dropout=0.2"', text))
    a = plan_of(outcome, tmp_path, PLAN_BASE["sd"]).adapter
    assert (a.bypass, a.bypass_dropout, a.output_dropout) == (False, 0.2, 0.0)
