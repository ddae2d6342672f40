"""SimpleTuner's documented LoKr recipe (`linear_dim` 10000, `module_algo_map` Attention factor 16,
FeedForward factor 8), converted (dbspec/convert/simpletuner/lycoris.py), against lycoris-lora 4.1.3 built as
SimpleTuner's trainer builds it: `LycorisNetwork.apply_preset(apply_preset)`, then `create_lycoris(unet,
multiplier, linear_dim, linear_alpha, **rest)` on the tiny U-Net (diffusers' Attention and FeedForward
classes, as SDXL's). Every module LyCORIS builds is a peft LoKr layer of the plan's adapter with the same
Kronecker factor shapes and scale (issue 12)."""

from __future__ import annotations

import copy

import pytest

from dbspec.runtime.adapters import add_lora
from dbspec.runtime.tiny import build_pipeline

lycoris = pytest.importorskip("lycoris")

PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
PRESET_ATTRS = (
    "TARGET_REPLACE_MODULE",
    "TARGET_REPLACE_NAME",
    "MODULE_ALGO_MAP",
    "NAME_ALGO_MAP",
    "ENABLE_CONV",
)


def _theirs(unet, config: dict, monkeypatch) -> dict[str, tuple]:
    network = lycoris.LycorisNetwork
    for attr in PRESET_ATTRS:  # apply_preset sets class attributes: restored after the test
        monkeypatch.setattr(network, attr, copy.copy(getattr(network, attr)))
    network.apply_preset(config["apply_preset"])
    rest = {k: v for k, v in config.items() if k not in ("multiplier", "linear_dim", "linear_alpha")}
    made = lycoris.create_lycoris(
        unet, config["multiplier"], config["linear_dim"], config["linear_alpha"], **rest
    )
    return {
        m.lora_name.removeprefix("lycoris_"): (
            {p: tuple(getattr(m, p).shape) for p in PARTS if getattr(m, p, None) is not None},
            float(m.scale),
        )
        for m in made.loras
    }


def _ours(unet, adapter) -> dict[str, tuple]:
    from peft.tuners.lokr import LoKrLayer

    add_lora(unet, adapter, adapter.denoiser_targets, seed=0, conv=True)
    out = {}
    for name, layer in unet.named_modules():
        if isinstance(layer, LoKrLayer) and "default" in layer.r:
            shapes = {
                p: tuple(getattr(layer, p)["default"].shape) for p in PARTS if "default" in getattr(layer, p)
            }
            out[name.replace(".", "_")] = (shapes, float(layer.scaling["default"]))
    return out


def test_documented_recipe_builds_lycoris_factors(tmp_path, monkeypatch):
    from tests.unit.test_convert_simpletuner_lycoris_factors import RECIPE, convert
    from tests.unit.convert_kit import errors, plan_of

    outcome = convert(tmp_path, RECIPE)
    assert outcome.exit_code == 0 and outcome.written, errors(outcome)
    adapter = plan_of(outcome, tmp_path).adapter  # the SDXL plan's adapter, on the tiny U-Net
    unet = build_pipeline("builtin:tiny-sd1").unet
    theirs = _theirs(copy.deepcopy(unet), RECIPE, monkeypatch)
    ours = _ours(unet, adapter)
    assert {k for k in theirs if k.endswith("ff_net_2")} and sorted(set(ours) ^ set(theirs)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}
    # the two classes split differently (16 and 8), both factors full at scale 1
    assert {v[1] for v in theirs.values()} == {1.0} and all("lokr_w2" in v[0] for v in theirs.values())
    ff = next(v[0] for k, v in theirs.items() if k.endswith("ff_net_0_proj"))
    attn = next(v[0] for k, v in theirs.items() if k.endswith("attn1_to_q"))
    assert ff["lokr_w1"][1] == 4 and attn["lokr_w1"] == (2, 2)  # tiny widths 32 / 256: 32 = 4 x 8, 2 x 16
