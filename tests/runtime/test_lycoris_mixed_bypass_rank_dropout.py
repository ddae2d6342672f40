"""A LoCon network's `rank_dropout` with its `dropout` in bypass_mode beside a preset file's LoHa and LoKr
entries on SD 1.x (issue 12; was DBS403, a spec's DBS578): each lycoris-lora 4.1.3 class's bypass forward
reads it its own way, after its module_dropout `torch.rand(1)` and before the Dropout of its update:
LoConModule's bypass_forward_diff masks the down projection's ranks (`torch.rand(rank)`), LohaModule's
rebuilds its update through get_weight's row mask (`torch.rand(out)`), LokrModule's draws none. dbspec: the
lora adapter's rank_dropout_form "lycoris_bypass" on its LoRA layers (runtime/lora_dropout.py), the LoHa
blocks' row mask and the LoKr blocks' none (runtime/fused_lycoris_dropout.py add_lycoris_layer_dropout,
compiler rules.mixed_bypass_ranks). Checked against lycoris-lora's network from the same file on tiny SD
1.x holding the same weights (no tiny run): training outputs, the generator state after each forward and
every trained tensor's gradient over three forwards equal."""

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
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, grads_as_lycoris, lycoris_unet

pytest.importorskip("lycoris.kohya")

DROPOUT, RANKS, MODULE = 0.3, 0.25, 0.2
# LoKr ResNets, LoHa (a LoHa network: LoCon) MLPs, the network's algorithm on the attention and conv_in
PRESET = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = ["conv_in"]
text_encoder_target_module = []

[module_algo_map.ResnetBlock2D]
algo = "lokr"
[module_algo_map.FeedForward]
algo = "MLP"
dim = 2
"""


@pytest.mark.parametrize(("algo", "mlp"), [("locon", "loha"), ("loha", "locon")])
def test_bypass_rank_dropout_beside_other_low_rank_entries_is_lycoris(pipe, tmp_path, monkeypatch, algo, mlp):  # noqa: F811
    """A LoCon network (the lora adapter's rank_dropout_form "lycoris_bypass") with LoHa / LoKr entries, a
    LoHa network (its LoCon blocks in that form, compiler/adapters.py) with LoCon / LoKr entries."""
    drops = {
        "bypass_mode": "True",
        "dropout": str(DROPOUT),
        "rank_dropout": str(RANKS),
        "module_dropout": str(MODULE),
    }
    PRESETS["mixed_bypass_ranks"] = PRESET.replace("MLP", mlp)
    try:
        path, plan = _converted_plan(
            tmp_path, "mixed_bypass_ranks", algo, " ".join(f'"{k}={v}"' for k, v in drops.items())
        )
    finally:
        del PRESETS["mixed_bypass_ranks"]
    a = plan.adapter
    assert (a.kind, a.output_dropout, a.rank_dropout, a.rank_dropout_form) == (
        {"locon": "lora"}.get(algo, algo),
        DROPOUT,
        RANKS,
        "lycoris_bypass",
    )
    assert a.module_dropout == MODULE and not a.rank_dropout_scale
    assert {b.kind for b in a.blocks} - {"adapter"} == {{"locon": "lora"}.get(mlp, mlp), "lokr"}
    ours = pipe.unet.__class__.from_config(pipe.unet.config)
    ours.load_state_dict(pipe.unet.state_dict())
    params = _prepare(ours, "unet", plan, torch.device("cpu"), a.denoiser_targets, plan.schedule.seed)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # every trained tensor moved (no update 0)
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + p)
    made, theirs = lycoris_unet(pipe, monkeypatch, algo, path, **drops)
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
