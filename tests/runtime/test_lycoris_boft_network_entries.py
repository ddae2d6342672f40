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
from tests.runtime.test_lycoris_algo_maps import _converted_plan, pipe  # noqa: F401 (pipe: a fixture)
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
    oft_network_entries_alike(pipe, tmp_path, monkeypatch, "boft", extra, float(extra.get("constraint", 0.0)))


def oft_network_entries_alike(pipe, tmp_path, monkeypatch, algo: str, extra: dict, constraint: float):  # noqa: F811
    """PRESET converted as an algo=`algo` ("boft" / "diag-oft") network with module_dropout and `extra`
    network_args: the plan (a lora adapter, the OFT layers blocks of kind `algo` at rank 4 and alpha
    `constraint`, LoHa blocks) and our U-Net against lycoris-lora's create_network from the same file (module
    classes, bypass_mode, the export loading strictly, outputs and generator state over three dropped training
    forwards, every trained tensor's gradient); returns LyCORIS's modules."""
    args = {"module_dropout": str(MODULE), **extra}
    given = " ".join(f'"{k}={v}"' for k, v in args.items())
    path, plan = _converted_plan(tmp_path, f"{algo}_entries", algo, given, text=PRESET)
    a = plan.adapter
    assert (a.kind, a.rank, a.module_dropout, a.rank_dropout) == (
        "lora",
        4,
        MODULE,
        float(extra.get("rank_dropout", 0)),
    )
    assert {(b.kind, b.rank, b.alpha) for b in a.blocks if b.kind == algo} == {(algo, 4, constraint)}
    bypass = "bypass_mode" in extra
    assert a.bypass == bypass
    assert {b.kind for b in a.blocks} == {algo, "loha"}
    ours = pipe.unet.__class__.from_config(pipe.unet.config)
    ours.load_state_dict(pipe.unet.state_dict())
    params = _prepare(ours, "unet", plan, torch.device("cpu"), a.denoiser_targets, plan.schedule.seed)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # every trained tensor moved (no update 0)
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + p)
    made, theirs = lycoris_unet(pipe, monkeypatch, algo, path, **args)
    oft = {"boft": "ButterflyOFTModule", "diag-oft": "DiagOFTModule"}[algo]
    assert {type(m).__name__ for m in made.unet_loras} == {oft, "LoConModule", "LohaModule"}
    assert all(m.bypass_mode == bypass for m in made.unet_loras)
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith("lora_te_") for k in result.missing_keys)
    calm_then_dropped(ours, theirs, made, pipe.unet)  # eval equal, three dropped training forwards
    # every trained tensor's gradient over the three dropped forwards, by the name LyCORIS saves it under
    grads_as_lycoris(ours, made, ("oft_blocks", "lora_up", "hada_w1_a"))
    return made
