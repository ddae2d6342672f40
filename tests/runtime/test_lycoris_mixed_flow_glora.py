"""A lycoris.kohya algo=glora network with a preset file giving Flux layers other algorithms (issue 12; was
DBS403 / DBS578): the GLoRA adapter on kohya's fused Linears (one GLoRAModule per fused Linear, runtime/
lycoris_glora.py tie_fused_glora) beside blocks of LoCon (its down tied per fused Linear), LoKr, Diag-OFT,
full and IA^3, and LoHa on CLIP-L's MLPs. Checked against lycoris-lora 4.1.3: create_network from the same
preset file on kohya's layers builds every layer in the class the run gives it (GLoRA's and LoCon's dims
and scales equal), a tiny run resumes bit-exact, and its one kohya export holds exactly create_network's
state-dict keys and shapes, which create_network_from_weights loads to the trained outputs (IA^3 aside:
lycoris-lora's loader cannot build it); the adapter folders load back as `dbspec sample` loads them. With the
network's dora_wd (was DBS403 / a spec's DBS583: the GLoRA adapter has no `dora`) its LoCon, LoKr and LoHa
entries' blocks decompose, each fused Linear whole, as LyCORIS hands weight_decompose to every module and
only LoConModule, LokrModule and LohaModule read it: the export's `dora_scale` on exactly the modules
create_network decomposes, in their shapes, each of its modules with the export loaded computing the
trained layer's output."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
from tests.runtime.test_lycoris_mixed_flow_dylora import (
    DYLORA_NETWORK,
    _converted,
    _described,
    _export_matches_their_state,
    _folders_load_back,
    _kind_of,
    _loaded_back,
    _ours,
    _their_network,
)
from tests.runtime.test_lycoris_mixed_flow_full import (
    _BASE,
    _check_kohya_outputs,
    _kohya_layers,
    _kohya_tree,
    _run,
    _without_ia3,
)
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip
from tests.runtime.test_lycoris_preset_file_flow import _unwrapped

pytest.importorskip("lycoris.kohya")

# DYLORA_NETWORK's entries (LoCon on the text stream's q/k/v, LoKr on linear1, Diag-OFT on the image q/k/v,
# full on img_in, IA^3 on txt_in) on a GLoRA network, LoHa on CLIP-L's MLPs, GLoRA elsewhere
GLORA_NETWORK = (
    DYLORA_NETWORK.replace("QKV", "diag-oft")
    .replace("DIM", "4")
    .replace('"dylora"\ndim = 6\nalpha = 3\nblock_size = 3', '"loha"\ndim = 6\nalpha = 3')
) + '[name_algo_map."double_blocks.*.img_attn.proj"]\nalgo = "dylora"\ndim = 4\nblock_size = 2\n'
# (DyLoRA on the image stream's out projection: a GLoRA block of kind "dylora" with the entry's block_size as
# its unit; was DBS403 "unknown key unit")


def test_glora_network_with_other_entries_on_flux_trains_resumes_and_loads_in_lycoris(tmp_path, monkeypatch):
    from dbspec.runtime.lycoris_glora import GloraLayer

    file = tmp_path / "mixed.toml"
    file.write_text(GLORA_NETWORK, encoding="utf-8")
    base = ["model.base=builtin:tiny-flux", *_BASE]
    plan = _converted(tmp_path, file.name, "glora", base, args='"dora_wd=True"')
    a = plan.adapter
    assert a.kind == "glora" and a.fused
    kinds = {"lora", "lokr", "diag-oft", "full", "ia3", "dylora"}
    assert {b.kind for b in a.blocks} - {"adapter"} == kinds
    # dora_wd: the LoCon / LoKr / LoHa blocks' own `dora` (the adapter has none), the others' none
    assert (a.dora, a.dora_form) == (False, "lycoris")
    doras = {
        (b.kind, b.dora, b.dora_axis) for b in (*a.blocks, *a.text_encoder_blocks) if b.dora != "adapter"
    }
    assert doras == {("lora", "on", "adapter"), ("lokr", "on", "adapter"), ("loha", "on", "adapter")}
    planned, whole, tensors = _run(tmp_path, kinds, base)
    unet = whole.components.unet.eval()
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    names = {k.split(".")[0] for k in tensors}
    assert not any("to_q" in n or "proj_mlp" in n for n in names)  # kohya's names only

    clip_trained = whole.components.text_encoders[0]
    clip = _kohya_clip(_unwrapped(clip_trained))
    tree = _kohya_tree(layers)
    theirs, made = _their_network(monkeypatch, "glora", file, [clip, nn.Module()], tree, dora_wd="True")
    expected = {
        "double_blocks.0.img_attn.qkv": "DiagOFTModule",
        "double_blocks.0.txt_attn.qkv": "LoConModule",
        "single_blocks.0.linear1": "LokrModule",
        "img_in": "FullModule",
        "txt_in": "IA3Module",
        "double_blocks.0.img_attn.proj": "DyLoraModule",
        "double_blocks.0.txt_attn.proj": "GLoRAModule",
        "single_blocks.0.linear2": "GLoRAModule",
    }
    unet_names = {n for n in theirs if n.startswith("lora_unet_")}
    assert (
        unet_names
        == {"lora_unet_" + p.replace(".", "_") for p in expected}
        == {n for n in names if n.startswith("lora_unet_")}
    )
    for path, cls in expected.items():
        module = theirs["lora_unet_" + path.replace(".", "_")]
        parts = layers[path][0]
        assert type(module).__name__ == cls, path
        assert {_kind_of(p) for p in parts} == {cls}, path
        if cls == "GLoRAModule":  # its dim and scale (the network's 4 / 1)
            got = {(p.r["default"], round(float(p.scaling["default"]), 12)) for p in parts}
            assert got == {(module.lora_dim, round(float(module.scale), 12))}, path
            assert all(isinstance(p, GloraLayer) for p in parts)
        if cls == "DyLoraModule":  # the entry's dim 4 in blocks of its 2, at the network's alpha 1 / 4
            assert {_ours(p) for p in parts} == {_described(module)} == {(cls, 4, 1 / 4, 2)}, path
        if cls == "LoConModule":  # one down per fused Linear (tied), at the entry's dim and alpha
            assert {_ours(p) for p in parts} == {_described(module)}, path
            assert all(p.lora_A["default"].weight is parts[0].lora_A["default"].weight for p in parts)
    clip_layers = dict(clip_trained.named_modules())
    te = {n: m for n, m in theirs.items() if n.startswith("lora_te1_")}
    assert {type(m).__name__ for m in te.values()} == {"GLoRAModule", "LohaModule"}
    for name, module in te.items():
        path = name.removeprefix("lora_te1_text_model_").replace("_", ".")
        path = path.replace("self.attn", "self_attn").replace(".proj", "_proj")
        assert _kind_of(clip_layers[path]) == type(module).__name__, name
    _export_matches_their_state(made, tensors)  # dora_scale on the modules it decomposes, in their shapes
    decomposed = {n for n, m in theirs.items() if getattr(m, "wd", False)}
    assert decomposed == {k.split(".")[0] for k in tensors if k.endswith(".dora_scale")}
    assert {type(theirs[n]).__name__ for n in decomposed} == {"LoConModule", "LokrModule", "LohaModule"}
    assert "lora_unet_double_blocks_0_txt_attn_qkv" in decomposed  # a fused LoConModule, whole
    # create_network's decomposed modules with the export's tensors (strictly) compute the trained layers
    for name in decomposed:
        theirs[name].load_state_dict(
            {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".")[0] == name}
        )
    on = {p: v for p, v in layers.items() if "lora_unet_" + p.replace(".", "_") in decomposed}
    assert set(on) == {"double_blocks.0.txt_attn.qkv", "single_blocks.0.linear1"}
    _check_kohya_outputs(tree, on, decomposed)
    te_decomposed = [n for n in decomposed if n.startswith("lora_te1_")]  # the LoHa MLPs'
    assert te_decomposed and {type(theirs[n]).__name__ for n in te_decomposed} == {"LohaModule"}
    with torch.no_grad():
        for name in te_decomposed:
            path = name.removeprefix("lora_te1_text_model_").replace("_", ".")
            x = torch.randn(3, clip_layers[path].base_layer.in_features)
            torch.testing.assert_close(clip.get_submodule(f"text_model.{path}")(x), clip_layers[path](x))

    others = {p: v for p, v in layers.items() if p != "txt_in"}  # IA^3's: lycoris-lora's loader cannot
    assert _loaded_back(monkeypatch, _without_ia3(tensors), others) == unet_names - {"lora_unet_txt_in"}
    _folders_load_back(whole, planned, layers)
