"""LyCORIS's max norm (`--scale_weight_norms`) with the network's `rank_dropout` on a LoHa network whose
preset file gives the ResNets LoCon (issue 12; converted, the LoCon blocks' draw inside the norm missing):
lycoris.kohya's apply_max_norm_regularization calls each module's apply_max_norm in training mode, and
lycoris-lora 4.1.3's LoConModule.apply_max_norm rebuilds its update through make_weight, which draws its row
mask `torch.rand(out)` whatever its bypass_mode, LohaModule's through get_weight likewise. dbspec: the LoCon
blocks draw at runtime/max_norm.py locon_norm_rate (a lora adapter's rank_dropout, and a LoHa / LoKr
adapter's where the plan gives its LoCon blocks LyCORIS's rank dropout), in the modules' order. Checked on
the tiny SD 1.x U-Net and CLIP holding the same weights, outside and in bypass_mode: count, mean and largest
norm, every module's weights after, the generator left as LyCORIS leaves it (no tiny run)."""

from __future__ import annotations

import copy

import pytest
import torch

from dbspec.runtime.adapters import add_lora
from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.max_norm import apply_max_norm, locon_norm_rate, lycoris_norm_modules, lycoris_update
from tests.runtime.test_lycoris_algo_maps import PRESETS, _converted_plan, _lycoris, pipe  # noqa: F401
from tests.runtime.test_lycoris_mixed_max_norm import _randomise

pytest.importorskip("lycoris.kohya")

RANKS = 0.3
PRESET = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
text_encoder_target_module = ["CLIPMLP"]

[module_algo_map.ResnetBlock2D]
algo = "locon"
dim = 4
alpha = 2
"""


@pytest.mark.parametrize("bypass", [False, True])
def test_loha_network_locon_entries_draw_their_row_mask_in_the_max_norm(pipe, tmp_path, monkeypatch, bypass):  # noqa: F811
    args = {"rank_dropout": str(RANKS)}
    args.update({"bypass_mode": "True", "dropout": "0.1"} if bypass else {})
    given = " ".join(f'"{k}={v}"' for k, v in args.items())
    PRESETS["norm_ranks"] = PRESET
    try:
        path, plan = _converted_plan(tmp_path, "norm_ranks", "loha", f"{given} --scale_weight_norms=1.0")
    finally:
        del PRESETS["norm_ranks"]
    a = plan.adapter
    assert (a.kind, a.max_norm, a.max_norm_form, a.rank_dropout) == ("loha", 1.0, "lycoris", RANKS)
    assert a.rank_dropout_form == ("lycoris_bypass" if bypass else "lycoris")
    assert {b.kind for b in a.blocks} - {"adapter"} == {"lora"} and locon_norm_rate(a) == RANKS
    unet, text = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    add_lora(unet, a, a.denoiser_targets, seed=0, conv=True)
    add_lora(text, a, a.text_encoder_targets, seed=0, component="text_encoder")
    _randomise((unet, text), 3)
    made = _lycoris(pipe, path, monkeypatch, "loha", **args)
    made.apply_to(None, None, apply_text_encoder=True, apply_unet=True)
    state = lycoris_state(unet=unet, text_encoders=[text], family="sd1", dtype="fp32")
    missing, unexpected = made.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    assert {type(m).__name__ for m in made.loras} == {"LoConModule", "LohaModule"}
    unet.train(), text.train(), made.train()
    modules = lycoris_norm_modules(unet, [text], locon_rank_dropout=locon_norm_rate(a))
    torch.manual_seed(5)
    norms = sorted(float(lycoris_update(m).norm()) for m in modules)
    limit = norms[len(norms) // 2]  # about half the layers above it
    torch.manual_seed(7)
    ours = apply_max_norm(modules, limit)
    after = torch.get_rng_state()
    torch.manual_seed(7)
    theirs = made.apply_max_norm_regularization(limit, "cpu")
    assert torch.equal(torch.get_rng_state(), after)  # the same draws, LoCon's row masks among them
    assert ours[0] == int(theirs[0]) and 0 < ours[0] < len(modules)
    torch.testing.assert_close(
        torch.tensor(ours[1:]), torch.tensor([float(theirs[1]), float(theirs[2])]), rtol=1e-6, atol=1e-7
    )
    moved = lycoris_state(unet=unet, text_encoders=[text], family="sd1", dtype="fp32")
    reference = made.state_dict()
    for key, value in moved.items():
        torch.testing.assert_close(value, reference[key].to(value.dtype), rtol=1e-5, atol=1e-7, msg=key)
