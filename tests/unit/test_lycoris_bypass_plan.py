"""LyCORIS's bypass_mode and GLoRA's switches in the plan: what the compiler settles from the spec (GLoRA's
rank_dropout and dropout only with bypass, DBS556 otherwise), what the summary shows, that a plan file
round-trips, and what a plan file may hold (plan_problems)."""

from __future__ import annotations

import attrs
import pytest

from dbspec.plan.io import legacy_run_data, plan_from_json, plan_to_data, plan_to_json
from dbspec.plan.summary import adapter_rows
from dbspec.plan.validate import plan_problems
from tests.unit.hubspecs import SD15, empty_hub_cache, plan_hub_spec  # noqa: F401 - the fixture


def _planned(tmp_path, adapter: str):
    return plan_hub_spec(tmp_path, f"[adapter]\n{adapter}\n[optimizer]\nlr = 1e-4\n", SD15)


def _plan(tmp_path, adapter: str):
    planned = _planned(tmp_path, adapter)
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    return planned.plan


def test_glora_switches_settle_in_the_plan(tmp_path):
    table = 'kind = "glora"\nscalar = true\nbypass = true\nrank_dropout = 0.4\ndropout = 0.1\n'
    table += "module_dropout = 0.2"
    plan = _plan(tmp_path, table)
    a = plan.adapter
    assert (a.scalar, a.bypass, a.rank_dropout, a.bypass_dropout, a.module_dropout) == (
        True,
        True,
        0.4,
        0.1,
        0.2,
    )
    assert plan_from_json(plan_to_json(plan)).adapter == a
    assert not plan_problems(plan)
    assert "below 0.4" in dict(adapter_rows(a))["  bypass"]


def test_glora_dropouts_without_bypass_settle_at_zero_with_a_warning(tmp_path):
    planned = _planned(tmp_path, 'kind = "glora"\nrank_dropout = 0.4\ndropout = 0.1\nmodule_dropout = 0.2')
    assert planned.plan is not None
    a = planned.plan.adapter
    assert (a.bypass, a.rank_dropout, a.bypass_dropout, a.module_dropout) == (False, 0.0, 0.0, 0.2)
    warned = {d.path for d in planned.diagnostics if d.code == "DBS556"}
    assert warned == {"adapter.rank_dropout", "adapter.dropout"}
    assert a.norm_rank_dropout == 0.0  # no norm offsets to draw it


@pytest.mark.parametrize(
    "table, rates",
    [  # LyCORIS hands the NormModules the network's rank_dropout, which GLoRA outside bypass never reads
        ('kind = "glora"\nrank_dropout = 0.4', (0.0, 0.4)),
        ('kind = "glora"\nnorm_rank_dropout = 0.3', (0.0, 0.3)),
        ('kind = "glora"\nbypass = true\nrank_dropout = 0.4', (0.4, 0.4)),
        ('kind = "boft"\nnorm_rank_dropout = 0.3', (0.0, 0.3)),
        ('kind = "dylora"\nnorm_rank_dropout = 0.3', (0.0, 0.3)),
        ('kind = "ia3"\nrank_dropout = 0.4', (0.4, 0.4)),
        ('kind = "lora"\nrank_dropout = 0.4', (0.4, 0.4)),
    ],
)
def test_norm_rank_dropout_settles_in_the_plan(tmp_path, table, rates):
    """adapter.norm_rank_dropout (default: the adapter's rank_dropout) is the norm offsets' rank dropout
    (plan.adapter.norm_rank_dropout), whether or not the adapter's layers draw one (plan rank_dropout)."""
    planned = _planned(tmp_path, table + '\ndenoiser_norms = ["norm1"]')
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    a = planned.plan.adapter
    assert (a.rank_dropout, a.norm_rank_dropout) == rates
    assert plan_from_json(plan_to_json(planned.plan)).adapter == a
    row = dict(adapter_rows(a))["  norm rank dropout"]
    assert row.startswith(f"{rates[1]:g} on the norm offsets") and ("alone" in row) == (rates[0] == 0)
    glora = [d.message for d in planned.diagnostics if d.code == "DBS556"]
    assert all("only the norm offsets draw it" in m for m in glora)
    assert "DBS623" not in {d.code for d in planned.diagnostics}


@pytest.mark.parametrize("kind", ["diag-oft", "boft"])
def test_oft_bypass_settles_in_the_plan(tmp_path, kind):
    plan = _plan(tmp_path, f'kind = "{kind}"\nblock_size = 10\nbypass = true')
    assert plan.adapter.bypass and not plan_problems(plan)
    assert "bias too" in dict(adapter_rows(plan.adapter))["  bypass"]


