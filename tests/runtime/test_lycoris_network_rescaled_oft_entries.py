"""The network's `rescaled` beside a preset file's Diag-OFT / BOFT entries on a network of another algorithm
(issue 12; was DBS403), as its `constraint` (test_lycoris_network_constraint_oft_entries.py): lycoris-lora
4.1.3's create_network str_bools it into LycorisNetworkKohya's root kwargs, create_single_module hands it to
every module whose entry gives no `rescaled` of its own, and only DiagOFTModule and ButterflyOFTModule read it
(a trained scale per output row from 1); the converter writes it as those entries' blocks' `rescaled = "on"`
(lycoris_maps._blocks; oft_entries.entries_rescaled), an entry's own `rescaled = false` its block's "off".
Checked on tiny SD 1.x against lycoris-lora's network from the same network_args and preset: every OFT
layer's blocks, alpha, constraint and rescale; our export (the rescales randomised) loads strictly into its
network and each OFT layer computes our output and the same blocks' and rescale's gradients on a fixed
input."""

from __future__ import annotations

import pytest
import torch

from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import _converted_plan
from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_network_constraint_oft_entries import oft_layers_alike
from tests.runtime.test_lycoris_own_opts_networks import _built, _loaded
from tests.runtime.test_lycoris_own_opts_networks import _network as own_network
from tests.runtime.test_lycoris_tlora_oft_dylora import _layers, _modules

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# the transformers' feed-forwards Diag-OFT (the network's rescaled), their blocks' other layers (the
# attention) BOFT with their own rescaled off, the transformers' own layers (proj_in / proj_out) and CLIP's
# attention the network's algorithm
PRESET = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention"]

[module_algo_map.FeedForward]
algo = "diag-oft"
[module_algo_map.BasicTransformerBlock]
algo = "boft"
rescaled = false
"""


def _network(pipe, path, monkeypatch, algo: str):  # noqa: F811
    return own_network(pipe, path, monkeypatch, algo, {"rescaled": "True"})


@pytest.mark.parametrize("algo", ["locon", "glora"])
def test_network_rescaled_reaches_oft_entries(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """A LoCon and a GLoRA network's rescaled on their Diag-OFT entries (a BOFT entry's own `rescaled =
    false` keeps its layers unrescaled): the blocks' `rescaled`, each OFT layer's rescale as lycoris-lora's;
    outputs and the blocks' and rescales' gradients alike."""
    path, plan = _converted_plan(tmp_path, "oft", algo, '"rescaled=True"', text=PRESET)
    a = plan.adapter
    assert {(b.kind, b.rescaled) for b in a.blocks} == {("diag-oft", "on"), ("boft", "off")}
    made, named, their_unet = _network(pipe, path, monkeypatch, algo)
    unet, text = _built(pipe, a)  # the rescales randomised too (seeded)
    oft = {k: v for k, v in _modules(made).items() if v[0] in ("DiagOFTModule", "ButterflyOFTModule")}
    assert {(v[0], v[4]) for v in oft.values()} == {("DiagOFTModule", True), ("ButterflyOFTModule", False)}
    assert _layers(unet, "lora_unet_") == oft

    tensors = lycoris_state(unet=unet, text_encoders=[text], family=plan.model.family, dtype="fp32")
    assert any(k.endswith(".rescale") for k in tensors)
    assert _loaded(made, named, their_unet, tensors, strict=True) == set()
    rescaled = 0
    for m, layer in oft_layers_alike(made, unet, their_unet, oft):
        if m.rescaled:
            theirs, ours = m.rescale.grad, layer.lora_oft_rescale["default"].grad
            assert not torch.allclose(m.rescale.detach(), torch.ones_like(m.rescale))  # loaded, not 1
            torch.testing.assert_close(
                theirs.reshape(ours.shape), ours, rtol=1e-4, atol=1e-5, msg=m.lora_name
            )
            rescaled += 1
    assert rescaled == sum(v[0] == "DiagOFTModule" for v in oft.values())
