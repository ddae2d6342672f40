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


@pytest.mark.parametrize("family", ["sd", "flux"])
@pytest.mark.parametrize("network", ["ia3", "dylora"])
@pytest.mark.parametrize("given", ["network_args", "--network_dropout"])
def test_an_ia3_or_dylora_networks_bypass_dropouts_are_its_locon_entries(tmp_path, family, network, given):
    """IA3Module and DyLoraModule never read the dropout or rank_dropout; in bypass_mode LyCORIS's LoCon /
    LoHa / LoKr entries drop their update by it (the adapter's `dropout`: the plan's output_dropout) and
    mask their ranks (was DBS403); --network_dropout, which train_network.py hands on as `dropout`, alike."""
    from test_convert_kohya_refusals_audit import _flux

    args, flags = ('"dropout=0.1"', "") if given == "network_args" else ("", "--network_dropout 0.1")
    preset = _sd("locon") if family == "sd" else _flux("locon")
    outcome = _convert(
        tmp_path, family, f'"algo={network}" "bypass_mode=True" "rank_dropout=0.2" {args}', preset, flags
    )
    a = plan_of(expressible(outcome), tmp_path, PLAN_BASE[family]).adapter
    assert (a.kind, a.bypass, a.output_dropout, a.rank_dropout) == (network, True, 0.1, 0.2)
    assert a.rank_dropout_form == "lycoris_bypass"
    assert "DBS405" not in {d.code for d in outcome.diagnostics if "dropout" in d.message.split(":")[0]}


@pytest.mark.parametrize("network", ["ia3", "dylora"])
def test_without_bypass_their_dropout_stays_unread(tmp_path, network):
    outcome = expressible(_convert(tmp_path, "sd", f'"algo={network}" "dropout=0.1"', _sd("locon")))
    assert plan_of(outcome, tmp_path, PLAN_BASE["sd"]).adapter.output_dropout == 0.0
    assert "never reads it" in messages(outcome, "DBS405")


def test_a_spec_ia3_or_dylora_dropout_that_reaches_no_layer_is_dbs632():
    from test_rules import DOG, STEPS, hits_of

    from dbspec.compiler import rules

    block = '[[adapter.blocks]]\npattern = "ff"\nkind = "{}"\nrank = 4\nalpha = 4.0\n'
    for kind in ("ia3", "dylora"):
        spec = f'[adapter]\nkind = "{kind}"\ndropout = 0.1\nbypass = true\n' + DOG + STEPS
        assert hits_of(rules.host_dropout_unread, spec + block.format("lora")) == [], kind
        assert [h[0] for h in hits_of(rules.host_dropout_unread, spec + block.format("boft"))] == ["DBS632"]
        off = spec.replace("bypass = true\n", "")
        assert [h[0] for h in hits_of(rules.host_dropout_unread, off + block.format("lora"))] == ["DBS632"]
        assert hits_of(rules.mixed_block_kinds, spec + block.format("loha")) == [], kind
        diag = hits_of(rules.mixed_block_kinds, spec + block.format("diag-oft"))
        assert ("adapter", "dropout") in {h[2] for h in diag}, kind


@pytest.mark.parametrize("family", ["sd", "flux"])
@pytest.mark.parametrize("network", ["locon", "lokr", "ia3", "dylora"])
@pytest.mark.parametrize("entry", ["glora", "tlora"])
def test_glora_and_tlora_entries_take_the_bypass_dropouts(tmp_path, family, network, entry):
    """GLoRAModule's and TLoraModule's bypass forward drop their update by the network's dropout, GLoRA's
    masking its pairs' ranks (was DBS403): the adapter's `bypass` and output_dropout, which
    runtime/mixed_kinds.py kind_adapter hands their blocks
    (tests/runtime/test_lycoris_network_dropouts_entries.py)."""
    from test_convert_kohya_refusals_audit import _flux

    preset = _sd(entry) if family == "sd" else _flux(entry)
    args = f'"algo={network}" "bypass_mode=True" "dropout=0.1" "rank_dropout=0.2"'
    a = plan_of(expressible(_convert(tmp_path, family, args, preset)), tmp_path, PLAN_BASE[family]).adapter
    assert (a.bypass, a.output_dropout) == (True, 0.1)
    # GLoRA's pairs' masks (and a LoCon network's own layers'); T-LoRA's none
    assert a.rank_dropout == (0.2 if entry == "glora" or network == "locon" else 0.0)


def test_a_lora_adapters_bypass_beside_glora_blocks_acts_with_a_dropout_alone():
    from test_rules import DOG, STEPS, hits_of

    from dbspec.compiler import rules

    spec = '[adapter]\nkind = "lora"\nbypass = true\n' + DOG + STEPS
    spec += "[[adapter.blocks]]\npattern = 'up'\nkind = \"glora\"\nrank = 4\nalpha = 1.0\n"
    assert [h[0] for h in hits_of(rules.dylora_bypass_runs, spec)] == ["DBS216"]  # the same update
    dropped = spec.replace("bypass = true\n", "bypass = true\noutput_dropout = 0.1\n")
    assert hits_of(rules.dylora_bypass_runs, dropped) == []
    assert hits_of(rules.mixed_block_kinds, dropped) == []


def test_a_zero_dropout_there_is_reported_off(tmp_path):
    from convert_kit import fate

    outcome = expressible(_convert(tmp_path, "sd", '"algo=ia3" "bypass_mode=True" "dropout=0"', _sd("locon")))
    assert fate(outcome, "network_args dropout") == "inert"
    assert plan_of(outcome, tmp_path, PLAN_BASE["sd"]).adapter.output_dropout == 0.0
