"""A network's `use_scalar`, `use_tucker` and `full_matrix` beside its preset file's entries of other
algorithms on SD 1.x/2.x and SDXL (issue 12; were DBS403, a spec's DBS578): LyCORIS hands them to every
module and LoConModule / LohaModule / LokrModule read the first two (GLoRAModule use_scalar), LokrModule the
third. The adapter's `scalar` / `tucker` are every LoRA / LoHa / LoKr layer's in a run of several kinds (a
block's own replacing them); a full / IA^3 / DyLoRA network's use_scalar is its entries' blocks' `scalar`, a
LoCon / LoHa / full / IA^3 / DyLoRA / GLoRA network's full_matrix its LoKr entries' blocks' `full_matrix`.
tests/runtime/test_lycoris_network_switches_entries.py compares the layers with lycoris-lora 4.1.3. Also a
Diag-OFT / BOFT network's DyLoRA entries (its block_size theirs, as create_network hands it every module)."""

from __future__ import annotations

import pytest
from convert_kit import expressible, fate, messages, plan_of
from test_convert_kohya_lycoris_entry_opts import FULL, _convert
from test_rules import DOG, STEPS, hits_of

from dbspec.compiler import rules

# LoHa on the ResNets (3x3 convolutions), LoKr on the feed-forwards and CLIP's MLPs, a LoHa entry with its
# own use_scalar / use_tucker off on the down-samplers
ENTRIES = (
    FULL
    + """
[module_algo_map.ResnetBlock2D]
algo = "loha"
[module_algo_map.FeedForward]
algo = "lokr"
[module_algo_map.Downsample2D]
algo = "loha"
use_scalar = false
use_tucker = false
[module_algo_map.CLIPMLP]
algo = "lokr"
"""
)


def _kinds(blocks) -> dict[str, tuple]:
    """{kind: (scalar, tucker, full_matrix)} of the blocks of each kind (one set of values per kind)."""
    out: dict[str, set] = {}
    for b in blocks:
        out.setdefault(b.kind, set()).add((b.scalar, b.tucker, b.full_matrix))
    return {k: v.pop() if len(v) == 1 else tuple(sorted(v)) for k, v in out.items()}


def test_locon_network_scalar_and_tucker_are_the_adapters(tmp_path):
    outcome = expressible(_convert(tmp_path, ENTRIES, "locon", '"use_scalar=True" "use_tucker=True"'))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.scalar, a.tucker) == ("lora", True, True)
    # the ResNets' LoHa and the feed-forwards' LoKr inherit them; the down-samplers' entry turns both off
    assert _kinds(a.blocks) == {
        "loha": (("adapter", "adapter", "adapter"), ("off", "off", "adapter")),
        "lokr": ("adapter", "adapter", "adapter"),
    }
    assert _kinds(a.text_encoder_blocks) == {"lokr": ("adapter", "adapter", "adapter")}


@pytest.mark.parametrize("algo", ["full", "ia3", "dylora"])
def test_network_without_a_scalar_gives_its_entries_blocks_one(tmp_path, algo):
    args = '"use_scalar=True"' + (' "block_size=4"' if algo == "dylora" else "")
    outcome = expressible(_convert(tmp_path, ENTRIES, algo, args))
    a = plan_of(outcome, tmp_path).adapter
    assert {b.scalar for b in a.blocks if b.kind == "lokr"} == {"on"}
    # the down-samplers' entry: off, the adapter's (no scalar)
    assert sorted(b.scalar for b in a.blocks if b.kind == "loha") == ["adapter", "on"]
    assert [b.scalar for b in a.text_encoder_blocks] == ["on"]
    assert fate(outcome, "network_args use_scalar") == "mapped"


