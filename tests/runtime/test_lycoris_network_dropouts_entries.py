"""A network's `dropout` (and in bypass_mode its `rank_dropout`) beside its preset file's entries of other
algorithms where the LyCORIS classes involved read them as dbspec's plan says (issue 12; were DBS403): a full
network's `dropout` (FullModule never reads it, its LoCon / LoHa entries' modules only in their bypass
forward, which a full network never runs: ignored, DBS405); a LoCon / LoHa / LoKr network's in bypass_mode
beside BOFT, DyLoRA, IA^3 and (rank_dropout alone) Diag-OFT entries, whose bypass forward reads neither.
lycoris-lora 4.1.3's network built from the same file and network_args on tiny SD 1.x (module_dropout on,
so training forwards draw) against the plan's U-Net as a run builds it: eval and training outputs, the
generator state after each of three training forwards, and every trained tensor's gradient (DyLoRA's
blocks copied in: DyLoraModule loads no file key)."""

from __future__ import annotations

import pytest

from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import _converted_plan, pipe  # noqa: F401 (pipe: a fixture)
from tests.runtime.test_lycoris_loha_locon_rank_dropout import _ours
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, grads_as_lycoris, lycoris_unet
from tests.runtime.test_lycoris_oft_network_dylora_entries import _copy_blocks

pytest.importorskip("lycoris.kohya")

# the network's own on the transformers' attention and proj_in / proj_out; the feed-forwards' output Linear
# the FeedForward entry's, their GEGLU's input Linear the GEGLU entry's (create_modules_ recurses)
TEXT = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = []

[module_algo_map.FeedForward]
algo = "{ff}"
[module_algo_map.GEGLU]
algo = "{geglu}"
"""
# the trained tensors LyCORIS saves for each kind (FullModule trains `weight` and saves `diff`: its gradients
# are not compared by name)
HELD = {"locon": "lora_up", "loha": "hada_w1_a", "lokr": "lokr_w1", "ia3": "weight", "tlora": "lambda_layer"}
HELD["glora"] = "a1.weight"
HELD.update({"diag-oft": "oft_blocks", "boft": "oft_blocks"})


def alike(
    pipe,  # noqa: F811
    tmp_path,
    monkeypatch,
    algo: str,
    ff: str,
    geglu: str,
    args: dict[str, str],
    own: str = "",
    text: str = "",
):
    """The file (`text`, else TEXT; the `ff` entry given `own` options too) converted with network `algo` and
    `args` (module_dropout 0.3 added); our U-Net as the run prepares it (every trained tensor moved) and
    lycoris-lora's from the same, our weights loaded: the plan's adapter after calm_then_dropped and
    grads_as_lycoris pass (a full network's own layers compared by their outputs alone: FullModule trains
    the weight, the file holds its difference)."""
    args = {**args, "module_dropout": "0.3"}
    given = " ".join(f'"{k}={v}"' for k, v in args.items())
    text = (text or TEXT).format(ff=ff, geglu=geglu).replace(f'algo = "{ff}"\n', f'algo = "{ff}"\n{own}', 1)
    path, plan = _converted_plan(tmp_path, "dropouts", algo, given, text=text)
    a = plan.adapter
    ours = _ours(pipe, plan)  # as the run prepares it, every trained tensor moved (no update 0)
    made, theirs = lycoris_unet(pipe, monkeypatch, algo, path, **args)
    result = made.load_state_dict(
        lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32"), strict=False
    )
    # DyLoraModule loads no file key (up_list / down_list): each layer's one block copied in (one block per
    # layer: its draw fixed)
    dyloras = {m.lora_name for m in made.unet_loras if type(m).__name__ == "DyLoraModule"}
    assert {k.split(".")[0] for k in result.unexpected_keys} <= dyloras, result
    # (TLoraModule's frozen start, base_*: its own SVD of the same base weights)
    missing = [k for k in result.missing_keys if not k.rsplit(".", 1)[-1].startswith("base_")]
    assert all(k.startswith("lora_te_") or k.split(".")[0] in dyloras for k in missing), result
    assert _copy_blocks(made, theirs, ours) == len(dyloras)
    calm_then_dropped(ours, theirs, made, pipe.unet)
    grads_as_lycoris(
        ours, made, tuple(HELD[k] for k in (algo, ff, geglu) if k in HELD), 20 - 14 * (algo == "full")
    )
    return a, made


@pytest.mark.parametrize(("ff", "geglu"), [("locon", "loha"), ("loha", "lokr")])
def test_full_networks_dropout_is_read_by_no_module(pipe, tmp_path, monkeypatch, ff, geglu):  # noqa: F811
    a, made = alike(pipe, tmp_path, monkeypatch, "full", ff, geglu, {"dropout": "0.3"})
    assert a.kind == "full" and (a.dropout, a.output_dropout) == (0.0, 0.0)
    assert all(getattr(m.drop, "p", 0.3) == 0.3 for m in made.unet_loras if hasattr(m, "drop"))


BYPASS = {"bypass_mode": "True", "dropout": "0.3", "rank_dropout": "0.3"}
RANKS = {"bypass_mode": "True", "rank_dropout": "0.3"}
# id: (network algo, the FeedForward entry's, the GEGLU entry's, network_args)
CASES = {
    "locon_boft_dylora": ("locon", "boft", "dylora", BYPASS),
    "lokr_ia3_boft": ("lokr", "ia3", "boft", BYPASS),
    "loha_boft_diag_oft_ranks": ("loha", "boft", "diag-oft", RANKS),
    "locon_diag_oft_dylora_ranks": ("locon", "diag-oft", "dylora", RANKS),
    # an IA^3 / DyLoRA network's own modules read neither: its adapter's dropout and rank_dropout its LoCon /
    # LoHa / LoKr blocks' (rules.host_bypass_inert)
    "ia3_locon_loha": ("ia3", "locon", "loha", BYPASS),
    "ia3_lokr_boft": ("ia3", "lokr", "boft", BYPASS),
    "dylora_locon_loha": ("dylora", "locon", "loha", BYPASS),
    "dylora_loha_lokr": ("dylora", "loha", "lokr", BYPASS),
    # a T-LoRA network's GLoRA entries (their pairs' bypass dropout and rank masks, the T-LoRA layers'
    # bypass dropout) and DyLoRA entries (their one block unscaled, reading neither)
    "tlora_glora_dylora": ("tlora", "glora", "dylora", BYPASS),
    "tlora_glora_locon": ("tlora", "glora", "locon", BYPASS),
    # T-LoRA and GLoRA entries on other networks: their bypass forward drops by the network's dropout (the
    # adapter's output_dropout handed on: runtime/mixed_kinds.py kind_adapter), GLoRA's masking its pairs
    "locon_tlora_glora": ("locon", "tlora", "glora", BYPASS),
    "lokr_glora_tlora_ranks": ("lokr", "glora", "tlora", RANKS),
    "ia3_tlora_glora": ("ia3", "tlora", "glora", BYPASS),
    "dylora_glora_locon": ("dylora", "glora", "locon", BYPASS),
    "glora_tlora_loha": ("glora", "tlora", "loha", BYPASS),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bypass_dropouts_beside_entries_reading_none_are_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    """A LoCon / LoHa / LoKr network's bypass_mode with its dropout and rank_dropout beside BOFT, DyLoRA and
    IA^3 entries (and Diag-OFT ones with the rank_dropout alone) (was DBS403, a spec's DBS578): their
    modules' bypass forward reads neither (DiagOFTModule's Dropout raises: DBS402), the network's own layers
    drop and mask as their class does (output_dropout, rank_dropout_form "lycoris_bypass"); an IA^3 /
    DyLoRA network's beside LoCon / LoHa / LoKr entries (and those), whose own modules read neither."""
    algo, ff, geglu, args = CASES[case]
    a, made = alike(pipe, tmp_path, monkeypatch, algo, ff, geglu, args)
    # the output_dropout: the network's own LoCon / LoHa / LoKr layers', else its entries' (GLoRA / T-LoRA
    # ones' handed on as their bypass dropout on another network: runtime/mixed_kinds.py kind_adapter)
    readers = {"locon", "loha", "lokr", *(() if algo in ("glora", "tlora") else ("glora", "tlora"))}
    low_rank = algo in ("locon", "loha", "lokr") or bool({ff, geglu} & readers)
    assert a.bypass and a.output_dropout == (float(args.get("dropout", 0)) if low_rank else 0.0)
    # LoCon's ranks, LoHa's rows, GLoRA's pairs'; LoKr, IA^3, BOFT, DyLoRA and Diag-OFT none there (else
    # DBS405)
    drawn = {algo, ff, geglu} & {"locon", "loha", "glora"}
    assert a.rank_dropout == (0.3 if drawn else 0.0) and all(m.bypass_mode for m in made.unet_loras)


