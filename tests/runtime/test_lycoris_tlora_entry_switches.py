"""An algo=tlora network's `use_scalar`, `factor`, `decompose_both`, `full_matrix`,
`unbalanced_factorization`, `dora_wd` (`wd_on_output`) and `rs_lora` beside its preset file's LoCon / LoHa /
LoKr entries, and those entries' own (issue 12; each was DBS403): TLoraModule reads none of them, LoConModule
/ LohaModule / LokrModule use_scalar, rs_lora and the weight decomposition, LokrModule the rest, so they are
those entries' blocks' `scalar`, `factor`, switches, `dora` and `dora_axis`, rs_lora their alpha x sqrt(dim)
and a LoKr block's `rank_stabilized` (spec TloraBlock; the T-LoRA adapter has none). The plan's U-Net
built as a run builds it and lycoris-lora 4.1.3's network from the same network_args and file on tiny SD
1.x: the modules training a scalar, every LoKr factor's shape, the decomposed modules' dora_scale shapes and
the rs_lora modules' dims and scales alike, our export loading into that network (a factor shape LyCORIS
lacks fails the load), eval and training-mode outputs and the generator state after each forward equal
(module_dropout). No gradient comparison: the export folds a trained scalar into a factor, whose gradient
then differs by it."""

from __future__ import annotations

import pytest
from torch import nn

from tests.runtime.test_lycoris_algo_maps import _decomposed_by, _decomposed_of
from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_mixed_full import _classes, _lycoris_classes
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped
from tests.runtime.test_lycoris_tlora_mixed_opts import _built
from tests.runtime.test_lycoris_whole_main_own_opts import _lokr_shapes, _scaled, _their_lokr_shapes

pytest.importorskip("lycoris.kohya")

# id: (the feed-forwards' entry algo, its own options, network_args, whether its layers train a scalar)
CASES = {
    "lokr_network_switches": (
        "lokr",
        "",
        {"use_scalar": "True", "factor": "4", "decompose_both": "True"},
        True,
    ),
    "lokr_network_full_matrix": (
        "lokr",
        "",
        {"full_matrix": "True", "unbalanced_factorization": "True"},
        False,
    ),
    "lokr_own": ("lokr", "factor = 4\nunbalanced_factorization = true\nuse_scalar = true", {}, True),
    "loha_network_scalar": ("loha", "", {"use_scalar": "True"}, True),
    "locon_own_scalar_off": ("locon", "use_scalar = false", {"use_scalar": "True"}, False),
    # the network's dora_wd (its wd_on_output) and an entry's own weight_decompose: the blocks' `dora`
    # (`dora_axis`), TLoraModule never decomposing
    "locon_network_dora": ("locon", "", {"dora_wd": "True"}, False),
    "lokr_network_dora_input": ("lokr", "", {"dora_wd": "True", "wd_on_output": "False"}, False),
    "loha_own_dora": ("loha", "weight_decompose = true", {}, False),
    # the network's rs_lora (its entries' blocks' alpha x sqrt(dim); LoKr at dim 64, both factors full:
    # their block's `rank_stabilized`) and an entry's own
    "locon_network_rs_lora": ("locon", "", {"rs_lora": "True"}, False),
    "lokr_network_rs_lora_full": ("lokr", "dim = 64", {"rs_lora": "True"}, False),
    "loha_own_rs_lora": ("loha", "rs_lora = true", {}, False),
}
CLASSES = {"lokr": "LokrModule", "loha": "LohaModule", "locon": "LoConModule"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tlora_network_entries_switches_are_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    algo, extra, args, scalar = CASES[case]
    plan, ours, made, theirs = _built(pipe, tmp_path, monkeypatch, algo, extra, args)
    assert plan.adapter.kind == "tlora"
    assert {type(m).__name__ for m in made.unet_loras} == {"TLoraModule", CLASSES[algo]}
    scaled = {m.lora_name for m in made.unet_loras if isinstance(getattr(m, "scalar", None), nn.Parameter)}
    assert bool(scaled) == scalar and _scaled(ours, "lora_unet_") == scaled
    shapes = _their_lokr_shapes(made)
    assert bool(shapes) == (algo == "lokr") and _lokr_shapes(ours, "lora_unet_") == shapes
    decomposed = _decomposed_of(made)
    dora = "dora" in case
    assert bool(decomposed) == dora and _decomposed_by(ours, "lora_unet_") == decomposed
    if "input" in case:  # one magnitude per input column
        assert all(shape[0] == 1 for shape in decomposed.values())
    if "rs_lora" in case:  # LyCORIS's alpha / sqrt(dim); LoKr's full factors dim / sqrt(dim)
        entries = [m for m in made.unet_loras if type(m).__name__ == CLASSES[algo]]
        assert entries and all(m.rs_lora for m in entries)
        theirs_scaled = {k: v for k, v in _lycoris_classes(made).items() if v[0] == CLASSES[algo]}
        assert {k: v for k, v in _classes(ours, "lora_unet_").items() if k in theirs_scaled} == theirs_scaled
        if "full" in case:
            assert all(m.use_w1 and m.use_w2 for m in entries)
            assert {m.scale for m in entries} == {8.0}  # 64 / sqrt(64)
            assert [b.rank_stabilized for b in plan.adapter.blocks] == ["on"]
            for m in entries:  # the file loaders' scale: the export holds it in lokr_w1
                m.scale = 1.0
    calm_then_dropped(ours, theirs, made, pipe.unet)


def test_flux_tlora_network_dora_wd_reaches_its_fused_entries_as_lycoris(tmp_path, monkeypatch):
    """On Flux's fused Linears: a T-LoRA network's dora_wd decomposes its LoCon (q/k/v, CLIP) and LoKr
    (linear1) entries' modules, one per fused Linear, never TLoraModule: every kohya module against the
    plan's parts (test_lycoris_flow_mixed_rs_lora_boft's _alike: outputs, generator state, gradients)."""
    from tests.runtime.test_lycoris_flow_mixed_rs_lora_boft import BOFT_FILE, _alike

    text = BOFT_FILE.replace('algo = "loha"', 'algo = "lokr"')
    a, made, _ = _alike(tmp_path, monkeypatch, "tlora", text, {"dora_wd": "True", "module_dropout": "0.3"})
    assert a.kind == "tlora" and {(b.kind, b.dora) for b in a.blocks} == {("lora", "on"), ("lokr", "on")}
    decomposing = {k for k, m in made.items() if getattr(m, "wd", False)}
    assert decomposing == {k for k, m in made.items() if type(m).__name__ in ("LoConModule", "LokrModule")}
    assert any(type(m).__name__ == "TLoraModule" for m in made.values())