def test_ia3_bypass_settles_in_the_plan(tmp_path):
    plan = _plan(tmp_path, 'kind = "ia3"\nbypass = true')
    assert plan.adapter.bypass and not plan_problems(plan)
    assert plan_from_json(plan_to_json(plan)).adapter == plan.adapter
    assert "scaled, its bias too" in dict(adapter_rows(plan.adapter))["  bypass"]
    assert not _plan(tmp_path, 'kind = "ia3"').adapter.bypass


def test_ia3_blocks_take_the_adapters_bypass(tmp_path):
    """A LoRA adapter's `bypass` with a block of kind ia3 (a LyCORIS map entry): settled, no DBS216."""
    table = 'kind = "lora"\nrank = 4\nbypass = true\n[[adapter.blocks]]\npattern = "ff"\nkind = "ia3"\n'
    table += "rank = 1\nalpha = 1.0"
    planned = _planned(tmp_path, table)
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    assert planned.plan.adapter.bypass and not plan_problems(planned.plan)
    assert "DBS216" not in {d.code for d in planned.diagnostics}
    assert "IA^3 scales" in dict(adapter_rows(planned.plan.adapter))["  bypass"]


def test_a_plan_file_with_bypass_on_another_kind_is_refused(tmp_path):
    plan = _plan(tmp_path, 'kind = "loha"')
    broken = attrs.evolve(plan, adapter=attrs.evolve(plan.adapter, bypass=True))
    assert any("adapter.bypass is a GLoRA" in p for p in plan_problems(broken))
    glora = _plan(tmp_path, 'kind = "glora"')
    dropped = attrs.evolve(glora, adapter=attrs.evolve(glora.adapter, bypass_dropout=0.1))
    assert any("bypass forward only" in p for p in plan_problems(dropped))


def test_blocks_own_bypass_settles_per_block(tmp_path):
    """A block's own `bypass` (a LyCORIS map entry's bypass_mode) settles per block: its own "on" / "off", the
    others the adapter's; the summary names the blocks whose bypass_mode differs; a plan file round-trips and
    one giving a LoRA block its own is refused (DBS592 in specs)."""
    table = 'kind = "lora"\nrank = 4\nbypass = true\n'
    table += '[[adapter.blocks]]\npattern = "ff"\nkind = "diag-oft"\nrank = 4\nalpha = 0.0\nbypass = "off"\n'
    table += '[[adapter.blocks]]\npattern = "attn1"\nkind = "ia3"\nrank = 1\nalpha = 1.0\n'
    table += '[[adapter.blocks]]\npattern = "attn2"\nrank = 8\nalpha = 1.0\n'
    plan = _plan(tmp_path, table)
    a = plan.adapter
    assert a.bypass and [b.bypass for b in a.blocks] == [False, True, True]
    assert not plan_problems(plan) and plan_from_json(plan_to_json(plan)).adapter == a
    # a plan whose blocks take the adapter's hashes as runs before the field did; a block's own does not
    legacy = legacy_run_data(plan_to_data(plan), 3)
    assert ["bypass" in b for b in legacy["adapter"]["blocks"]] == [True, False, False]
    rows = dict(adapter_rows(a))
    assert "bypass_mode off" in rows["  block /ff/"] and "bypass_mode" not in rows["  block /attn1/"]
    lora = attrs.evolve(a.blocks[2], bypass=False)
    broken = attrs.evolve(plan, adapter=attrs.evolve(a, blocks=(*a.blocks[:2], lora)))
    assert any("a block's own bypass acts on" in p for p in plan_problems(broken))
    off = _plan(tmp_path, table.replace("bypass = true\n", "", 1).replace('bypass = "off"', 'bypass = "on"'))
    assert not off.adapter.bypass and [b.bypass for b in off.adapter.blocks] == [True, False, False]