def test_flux_ia3_network_bypass_dropouts_beside_fused_entries_are_lycoris(tmp_path, monkeypatch):
    """On Flux's fused Linears (LoCon q/k/v and CLIP-L attention, LoHa linear1, IA^3 on the rest): each
    LoCon / LoHa module drops and masks its stacked update as its class does, the parts sharing its masks,
    IA3Module reading neither (test_lycoris_flow_mixed_rs_lora_boft's _alike: outputs, generator state,
    gradients)."""
    from tests.runtime.test_lycoris_flow_mixed_rs_lora_boft import BOFT_FILE, _alike

    a, made, _ = _alike(tmp_path, monkeypatch, "ia3", BOFT_FILE, {**BYPASS, "module_dropout": "0.3"})
    assert (a.kind, a.bypass, a.output_dropout, a.rank_dropout_form) == ("ia3", True, 0.3, "lycoris_bypass")
    assert {type(m).__name__ for m in made.values()} == {"IA3Module", "LoConModule", "LohaModule"}


def test_flux_tlora_network_bypass_dropouts_beside_fused_glora_entries_are_lycoris(tmp_path, monkeypatch):
    """On Flux's fused Linears: a T-LoRA network in bypass_mode with its dropout and rank_dropout beside GLoRA
    entries on the image q/k/v (one GLoRAModule per fused Linear: its pairs' masks over the stacked rows) and
    CLIP-L's attention: each kohya module against the plan's parts (test_lycoris_flow_mixed_rs_lora_boft's
    _alike: outputs, generator state, gradients)."""
    from tests.runtime.test_lycoris_flow_mixed_rs_lora_boft import BOFT_FILE, _alike

    text = BOFT_FILE.replace('algo = "locon"', 'algo = "glora"').replace('algo = "loha"', 'algo = "glora"')
    a, made, _ = _alike(tmp_path, monkeypatch, "tlora", text, {**BYPASS, "module_dropout": "0.3"})
    assert (a.kind, a.bypass, a.bypass_dropout, a.rank_dropout) == ("tlora", True, 0.3, 0.3)
    assert {type(m).__name__ for m in made.values()} == {"TLoraModule", "GLoRAModule"}


def test_flux_locon_network_bypass_dropouts_beside_fused_glora_tlora_entries_are_lycoris(
    tmp_path, monkeypatch
):
    """On Flux's fused Linears: a LoCon network in bypass_mode with its dropout and rank_dropout beside GLoRA
    entries (q/k/v, CLIP-L's attention) and T-LoRA ones (linear1), one module per fused Linear: each kohya
    module against the plan's parts (outputs, generator state, gradients)."""
    from tests.runtime.test_lycoris_flow_mixed_rs_lora_boft import BOFT_FILE, _alike

    text = BOFT_FILE.replace('algo = "locon"', 'algo = "glora"').replace('algo = "loha"', 'algo = "tlora"')
    a, made, _ = _alike(tmp_path, monkeypatch, "locon", text, {**BYPASS, "module_dropout": "0.3"})
    assert (a.kind, a.bypass, a.output_dropout, a.rank_dropout) == ("lora", True, 0.3, 0.3)
    assert {type(m).__name__ for m in made.values()} == {"LoConModule", "GLoRAModule", "TLoraModule"}


# id: (network algo, the FeedForward entry's (its own bypass_mode on), the GEGLU entry's)
OWN_BYPASS = {
    "diag_oft_boft_boft": ("diag-oft", "boft", "diag-oft"),
    "tlora_ia3_locon": ("tlora", "ia3", "locon"),
    "tlora_dylora_loha": ("tlora", "dylora", "loha"),
}


