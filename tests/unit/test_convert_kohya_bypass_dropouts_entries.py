"""A LoCon / LoHa / LoKr network's `bypass_mode` with its `dropout` and `rank_dropout` beside a preset file's
BOFT, DyLoRA and IA^3 entries, and with the `rank_dropout` alone beside Diag-OFT entries (issue 12; were
DBS403, a spec's DBS578): those entries' bypass forward reads neither (DiagOFTModule's Dropout raises:
DBS402), the network's own layers (and its LoCon / LoHa / LoKr entries) drop and mask as their class does:
the adapter's `output_dropout` and `rank_dropout` in rank_dropout_form "lycoris_bypass" (a LoKr network's
rank_dropout beside them alone is read by no module: DBS405). Also a BOFT / Diag-OFT network's LoCon entries
(converted as a LoCon network whose own layers are OFT blocks). The plans here;
tests/runtime/test_lycoris_network_dropouts_entries.py compares the layers with lycoris-lora 4.1.3's."""

from __future__ import annotations

import pytest
from convert_kit import codes, expressible, messages, plan_of
from test_convert_kohya_refusals_audit import PLAN_BASE, _convert, _sd

BYPASS = '"bypass_mode=True" "dropout=0.1" "rank_dropout=0.2"'
RANKS = '"bypass_mode=True" "rank_dropout=0.2"'


@pytest.mark.parametrize(
    ("network", "entry", "extra", "args"),
    [
        ("locon", "boft", "dim = 8", BYPASS),
        ("loha", "dylora", "dim = 4", BYPASS),
        ("locon", "ia3", "", BYPASS),
        ("loha", "diag-oft", "dim = 8", RANKS),
        ("loha", "boft", "dim = 8", RANKS),
        ("boft", "locon", "", BYPASS + ' "conv_dim=8"'),
        ("diag-oft", "locon", "", RANKS),
    ],
)
def test_the_adapters_bypass_dropouts_beside_entries_reading_none(tmp_path, network, entry, extra, args):
    outcome = expressible(_convert(tmp_path, "sd", f'"algo={network}" {args}', _sd(entry, extra)))
    a = plan_of(outcome, tmp_path, PLAN_BASE["sd"]).adapter
    kinds = {"locon": "lora"}
    assert a.kind == kinds.get(network, "lora" if "oft" in network else network) and a.bypass
    assert a.output_dropout == (0.1 if "dropout=0.1" in args else 0.0)
    assert a.rank_dropout == 0.2
    # the entries' blocks (an OFT network's own layers' where its LoCon entries host them)
    assert {b.kind for b in a.blocks} == {network if "oft" in network else kinds.get(entry, entry)}


def test_a_lokr_networks_rank_dropout_beside_them_alone_is_read_by_no_module(tmp_path):
    outcome = expressible(_convert(tmp_path, "sd", f'"algo=lokr" {RANKS}', _sd("boft", "dim = 8")))
    assert plan_of(outcome, tmp_path, PLAN_BASE["sd"]).adapter.rank_dropout == 0.0
    assert "never draws its rank-dropout mask" in messages(outcome, "DBS405")


def test_diag_oft_entries_beside_the_dropout_in_bypass_mode_stop_kohya(tmp_path):
    outcome = _convert(tmp_path, "sd", f'"algo=loha" {BYPASS}', _sd("diag-oft", "dim = 8"))
    assert "DBS402" in codes(outcome) and "DiagOFTModule" in messages(outcome, "DBS402")