@pytest.mark.parametrize("algo", ["full", "ia3", "dylora", "tlora"])
def test_scalar_beside_glora_entries_is_their_blocks(tmp_path, algo):
    """GLoRAModule reads the network's use_scalar too: a network without a scalar of its own gives its GLoRA
    entries' blocks `scalar = "on"` (was DBS403; every GLoRA layer beside another kind takes one setting)."""
    text = FULL + '[module_algo_map.FeedForward]\nalgo = "glora"\n'
    if algo == "tlora":  # its entries take Linear and 1x1 layers alone
        text = text.replace(', "ResnetBlock2D", "Downsample2D", "Upsample2D"', "").replace(
            'unet_target_name = ["conv_in", "conv_out"]', "unet_target_name = []"
        )
    args = '"use_scalar=True"' + (' "block_size=4"' * (algo == "dylora"))
    outcome = expressible(_convert(tmp_path, text, algo, args))
    a = plan_of(outcome, tmp_path).adapter
    assert {b.scalar for b in a.blocks if b.kind == "glora"} == {"on"}
    assert fate(outcome, "network_args use_scalar") == "mapped"
    # an entry's own use_scalar = false wins over the network's, as create_single_module hands it
    (tmp_path / "off").mkdir()
    off = expressible(_convert(tmp_path / "off", text + "use_scalar = false\n", algo, args))
    assert {b.scalar for b in plan_of(off, tmp_path / "off").adapter.blocks if b.kind == "glora"} == {
        "adapter"
    }


@pytest.mark.parametrize("algo", ["locon", "loha", "full", "glora"])
def test_full_matrix_is_the_lokr_entries_blocks(tmp_path, algo):
    outcome = expressible(_convert(tmp_path, ENTRIES, algo, '"full_matrix=True"'))
    a = plan_of(outcome, tmp_path).adapter
    assert {b.full_matrix for b in (*a.blocks, *a.text_encoder_blocks) if b.kind == "lokr"} == {"on"}
    assert fate(outcome, "network_args full_matrix") == "mapped"


def test_full_matrix_without_lokr_layers_is_ignored(tmp_path):
    text = ENTRIES.replace('algo = "lokr"', 'algo = "loha"')
    outcome = expressible(_convert(tmp_path, text, "locon", '"full_matrix=True"'))
    assert fate(outcome, "network_args full_matrix") == "inert"
    assert not plan_of(outcome, tmp_path).adapter.full_matrix


def test_lokr_network_full_matrix_keeps_its_entries_tucker(tmp_path):
    """A lokr network's full_matrix leaves its own layers no Tucker form, its LoHa entries theirs."""
    args = '"full_matrix=True" "use_tucker=True" "use_scalar=True"'
    outcome = expressible(_convert(tmp_path, ENTRIES, "lokr", args))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.full_matrix, a.tucker, a.scalar) == ("lokr", True, False, True)
    # the plan's tucker off: the ResNets' LoHa blocks' own on, the down-samplers' off (the adapter's)
    assert _kinds(a.blocks)["loha"] == (("adapter", "on", "adapter"), ("off", "adapter", "adapter"))


LOHA = "[[adapter.blocks]]\npattern = 'ff'\nkind = 'loha'\nrank = 4\nalpha = 1.0\n"


@pytest.mark.parametrize("option", ["scalar = true", "tucker = true\nconv_rank = 4"])
def test_adapter_switches_beside_other_kinds_pass_the_check(option):
    body = DOG + STEPS + f'[adapter]\nkind = "lokr"\n{option}\n' + LOHA
    assert hits_of(rules.mixed_block_kinds, body) == []


def test_glora_blocks_take_their_own_scalar():
    """A GLoRA block's own scalar beside another kind is its GLoRA layers' (GLoRAModule's use_scalar), each
    GLoRA layer its block's (runtime/lycoris_glora.py): two blocks that differ pass (was DBS578)."""
    body = DOG + STEPS + '[adapter]\nkind = "lora"\nscalar = true\n' + LOHA.replace("'loha'", "'glora'")
    second = LOHA.replace("'loha'", "'glora'").replace("'ff'", "'attn'")
    spec = body + "scalar = 'off'\n" + second
    for rule in (rules.mixed_block_kinds, rules.block_scalar_kind, rules.block_scalar_fits):
        assert hits_of(rule, spec) == [], rule.__name__


