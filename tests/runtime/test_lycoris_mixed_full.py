"""LyCORIS preset files giving some SD layers LyCORIS's full algo beside a LoCon / LoKr network's layers
(issue 12): the converted plan's `kind = "full"` blocks against lycoris-lora 4.1.3's create_network on tiny
SD 1.x (each layer's module class, and the low-rank layers' dims and scales), and a tiny run: its one kohya
export (FullModule's `diff` / `diff_b` beside the others' keys) loads in lycoris-lora's
create_network_from_weights to the trained U-Net's output, and its adapter folders load back as `dbspec
sample` loads them (runtime/mixed_kinds.py, lycoris_full.py). No run resumes here: full entries' diffs
beside LoCon / LoHa / LoKr layers resume bit-exact in test_lycoris_mixed_module_dropout.py's
test_mixed_module_dropout_trains_and_resumes (this file's MIXED_FULL on a LoKr network), the other kinds in
their own runs (test_lycoris_switches' IA^3 and Diag-OFT, test_lycoris_boft's BOFT,
test_lycoris_mixed_flow_full's GLoRA, LoCon's and LoKr's where test_lycoris.py's RESUMED_KINDS says)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.adapters import add_lora
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from tests.runtime.test_lycoris import loader  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    MIXED,
    _converted_plan,
    _lycoris,
    pipe,
)

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# LyCORIS's full algo on the transformers' MLPs and CLIP's attention, LoCon on the ResNets and conv_in,
# LoHa on CLIP's MLPs
MIXED_FULL = MIXED.replace(
    '[module_algo_map.FeedForward]\nalgo = "loha"', '[module_algo_map.FeedForward]\nalgo = "full"'
)
MIXED_FULL += '[module_algo_map.CLIPAttention]\nalgo = "full"\n'  # CLIP's attention too (built, not trained)


_CLASS_OF = {
    "full": "FullModule",
    "ia3": "IA3Module",
    "diag-oft": "DiagOFTModule",
    "boft": "ButterflyOFTModule",
    "glora": "GLoRAModule",
}


def _classes(model: nn.Module, prefix: str) -> dict[str, tuple]:
    """Each adapted layer as LyCORIS's class, and for the low-rank ones their rank and scale."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer

    from dbspec.runtime.lycoris_full import FullLayer
    from dbspec.runtime.lycoris_glora import GloraLayer
    from dbspec.runtime.lycoris_ia3 import Ia3Layer
    from dbspec.runtime.lycoris_boft import BoftLayer
    from dbspec.runtime.lycoris_oft import DiagOftLayer

    out = {}
    for name, layer in model.named_modules():
        key = prefix + name.replace(".", "_")
        if isinstance(layer, FullLayer) and "default" in layer.lora_full:
            out[key] = ("FullModule",)
            continue
        if isinstance(layer, Ia3Layer) and "default" in layer.lora_ia3:
            out[key] = ("IA3Module", bool(layer.on_input["default"]))
            continue
        if isinstance(layer, GloraLayer) and "default" in layer.lora_glora_a1:
            out[key] = ("GLoRAModule", layer.r["default"], round(float(layer.scaling["default"]), 12))
            continue
        if isinstance(layer, DiagOftLayer) and "default" in layer.lora_oft_blocks:
            name = "ButterflyOFTModule" if isinstance(layer, BoftLayer) else "DiagOFTModule"
            out[key] = (name, tuple(layer.lora_oft_blocks["default"].shape))
            continue
        found = next(
            (
                c
                for t, c in ((LoraLayer, "LoConModule"), (LoHaLayer, "LohaModule"), (LoKrLayer, "LokrModule"))
                if isinstance(layer, t)
            ),
            None,
        )
        if found and "default" in layer.r:
            out[key] = (found, layer.r["default"], round(float(layer.scaling["default"]), 12))
    return out


def _lycoris_classes(made) -> dict[str, tuple]:
    """Each LyCORIS module's class, and for the low-rank ones their dim and scale (FullModule has none)."""
    return {
        m.lora_name: (type(m).__name__,)
        if type(m).__name__ == "FullModule"
        else (type(m).__name__, bool(m.train_input))
        if type(m).__name__ == "IA3Module"
        else (type(m).__name__, tuple(m.oft_blocks.shape))
        if type(m).__name__ in ("DiagOFTModule", "ButterflyOFTModule")
        else (type(m).__name__, m.lora_dim, round(float(m.scale), 12))
        for m in [*made.unet_loras, *made.text_encoder_loras]
    }


