"""A LyCORIS Diag-OFT network's BOFT entries, and a BOFT network's Diag-OFT entries (issue 12; were DBS403):
a Diag-OFT adapter whose blocks of kind boft hold the BOFT layers (spec OftBlock `kind`), a BOFT network's
own layers such blocks beside its Diag-OFT entries. The plans and the rule here;
tests/runtime/test_lycoris_oft_pair.py compares the layers with lycoris-lora 4.1.3's."""

from __future__ import annotations

from convert_kit import expressible, plan_of
from test_convert_kohya_refusals_audit import PLAN_BASE, _convert, _flux, _sd
from test_rules import DOG, STEPS, hits_of

from dbspec.compiler import rules


def test_a_diag_oft_networks_boft_entries_are_boft_blocks(tmp_path):
    args = '"algo=diag-oft" "constraint=0.001" "rescaled=True" "rank_dropout=0.1"'
    outcome = expressible(_convert(tmp_path, "sd", args, _sd("boft", "dim = 8")))
    a = plan_of(outcome, tmp_path, PLAN_BASE["sd"]).adapter
    assert (a.kind, a.rank_dropout, a.oft_constraint, a.oft_rescaled) == ("diag-oft", 0.1, 0.001, True)
    assert [(b.kind, b.rank, b.alpha) for b in a.blocks] == [("boft", 8, 0.001)]
    from dbspec.plan.summary import adapter_rows

    assert any(text.startswith("BOFT, block size hint 8") for _, text in adapter_rows(a))


def test_a_boft_networks_diag_oft_entries_host_its_layers(tmp_path):
    outcome = expressible(_convert(tmp_path, "sd", '"algo=boft" "conv_dim=8"', _sd("diag-oft", "dim = 8")))
    a = plan_of(outcome, tmp_path, PLAN_BASE["sd"]).adapter
    # the network's dim the adapter's block size, the entries' own (8) their blocks', the network's own layers
    # boft blocks at its dim
    assert a.kind == "diag-oft" and a.oft_block_size == 4
    assert sorted((b.kind, b.rank) for b in a.blocks) == [("adapter", 8), ("boft", 4)]


def test_on_flux_too(tmp_path):
    outcome = expressible(_convert(tmp_path, "flux", '"algo=diag-oft"', _flux("boft", "dim = 18")))
    a = plan_of(outcome, tmp_path, PLAN_BASE["flux"]).adapter
    assert a.kind == "diag-oft" and [b.kind for b in a.blocks if b.kind != "adapter"] == ["boft"]


def test_the_rule_holds_boft_blocks_on_a_lycoris_form_diag_oft_adapter_alone():
    block = '[[adapter.blocks]]\npattern = "ff"\nkind = "{}"\nblock_size = 4\n'
    diag = '[adapter]\nkind = "diag-oft"\nrank_dropout = 0.1\n' + DOG + STEPS
    assert hits_of(rules.mixed_block_kinds, diag + block.format("boft")) == []
    kohya = diag.replace('"diag-oft"\n', '"diag-oft"\nform = "kohya"\n').replace("rank_dropout = 0.1\n", "")
    assert [h[0] for h in hits_of(rules.mixed_block_kinds, kohya + block.format("boft"))] == ["DBS578"]
    boft = '[adapter]\nkind = "boft"\n' + DOG + STEPS
    assert [h[0] for h in hits_of(rules.mixed_block_kinds, boft + block.format("diag-oft"))] == ["DBS578"]


def test_entries_own_bypass_converts_and_its_plan_file_is_valid(tmp_path):
    """A BOFT entry's own bypass_mode on a Diag-OFT network, an IA^3 entry's on a T-LoRA network, a Diag-OFT
    / BOFT / IA^3 / DyLoRA entry's on a full or IA^3 network (were DBS403): their block's `bypass`; and the
    plan's blocks with a bypass of their own pass plan-file validation as the spec rule passes them
    (plan.model.own_bypass_fits: plan/validate.py had refused a T-LoRA adapter's Diag-OFT block and an
    IA^3 adapter's own block with their own bypass)."""
    from dbspec.plan.validate import plan_problems

    for name, network, entry, extra in (
        ("pair", "diag-oft", "boft", "dim = 8\nbypass_mode = true"),
        ("tlora_ia3", "tlora", "ia3", "bypass_mode = true"),
        ("tlora_oft", "tlora", "diag-oft", "bypass_mode = true"),
        ("ia3_own", "ia3", "ia3", "bypass_mode = true"),
        ("full_oft", "full", "diag-oft", "bypass_mode = true"),
        ("full_ia3", "full", "ia3", "bypass_mode = true"),
        ("full_dylora", "full", "dylora", "dim = 4\nbypass_mode = true"),
        ("ia3_boft", "ia3", "boft", "bypass_mode = true"),
    ):
        (tmp_path / name).mkdir()
        outcome = expressible(_convert(tmp_path / name, "sd", f'"algo={network}"', _sd(entry, extra)))
        plan = plan_of(outcome, tmp_path / name, PLAN_BASE["sd"])
        assert [b.bypass for b in plan.adapter.blocks] == [True], name
        assert plan_problems(plan) == [], name
