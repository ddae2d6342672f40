"""A LyCORIS preset file's map entries with their own `weight_decompose` (issue 12): lycoris-lora 4.1.3's
create_single_module hands an entry's keys over the network's, so LoConModule / LohaModule / LokrModule give
those layers alone LyCORIS's weight decomposition (a `dora_scale` at the base weight's norms), or take it away
from them on a `dora_wd` network. dbspec converts such an entry to its block's `dora` (runtime/blocks.py
block_doras, runtime/lycoris_dora.py on those layers only). Checked against lycoris-lora's network built from
the same file: the layers holding a `dora_scale` and its shape; a tiny run resumes bit-exact, its export
carries `dora_scale` exactly where LyCORIS's modules do and loads into them (strict) with each module's
decomposed weight the trained layer's merged one, and its adapter folders load back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from dbspec.runtime.execute import execute
from dbspec.runtime.lycoris_dora import dora_scale_of
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec
from tests.runtime.test_lycoris_algo_maps import (
    PRESETS,
    _converted_plan,
    _loaded_weights_are_trained,
    _lycoris,
    _resumes_and_loads_back,
)

pytest.importorskip("lycoris.kohya")

# the ResNets (their 3x3 convolutions and time projections) and CLIP's MLP decomposed, the rest not; on a
# dora_wd network (`off`) the transformers' MLP without
ENTRIES = {
    "on": """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []

[module_algo_map.ResnetBlock2D]
weight_decompose = true
[module_algo_map.CLIPMLP]
dim = 2
weight_decompose = "yes"
""",
    "off": """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention"]
text_encoder_target_name = []

[module_algo_map.FeedForward]
weight_decompose = false
""",
}


def _decomposed(made) -> dict[str, list[int]]:
    """{LyCORIS module name: its dora_scale's shape} of the modules with weight_decompose."""
    return {
        m.lora_name: list(m.dora_scale.shape)
        for m in [*made.unet_loras, *made.text_encoder_loras]
        if getattr(m, "wd", False)
    }


def _ours(components) -> dict[str, list[int]]:
    out = {}
    for prefix, model, path in (
        ("lora_unet_", components.unet, lambda n: n),
        ("lora_te_", components.text_encoders[0], lambda n: f"text_model.{n}"),
    ):
        for name, layer in model.named_modules():
            scale = dora_scale_of(layer, "default")
            if scale is not None:
                out[prefix + path(name).replace(".", "_")] = list(scale.shape)
    return out


@pytest.mark.parametrize(
    "algo, entries, args",
    [("locon", "on", ""), ("loha", "on", "wd_on_output=False"), ("lokr", "off", "dora_wd=True")],
)
def test_entry_weight_decompose_trains_resumes_and_loads_as_lycoris(
    algo, entries, args, tmp_path, monkeypatch
):
    from tests.unit.convert_kit import out_path

    pipe = build_pipeline("builtin:tiny-sd1")
    PRESETS[entries] = ENTRIES[entries]
    try:
        path, plan = _converted_plan(tmp_path, entries, algo, f'"{args}"' if args else "")
    finally:
        del PRESETS[entries]
    a = plan.adapter
    blocks = [*a.blocks, *a.text_encoder_blocks]
    assert a.dora == (entries == "off") and a.dora_form == "lycoris"
    assert a.dora_axis == ("input" if "wd_on_output" in args else "output")
    assert {b.dora for b in blocks} == {entries}
    extra = dict(kv.split("=") for kv in args.split()) if args else {}
    made = _lycoris(pipe, path, monkeypatch, algo, **extra)
    theirs = _decomposed(made)
    everything = {m.lora_name for m in [*made.unet_loras, *made.text_encoder_loras]}
    assert theirs and set(theirs) != everything  # some layers decomposed, others not
    done = execute(compile_spec(out_path(tmp_path), ["model.base=builtin:tiny-sd1"]), keep_models=True)
    assert done.status == "finished"
    assert _ours(done.components) == theirs  # the same layers, each dora_scale in LyCORIS's shape
    (export,) = Path(done.final).glob("*.kohya.safetensors")
    with safe_open(str(export), "pt") as handle:
        ours = {key: handle.get_tensor(key) for key in handle.keys()}
    saved = {
        f"{m.lora_name}.{k}": v
        for m in [*made.unet_loras, *made.text_encoder_loras]
        for k, v in m.state_dict().items()
    }
    assert sorted(ours) == sorted(saved)
    assert {k: list(v.shape) for k, v in ours.items()} == {k: list(v.shape) for k, v in saved.items()}
    trained = [k for k in ours if k.endswith("dora_scale") and not torch.equal(ours[k], saved[k])]
    assert trained, "the magnitudes trained"
    _resumes_and_loads_back(tmp_path, done, ours)
    fresh = build_pipeline("builtin:tiny-sd1")  # lycoris-lora's modules from the same file take the export
    named = nn.Module()
    named.text_model = fresh.text_encoder
    made.apply_to(named, fresh.unet, apply_text_encoder=True, apply_unet=True)
    made.load_state_dict(ours, strict=True)
    _loaded_weights_are_trained(made, done.components)