def test_dylora_and_glora_blocks_own_bypass_settle_per_block(tmp_path):
    """A DyLoRA adapter's Diag-OFT / IA^3 blocks and a GLoRA adapter's DyLoRA block with a bypass of their own
    (LyCORIS map entries' bypass_mode; was DBS403 converted) settle per block; a plan file giving a DyLoRA
    adapter's own layers (kind "adapter") their own passes (an algo=dylora network's own entries' bypass_mode;
    was DBS592 in specs), one giving a GLoRA adapter's own layers their own is refused, and a GLoRA adapter's
    DyLoRA block of several blocks in bypass (DBS549)."""
    table = 'kind = "dylora"\nrank = 4\nunit = 4\ndylora_form = "lycoris"\nbypass = true\n'
    table += '[[adapter.blocks]]\npattern = "ff"\nkind = "diag-oft"\nrank = 4\nalpha = 0.0\nbypass = "off"\n'
    table += '[[adapter.blocks]]\npattern = "attn1"\nkind = "ia3"\nrank = 1\nalpha = 1.0\n'
    table += '[[adapter.blocks]]\npattern = "attn2"\nrank = 4\nalpha = 1.0\n'
    plan = _plan(tmp_path, table)
    a = plan.adapter
    assert [(b.kind, b.bypass) for b in a.blocks] == [("diag-oft", False), ("ia3", True), ("adapter", True)]
    assert not plan_problems(plan) and plan_from_json(plan_to_json(plan)).adapter == a
    own = attrs.evolve(a.blocks[2], bypass=False)
    assert not plan_problems(attrs.evolve(plan, adapter=attrs.evolve(a, blocks=(*a.blocks[:2], own))))
    table = 'kind = "glora"\nrank = 4\n'
    table += '[[adapter.blocks]]\npattern = "ff"\nkind = "dylora"\nrank = 4\nalpha = 1.0\nunit = 4\n'
    table += 'bypass = "on"\n'
    glora = _plan(tmp_path, table)
    assert not glora.adapter.bypass and [b.bypass for b in glora.adapter.blocks] == [True]
    assert not plan_problems(glora)
    several = attrs.evolve(glora.adapter.blocks[0], rank=8)
    broken = attrs.evolve(glora, adapter=attrs.evolve(glora.adapter, blocks=(several,)))
    assert any("several blocks per layer" in p for p in plan_problems(broken))
    own = attrs.evolve(glora.adapter.blocks[0], kind="adapter")
    broken = attrs.evolve(glora, adapter=attrs.evolve(glora.adapter, blocks=(own,)))
    assert any("a block's own bypass acts on" in p for p in plan_problems(broken))


def test_tlora_blocks_own_bypass_plan_file_reads_back(tmp_path):
    """A tlora adapter's own blocks with a bypass of their own (an algo=tlora preset entry's bypass_mode) pass
    plan_problems, so the run's plan.json reads back (`dbspec sample`, resume); a Diag-OFT block's own on a
    tlora adapter too, as the spec rule admits it (it had been refused here: plan.model.own_bypass_fits now
    decides both; tests/runtime/test_lycoris_tlora_mixed_opts.py checks those layers against LyCORIS), a
    LoRA block's own is refused."""
    table = (
        'kind = "tlora"\nrank = 4\n[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 1.0\nbypass = "on"\n'
    )
    plan = _plan(tmp_path, table)
    a = plan.adapter
    assert not a.bypass and [b.bypass for b in a.blocks] == [True]
    assert not plan_problems(plan) and plan_from_json(plan_to_json(plan)).adapter == a
    oft = attrs.evolve(a.blocks[0], kind="diag-oft")
    assert not plan_problems(attrs.evolve(plan, adapter=attrs.evolve(a, blocks=(oft,))))
    lora = attrs.evolve(a.blocks[0], kind="lora")
    broken = attrs.evolve(plan, adapter=attrs.evolve(a, blocks=(lora,)))
    assert any("a block's own bypass acts on" in p for p in plan_problems(broken))


@pytest.mark.parametrize("kind", ["diag-oft", "boft"])
def test_oft_adapter_blocks_own_bypass_pair_by_block(tmp_path, kind):
    """A Diag-OFT / BOFT adapter's own blocks with a bypass of their own (an algo=diag-oft / boft network's
    entries of its own algorithm with their own bypass_mode; was DBS403 converted) settle on the block they
    came from: the plan puts the `exclude` patterns' rank-0 blocks first, which pairing the spec's blocks with
    the plan's by position gave the spec's first block's bypass; the summary names it, a plan file
    round-trips."""
    table = f'kind = "{kind}"\nblock_size = 4\nbypass = true\nexclude = ["attn2", "proj_out"]\n'
    table += '[[adapter.blocks]]\npattern = "ff"\nblock_size = 8\nbypass = "off"\n'
    table += '[[adapter.blocks]]\npattern = "attn1"\nblock_size = 2\n'
    table += '[[adapter.text_encoder_blocks]]\npattern = "mlp"\nblock_size = 8\nbypass = "off"\n'
    plan = _plan(tmp_path, table.replace("kind =", "[adapter]\nkind =", 0))
    a = plan.adapter
    assert [(b.pattern, b.rank, b.bypass) for b in a.blocks] == [
        ("attn2", 0, True),
        ("proj_out", 0, True),
        ("ff", 8, False),
        ("attn1", 2, True),
    ]
    assert [(b.pattern, b.bypass) for b in a.text_encoder_blocks] == [
        ("attn2", True),
        ("proj_out", True),
        ("mlp", False),
    ]
    assert not plan_problems(plan) and plan_from_json(plan_to_json(plan)).adapter == a
    rows = dict(adapter_rows(a))
    assert "bypass_mode off" in rows["  block /ff/"] and "bypass_mode" not in rows["  block /attn1/"]
    on = _plan(tmp_path, table.replace("bypass = true\n", "", 1).replace('"off"', '"on"'))
    assert [b.bypass for b in on.adapter.blocks] == [False, False, True, False]
    assert "bypass_mode on" in dict(adapter_rows(on.adapter))["  block /ff/"]
