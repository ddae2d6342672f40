"""lycoris.kohya's `rank_dropout` on a LoCon or LoHa network beside a preset file's entries of LyCORIS's
other algorithms on SD 1.x (issue 12; was DBS403, a spec's DBS578): LyCORIS hands rank_dropout to every
module, FullModule masks its copy's update rows, DiagOFTModule drops its rotations' entries, IA3Module,
ButterflyOFTModule, DyLoraModule and GLoRAModule outside bypass_mode never read it, so the adapter's
rank_dropout with its blocks of those kinds, the LoCon / LoHa layers drawing their own row masks
(tests/runtime/test_lycoris_rank_dropout_kinds.py holds the training forwards to lycoris-lora 4.1.3's
network). T-LoRA entries and a LoKr network's (kohya stops: DBS402) stay refused."""

from __future__ import annotations

from convert_kit import codes, expressible, messages, plan_of
from test_convert_kohya_lycoris_entry_opts import FULL, _convert

ENTRIES = """\
[module_algo_map.ResnetBlock2D]
algo = "locon"
weight_decompose = true
[module_algo_map.FeedForward]
algo = "full"
[module_algo_map.BasicTransformerBlock]
algo = "dylora"
block_size = 4
[module_algo_map.Downsample2D]
algo = "diag-oft"
dim = 4
[module_algo_map.Upsample2D]
algo = "ia3"
[module_algo_map.CLIPMLP]
algo = "boft"
dim = 4
[module_algo_map.CLIPAttention]
algo = "glora"
"""
KINDS = {"lora", "full", "dylora", "diag-oft", "ia3"}


def test_networks_rank_dropout_beside_other_kinds(tmp_path):
    """Each network keeps the rate (and module_dropout) on its adapter: LoConModule's row masks on the
    LoCon layers (rank_dropout_form "lycoris"), decomposed ones too, every other kind's block built beside
    them; kohya's create_network passes no rank_dropout_scale. A full / IA^3 network's too (was DBS403:
    FullModule draws its own masks, IA3Module none, its entries theirs), and a GLoRA network's outside
    bypass_mode (was DBS403: GLoRAModule draws none there), and a DyLoRA one's (DyLoraModule never reads
    it)."""
    for algo, kind in (
        ("locon", "lora"),
        ("loha", "loha"),
        ("full", "full"),
        ("ia3", "ia3"),
        ("glora", "glora"),
        ("dylora", "dylora"),
    ):
        (tmp_path / algo).mkdir()
        args = '"rank_dropout=0.25" "module_dropout=0.1"'
        outcome = expressible(_convert(tmp_path / algo, FULL + ENTRIES, algo, args))
        a = plan_of(outcome, tmp_path / algo).adapter
        assert (a.kind, a.rank_dropout, a.rank_dropout_form, a.module_dropout) == (kind, 0.25, "lycoris", 0.1)
        assert not a.rank_dropout_scale
        assert {b.kind for b in a.blocks} >= KINDS - {kind}
        assert {b.kind for b in a.text_encoder_blocks} >= {"boft", "glora"} - {kind}
        decomposed = {b.kind for b in (*a.blocks, *a.text_encoder_blocks) if b.dora == "on"}
        assert decomposed == {"adapter" if algo == "locon" else "lora"}  # the LoCon ResNets
    # a full / IA^3 network without LoCon entries: its rate, kohya's form (none of its layers LoCon)
    (tmp_path / "plain").mkdir()
    text = FULL + ENTRIES.replace('[module_algo_map.ResnetBlock2D]\nalgo = "locon"', "[module_algo_map.X]")
    outcome = expressible(_convert(tmp_path / "plain", text, "full", '"rank_dropout=0.25"'))
    a = plan_of(outcome, tmp_path / "plain").adapter
    assert (a.rank_dropout, a.rank_dropout_form) == (0.25, "kohya") and "lora" not in {
        b.kind for b in a.blocks
    }