@pytest.mark.parametrize("case", sorted(OWN_BYPASS))
def test_an_entrys_own_bypass_on_other_networks_is_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    """A BOFT entry's own bypass_mode on a Diag-OFT network, an IA^3 / DyLoRA entry's on a T-LoRA network
    (was DBS403): its block's `bypass`, those layers alone in their bypass forward (the output rotated /
    scaled, bias included; DyLoRA's one block unscaled) as lycoris-lora's modules."""
    algo, ff, geglu = OWN_BYPASS[case]
    own = "bypass_mode = true\n" + ("dim = 4\n" if ff == "dylora" else "")
    a, made = alike(pipe, tmp_path, monkeypatch, algo, ff, geglu, {}, own=own)
    assert [b.bypass for b in a.blocks if b.kind == ff] == [True]
    modes = {(type(m).__name__, bool(m.bypass_mode)) for m in made.unet_loras}
    assert any(mode for _, mode in modes) and any(not mode for _, mode in modes), modes


# id: (network algo, the FeedForward entry's (its own bypass_mode given), the GEGLU entry's, network_args)
OWN_BYPASS_FULL_IA3 = {
    "full_diag_oft_ia3": ("full", "diag-oft", "ia3", {}),
    "full_boft_locon": ("full", "boft", "locon", {}),
    "full_ia3_loha": ("full", "ia3", "loha", {}),
    "ia3_dylora_locon": ("ia3", "dylora", "locon", {}),
    "ia3_boft_lokr": ("ia3", "boft", "lokr", {}),
    # the network in bypass_mode, the entry's own off
    "ia3_bypass_diag_oft_off": ("ia3", "diag-oft", "loha", {"bypass_mode": "True"}),
}


@pytest.mark.parametrize("case", sorted(OWN_BYPASS_FULL_IA3))
def test_an_entrys_own_bypass_on_full_and_ia3_networks_is_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    """A Diag-OFT / BOFT / IA^3 / DyLoRA entry's own bypass_mode on a full or IA^3 network (was DBS403): its
    block of that kind carries `bypass` (spec ScaleBlock), those layers alone in their own forward as
    lycoris-lora's modules."""
    algo, ff, geglu, args = OWN_BYPASS_FULL_IA3[case]
    on = not args
    own = f"bypass_mode = {str(on).lower()}\n" + ("dim = 4\n" if ff == "dylora" else "")
    a, made = alike(pipe, tmp_path, monkeypatch, algo, ff, geglu, args, own=own)
    assert [b.bypass for b in a.blocks if b.kind == ff] == [on]
    modes = {(type(m).__name__, bool(m.bypass_mode)) for m in made.unet_loras}
    assert any(mode for _, mode in modes) and any(not mode for _, mode in modes), modes


@pytest.mark.parametrize("algo", ["full", "ia3"])
def test_flux_entries_own_bypass_on_full_and_ia3_networks_is_lycoris(tmp_path, monkeypatch, algo):
    """On Flux's fused Linears: Diag-OFT entries on the image / text q/k/v and IA^3 ones on CLIP-L's
    attention, each with its own bypass_mode, on a full or IA^3 network: each kohya module against the plan's
    parts (test_lycoris_flow_mixed_rs_lora_boft's _alike: outputs, generator state, gradients)."""
    from tests.runtime.test_lycoris_flow_mixed_rs_lora_boft import BOFT_FILE, _alike

    text = BOFT_FILE.replace('algo = "locon"\ndim = 4', 'algo = "diag-oft"\nbypass_mode = true\ndim = 4')
    text = text.replace('CLIPAttention]\nalgo = "locon"', 'CLIPAttention]\nalgo = "ia3"\nbypass_mode = true')
    a, made, _ = _alike(tmp_path, monkeypatch, algo, text, {"module_dropout": "0.3"})
    assert {b.kind for b in a.blocks if b.bypass} == {"diag-oft"}
    # (an IA^3 network's IA^3 entries: its own block)
    assert {b.kind for b in a.text_encoder_blocks if b.bypass} == {"ia3" if algo == "full" else "adapter"}
    modes = {(type(m).__name__, bool(m.bypass_mode)) for m in made.values()}
    assert {("DiagOFTModule", True), ("IA3Module", True), ("LohaModule", False)} <= modes, modes
