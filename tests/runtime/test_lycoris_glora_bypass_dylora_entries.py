"""A GLoRA network's `bypass_mode` beside a preset file's DyLoRA entries (issue 12; was DBS403, a spec's
DBS578), with and without its `dropout` / `rank_dropout`, and module_dropout: LyCORIS hands every module the
network's bypass_mode and dropouts. In lycoris-lora 4.1.3 DyLoraModule's bypass forward adds its one block,
unscaled, after its module_dropout draw, and reads neither `dropout` nor `rank_dropout` (several blocks per
layer crash there: DBS402 / DBS549). The converted glora adapter's blocks of kind dylora take its settled
`bypass` (runtime/mixed_kinds.py kind_adapter), the GLoRA and LoCon layers their own bypass forwards.
Checked against lycoris-lora's network built from the same file and args on tiny SD 1.x: eval outputs,
training outputs and the generator state after each of three training forwards, and the gradients of the
tensors both name alike (GLoRA's, LoCon's; DyLoraModule loads no file key: each DyLoRA block is copied into
its up_list / down_list). No tiny run: a glora adapter's blocks of kind dylora train and resume in
test_lycoris_mixed_dylora's runs, bypass layers in test_lycoris_bypass_blocks'."""

from __future__ import annotations

import pytest

from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import _converted_plan, pipe  # noqa: F401 (pipe: a fixture)
from tests.runtime.test_lycoris_glora_bypass_ia3_entries import MODULE
from tests.runtime.test_lycoris_loha_locon_rank_dropout import _ours
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, grads_as_lycoris, lycoris_unet
from tests.runtime.test_lycoris_oft_network_dylora_entries import _copy_blocks

pytest.importorskip("lycoris.kohya")

# LoCon on the ResNets, DyLoRA (one block of 4, alpha 2: its default forward scales by alpha, the bypass
# forward not) on the feed-forwards, the network's GLoRA on the rest of the attention blocks
PRESET = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = []

[module_algo_map.ResnetBlock2D]
algo = "locon"
[module_algo_map.FeedForward]
algo = "dylora"
alpha = 2
"""


@pytest.mark.parametrize(
    "extra", [{}, {"dropout": "0.2", "rank_dropout": "0.25"}], ids=["bypass", "dropouts"]
)
def test_glora_network_bypass_beside_dylora_entries_is_lycoris(pipe, tmp_path, monkeypatch, extra):  # noqa: F811
    args = {"bypass_mode": "True", "module_dropout": str(MODULE), "block_size": "4", **extra}
    given = " ".join(f'"{k}={v}"' for k, v in args.items())
    path, plan = _converted_plan(tmp_path, "glora_bypass_dylora", "glora", given, text=PRESET)
    a = plan.adapter
    assert (a.kind, a.bypass, a.module_dropout) == ("glora", True, MODULE)
    dylora = [b for b in a.blocks if b.kind == "dylora"]
    assert dylora and {(b.rank, b.unit, b.bypass) for b in dylora} == {(4, 4, True)}
    ours = _ours(pipe, plan)
    made, theirs = lycoris_unet(pipe, monkeypatch, "glora", path, **args)
    assert {type(m).__name__ for m in made.unet_loras} == {"GLoRAModule", "LoConModule", "DyLoraModule"}
    assert all(m.bypass_mode and m.module_dropout == MODULE for m in made.unet_loras)
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    kept = {m.lora_name for m in made.unet_loras if type(m).__name__ == "DyLoraModule"}
    assert {k.split(".")[0] for k in result.unexpected_keys} == kept, result
    assert _copy_blocks(made, theirs, ours) == len(kept)
    calm_then_dropped(ours, theirs, made, pipe.unet)  # eval equal, three dropped training forwards
    grads_as_lycoris(ours, made, ("a1.weight", "lora_up"))
