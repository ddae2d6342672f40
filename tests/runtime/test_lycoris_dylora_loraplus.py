"""LoRA+ (`loraplus_lr_ratio`) in a LyCORIS DyLoRA network whose preset file gives some of Flux's layers
LoCon entries (issue 12; was DBS403): LyCORIS's prepare_optimizer_params raises the parameters named
`lora_up` only, the LoCon entries' and never DyloraModule's `up_list`, so dbspec's LoRA+ on a LyCORIS-form
DyLoRA adapter raises its LoCon blocks' `lora_B` alone (runtime/prepare.py lora_up_ids). Checked against
lycoris-lora 4.1.3's create_network from the same file on kohya's Flux layers: the modules whose parameters
its "plus" groups hold are exactly the kohya layers whose dbspec parameters the plan raises, at lr x ratio."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
from tests.runtime.test_lycoris_mixed_flow_dylora import _converted, _their_network
from tests.runtime.test_lycoris_mixed_flow_full import _BASE, _kohya_layers, _kohya_tree
from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# a DyLoRA network (block_size 2) on the attention and linear1, LoCon entries on the text stream's q/k/v and
# on the single blocks' linear1; CLIP-L's attention DyLoRA
FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear1"]
text_encoder_target_module = ["CLIPAttention"]

[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "locon"
dim = 2
alpha = 1
[name_algo_map."single_blocks.*.linear1"]
algo = "locon"
"""


def test_loraplus_raises_the_locon_entries_ups_as_lycoris(tmp_path, monkeypatch):
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.prepare import configure_models, lora_up_ids, raises_dylora_ups

    file = tmp_path / "net.toml"
    file.write_text(FILE, encoding="utf-8")
    base = ["model.base=builtin:tiny-flux", *_BASE, "optimizer.lr=1e-3"]
    (tmp_path / "x").mkdir()
    # the network_args after preset= (_converted quotes each): loraplus_lr_ratio=4
    plan = _converted(tmp_path, f'{file.name}" "loraplus_lr_ratio=4', "dylora", base)
    a = plan.adapter
    assert (a.kind, a.dylora_form) == ("dylora", "lycoris") and {b.kind for b in a.blocks} >= {"lora"}
    assert plan.optimizer.loraplus_denoiser_ratio == plan.optimizer.loraplus_text_encoder_ratio == 4
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    raised = lora_up_ids(comps, dylora=raises_dylora_ups(a))  # as runtime/setup.py groups them
    layers = _kohya_layers(comps.unet, flux_model(1, 1), diffusers_parts)
    ours = {
        "lora_unet_" + path.replace(".", "_")
        for path, (parts, _) in layers.items()
        if any(id(p) in raised for part in parts for p in part.parameters())
    }
    ours_text = {n for n, p in comps.text_encoders[0].named_parameters() if id(p) in raised}

    clip = _kohya_clip(_unwrapped(comps.text_encoders[0]))
    theirs, made = _their_network(monkeypatch, "dylora", file, [clip, nn.Module()], _kohya_tree(layers))
    made.set_loraplus_lr_ratio(4.0, None, None)
    groups, described = made.prepare_optimizer_params(1e-3, 1e-3, 1e-3)
    owner = {id(p): name for name, m in theirs.items() for p in m.parameters()}
    plus = {owner[id(p)] for g, d in zip(groups, described) if d.endswith("plus") for p in g["params"]}
    assert all(g["lr"] == 4e-3 for g, d in zip(groups, described) if d.endswith("plus"))
    kinds = {type(theirs[n]).__name__ for n in plus}
    assert kinds == {"LoConModule"} and plus == ours  # the LoCon entries' ups, no DyLoRA's
    assert not ours_text and not any(n.startswith("lora_te") for n in plus)  # CLIP-L: DyLoRA alone
    assert any(type(m).__name__ == "DyLoraModule" for m in theirs.values())

    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import compile_spec
    from tests.unit.convert_kit import out_path

    whole = execute(compile_spec(out_path(tmp_path), [*base, "output.dir=whole"]))
    assert whole.status == "finished"
    parts = compile_spec(out_path(tmp_path), [*base, "output.dir=parts"])
    first = execute(parts, stop_after=1)
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
