"""A Diag-OFT or BOFT network's preset-file DyLoRA entries (issue 12; was DBS403): lycoris-lora 4.1.3's
network `algo` only names the algorithm of the layers no map entry sets, so algo=diag-oft with DyLoRA entries
builds what algo=dylora builds with the Diag-OFT layers as entries (the network's block_size the DyLoRA
layers', its constraint / rescaled the OFT layers'): converted as a DyLoRA adapter (LyCORIS's form) whose
Diag-OFT / BOFT layers are blocks of that kind (oft_entries.oft_network_host, as for the other entries).
Checked against lycoris-lora's create_network(algo="diag-oft" / "boft") from the same file on tiny SD 1.x
with module_dropout: every module's class, DyLoRA block size and OFT bound; our export loads the OFT blocks
into it (DyLoraModule loads no file key: each DyLoRA block copied into its up_list / down_list); training
forwards with the same DyLoRA block drawn (LyCORIS draws it with Python's `random` per forward, dbspec per
micro-batch) give equal outputs and generator states, and the OFT blocks' gradients are LyCORIS's. No tiny
run: DyLoRA adapters with OFT blocks train and resume in test_lycoris_tlora_oft_dylora's runs."""

from __future__ import annotations

import random

import pytest
import torch

from dbspec.runtime.dylora import DyloraLayer
from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import _converted_plan, pipe  # noqa: F401 (pipe: a fixture)
from tests.runtime.test_lycoris_loha_locon_rank_dropout import _ours
from tests.runtime.test_lycoris_mixed_module_dropout import (
    _inputs,
    grads_as_lycoris,
    lycoris_unet,
    same_draws,
)
from tests.runtime.test_lycoris_oft_network_whole_entries import CLASSES, oft_blocks_alike
from tests.runtime.test_lycoris_tlora_mixed_opts import FILE

pytest.importorskip("lycoris.kohya")

# id: (network algo, network_args besides module_dropout, DyLoRA blocks per layer at dim 4)
CASES = {
    "diag_oft_constraint": ("diag-oft", {"block_size": "2", "constraint": "0.0001"}, 2),
    "boft_rescaled": ("boft", {"block_size": "4", "rescaled": "True"}, 1),
}


def _copy_blocks(made, theirs, ours) -> int:
    """Each DyLoRA layer's blocks into LyCORIS's DyLoraModule on the same path; how many layers."""
    paths = {id(m): p for p, m in theirs.named_modules()}
    count = 0
    with torch.no_grad():
        for m in made.unet_loras:
            if type(m).__name__ != "DyLoraModule":
                continue
            layer = ours.get_submodule(paths[id(m.org_module[0])])
            assert isinstance(layer, DyloraLayer) and len(m.down_list) == len(
                layer.lora_dylora_down["default"]
            )
            for down, up, d, u in zip(
                m.down_list, m.up_list, layer.lora_dylora_down["default"], layer.lora_dylora_up["default"]
            ):
                down.copy_(d.view(down.shape)), up.copy_(u.view(up.shape))
            count += 1
    return count


@pytest.mark.parametrize("case", sorted(CASES))
def test_oft_network_dylora_entries_are_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    algo, extra, blocks = CASES[case]
    args = {"module_dropout": "0.3", **extra}
    given = " ".join(f'"{k}={v}"' for k, v in args.items())
    path, plan = _converted_plan(
        tmp_path, "oft_dylora", algo, given, text=FILE.format(algo="dylora", extra="")
    )
    a = plan.adapter
    assert (a.kind, a.dylora_form, a.dylora_unit, a.module_dropout) == ("dylora", "lycoris", 4 // blocks, 0.3)
    ours = _ours(pipe, plan)
    made, theirs = lycoris_unet(pipe, monkeypatch, algo, path, **args)
    assert {type(m).__name__ for m in made.unet_loras} == {CLASSES[algo], "DyLoraModule"}
    dylora = [m for m in made.unet_loras if type(m).__name__ == "DyLoraModule"]
    assert {(m.block_size, m.block_count) for m in dylora} == {(4 // blocks, blocks)}
    oft_blocks_alike(a, made, algo, extra)
    result = made.load_state_dict(
        lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32"), strict=False
    )
    assert {k.split(".")[0] for k in result.unexpected_keys} == {m.lora_name for m in dylora}, result
    assert _copy_blocks(made, theirs, ours) == len(dylora)

    # the last block drawn alike: every rank, at alpha / block_count (DyLoraModule's alpha / (b + 1))
    monkeypatch.setattr(random, "randint", lambda low, high: high)
    for layer in ours.modules():
        if isinstance(layer, DyloraLayer):
            layer.drawn["default"] = blocks - 1
    latents, context = _inputs(1, pipe.unet)
    ours.train(), theirs.train(), made.train()
    outputs = same_draws(ours, theirs, (latents, torch.tensor([10, 700]), context), 3, backward=True)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)  # module_dropout drew
    grads_as_lycoris(ours, made, ("oft_blocks",))
