"""lycoris.kohya algo=tlora with `train_norm` on kohya's Flux (issue 12; was DBS403, and a converter crash
where the preset file reached CLIP's LayerNorms): CLIP-L's LayerNorms take norm offsets beside the T-LoRA
adapter, as beside DyLoRA; the network's `rank_dropout`, which TLoraModule never reads, is the preset file's
entries' (the adapter's `rank_dropout`) and the NormModules' (`norm_rank_dropout`, the same rate). Checked
layer by layer on fixed inputs, no tiny run (tests/runtime/test_lycoris_flow_rank_dropout_layers.py's
helpers): each CLIP-L LayerNorm's offsets, as runtime/prepare.py builds CLIP-L beside its TLoraModules,
against its NormModule in lycoris-lora 4.1.3's network from the same file, over six training forwards from
one generator state: outputs, input gradients, generator state. The transformer's fused TLoraModules and
entries beside the rate and module_dropout are test_lycoris_flow_tlora_rank_dropout.py's."""

from __future__ import annotations

import copy

import torch
from torch import nn

from dbspec.runtime.tiny import build_pipeline
from tests.runtime.test_lycoris_flow_rank_dropout_layers import (
    DROP,
    DYLORA_FILE,
    FLUX,
    RATE,
    _kohya_clip,
    _network,
    _plan,
    _prepared,
    _same_training,
)
from tests.runtime.test_lycoris_tlora import _no_gc


def test_flux_tlora_network_with_norms_rank_dropout(tmp_path, monkeypatch):
    """algo=tlora with train_norm, rank_dropout and module_dropout: CLIP-L's norm offsets draw as
    lycoris-lora's NormModules."""
    from dbspec.runtime.norm_offsets import BIAS, WEIGHT
    from dbspec.runtime.prepare import text_targets

    _no_gc(monkeypatch)
    args = {"algo": "tlora", "train_norm": "True", "rank_dropout": str(RATE), "module_dropout": str(DROP)}
    plan = _plan(tmp_path, "flux", FLUX, DYLORA_FILE, args)
    a = plan.adapter
    assert (a.kind, a.rank_dropout, a.norm_rank_dropout, a.module_dropout) == ("tlora", RATE, RATE, DROP)
    assert a.text_encoder_norms == ("layer_norm1", "layer_norm2") and a.fused
    pipe = build_pipeline("builtin:tiny-flux")
    drops = {k: args[k] for k in ("rank_dropout", "module_dropout")}
    base = copy.deepcopy(pipe.text_encoder).float()
    clip = _prepared(pipe.text_encoder.float(), "text_encoder", plan, text_targets(a, "text_encoder"))
    made = _network(
        monkeypatch, "tlora", tmp_path / "p.toml", [_kohya_clip(base), nn.Module()], nn.Module(),
        {**drops, "train_norm": "True"},
    )  # fmt: skip
    norms = {m.lora_name: m for m in made.text_encoder_loras if type(m).__name__ == "NormModule"}
    assert any(type(m).__name__ == "TLoraModule" for m in made.text_encoder_loras)  # beside T-LoRA
    assert any(type(m).__name__ == "TloraLayer" for m in clip.modules())
    ours = {
        "lora_te1_" + ("text_model." + path).replace(".", "_"): layer
        for path, layer in clip.named_modules()
        if hasattr(layer, WEIGHT)
    }
    assert norms.keys() == ours.keys() and len(norms) >= 4
    moved = 0
    for name, module in norms.items():
        layer = ours[name].train()
        assert module.rank_dropout == RATE and module.module_dropout == DROP, name
        with torch.no_grad():
            module.w_norm.copy_(getattr(layer, WEIGHT))
            module.b_norm.copy_(getattr(layer, BIAS))
        moved += _same_training(module.train(), layer, torch.randn(3, 5, layer.normalized_shape[0]), name)
    assert moved >= 2
