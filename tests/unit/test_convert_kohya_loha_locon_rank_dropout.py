"""A LoHa network's `rank_dropout` beside a preset file's LoCon entries (issue 12; was DBS403, a spec's
DBS578): lycoris.kohya hands the network's rank_dropout to every module it builds, LohaModule and
LoConModule alike, each drawing its own row mask in its forward (LoConModule's over its update's output rows,
unscaled: kohya's create_network never passes rank_dropout_scale). The plan says so on the LoHa adapter:
rank_dropout_form "lycoris" (the form its LoCon blocks' layers draw;
tests/runtime/test_lycoris_loha_locon_rank_dropout.py checks the training forwards against lycoris-lora
4.1.3's network)."""

from __future__ import annotations

from convert_kit import codes, errors, expressible, messages, plan_of
from test_convert_kohya_lycoris_entry_opts import FULL, _convert

LOCON = '[module_algo_map.ResnetBlock2D]\nalgo = "locon"\n[name_algo_map.conv_in]\nalgo = "lora"\n'


def test_loha_network_rank_dropout_beside_locon_entries(tmp_path):
    """Both kinds take the network's rate and module_dropout, the LoCon layers LoConModule's row mask
    (unscaled), decomposed by an entry's weight_decompose or not; the LoHa layers LohaModule's (unscaled)."""
    text = FULL + LOCON + "weight_decompose = true\n"  # conv_in's LoRA decomposed, the ResNets not
    outcome = expressible(_convert(tmp_path, text, "loha", '"rank_dropout=0.25" "module_dropout=0.1"'))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank_dropout, a.module_dropout, a.rank_dropout_form) == ("loha", 0.25, 0.1, "lycoris")
    assert not a.rank_dropout_scale  # kohya's create_network never passes rank_dropout_scale
    kinds = {b.pattern: (b.kind, b.dora) for b in a.blocks}
    assert ("lora", "on") in kinds.values() and ("lora", "adapter") in kinds.values(), kinds
    # a LoHa network without other algorithms: its entries' own weight_decompose beside rank_dropout too (was
    # DBS403, a spec's DBS583), the decomposed LoHa layers drawing LohaModule's mask (runtime/lycoris_dora.py)
    (tmp_path / "pure").mkdir()
    text = FULL + "[module_algo_map.FeedForward]\nweight_decompose = true\n"
    outcome = expressible(_convert(tmp_path / "pure", text, "loha", '"rank_dropout=0.25"'))
    a = plan_of(outcome, tmp_path / "pure").adapter
    assert (a.rank_dropout_form, [(b.kind, b.dora) for b in a.blocks]) == ("kohya", [("adapter", "on")])
    # without rank_dropout the plan keeps the default form
    (tmp_path / "none").mkdir()
    outcome = expressible(_convert(tmp_path / "none", FULL + LOCON, "loha", '"module_dropout=0.1"'))
    assert plan_of(outcome, tmp_path / "none").adapter.rank_dropout_form == "kohya"


def test_loha_network_rank_dropout_still_refused_elsewhere(tmp_path):
    """In bypass_mode (LoConModule's bypass mask over its ranks) it converts now (was DBS403): the loha
    adapter's rank_dropout_form "lycoris_bypass" (test_lycoris_loha_bypass_rank_dropout_alone.py); on a LoKr
    network kohya stops (LokrModule's mask drawn on the CPU, LyCORIS issue #291): DBS402."""
    (tmp_path / "bypass").mkdir()
    outcome = _convert(tmp_path / "bypass", FULL + LOCON, "loha", '"rank_dropout=0.25" "bypass_mode=True"')
    a = plan_of(expressible(outcome), tmp_path / "bypass").adapter
    assert (a.rank_dropout, a.rank_dropout_form, a.output_dropout) == (0.25, "lycoris_bypass", 0.0)
    for name, text, algo, args, code in (("lokr", FULL + LOCON, "lokr", "", "DBS402"),):
        (tmp_path / name).mkdir()
        outcome = _convert(tmp_path / name, text, algo, '"rank_dropout=0.25"' + args)
        assert code in codes(outcome), (name, errors(outcome))
        assert "rank_dropout" in messages(outcome, code) or "bypass_mode" in messages(outcome, code), name


def test_loha_spec_rank_dropout_beside_lora_blocks():
    """On a spec: a loha adapter's rank_dropout beside blocks of kind lora passes mixed_block_kinds; with
    the adapter's rank_dropout_scale (the LoCon layers would not rescale) or bypass, still DBS578."""
    from dbspec.compiler import rules
    from test_rules import DOG, STEPS, hits_of

    block = "[[adapter.blocks]]\npattern = 'ff'\nkind = 'lora'\nrank = 4\nalpha = 1.0\n"
    spec = DOG + STEPS + '[adapter]\nkind = "loha"\nrank = 8\nrank_dropout = 0.2\n'
    assert hits_of(rules.mixed_block_kinds, spec + block) == []
    for extra in ("rank_dropout_scale = true\n", "bypass = true\n"):
        assert hits_of(rules.mixed_block_kinds, spec + extra + block) == [
            ("DBS578", "error", ("adapter", "rank_dropout"))
        ], extra
