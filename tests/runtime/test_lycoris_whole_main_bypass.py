"""IA^3's `bypass_mode` beside a preset file's entries of other algorithms on SD 1.x (issue 12; was DBS403,
a spec's DBS578): LyCORIS hands the network's bypass_mode to every module, IA3Module scaling the layer's
output (its bias too), the entries' LoCon / LoHa modules computing their default update. The converted plan's
U-Net (random adapter weights) exported and loaded into lycoris-lora 4.1.3's create_network from the same
file with bypass_mode gives the same output (on Flux: test_lycoris_whole_main_mixed_flow.py)."""

from __future__ import annotations

import torch

import pytest

from tests.runtime.shared import moved_components
from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (pipe: a fixture)
from tests.runtime.test_lycoris_mixed_module_dropout import lycoris_unet
from tests.runtime.test_lycoris_whole_main_mixed import _plan

lycoris_kohya = pytest.importorskip("lycoris.kohya")


def test_ia3_bypass_with_entries_equals_lycoris_on_sd1(pipe, tmp_path, monkeypatch):  # noqa: F811
    from dbspec.runtime.lycoris_export import lycoris_state
    from tests.runtime.test_lycoris import _unet_output

    path, plan = _plan(tmp_path, "ia3", '"bypass_mode=True"')
    a = plan.adapter
    assert (a.kind, a.bypass) == ("ia3", True) and {b.kind for b in a.blocks} == {"lora", "loha"}
    unet = moved_components(plan).unet.eval()
    tensors = lycoris_state(unet=unet, text_encoders=[], family="sd1", dtype="fp32")
    made, theirs_unet = lycoris_unet(pipe, monkeypatch, "ia3", path, bypass_mode="True")
    assert {type(m).__name__ for m in made.unet_loras} == {"IA3Module", "LoConModule", "LohaModule"}
    assert {bool(m.bypass_mode) for m in made.unet_loras} == {True}
    result = made.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys, result
    assert not [k for k in result.missing_keys if k.startswith("lora_unet_")], result
    theirs = _unet_output(theirs_unet.eval())
    ours = _unet_output(unet)
    assert not torch.allclose(ours, _unet_output(pipe.unet), atol=1e-4)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # the default forward differs (IA3Module's bias scaled in bypass only): the comparison tells them apart
    for m in made.unet_loras:
        m.bypass_mode = False
    assert not torch.allclose(_unet_output(theirs_unet), theirs, atol=1e-5)
