"""A T-LoRA network's `rank_dropout` beside its preset file's LoCon / LoHa entries (issue 12; was DBS403, a
spec's DBS578): LyCORIS hands rank_dropout to every module, TLoraModule never reads it (its forward draws
module_dropout's `torch.rand(1)` alone) and the entries' LoConModule / LohaModule draw their row masks
(runtime/lora_dropout.py's lycoris form, loha_weight.py; compiler rules.lycoris_row_masks). The plan's U-Net
built by runtime/prepare.py (as a run builds it) and lycoris-lora 4.1.3's network built from the same file on
tiny SD 1.x, holding the same weights (TLoraModule's frozen start its own SVD of the same base weights):
training-mode outputs, the generator state after each forward and the gradients of both kinds equal."""

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
from tests.runtime.test_lycoris_tlora import _no_gc

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# T-LoRA (the network's dim 4, alpha 1) on the transformers' attention, the entry's algo on their
# feed-forwards
FILE = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = []

[module_algo_map.FeedForward]
algo = "{algo}"
"""


@pytest.mark.parametrize("algo", ["locon", "loha"])
def test_tlora_network_s_rank_dropout_is_drawn_by_its_entries_as_lycoris(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    _no_gc(monkeypatch)
    drops = {"rank_dropout": str(RANK), "module_dropout": str(MODULE)}
    PRESETS["tlora_network_rank"] = FILE.format(algo=algo)
    try:
        path, plan = _converted_plan(
            tmp_path, "tlora_network_rank", "tlora", " ".join(f'"{k}={v}"' for k, v in drops.items())
        )
    finally:
        del PRESETS["tlora_network_rank"]
    a = plan.adapter
    form = "lycoris" if algo == "locon" else "kohya"  # LoCon's masks; LohaModule's own (loha_weight.py)
    assert (a.kind, a.rank_dropout, a.rank_dropout_form, a.module_dropout) == ("tlora", RANK, form, MODULE)
    assert [b.kind for b in a.blocks] == [{"locon": "lora", "loha": "loha"}[algo]]
    ours = _ours(pipe, plan)
    made, theirs = lycoris_unet(pipe, monkeypatch, "tlora", path, **drops)
    other = {"locon": "LoConModule", "loha": "LohaModule"}[algo]
    assert {type(m).__name__ for m in made.unet_loras} == {"TLoraModule", other}
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result
    assert all(k.rsplit(".", 1)[-1].startswith("base_") for k in result.missing_keys), result
    latents, context = _inputs(1, pipe.unet)
    t = torch.tensor([10, 700])
    ours.train(), theirs.train(), made.train()
    outputs = same_draws(ours, theirs, (latents, t, context), 4, backward=True)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)  # the draws move on
    for module in made.unet_loras:  # each kind's gradients over the four forwards
        layer = _layer_of(ours, module.lora_name)
        if type(module).__name__ == "TLoraModule":
            pairs = [(layer.lora_tlora_lambda[ADAPTER_NAME], module.lambda_layer)]
        elif algo == "locon":
            pairs = [(layer.lora_B[ADAPTER_NAME].weight, module.lora_up.weight)]
        else:
            pairs = [(layer.hada_w1_a[ADAPTER_NAME], module.hada_w1_a)]
        for mine, other_t in pairs:
            torch.testing.assert_close(mine.grad, other_t.grad, rtol=1e-3, atol=1e-6, msg=module.lora_name)