@pytest.mark.parametrize("algo", ["locon", "full", "dylora"])
def test_on_flux_they_reach_the_fused_entries_alike(tmp_path, algo):
    """On Flux's fused Linears too (was DBS403; tests/runtime/test_lycoris_network_switches_entries.py
    compares kohya's modules): the LoKr entries' blocks take the network's full_matrix, and its use_scalar
    where the network's adapter has no scalar (recorded as theirs)."""
    from test_convert_lycoris_flow_preset_file import MIXED as FLUX_MIXED
    from test_convert_lycoris_flow_preset_file import _flux

    outcome = expressible(_flux(tmp_path, FLUX_MIXED, f'"algo={algo}" "use_scalar=1" "full_matrix=True"'))
    a = plan_of(outcome, tmp_path).adapter
    lokr = [b for b in a.blocks if b.kind == "lokr"]
    assert a.fused and lokr and {b.full_matrix for b in lokr} == {"on"}
    assert fate(outcome, "network_args full_matrix") == "mapped"
    if algo == "locon":  # the adapter's
        assert a.scalar and {b.scalar for b in a.blocks if b.kind in ("loha", "lokr")} == {"adapter"}
    else:
        assert {b.scalar for b in a.blocks if b.kind in ("loha", "lokr")} == {"on"}
        assert fate(outcome, "network_args use_scalar") == "mapped"


@pytest.mark.parametrize("algo", ["diag-oft", "boft"])
def test_oft_network_dylora_entries_are_a_dylora_network(tmp_path, algo):
    """A Diag-OFT / BOFT network's DyLoRA entries (was DBS403): a DyLoRA adapter in LyCORIS's form at the
    network's block_size whose own layers are OFT blocks at its dim and constraint
    (tests/runtime/test_lycoris_oft_network_dylora_entries.py)."""
    text = FULL + '[module_algo_map.FeedForward]\nalgo = "dylora"\n'
    outcome = expressible(_convert(tmp_path, text, algo, '"block_size=8" "constraint=0.001"'))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dylora_form, a.dylora_unit) == ("dylora", "lycoris", 8)
    assert {(b.kind, b.alpha) for b in a.blocks if b.kind == algo} == {(algo, 0.001)}


TLORA = FULL.replace(', "ResnetBlock2D", "Downsample2D", "Upsample2D"', "").replace(
    'unet_target_name = ["conv_in", "conv_out"]', "unet_target_name = []"
)


@pytest.mark.parametrize(
    ("entry", "args", "want"),
    [
        ("lokr", '"use_scalar=True" "factor=4" "full_matrix=True"', (4, "on", "on")),
        ("lokr", '"factor=4" "unbalanced_factorization=True"', (4, "adapter", "adapter")),
        ("loha", '"use_scalar=True"', (0, "adapter", "on")),
    ],
)
def test_tlora_network_switches_are_its_entries_blocks(tmp_path, entry, args, want):
    """A T-LoRA network's use_scalar, factor and LoKr switches (TLoraModule reads none; was DBS403): its
    LoCon / LoHa / LoKr entries' blocks' (spec TloraBlock;
    tests/runtime/test_lycoris_tlora_entry_switches.py)."""
    text = TLORA + f'[module_algo_map.FeedForward]\nalgo = "{entry}"\n'
    outcome = expressible(_convert(tmp_path, text, "tlora", args))
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "tlora"
    assert {(b.factor, b.full_matrix, b.scalar) for b in a.blocks if b.kind == entry} == {want}
    if "unbalanced" in args:
        assert {b.unbalanced_factorization for b in a.blocks if b.kind == entry} == {"on"}
    if "use_scalar" in args:
        assert fate(outcome, "network_args use_scalar") == "mapped"


