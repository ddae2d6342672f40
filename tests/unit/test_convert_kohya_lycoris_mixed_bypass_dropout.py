"""lycoris.kohya's `dropout` (or --network_dropout) in bypass_mode on a LoRA/LoCon, LoHa or LoKr network whose
preset file's entries give layers another of those algorithms, on SD 1.x (issue 12; was DBS403, a spec's
DBS578): LoConModule's, LohaModule's and LokrModule's bypass_forward_diff each drop their own update after
their module_dropout draw, so every layer takes the adapter's `output_dropout`
(tests/runtime/test_lycoris_mixed_bypass_dropout.py holds the runtime to lycoris-lora 4.1.3's network); on
Flux / SD3 / Chroma too, each fused Linear one module's mask its parts share
(tests/runtime/test_lycoris_mixed_flow_bypass_dropout.py).
rank_dropout in bypass_mode differs per class (LoCon masks ranks, LoHa rows, LoKr nothing): with the bypass
dropout the adapter's rank_dropout in rank_dropout_form "lycoris_bypass" (a LoKr network's too, its LoKr
layers drawing none); beside IA^3 entries too, whose IA3Module reads neither rate; without it, or beside other
algorithms' entries, which drop otherwise: still refused."""

from __future__ import annotations

import pytest
from convert_kit import SD15, codes, errors, fate, flux_lycoris, images, kohya, plan_of
from test_rules import DOG, STEPS, hits_of

from dbspec.compiler import rules