def test_rank_dropout_beside_tlora_entries_and_on_lokr_networks(tmp_path):
    """T-LoRA entries beside the rank dropout convert (was DBS403, a spec's DBS578: TLoraModule never reads
    it, tests/runtime/test_lycoris_tlora_rank_dropout.py); a LoKr network's rank_dropout outside bypass_mode
    stops kohya (LokrModule's CPU mask, LyCORIS issue #291): DBS402."""
    tlora = FULL + ENTRIES.replace('algo = "ia3"', 'algo = "tlora"').replace(
        "[module_algo_map.Upsample2D]", "[module_algo_map.Transformer2DModel]"
    )
    (tmp_path / "tlora").mkdir()
    outcome = expressible(_convert(tmp_path / "tlora", tlora, "locon", '"rank_dropout=0.25"'))
    a = plan_of(outcome, tmp_path / "tlora").adapter
    assert (a.rank_dropout, a.rank_dropout_form) == (0.25, "lycoris") and "tlora" in {
        b.kind for b in a.blocks
    }
    (tmp_path / "lokr").mkdir()
    outcome = _convert(tmp_path / "lokr", FULL + ENTRIES, "lokr", '"rank_dropout=0.25"')
    assert "DBS402" in codes(outcome) and "rank_dropout" in messages(outcome, "DBS402")


def test_spec_rank_dropout_beside_blocks_of_other_kinds():
    """On a spec: a lora adapter's LyCORIS rank_dropout and a loha, full, ia3, glora or dylora adapter's
    beside
    blocks of kind full, ia3, diag-oft, boft, glora, dylora and tlora (TLoraModule never reads it) pass
    mixed_block_kinds; with kohya's rank-dropout form still DBS578."""
    from dbspec.compiler import rules
    from test_rules import DOG, STEPS, hits_of

    def block(kind: str) -> str:
        unit = "unit = 2\n" if kind == "dylora" else ""
        return f"[[adapter.blocks]]\npattern = 'ff'\nkind = '{kind}'\nrank = 4\nalpha = 1.0\n{unit}"

    lora = '[adapter]\nkind = "lora"\nrank = 8\nrank_dropout = 0.2\nrank_dropout_form = "lycoris"\n'
    loha = '[adapter]\nkind = "loha"\nrank = 8\nrank_dropout = 0.2\n'
    full, ia3 = (
        '[adapter]\nkind = "full"\nrank_dropout = 0.2\n',
        '[adapter]\nkind = "ia3"\nrank_dropout = 0.2\n',
    )
    glora = '[adapter]\nkind = "glora"\nrank = 4\nrank_dropout = 0.2\n'
    dylora = '[adapter]\nkind = "dylora"\nrank = 4\nunit = 2\nrank_dropout = 0.2\n'
    for adapter in (lora, loha, full, ia3, glora, dylora):
        for kind in ("full", "ia3", "diag-oft", "boft", "glora", "dylora", "tlora"):
            assert hits_of(rules.mixed_block_kinds, DOG + STEPS + adapter + block(kind)) == [], kind
    # an IA^3 adapter's rank_dropout changes something beside blocks whose layers draw it (DBS590 without)
    assert hits_of(rules.ia3_rank_dropout_needs_norms, DOG + STEPS + ia3 + block("lora")) == []
    assert hits_of(rules.ia3_rank_dropout_needs_norms, DOG + STEPS + ia3 + block("boft")) == [
        ("DBS590", "warning", ("adapter", "rank_dropout"))
    ]
    # nor DBS556 a GLoRA adapter's (its own layers draw none outside bypass, its LoRA blocks do)
    assert hits_of(rules.glora_dropouts_need_bypass, DOG + STEPS + glora + block("lora")) == []
    assert hits_of(rules.glora_dropouts_need_bypass, DOG + STEPS + glora + block("boft")) == [
        ("DBS556", "warning", ("adapter", "rank_dropout"))
    ]
    # DBS621: a DyLoRA adapter's rank_dropout changes nothing without such blocks
    assert hits_of(rules.rank_dropout_needs_blocks, DOG + STEPS + dylora + block("full")) == []
    assert hits_of(rules.rank_dropout_needs_blocks, DOG + STEPS + dylora + block("ia3")) == [
        ("DBS621", "warning", ("adapter", "rank_dropout"))
    ]
    kohya = lora.replace('rank_dropout_form = "lycoris"\n', "")
    assert hits_of(rules.mixed_block_kinds, DOG + STEPS + kohya + block("full")) == [
        ("DBS578", "error", ("adapter", "rank_dropout"))
    ]
