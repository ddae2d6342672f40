"""A T-LoRA network's preset file reaching T5-XXL on Flux (issue 12; was DBS403, "the T5 adapter builds
none"): train.t5 with the T-LoRA adapter's layers on T5-XXL's Linears, each started from its own weight's
SVD as lycoris-lora 4.1.3's TLoraModule starts it. One tiny run (T-LoRA's saved state resumes in
test_lycoris_tlora.py), its export loaded into lycoris-lora's network from the same file on kohya's models:
T5-XXL's TLoraModules' frozen start is ours, and they compute the trained T5 layers' outputs."""

from __future__ import annotations

import pytest
import torch

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
from dbspec.runtime.lycoris_tlora import TloraLayer
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_mixed_flow_full import _BASE, _kohya_layers, _kohya_tree, _run
from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip
from tests.runtime.test_lycoris_tlora import _no_gc

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# T-LoRA on the image q/k/v (one module per fused Linear) and on T5-XXL's attention at its own dim
FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*.img_attn.qkv"]
text_encoder_target_module = ["T5Attention"]

[module_algo_map.T5Attention]
dim = 2
alpha = 1
"""


def test_tlora_on_t5_trains_and_loads_back_in_lycoris(tmp_path, monkeypatch):
    from tests.unit.convert_kit import flux_lycoris

    _no_gc(monkeypatch)
    file = tmp_path / "t5.toml"
    file.write_text(FILE, encoding="utf-8")
    flux_lycoris(tmp_path, f'"algo=tlora" "preset={file.name}"')
    plan, whole, tensors = _run(tmp_path, set(), ["model.base=builtin:tiny-flux", *_BASE], resume=False)
    a = plan.adapter
    assert a.kind == "tlora" and a.t5_targets and a.fused
    t5_trained = whole.components.text_encoders[1]
    ours = {n: m for n, m in t5_trained.named_modules() if isinstance(m, TloraLayer)}
    assert ours and {m.r["default"] for m in ours.values()} == {2}
    layers = _kohya_layers(whole.components.unet, flux_model(1, 1), diffusers_parts)
    clip = _kohya_clip(_unwrapped(whole.components.text_encoders[0]))
    t5 = _unwrapped(t5_trained)
    kept_lycoris_presets(monkeypatch)
    tree = _kohya_tree(layers)
    made = lycoris_kohya.create_network(1.0, 4, 1.0, None, [clip, t5], tree, algo="tlora", preset=str(file))
    made.apply_to([clip, t5], tree, apply_text_encoder=True, apply_unet=True)
    result = made.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys, result
    assert all(k.rsplit(".", 1)[-1].startswith("base_") for k in result.missing_keys), result
    theirs = {m.lora_name: m for m in made.text_encoder_loras if m.lora_name.startswith("lora_te2_")}
    assert {type(m).__name__ for m in theirs.values()} == {"TLoraModule"}
    assert sorted(theirs) == sorted("lora_te2_" + n.replace(".", "_") for n in ours)
    torch.manual_seed(0)
    for name, layer in ours.items():
        lyco = theirs["lora_te2_" + name.replace(".", "_")]
        assert (lyco.lora_dim, float(lyco.scale)) == (2, 0.5), name
        for part in ("base_q", "base_p", "base_lambda"):  # the frozen start: the same SVD of the weight
            torch.testing.assert_close(
                getattr(layer, f"lora_tlora_{part}")["default"], getattr(lyco, part), rtol=0, atol=1e-6
            )
        x = torch.randn(3, layer.base_layer.in_features)
        with torch.no_grad():
            assert not torch.allclose(layer(x), layer.base_layer(x), atol=1e-7), name  # trained
            torch.testing.assert_close(t5.get_submodule(name)(x), layer(x), rtol=1e-5, atol=1e-5)
    assert any(type(m).__name__ == "TLoraModule" for m in made.unet_loras)