PRESET = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
text_encoder_target_module = ["CLIPMLP"]
[module_algo_map.ResnetBlock2D]
algo = "{entry}"
[module_algo_map.CLIPMLP]
algo = "{entry}"
"""


def _convert(tmp_path, algo: str, entry: str, args: str):
    (tmp_path / "p.toml").write_text(PRESET.format(entry=entry), encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    return kohya(
        tmp_path,
        allow=True,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=4 --network_alpha=1 "
        f'--network_args "algo={algo}" "preset=p.toml" "bypass_mode=True" {args} '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )


@pytest.mark.parametrize(
    ("algo", "entry", "given"),
    [
        ("lokr", "loha", '"dropout=0.3"'),
        ("locon", "lokr", "--network_dropout=0.3"),
        ("locon", "loha", '"dropout=0.3" "module_dropout=0.2"'),
        ("loha", "locon", '"dropout=0.3"'),
        ("loha", "lokr", "--network_dropout=0.3"),
    ],
)
def test_bypass_dropout_beside_low_rank_entries_is_every_layers_output_dropout(tmp_path, algo, entry, given):
    outcome = _convert(tmp_path, algo, entry, given)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    if given.startswith("--"):
        assert fate(outcome, "network_dropout") == "mapped"
    a = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"]).adapter
    kind = {"locon": "lora"}.get(algo, algo)
    assert (a.kind, a.output_dropout, a.rank_dropout, a.dropout, a.bypass) == (kind, 0.3, 0.0, 0.0, False)
    assert a.module_dropout == (0.2 if "module_dropout" in given else 0.0)
    assert {b.kind for b in a.blocks} == {{"locon": "lora"}.get(entry, entry)}


@pytest.mark.parametrize(
    ("algo", "entry", "given"),
    [
        ("locon", "diag-oft", '"dropout=0.3"'),  # DiagOFTModule's bypass forward raises on it
    ],
)
def test_bypass_dropout_still_refused(tmp_path, algo, entry, given):
    outcome = _convert(tmp_path, algo, entry, given)
    assert {"DBS402", "DBS403"} & codes(outcome)


@pytest.mark.parametrize(
    ("algo", "entry"), [("locon", "loha"), ("locon", "lokr"), ("lokr", "locon"), ("loha", "locon")]
)
def test_bypass_rank_dropout_without_dropout_converts(tmp_path, algo, entry):
    """A LoCon / LoKr / LoHa network's rank_dropout in bypass_mode without a `dropout` beside LoCon / LoHa /
    LoKr entries (was DBS403; a LoHa network's: its adapter's new rank_dropout_form): LoConModule's bypass
    rank mask, LohaModule's row mask, LokrModule's none, with no Dropout after them
    (tests/runtime/test_lycoris_bypass_rank_dropout_alone.py, test_lycoris_loha_bypass_rank_dropout_alone.py):
    the adapter's rank_dropout in rank_dropout_form "lycoris_bypass", output_dropout 0."""
    outcome = _convert(tmp_path, algo, entry, '"rank_dropout=0.2"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"]).adapter
    kind = {"locon": "lora"}
    assert (a.kind, a.rank_dropout, a.rank_dropout_form, a.output_dropout) == (
        kind.get(algo, algo),
        0.2,
        "lycoris_bypass",
        0.0,
    )
    assert {b.kind for b in a.blocks} == {kind.get(entry, entry)}


LOHA = "[[adapter.blocks]]\npattern = 'ff'\nkind = 'loha'\nrank = 4\nalpha = 1.0\n"


def test_spec_output_dropout_beside_low_rank_blocks():
    """A spec's output_dropout beside blocks of kind lora / loha / lokr; DBS578 beside rank_dropout, another
    kind's blocks or a block's own dora (LyCORIS's bypass forward never decomposes)."""
    body = DOG + STEPS + '[adapter]\nkind = "lora"\noutput_dropout = 0.3\n'
    assert hits_of(rules.mixed_block_kinds, body + LOHA) == []
    refused = [("DBS578", "error", ("adapter", "output_dropout"))]
    ranked = body.replace(
        "output_dropout", "rank_dropout = 0.1\nrank_dropout_form = 'lycoris_bypass'\noutput_dropout"
    )
    # a lora adapter's LyCORIS bypass rank dropout: each kind's module reads it as its own
    # (rules.mixed_bypass_ranks); in another form, or beside a lora adapter's own rank_dropout_form "kohya"
    assert hits_of(rules.mixed_block_kinds, ranked + LOHA) == []
    kohya_form = ranked.replace("'lycoris_bypass'", "'kohya'")
    assert ("DBS578", "error", ("adapter", "output_dropout")) in hits_of(
        rules.mixed_block_kinds, kohya_form + LOHA
    )
    assert hits_of(rules.mixed_block_kinds, body + LOHA + "dora = 'on'\n") == refused
    full = LOHA.replace("'loha'", "'full'")
    assert hits_of(rules.mixed_block_kinds, body + full) == refused


FLUX_PRESET = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = ["CLIPAttention"]
[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "{qkv}"
[name_algo_map."single_blocks.*.linear1"]
algo = "{linear1}"
[module_algo_map.CLIPAttention]
algo = "{linear1}"
"""


@pytest.mark.parametrize(
    ("algo", "qkv", "linear1", "given"),
    [
        ("lokr", "locon", "loha", '"dropout=0.3" "module_dropout=0.2"'),
        ("locon", "lokr", "loha", '"dropout=0.3"'),
        ("loha", "locon", "lokr", ""),  # --network_dropout
    ],
)
def test_flux_bypass_dropout_beside_low_rank_entries_is_output_dropout(tmp_path, algo, qkv, linear1, given):
    """On Flux's fused Linears (was DBS403): the adapter's output_dropout with fused_projections, as on SD."""
    (tmp_path / "p.toml").write_text(FLUX_PRESET.format(qkv=qkv, linear1=linear1), encoding="utf-8")
    flags = "" if given else "--network_dropout=0.3"
    outcome = flux_lycoris(tmp_path, f'"algo={algo}" "preset=p.toml" "bypass_mode=True" {given}', flags)
    if flags:
        assert fate(outcome, "network_dropout") == "mapped"
    overrides = ["model.base=builtin:tiny-flux", "model.text_encoder_files=[]", 'model.vae=""']
    a = plan_of(outcome, tmp_path, [*overrides, "model.t5_max_length=16"]).adapter
    kind = {"locon": "lora"}
    assert (a.kind, a.output_dropout, a.rank_dropout, a.dropout) == (kind.get(algo, algo), 0.3, 0.0, 0.0)
    assert a.fused and a.module_dropout == (0.2 if "module_dropout" in given else 0.0)
    assert {b.kind for b in a.blocks} == {kind.get(qkv, qkv), kind.get(linear1, linear1)}
    assert {b.kind for b in a.text_encoder_blocks} == {kind.get(linear1, linear1)}


def test_flux_bypass_rank_dropout_beside_low_rank_entries(tmp_path):
    """rank_dropout in bypass_mode (LoConModule masks ranks, LohaModule rows, LokrModule none): a LoCon
    network's converts on Flux too (rules.mixed_bypass_ranks), a LoKr network's too (was DBS403), its LoKr
    layers drawing none (rank_dropout_form "lycoris_bypass"); beside LoKr entries alone ignored."""
    (tmp_path / "p.toml").write_text(FLUX_PRESET.format(qkv="loha", linear1="lokr"), encoding="utf-8")
    args = '"preset=p.toml" "bypass_mode=True" "dropout=0.3" "rank_dropout=0.1"'
    outcome = flux_lycoris(tmp_path, f'"algo=locon" {args}')
    overrides = ["model.base=builtin:tiny-flux", "model.text_encoder_files=[]", 'model.vae=""']
    a = plan_of(outcome, tmp_path, [*overrides, "model.t5_max_length=16"]).adapter
    assert (a.kind, a.rank_dropout, a.output_dropout) == ("lora", 0.1, 0.3)
    assert a.rank_dropout_form == "lycoris_bypass"
    (tmp_path / "p.toml").write_text(FLUX_PRESET.format(qkv="locon", linear1="loha"), encoding="utf-8")
    outcome = flux_lycoris(tmp_path, f'"algo=lokr" {args}')
    a = plan_of(outcome, tmp_path, [*overrides, "model.t5_max_length=16"]).adapter
    assert (a.kind, a.rank_dropout, a.rank_dropout_form, a.output_dropout) == (
        "lokr",
        0.1,
        "lycoris_bypass",
        0.3,
    )
    assert {b.kind for b in a.blocks} == {"lora", "loha"} and a.fused
    (tmp_path / "p.toml").write_text(FLUX_PRESET.format(qkv="lokr", linear1="lokr"), encoding="utf-8")
    outcome = flux_lycoris(tmp_path, f'"algo=lokr" {args}')
    assert fate(outcome, "network_args rank_dropout") == "inert"
    a = plan_of(outcome, tmp_path, [*overrides, "model.t5_max_length=16"]).adapter
    assert (a.kind, a.rank_dropout, a.output_dropout) == ("lokr", 0.0, 0.3)


def test_spec_output_dropout_beside_low_rank_blocks_with_fused_projections():
    """fused_projections no longer keeps a spec's output_dropout from blocks of kind lora / loha / lokr."""
    body = DOG + STEPS + '[adapter]\nkind = "lokr"\nfused_projections = true\noutput_dropout = 0.3\n'
    assert hits_of(rules.mixed_block_kinds, body + LOHA) == []


@pytest.mark.parametrize(
    ("algo", "entry"),
    [("locon", "loha"), ("locon", "lokr"), ("loha", "locon"), ("lokr", "locon"), ("lokr", "loha")],
)
def test_bypass_rank_dropout_beside_low_rank_entries(tmp_path, algo, entry):
    """A LoCon (LoHa, LoKr) network's rank_dropout with its dropout in bypass_mode beside LoHa / LoKr (LoCon,
    LoHa) entries on SD (was DBS403): the adapter's rank_dropout, its LoRA layers' in LoConModule's bypass
    form, which the LoHa layers read as LohaModule's row mask and the LoKr layers not at all
    (rules.mixed_bypass_ranks; tests/runtime/test_lycoris_mixed_bypass_rank_dropout.py,
    test_lycoris_lokr_bypass_rank_dropout.py)."""
    outcome = _convert(tmp_path, algo, entry, '"dropout=0.3" "rank_dropout=0.2"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"]).adapter
    kind = {"locon": "lora"}
    assert (a.kind, a.rank_dropout, a.rank_dropout_form, a.output_dropout) == (
        kind.get(algo, algo),
        0.2,
        "lycoris_bypass",
        0.3,
    )
    assert {b.kind for b in a.blocks} == {kind.get(entry, entry)} and not a.rank_dropout_scale


@pytest.mark.parametrize(("algo", "entry"), [("locon", "loha"), ("loha", "lokr")])
def test_network_dropout_with_bypass_rank_dropout_is_the_network_args_dropout(tmp_path, algo, entry):
    """--network_dropout beside a bypass rank_dropout and other algorithms' entries: train_network.py hands
    LyCORIS's create_network `dropout=args.network_dropout` where network_args has no `dropout` (and
    `neuron_dropout`, which lycoris.kohya never reads), so the plan is the one network_args' `dropout` makes
    (runtime-checked in tests/runtime/test_lycoris_mixed_bypass_rank_dropout.py); a network_args `dropout`
    wins over it, as kohya's `if "dropout" not in net_kwargs`."""
    plans = []
    for given in ('"dropout=0.3"', "--network_dropout=0.3", '"dropout=0.3" --network_dropout=0.1'):
        case = tmp_path / str(len(plans))
        case.mkdir()
        outcome = _convert(case, algo, entry, f'"rank_dropout=0.2" {given}')
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        if given.startswith("--"):
            assert fate(outcome, "network_dropout") == "mapped"
        plans.append(plan_of(outcome, case, ["model.base=builtin:tiny-sd1"]).adapter)
    assert plans[0] == plans[1] == plans[2]
    a = plans[1]
    kind = {"locon": "lora"}
    assert (a.kind, a.rank_dropout, a.output_dropout) == (kind.get(algo, algo), 0.2, 0.3)
    assert a.rank_dropout_form == ("lycoris_bypass" if algo == "locon" else "kohya")


def test_lokr_bypass_rank_dropout_beside_lokr_entries_alone_stays_ignored(tmp_path):
    """A LoKr network's bypass rank_dropout with LoKr entries only: no module reads it (DBS405, the plan
    without it, as before)."""
    outcome = _convert(tmp_path, "lokr", "lokr", '"dropout=0.3" "rank_dropout=0.2"')
    assert not {"DBS402", "DBS403"} & codes(outcome) and "DBS405" in codes(outcome)
    a = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"]).adapter
    assert (a.kind, a.rank_dropout, a.rank_dropout_form, a.output_dropout) == ("lokr", 0.0, "kohya", 0.3)


def test_spec_lokr_bypass_rank_dropout_form():
    """A lokr adapter's rank_dropout_form "lycoris_bypass": beside lora / loha blocks with output_dropout
    (rules.mixed_bypass_ranks), without output_dropout too (LyCORIS's bypass rank mask with no Dropout
    after it; DBS629 no longer raised); DBS630 without blocks that draw it; the default form beside those
    blocks stays DBS578."""
    body = (
        DOG
        + STEPS
        + (
            '[adapter]\nkind = "lokr"\nrank_dropout = 0.1\nrank_dropout_form = "lycoris_bypass"\n'
            "output_dropout = 0.3\n"
        )
    )
    lora = LOHA.replace("'loha'", "'lora'")
    assert hits_of(rules.mixed_block_kinds, body + LOHA) == []
    assert hits_of(rules.mixed_block_kinds, body + lora) == []
    assert hits_of(rules.lokr_bypass_rank_dropout, body + LOHA) == []
    assert hits_of(rules.lokr_bypass_rank_dropout, body) == [
        ("DBS630", "warning", ("adapter", "rank_dropout"))
    ]
    calm = body.replace("output_dropout = 0.3\n", "")
    assert hits_of(rules.lokr_bypass_rank_dropout, calm + LOHA) == []
    assert hits_of(rules.mixed_block_kinds, calm + LOHA) == []
    assert hits_of(rules.mixed_block_kinds, calm + lora) == []
    default = body.replace('rank_dropout_form = "lycoris_bypass"\n', "")
    assert ("DBS578", "error", ("adapter", "rank_dropout")) in hits_of(
        rules.mixed_block_kinds, default + LOHA
    )


def test_spec_loha_bypass_rank_dropout_form():
    """A loha adapter's rank_dropout_form "lycoris_bypass" (new): beside lora blocks without output_dropout
    (its LoCon blocks' bypass rank mask with no Dropout after it; rules.mixed_bypass_ranks), with it too;
    DBS631 without lora blocks or rank_dropout, where it changes nothing."""
    body = (
        DOG + STEPS + '[adapter]\nkind = "loha"\nrank_dropout = 0.1\nrank_dropout_form = "lycoris_bypass"\n'
    )
    lora = LOHA.replace("'loha'", "'lora'")
    assert hits_of(rules.mixed_block_kinds, body + lora) == []
    assert hits_of(rules.mixed_block_kinds, body + "output_dropout = 0.3\n" + lora) == []
    assert hits_of(rules.loha_bypass_rank_dropout_form, body + lora) == []
    warned = [("DBS631", "warning", ("adapter", "rank_dropout_form"))]
    assert hits_of(rules.loha_bypass_rank_dropout_form, body) == warned
    calm = body.replace("rank_dropout = 0.1\n", "")
    assert hits_of(rules.loha_bypass_rank_dropout_form, calm + lora) == warned


@pytest.mark.parametrize(
    ("algo", "given"),
    [
        ("locon", '"dropout=0.3"'),
        ("locon", '"dropout=0.3" "rank_dropout=0.2" "module_dropout=0.1"'),
        ("lokr", '"dropout=0.3" "rank_dropout=0.2"'),  # beside LoHa entries (below): theirs
        ("loha", "--network_dropout=0.3"),
    ],
)
def test_bypass_dropout_beside_ia3_entries(tmp_path, algo, given):
    """IA^3 entries beside a LoCon / LoKr / LoHa network's bypass dropout (was DBS403): IA3Module reads
    neither `dropout` nor `rank_dropout` in either forward, so the adapter's `bypass` (their bypass forward)
    with its output_dropout (and rank_dropout, its LoRA layers' in the bypass form) on the other layers
    (tests/runtime/test_lycoris_ia3_entries_bypass_dropout.py)."""
    preset = PRESET.format(entry="ia3").replace("[module_algo_map.CLIPMLP]", LOHA_RESNETS)
    (tmp_path / "p.toml").write_text(preset, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        allow=True,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=4 --network_alpha=1 "
        f'--network_args "algo={algo}" "preset=p.toml" "bypass_mode=True" {given} '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"]).adapter
    ranks = 0.2 if "rank_dropout" in given else 0.0
    assert (a.bypass, a.output_dropout, a.rank_dropout) == (True, 0.3, ranks)
    assert a.rank_dropout_form == ("lycoris_bypass" if ranks else "kohya")
    assert {b.kind for b in a.text_encoder_blocks} == {"ia3"}
    assert "ia3" in {b.kind for b in a.blocks}


# the MLPs LoHa (a LoHa network: its own), ahead of CLIP's IA^3 entry
LOHA_RESNETS = '[module_algo_map.FeedForward]\nalgo = "loha"\n[module_algo_map.CLIPMLP]'


def test_spec_output_dropout_beside_ia3_blocks():
    """A spec's output_dropout (and bypass rank_dropout) beside IA^3 blocks (rules.mixed_output_dropout)."""
    body = DOG + STEPS + '[adapter]\nkind = "lora"\nbypass = true\noutput_dropout = 0.3\n'
    ia3 = LOHA.replace("'loha'", "'ia3'")
    assert hits_of(rules.mixed_block_kinds, body + ia3 + LOHA) == []
    ranked = body.replace(
        "output_dropout", "rank_dropout = 0.1\nrank_dropout_form = 'lycoris_bypass'\noutput_dropout"
    )
    assert hits_of(rules.mixed_block_kinds, ranked + ia3) == []


def test_flux_loha_bypass_rank_dropout_without_dropout_beside_locon(tmp_path):
    """A LoHa network's rank_dropout in bypass_mode without a `dropout` beside LoCon entries on Flux (was
    DBS403): its LoCon entries' LoConModules draw their bypass rank mask, its LohaModules their row mask,
    one per fused Linear, no Dropout after them: rank_dropout_form "lycoris_bypass", output_dropout 0."""
    (tmp_path / "p.toml").write_text(FLUX_PRESET.format(qkv="locon", linear1="loha"), encoding="utf-8")
    outcome = flux_lycoris(tmp_path, '"algo=loha" "preset=p.toml" "bypass_mode=True" "rank_dropout=0.1"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    overrides = ["model.base=builtin:tiny-flux", "model.text_encoder_files=[]", 'model.vae=""']
    a = plan_of(outcome, tmp_path, [*overrides, "model.t5_max_length=16"]).adapter
    assert (a.kind, a.rank_dropout, a.rank_dropout_form, a.output_dropout) == (
        "loha",
        0.1,
        "lycoris_bypass",
        0.0,
    )
    assert "lora" in {b.kind for b in a.blocks} and a.fused
