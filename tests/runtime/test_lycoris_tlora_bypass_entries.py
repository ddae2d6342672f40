"""A T-LoRA network's `bypass_mode` with its `dropout` and `rank_dropout` beside a preset file's LoCon /
LoHa / LoKr / IA^3 / Diag-OFT / BOFT entries, and its `dropout` outside bypass_mode beside them (issue 12;
were DBS403, a spec's DBS578). LyCORIS hands every module the network's bypass_mode, dropout and
rank_dropout: TLoraModule drops its update in its bypass forward and never reads rank_dropout; LoConModule
masks its down's ranks and drops its update x scalar, LohaModule masks its update's rows and drops it,
LokrModule drops it alone, IA3Module and ButterflyOFTModule read neither, DiagOFTModule no rank_dropout
(its dropout raises: DBS402), each after its module_dropout draw, in forward order; outside bypass_mode
none of them reads the dropout. The converted tlora adapter's `bypass`, `dropout` (the plan's bypass_dropout
and output_dropout) and `rank_dropout` (rank_dropout_form "lycoris_bypass") reach its blocks as their
classes read them (rules.tlora_bypass_inert). Checked against lycoris-lora 4.1.3's network from the same
file and network_args on tiny SD 1.x, module_dropout on: each module's forward, eval and training outputs,
the generator state after each of three training forwards and every trained tensor's gradient; on Flux's
fused Linears each kohya module against the plan's parts."""

from __future__ import annotations

import pytest

from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, grads_as_lycoris
from tests.runtime.test_lycoris_network_dropouts_entries import HELD, TEXT  # HELD: a kind's saved tensor
from tests.runtime.test_lycoris_tlora_mixed_opts import _built

pytest.importorskip("lycoris.kohya")

