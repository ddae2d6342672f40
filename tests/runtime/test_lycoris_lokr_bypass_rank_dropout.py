"""A LoKr network's `rank_dropout` with its `dropout` in bypass_mode beside a preset file's LoCon and LoHa
entries on SD 1.x (issue 12; was DBS403: the converter left the rate out, as LokrModule's bypass forward never
reads it, yet the entries' modules do). lycoris-lora 4.1.3's LoConModule's bypass_forward_diff masks its
down projection's ranks (`torch.rand(rank)`), LohaModule's rebuilds its update through get_weight's row mask
(`torch.rand(out)`), LokrModule's draws none, each after its module_dropout `torch.rand(1)` and before the
Dropout of its update. dbspec: the lokr adapter's rank_dropout in rank_dropout_form "lycoris_bypass"
(runtime/fused_lycoris_dropout.py lokr_rows: the LoKr layers draw none; its LoRA blocks LoConModule's bypass
rank mask, runtime/lora_dropout.py through mixed_kinds.add_module_dropout; its LoHa blocks LohaModule's row
mask). Checked against lycoris-lora's network from the same file on tiny SD 1.x holding the same weights (no
tiny run): training outputs, the generator state after each forward and every trained tensor's gradient over
three forwards equal; the same network without the rate differs (the entries drew it)."""

from __future__ import annotations

import pytest
import torch

from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.prepare import _prepare
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    PRESETS,
    _converted_plan,
    pipe,
)
from tests.runtime.test_lycoris_mixed_flow_bypass_dropout import (
    test_flux_bypass_dropout_beside_other_algorithms_is_lycoris as _flux_case,
)
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, grads_as_lycoris, lycoris_unet

pytest.importorskip("lycoris.kohya")

DROPOUT, RANKS, MODULE = 0.3, 0.25, 0.2
# LoCon ResNets, LoHa MLPs, the network's LoKr on the attention and conv_in
PRESET = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = ["conv_in"]
text_encoder_target_module = []

[module_algo_map.ResnetBlock2D]
algo = "locon"
[module_algo_map.FeedForward]
algo = "loha"
dim = 2
"""


def test_lokr_bypass_rank_dropout_reaches_its_locon_and_loha_entries(pipe, tmp_path, monkeypatch):  # noqa: F811
    drops = {
        "bypass_mode": "True",
        "dropout": str(DROPOUT),
        "rank_dropout": str(RANKS),
        "module_dropout": str(MODULE),
    }
    PRESETS["lokr_bypass_ranks"] = PRESET
    try:
        path, plan = _converted_plan(
            tmp_path, "lokr_bypass_ranks", "lokr", " ".join(f'"{k}={v}"' for k, v in drops.items())
        )
    finally:
        del PRESETS["lokr_bypass_ranks"]
    a = plan.adapter
    assert (a.kind, a.output_dropout, a.rank_dropout, a.rank_dropout_form) == (
        "lokr",
        DROPOUT,
        RANKS,
        "lycoris_bypass",
    )
    assert a.module_dropout == MODULE and not a.rank_dropout_scale
    assert {b.kind for b in a.blocks} - {"adapter"} == {"lora", "loha"}
    ours = pipe.unet.__class__.from_config(pipe.unet.config)
    ours.load_state_dict(pipe.unet.state_dict())
    params = _prepare(ours, "unet", plan, torch.device("cpu"), a.denoiser_targets, plan.schedule.seed)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # every trained tensor moved (no update 0)
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + p)
    made, theirs = lycoris_unet(pipe, monkeypatch, "lokr", path, **drops)
    classes = {type(m).__name__ for m in made.unet_loras}
    assert classes == {"LoConModule", "LohaModule", "LokrModule"}
    assert all(m.bypass_mode and m.rank_dropout == RANKS for m in made.unet_loras)
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith("lora_te_") for k in result.missing_keys)
    calm_then_dropped(ours, theirs, made, pipe.unet)
    # every trained tensor's gradient over the three dropped forwards, by the name LyCORIS saves it under
    held = ("lokr_w1", "lora_up", "hada_w1_a")  # each kind's layers compared
    grads_as_lycoris(ours, made, held)


def test_flux_lokr_bypass_rank_dropout_reaches_its_fused_locon_and_loha_entries(tmp_path, monkeypatch):
    """On Flux's fused Linears: the LoCon entry's q/k/v one LoConModule's bypass rank mask over its shared
    down, the LoHa entry's linear1 one LohaModule row mask over its stacked rows, CLIP-L's LoHa layers theirs,
    the LoKr layers none; every kohya layer's module against the plan's parts from the same generator state
    (outputs, generator state, input and trained tensors' gradients), as the LoCon / LoHa networks' cases of
    test_lycoris_mixed_flow_bypass_dropout.py."""
    _flux_case(tmp_path, monkeypatch, "lokr", "locon", "loha", RANKS)
