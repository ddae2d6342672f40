"""The network's `rank_dropout` with `dora_wd` and `wd_on_output = false` (weight decomposition per input
column) on a LoCon or LoHa network whose preset file gives other layers LoHa / LoCon, full and Diag-OFT
entries, on SD 1.x (issue 12): lycoris-lora 4.1.3's LoConModule and LohaModule draw their row mask in
make_weight (`torch.rand(out) > rank_dropout`, after the module_dropout `torch.rand(1)`) and decompose the
masked rebuilt weight by its column norms; FullModule masks its copy's rows, DiagOFTModule drops its
rotations' entries. dbspec's decomposed layers mask in runtime/lycoris_dora.py in their own forwards, the
other kinds in theirs (rules.lycoris_row_masks). The plan's U-Net as runtime/prepare.py builds it (trainable
tensors moved at random) against lycoris-lora's network from the same file holding its export: three
training forwards from one generator state, equal outputs and generator state after each, the magnitudes'
(1, in, ...) and the full / LoHa / Diag-OFT layers' gradients. A layer-level check, no tiny run."""

from __future__ import annotations

import pytest
import torch

from dbspec.runtime.lycoris_dora import dora_scale_of
from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    _converted_plan,
    pipe,
)
from tests.runtime.test_lycoris_loha_locon_rank_dropout import _ours, assert_magnitude_grads
from tests.runtime.test_lycoris_mixed_module_dropout import _inputs, lycoris_unet, same_draws
from tests.runtime.test_lycoris_rank_dropout_kinds import _layer_of

lycoris_kohya = pytest.importorskip("lycoris.kohya")

RANK, MODULE = 0.25, 0.1
# LoCon ResNets, LoHa MLPs, Diag-OFT downsampler, full upsampler; the network's own kind on the rest
COLUMNS = r"""enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in"]
text_encoder_target_module = []
text_encoder_target_name = []

[module_algo_map.ResnetBlock2D]
algo = "locon"
dim = 4
alpha = 2
[module_algo_map.FeedForward]
algo = "loha"
dim = 2
[module_algo_map.Downsample2D]
algo = "diag-oft"
dim = 4
[module_algo_map.Upsample2D]
algo = "full"
"""
GRADS = {
    "FullModule": ("lora_full", "weight"),
    "LohaModule": ("hada_w1_a", "hada_w1_a"),
    "DiagOFTModule": ("lora_oft_blocks", "oft_blocks"),
}


@pytest.mark.parametrize("algo", ["locon", "loha"])
def test_column_decomposition_with_rank_dropout_beside_other_kinds(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """LoCon and LoHa networks, dora_wd per input column with rank_dropout and module_dropout: every LoCon /
    LoHa layer decomposed per input column beside full and Diag-OFT layers."""
    drops = {"rank_dropout": str(RANK), "module_dropout": str(MODULE)}
    switches = {"dora_wd": "True", "wd_on_output": "False"}
    args = " ".join(f'"{k}={v}"' for k, v in {**drops, **switches}.items())
    path, plan = _converted_plan(tmp_path, "columns", algo, args, text=COLUMNS)
    a = plan.adapter
    assert (a.rank_dropout, a.module_dropout, a.dora, a.dora_axis) == (RANK, MODULE, True, "input")
    assert {b.kind for b in a.blocks} >= {"full", "diag-oft", {"locon": "loha", "loha": "lora"}[algo]}
    ours = _ours(pipe, plan)
    decomposed = {n for n, m in ours.named_modules() if dora_scale_of(m, "default") is not None}
    made, theirs = lycoris_unet(pipe, monkeypatch, algo, path, **drops, **switches)
    wd = {m.lora_name: m for m in made.unet_loras if getattr(m, "wd", False)}
    assert {type(m).__name__ for m in wd.values()} == {"LoConModule", "LohaModule"}
    assert {"lora_unet_" + n.replace(".", "_") for n in decomposed} == set(wd)
    assert all(not m.wd_on_out for m in wd.values())
    for name in decomposed:  # one magnitude per input column
        assert dora_scale_of(ours.get_submodule(name), "default").shape[0] == 1, name
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result
    assert not [k for k in result.missing_keys if not k.startswith("lora_te_")], result
    assert {(round(m.rank_dropout, 6), round(m.module_dropout, 6)) for m in made.unet_loras} == {
        (RANK, MODULE)
    }
    latents, context = _inputs(1, pipe.unet)
    t = torch.tensor([10, 700])
    ours.train(), theirs.train(), made.train()
    outputs = same_draws(ours, theirs, (latents, t, context), 3, backward=True)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)  # the draws move on
    checked = set()
    for module in made.unet_loras:
        kind = type(module).__name__
        if kind not in GRADS:
            continue
        mine, other = GRADS[kind]
        grad = getattr(_layer_of(ours, module.lora_name), mine)["default"].grad
        expected = getattr(module, other).grad
        torch.testing.assert_close(grad.reshape(expected.shape), expected, rtol=1e-3, atol=1e-6)
        checked.add(kind)
    assert checked == set(GRADS)
    assert_magnitude_grads(ours, wd, decomposed)  # over the three masked forwards
