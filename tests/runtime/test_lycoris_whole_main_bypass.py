"""IA^3's `bypass_mode` beside a preset file's entries of other algorithms on SD 1.x (issue 12; was DBS403,
a spec's DBS578): LyCORIS hands the network's bypass_mode to every module, IA3Module scaling the layer's
output (its bias too), the entries' LoCon / LoHa modules computing their default update. The converted plan's
U-Net (random adapter weights) exported and loaded into lycoris-lora 4.1.3's create_network from the same
file with bypass_mode gives the same output (on Flux: test_lycoris_whole_main_mixed_flow.py)."""

from __future__ import annotations

import torch

import pytest

from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (pipe: a fixture)
from tests.runtime.test_lycoris_whole_main_mixed import _plan

lycoris_kohya = pytest.importorskip("lycoris.kohya")


def test_ia3_bypass_with_entries_equals_lycoris_on_sd1(pipe, tmp_path, monkeypatch):  # noqa: F811
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.lycoris_export import lycoris_state
    from dbspec.runtime.prepare import configure_models
    from tests.runtime.test_lycoris import _unet_output

    path, plan = _plan(tmp_path, "ia3", '"bypass_mode=True"')
    a = plan.adapter
    assert (a.kind, a.bypass) == ("ia3", True) and {b.kind for b in a.blocks} == {"lora", "loha"}
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in comps.unet.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    unet = comps.unet.eval()
    tensors = lycoris_state(unet=unet, text_encoders=[], family="sd1", dtype="fp32")
    theirs_unet, made = _network(pipe, path, monkeypatch)
    assert {type(m).__name__ for m in made.unet_loras} == {"IA3Module", "LoConModule", "LohaModule"}
    assert {bool(m.bypass_mode) for m in made.unet_loras} == {True}
    made.apply_to(None, theirs_unet, apply_text_encoder=False, apply_unet=True)
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


def _network(sd, path, monkeypatch):
    """(the U-Net copy, lycoris-lora's network from the file on it with bypass_mode) as test_lycoris_algo_maps
    builds it."""
    import copy

    from torch import nn

    from tests.runtime.test_lycoris_preset_file_sdxl import NETWORK_ATTRS

    network = lycoris_kohya.LycorisNetworkKohya
    for attr in NETWORK_ATTRS:
        monkeypatch.setattr(network, attr, copy.copy(getattr(network, attr)))
    named = nn.Module()
    named.text_model = copy.deepcopy(sd.text_encoder)
    unet = copy.deepcopy(sd.unet)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, unet, algo="ia3", conv_dim="4", preset=str(path), bypass_mode="True"
    )
    return unet, made
