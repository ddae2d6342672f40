"""The network's `rank_dropout` on a LoCon / LoHa network whose preset file's entries give layers T-LoRA
(issue 12; was DBS403, a spec's DBS578): LyCORIS hands rank_dropout to every module and TLoraModule never
reads it (its forward draws module_dropout's `torch.rand(1)` alone), while the network's LoCon / LoHa layers
draw their row masks (runtime/lora_dropout.py's lycoris form, loha_weight.py; compiler
rules.lycoris_row_masks). The plan's U-Net built by runtime/prepare.py (as a run builds it) and lycoris-lora
4.1.3's network built from the same file on tiny SD 1.x, holding the same weights (TLoraModule's frozen
start its own SVD of the same base weights): training-mode outputs, the generator state after each forward
and the T-LoRA singular values' gradients equal."""

from __future__ import annotations

import pytest
import torch

from dbspec.runtime.adapters import ADAPTER_NAME
from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    PRESETS,
    _converted_plan,
    pipe,
)
from tests.runtime.test_lycoris_loha_locon_rank_dropout import _ours
from tests.runtime.test_lycoris_mixed_module_dropout import _inputs, lycoris_unet, same_draws
from tests.runtime.test_lycoris_mixed_rank_dropout import MODULE, RANK
from tests.runtime.test_lycoris_rank_dropout_kinds import _layer_of

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# the network's kind on the transformers' attention, T-LoRA (dim 2, alpha 1) on their feed-forwards
FILE = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = []

[module_algo_map.FeedForward]
algo = "tlora"
dim = 2
alpha = 1
"""


@pytest.mark.parametrize("algo", ["locon", "loha"])
def test_tlora_entries_beside_the_networks_rank_dropout_are_lycoris(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    PRESETS["tlora_rank"] = FILE
    drops = {"rank_dropout": str(RANK), "module_dropout": str(MODULE)}
    try:
        path, plan = _converted_plan(
            tmp_path, "tlora_rank", algo, " ".join(f'"{k}={v}"' for k, v in drops.items())
        )
    finally:
        del PRESETS["tlora_rank"]
    a = plan.adapter
    form = "lycoris" if algo == "locon" else "kohya"  # a LoHa adapter's own: LohaModule's (loha_weight.py)
    assert (a.rank_dropout, a.rank_dropout_form, a.module_dropout) == (RANK, form, MODULE)
    assert [(b.kind, b.rank, b.alpha) for b in a.blocks] == [("tlora", 2, 1.0)]
    ours = _ours(pipe, plan)
    made, theirs = lycoris_unet(pipe, monkeypatch, algo, path, **drops)
    kinds = {type(m).__name__ for m in made.unet_loras}
    assert kinds == {"TLoraModule", {"locon": "LoConModule", "loha": "LohaModule"}[algo]}
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result
    assert all(k.rsplit(".", 1)[-1].startswith("base_") for k in result.missing_keys), result
    tloras = [m for m in made.unet_loras if type(m).__name__ == "TLoraModule"]
    for module in tloras:  # the frozen start: TLoraModule's SVD of the same base weight
        layer = _layer_of(ours, module.lora_name)
        torch.testing.assert_close(
            layer.lora_tlora_base_q[ADAPTER_NAME], module.base_q, rtol=0, atol=1e-6, msg=module.lora_name
        )
    latents, context = _inputs(1, pipe.unet)
    t = torch.tensor([10, 700])
    ours.train(), theirs.train(), made.train()
    outputs = same_draws(ours, theirs, (latents, t, context), 4, backward=True)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)  # the draws move on
    for module in tloras:  # the singular values' gradients over the four forwards
        grad = _layer_of(ours, module.lora_name).lora_tlora_lambda[ADAPTER_NAME].grad
        torch.testing.assert_close(grad, module.lambda_layer.grad, rtol=1e-3, atol=1e-6, msg=module.lora_name)