CLASSES = {
    "locon": "LoConModule",
    "loha": "LohaModule",
    "lokr": "LokrModule",
    "ia3": "IA3Module",
    "diag-oft": "DiagOFTModule",
    "boft": "ButterflyOFTModule",
}
# T-LoRA (the network's) on the transformers' attention and proj_in / proj_out, the entries on their
# feed-forwards (TEXT)
BYPASS = {"bypass_mode": "True", "dropout": "0.3", "rank_dropout": "0.3"}
# id: (the FeedForward entry's algo, the GEGLU entry's, network_args)
CASES = {
    "locon_loha_bypass_dropouts": ("locon", "loha", BYPASS),
    "lokr_ia3_bypass_dropouts": ("lokr", "ia3", BYPASS),
    "ia3_loha_bypass_dropouts": ("ia3", "loha", BYPASS),  # LohaModule's row mask with no LoCon beside it
    "boft_locon_bypass_dropouts": ("boft", "locon", BYPASS),
    # DiagOFTModule's bypass Dropout raises (DBS402): its rank_dropout alone, which it never reads
    "diag_oft_lokr_bypass_rank_dropout": ("diag-oft", "lokr", {"bypass_mode": "True", "rank_dropout": "0.3"}),
    # outside bypass_mode no module reads the dropout (ignored, DBS405): LoConModule's rank mask alone
    "locon_loha_dropout_outside_bypass": ("locon", "loha", {"dropout": "0.3", "rank_dropout": "0.3"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tlora_network_bypass_and_dropouts_beside_entries_are_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    ff, geglu, args = CASES[case]
    text = TEXT.format(ff=ff, geglu=geglu)
    plan, ours, made, theirs = _built(pipe, tmp_path, monkeypatch, ff, "", args, text=text)
    a = plan.adapter
    bypass = "bypass_mode" in args
    dropout = float(args.get("dropout", 0)) if bypass else 0.0
    assert (a.kind, a.bypass, a.bypass_dropout) == ("tlora", bypass, dropout)
    low_rank = {ff, geglu} & {"locon", "loha", "lokr"}
    assert a.output_dropout == (dropout if low_rank else 0.0)
    # LoCon's ranks, LoHa's rows; in bypass_mode LoKr, IA^3 and the OFTs draw none (DBS405 beside them alone)
    drawn = bool({ff, geglu} & {"locon", "loha"})
    assert a.rank_dropout == (0.3 if drawn else 0.0)
    assert a.rank_dropout_form == ("kohya" if not drawn else "lycoris_bypass" if bypass else "lycoris")
    classes = {type(m).__name__ for m in made.unet_loras}
    assert classes == {"TLoraModule", CLASSES[ff], CLASSES[geglu]}
    assert all(bool(m.bypass_mode) == bypass for m in made.unet_loras)
    calm_then_dropped(ours, theirs, made, pipe.unet)  # eval equal, three dropped training forwards
    grads_as_lycoris(ours, made, ("lambda_layer", HELD[ff], HELD[geglu]))


def test_tlora_entries_own_bypass_and_the_dropout_beside_locon_loha_entries(pipe, tmp_path, monkeypatch):  # noqa: F811
    """Outside the network's bypass_mode, the transformer blocks' T-LoRA entry in its own (their attention)
    drops at the network's rate; the feed-forwards' LoCon (ff.net.2) and LoHa (ff.net.0.proj) layers, in
    their default forward, read none of it, as LoConModule / LohaModule."""
    text = TEXT.format(ff="locon", geglu="loha")
    text += '[module_algo_map.BasicTransformerBlock]\nalgo = "tlora"\nbypass_mode = true\n'
    plan, ours, made, theirs = _built(pipe, tmp_path, monkeypatch, "", "", {"dropout": "0.3"}, text=text)
    a = plan.adapter
    assert (a.bypass, a.bypass_dropout, a.output_dropout) == (False, 0.3, 0.0)
    modes = {(type(m).__name__, bool(m.bypass_mode)) for m in made.unet_loras}
    assert modes == {
        ("TLoraModule", True),
        ("TLoraModule", False),
        ("LoConModule", False),
        ("LohaModule", False),
    }
    calm_then_dropped(ours, theirs, made, pipe.unet)
    grads_as_lycoris(ours, made, ("lambda_layer", "lora_up", "hada_w1_a"))


def test_flux_tlora_network_bypass_dropouts_beside_fused_entries_are_lycoris(tmp_path, monkeypatch):
    """On Flux's fused Linears (LoCon q/k/v and CLIP-L attention, LoHa linear1, T-LoRA on the rest): every
    kohya module in bypass_mode with the dropout and rank_dropout, one module per fused Linear whose parts
    share its masks, against the plan's parts (test_lycoris_flow_mixed_rs_lora_boft's _alike: outputs,
    generator state, gradients)."""
    from tests.runtime.test_lycoris_flow_mixed_rs_lora_boft import BOFT_FILE, _alike

    a, made, _ = _alike(tmp_path, monkeypatch, "tlora", BOFT_FILE, {**BYPASS, "module_dropout": "0.3"})
    assert (a.kind, a.bypass, a.bypass_dropout, a.output_dropout) == ("tlora", True, 0.3, 0.3)
    assert a.rank_dropout_form == "lycoris_bypass" and bool(a.fused)
    kinds = {type(m).__name__ for m in made.values()}
    assert kinds == {"TLoraModule", "LoConModule", "LohaModule"}
    assert all(m.bypass_mode for m in made.values())


def test_flux_tlora_network_bypass_beside_fused_lokr_and_ia3_entries_is_lycoris(tmp_path, monkeypatch):
    """IA^3 on the image q/k/v, LoKr on the text q/k/v (low rank) and linear1 (full factors), CLIP-L's
    attention LoHa: in bypass_mode LokrModule draws no rank mask (the rank_dropout converts beside LoKr
    entries there) and IA3Module reads neither dropout."""
    from tests.runtime.test_lycoris_flow_mixed_rs_lora_boft import RS_FILE, _alike

    text = RS_FILE.replace('algo = "loha"\ndim = 4\nalpha = 2', 'algo = "ia3"', 1)
    a, made, _ = _alike(tmp_path, monkeypatch, "tlora", text, {**BYPASS, "module_dropout": "0.3"})
    assert (a.bypass, a.output_dropout, a.rank_dropout) == (True, 0.3, 0.3)
    kinds = {type(m).__name__ for m in made.values()}
    assert kinds == {"TLoraModule", "IA3Module", "LokrModule", "LohaModule"}