def test_tlora_blocks_own_scalar_on_its_own_layers_is_refused():
    """A T-LoRA block's scalar (TLoraModule has none): DBS625 on its own layers."""
    body = DOG + STEPS + '[adapter]\nkind = "tlora"\n' + LOHA.replace("'loha'", "'adapter'")
    assert hits_of(rules.block_scalar_kind, body + "scalar = 'on'\n") == [
        ("DBS625", "error", ("adapter", "blocks", 0, "scalar"))
    ]


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_tlora_network_dora_wd_is_its_entries_blocks(tmp_path, family):
    """A T-LoRA network's dora_wd / wd_on_output (TLoraModule never decomposes; was DBS403): its LoCon / LoHa
    / LoKr entries' blocks' `dora` / `dora_axis` (tests/runtime/test_lycoris_tlora_entry_switches.py)."""
    args = '"dora_wd=True" "wd_on_output=False"'
    if family == "flux":
        from test_convert_lycoris_flow_preset_file import MIXED as FLUX_MIXED
        from test_convert_lycoris_flow_preset_file import _flux

        outcome = expressible(_flux(tmp_path, FLUX_MIXED, f'"algo=tlora" {args}'))
    else:
        text = TLORA + '[module_algo_map.FeedForward]\nalgo = "lokr"\n'
        outcome = expressible(_convert(tmp_path, text, "tlora", args))
    a = plan_of(outcome, tmp_path).adapter
    entries = [b for b in a.blocks if b.kind in ("lora", "loha", "lokr")]
    assert a.kind == "tlora" and a.dora_form == "lycoris" and entries
    assert {(b.dora, b.dora_axis) for b in entries} == {("on", "input")}
    assert all(b.dora == "adapter" for b in a.blocks if b.kind == "adapter")


def test_glora_entries_own_scalar(tmp_path):
    """A GLoRA entry's own use_scalar (was DBS403): its block's `scalar`, beside another network's layers,
    beside GLoRA entries that settle it differently, and on a GLoRA network beside its own layers (were
    DBS403 too: each GLoRA layer takes its block's, runtime/lycoris_glora.py;
    tests/runtime/test_lycoris_network_switches_entries.py against lycoris-lora 4.1.3)."""
    for name in ("own", "differ", "glora", "glora_off"):
        (tmp_path / name).mkdir()
    own = FULL + '[module_algo_map.FeedForward]\nalgo = "glora"\nuse_scalar = true\n'
    outcome = expressible(_convert(tmp_path / "own", own, "locon"))
    a = plan_of(outcome, tmp_path / "own").adapter
    assert not a.scalar and [b.scalar for b in a.blocks if b.kind == "glora"] == ["on"]
    differ = own + '[module_algo_map.Transformer2DModel]\nalgo = "glora"\n'
    a = plan_of(expressible(_convert(tmp_path / "differ", differ, "locon")), tmp_path / "differ").adapter
    assert sorted(b.scalar for b in a.blocks if b.kind == "glora") == ["adapter", "on"]
    a = plan_of(expressible(_convert(tmp_path / "glora", own, "glora")), tmp_path / "glora").adapter
    assert (a.kind, a.scalar) == ("glora", False) and [b.scalar for b in a.blocks] == ["on"]
    off = own.replace("use_scalar = true", "use_scalar = false")
    outcome = expressible(_convert(tmp_path / "glora_off", off, "glora", '"use_scalar=True"'))
    a = plan_of(outcome, tmp_path / "glora_off").adapter
    assert (a.kind, a.scalar) == ("glora", True) and [b.scalar for b in a.blocks] == ["off"]


@pytest.mark.parametrize("entry", ["locon", "lokr", "diag-oft", "full"])
def test_a_full_networks_dropout_is_read_by_no_module(tmp_path, entry):
    """FullModule never reads the network's dropout, and its entries' modules only in their bypass forward,
    which a full network never runs (it raises on bypass_mode): ignored, DBS405 (was DBS403;
    tests/runtime/test_lycoris_network_dropouts_entries.py)."""
    from test_convert_kohya_refusals_audit import PLAN_BASE
    from test_convert_kohya_refusals_audit import _convert as _audit
    from test_convert_kohya_refusals_audit import _sd

    outcome = expressible(_audit(tmp_path, "sd", '"algo=full" "dropout=0.1"', _sd(entry)))
    a = plan_of(outcome, tmp_path, PLAN_BASE["sd"]).adapter
    assert (a.kind, a.dropout, a.output_dropout) == ("full", 0.0, 0.0)
    assert fate(outcome, "network_args dropout") == "inert"
    assert "FullModule takes it and never reads it" in messages(outcome, "DBS405")
