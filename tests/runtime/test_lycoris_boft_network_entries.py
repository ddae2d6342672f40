"""A BOFT network's preset-file entries of other algorithms (issue 12; was DBS403): lycoris-lora 4.1.3's
network `algo` only names the algorithm of the layers no map entry sets, every module getting the same root
kwargs, so algo=boft with LoCon / LoHa entries builds what algo=locon builds with the BOFT layers as entries;
the converter writes that network (oft_entries.oft_network_host): a lora adapter, its LoHa entries' blocks,
the BOFT layers blocks of kind "boft" at the network's dim (their block-size hint). Checked against
lycoris-lora's create_network(algo="boft") from the same file on tiny SD 1.x with module_dropout: every
module's class, our export loading strictly into it, training outputs and the generator state after each of
three training forwards, and every trained tensor's gradient, also in bypass_mode with the network's
constraint (no tiny run)."""

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

MODULE = 0.3
# the network's BOFT on the transformers' attention and projections, LoCon on their feed-forwards, LoHa on
# the ResNets' convolutions
PRESET = """\
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = []

[module_algo_map.FeedForward]
algo = "locon"
[module_algo_map.ResnetBlock2D]
algo = "loha"
"""


@pytest.mark.parametrize(
    "extra",
    [{}, {"bypass_mode": "True", "constraint": "0.0001"}],
    ids=["default", "bypass_constraint"],
)
def test_boft_network_beside_locon_loha_entries_is_lycoris(pipe, tmp_path, monkeypatch, extra):  # noqa: F811
    """The network's module_dropout, and with its bypass_mode (the BOFT layers' rotation of the output, the
    LoCon / LoHa layers' bypass forward their default one) and a binding constraint (the blocks' alpha)."""
    args = {"module_dropout": str(MODULE), **extra}
    PRESETS["boft_entries"] = PRESET
    try:
        path, plan = _converted_plan(
            tmp_path, "boft_entries", "boft", " ".join(f'"{k}={v}"' for k, v in args.items())
        )
    finally:
        del PRESETS["boft_entries"]
    a = plan.adapter
    assert (a.kind, a.rank, a.module_dropout) == ("lora", 4, MODULE)
    constraint = float(extra.get("constraint", 0.0))
    assert {(b.kind, b.rank, b.alpha) for b in a.blocks if b.kind == "boft"} == {("boft", 4, constraint)}
    assert a.bypass == bool(extra)
    assert {b.kind for b in a.blocks} == {"boft", "loha"}
    ours = pipe.unet.__class__.from_config(pipe.unet.config)
    ours.load_state_dict(pipe.unet.state_dict())
    params = _prepare(ours, "unet", plan, torch.device("cpu"), a.denoiser_targets, plan.schedule.seed)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # every trained tensor moved (no update 0)
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + p)
    made, theirs = lycoris_unet(pipe, monkeypatch, "boft", path, **args)
    classes = {type(m).__name__ for m in made.unet_loras}
    assert classes == {"ButterflyOFTModule", "LoConModule", "LohaModule"}
    assert all(m.bypass_mode == bool(extra) for m in made.unet_loras)
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith("lora_te_") for k in result.missing_keys)
    calm_then_dropped(ours, theirs, made, pipe.unet)  # eval equal, three dropped training forwards
    # every trained tensor's gradient over the three dropped forwards, by the name LyCORIS saves it under
    grads_as_lycoris(ours, made, ("oft_blocks", "lora_up", "hada_w1_a"))