@pytest.mark.parametrize(
    ("algo", "other"),
    [
        ("locon", "full"),
        ("lokr", "full"),
        ("locon", "ia3"),
        ("lokr", "diag-oft"),
        ("locon", "boft"),
        ("locon", "glora"),
    ],
)
def test_full_entries_beside_other_kinds_train_and_load_in_lycoris(
    pipe,  # noqa: F811
    tmp_path,
    monkeypatch,
    loader,  # noqa: F811
    algo,
    other,
):
    from dbspec.runtime.weights import load_peft_adapters
    from tests.runtime.test_lycoris import _unet_output
    from tests.runtime.test_lycoris_mixed_module_dropout import lycoris_unet
    from tests.unit.convert_kit import out_path

    preset = MIXED_FULL.replace('algo = "full"', f'algo = "{other}"')
    path, plan = _converted_plan(tmp_path, "mixed_full", algo, text=preset)
    a = plan.adapter
    assert other in {b.kind for b in a.blocks} and {b.kind for b in a.text_encoder_blocks} == {"loha", other}
    made = _lycoris(pipe, path, monkeypatch, algo)
    theirs_all = _lycoris_classes(made)
    theirs = {k: v for k, v in theirs_all.items() if k.startswith("lora_unet_")}
    assert {v[0] for v in theirs.values()} == {
        _CLASS_OF[other],
        "LoConModule",
        "LokrModule" if algo == "lokr" else "LoConModule",
    }
    # the U-Net's layers: the trained U-Net's below (training changes no class, rank or scale)
    text = copy.deepcopy(pipe.text_encoder)
    add_lora(text, a, a.text_encoder_targets, seed=0, component="text_encoder")
    theirs_text = {k: v for k, v in theirs_all.items() if k.startswith("lora_te_")}
    assert _classes(text, "lora_te_text_model_") == theirs_text

    spec = out_path(tmp_path)
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2", "train.text_encoder=false"]
    whole = execute(compile_spec(spec, [*base, "output.dir=whole"]), keep_models=True)
    assert whole.status == "finished"
    files = sorted(str(p.relative_to(whole.final)) for p in Path(whole.final).rglob("*.safetensors"))
    assert f"unet/{other}/adapter_model.safetensors" in files

    trained = whole.components.unet.eval()
    assert _classes(trained, "lora_unet_") == theirs
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    tensors = load_file(str(export))
    key = {"full": ".diff", "ia3": ".on_input", "glora": ".a1.weight"}.get(other, ".oft_blocks")
    assert any(k.endswith(key) for k in tensors)
    if other == "ia3":
        # lycoris-lora 4.1.3's create_network_from_weights cannot rebuild an IA3Module (its TypeError,
        # test_lycoris_flow_factor_file.py): the file loads into create_network's modules from the preset
        loaded, fresh = lycoris_unet(pipe, monkeypatch, algo, path)
        result = loaded.load_state_dict(tensors, strict=False)
        assert not result.unexpected_keys and all(k.startswith("lora_te_") for k in result.missing_keys)
    else:
        fresh = copy.deepcopy(pipe.unet)
        named = nn.Module()
        named.text_model = copy.deepcopy(pipe.text_encoder)
        loaded, _ = loader(
            1.0, str(export), None, named, fresh, for_inference=True
        )  # every module: the file's
        loaded.apply_to(named, fresh, apply_text_encoder=False, apply_unet=True)
        # every module was built from the file's tensors already (make_module_from_state_dict); kohya's
        # extra load_state_dict would add FullModule's diff a second time (test_lycoris_clip_norms.py)
    assert {type(m).__name__ for m in loaded.unet_loras} == {v[0] for v in theirs.values()}
    assert len(loaded.unet_loras) == len(theirs)
    output = _unet_output(trained)
    torch.testing.assert_close(_unet_output(fresh), output, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_unet_output(pipe.unet), output, atol=1e-3)  # training moved it
    again = copy.deepcopy(pipe.unet)
    assert load_peft_adapters(Path(whole.final), {"unet": again}, lokr_unit_scale=True) == ["unet"]
    torch.testing.assert_close(_unet_output(again.eval()), output, rtol=1e-5, atol=1e-5)
