"""A Diag-OFT or BOFT network's preset-file full, IA^3 or GLoRA entries (issue 12; was DBS403, "several
algorithms"): lycoris-lora 4.1.3's network `algo` only names the algorithm of the layers no map entry sets,
every module getting the same root kwargs, so algo=diag-oft with full entries builds what algo=full builds
with the Diag-OFT layers as entries; the converter writes that network (oft_entries.oft_network_host, as for
LoCon / LoHa / LoKr and T-LoRA entries): an adapter of the entries' kind whose Diag-OFT / BOFT layers are
blocks of that kind at the network's dim and constraint. Checked against lycoris-lora's
create_network(algo="diag-oft" / "boft") from the same file on tiny SD 1.x with module_dropout: every
module's class and OFT bound, our export loading into it, eval and training-mode outputs, the generator state
after each forward and the gradients of the tensors both name alike (the OFT blocks', IA^3's scales, GLoRA's
factors; FullModule trains its weight under another name). No tiny run: each host kind trains, exports and
resumes beside OFT entries in its own tests."""

from __future__ import annotations

import pytest

from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import _converted_plan, pipe  # noqa: F401 (pipe: a fixture)
from tests.runtime.test_lycoris_loha_locon_rank_dropout import _ours
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, grads_as_lycoris, lycoris_unet
from tests.runtime.test_lycoris_tlora_mixed_opts import FILE

pytest.importorskip("lycoris.kohya")

# id: (network algo, its FILE entries' algo on the transformers' feed-forwards, network_args besides
# module_dropout, the entry kind's tensors whose gradients LyCORIS names as we do)
CASES = {
    "diag_oft_full_constraint": ("diag-oft", "full", {"constraint": "0.0001"}, ()),
    "boft_ia3": ("boft", "ia3", {}, ("weight",)),
    "diag_oft_glora_rescaled": ("diag-oft", "glora", {"rescaled": "True"}, ("a1.weight", "b2.weight")),
}
CLASSES = {
    "diag-oft": "DiagOFTModule",
    "boft": "ButterflyOFTModule",
    "full": "FullModule",
    "ia3": "IA3Module",
    "glora": "GLoRAModule",
}


def oft_blocks_alike(a, made, algo: str, extra: dict) -> None:
    """The plan's blocks of the OFT network's own layers at its dim 4, constraint (their alpha) and rescale
    (`extra`: its network_args), as lycoris-lora's OFT modules in `made` (the constraint times their dim)."""
    constraint = float(extra.get("constraint", 0.0))
    rescaled = "on" if "rescaled" in extra else "adapter"
    oft_blocks = {(b.kind, b.rank, b.alpha, b.rescaled) for b in a.blocks if b.kind == algo}
    assert oft_blocks == {(algo, 4, constraint, rescaled)}
    oft = [m for m in made.unet_loras if type(m).__name__ == CLASSES[algo]]
    assert oft and all(m.rescaled == ("rescaled" in extra) for m in oft)
    assert all(float(m.constraint) == pytest.approx(constraint * m.dim) for m in oft)


@pytest.mark.parametrize("case", sorted(CASES))
def test_oft_network_whole_layer_entries_are_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    algo, entry, extra, named = CASES[case]
    args = {"module_dropout": "0.3", **extra}
    given = " ".join(f'"{k}={v}"' for k, v in args.items())
    path, plan = _converted_plan(tmp_path, "oft_host", algo, given, text=FILE.format(algo=entry, extra=""))
    a = plan.adapter
    assert (a.kind, a.module_dropout) == (entry, 0.3)
    ours = _ours(pipe, plan)
    made, theirs = lycoris_unet(pipe, monkeypatch, algo, path, **args)
    assert {type(m).__name__ for m in made.unet_loras} == {CLASSES[algo], CLASSES[entry]}
    oft_blocks_alike(a, made, algo, extra)
    result = made.load_state_dict(
        lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32"), strict=False
    )
    assert not result.unexpected_keys, result
    calm_then_dropped(ours, theirs, made, pipe.unet)  # eval equal, three dropped training forwards
    grads_as_lycoris(ours, made, ("oft_blocks", *named))


@pytest.mark.parametrize("entries", ["glora+full", "ia3"])
def test_flux_diag_oft_network_whole_layer_entries_are_lycoris(tmp_path, monkeypatch, entries):
    """On Flux's fused Linears: a Diag-OFT network's GLoRA (the double blocks' q/k/v, CLIP-L's attention) and
    full (the single blocks' linear1) entries, or IA^3 ones in their place, converted as a full (IA^3) network
    (oft_entries._HOSTS' first kind present) whose own layers (the double blocks' out projections) are
    `diag-oft` blocks at the network's constraint: every kohya layer's lycoris-lora module
    (create_network(algo="diag-oft") on kohya's stacked Linears, our export loaded strictly) against the
    plan's parts (test_lycoris_flow_mixed_rs_lora_boft's _alike: outputs, generator state, gradients)."""
    from tests.runtime.test_lycoris_flow_mixed_rs_lora_boft import BOFT_FILE, _alike, _classes

    first, _, second = entries.partition("+")
    text = BOFT_FILE.replace('algo = "locon"', f'algo = "{first}"').replace(
        'algo = "loha"', f'algo = "{second or first}"'
    )
    a, made, _ = _alike(
        tmp_path, monkeypatch, "diag-oft", text, {"module_dropout": "0.5", "constraint": "0.0001"}
    )
    assert a.kind == (second or first)
    assert {(b.kind, b.alpha) for b in a.blocks if b.kind == "diag-oft"} == {("diag-oft", 0.0001)}
    classes = _classes(made)
    assert classes["lora_unet_double_blocks_0_img_attn_proj"] == "DiagOFTModule"
    assert classes["lora_unet_double_blocks_0_img_attn_qkv"] == CLASSES[first]
    assert classes["lora_unet_single_blocks_0_linear1"] == CLASSES[second or first]
