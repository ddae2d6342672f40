"""lycoris.kohya algo=dylora with a preset file of per-layer dims and a --network_weights file of other alphas
(issue 12; dbspec/convert/kohya/dylora_preset_alphas.py; was DBS403): lycoris-lora 4.1.3's network built from
the preset on the tiny SD 1.x, the file loaded (load_state_dict(strict=False): only each DyLoraModule's alpha
buffer takes the file's value), against the converted plan's layers: every layer at its entry's dim and the
file's alpha (scale alpha / dim, what get_weight multiplies with the drawn blocks' count), truncated toward
zero where the entry's alpha is an integer (the buffer int64)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from dbspec.runtime.tiny import build_pipeline
from tests.runtime.test_lycoris_algo_maps import PRESETS, _converted_plan, _ours
from tests.runtime.test_lycoris_mixed_file import _network

lycoris_kohya = pytest.importorskip("lycoris.kohya")
# LyCORIS's example.toml's dims, every entry the network's DyLoRA: the ResNets (their convolutions too) at dim
# 2 alpha 1, the transformers' MLP at 8, CLIP's MLP at 6 alpha 3
DIMS = "\n".join(line for line in PRESETS["classes"].splitlines() if not line.strip().startswith("algo"))


def test_entry_dims_train_at_the_files_alphas(tmp_path, monkeypatch):
    pipe = build_pipeline("builtin:tiny-sd1")
    path = tmp_path / "dims.toml"
    path.write_text(DIMS, encoding="utf-8")
    monkeypatch.setitem(PRESETS, "dims", DIMS)
    made = _network(pipe, path, monkeypatch, "dylora", block_size="2")
    state = {k: v.detach().clone().contiguous() for k, v in made.state_dict().items()}
    alphas = sorted(k for k in state if k.endswith(".alpha"))
    for i, key in enumerate(alphas):  # every other module saved at another alpha, some left out
        if i % 3 == 0:
            state[key] = torch.tensor(float(i % 7 + 1) / 2)
        elif i % 3 == 1:
            del state[key]
    save_file(state, str(tmp_path / "prev.safetensors"))
    _, plan = _converted_plan(tmp_path, "dims", "dylora", '"block_size=2" --network_weights=prev.safetensors')
    assert plan.adapter.kind == "dylora" and not plan.adapter.init_weights
    loaded = _network(pipe, path, monkeypatch, "dylora", block_size="2")
    loaded.load_state_dict(state, strict=False)
    theirs = {
        m.lora_name: (type(m).__name__, m.lora_dim, round(float(m.alpha) / m.lora_dim, 12))
        for m in [*loaded.unet_loras, *loaded.text_encoder_loras]
    }
    assert len({v[1] for v in theirs.values()}) > 1, "the preset gives layers different dims"
    before = {m.lora_name: float(m.alpha) for m in [*made.unet_loras, *made.text_encoder_loras]}
    differ = [
        m for m in [*loaded.unet_loras, *loaded.text_encoder_loras] if float(m.alpha) != before[m.lora_name]
    ]
    assert differ, "the file moves some alphas"
    ours = _ours(pipe, plan.adapter)
    assert {k: (v, theirs.get(k)) for k, v in ours.items() if theirs.get(k) != v} == {}
    # an entry's integer alpha makes an int64 buffer: the file's 0.5 loads as 0, the layer scaled by 0 (not
    # built by dbspec: its output the base's, its gradients 0)
    zeroed = {k for k, v in theirs.items() if v[2] == 0}
    assert zeroed and set(ours) == set(theirs) - zeroed
