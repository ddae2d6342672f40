"""The network's `constraint` beside a preset file's Diag-OFT / BOFT entries on a network of another algorithm
(issue 12; was DBS403): lycoris-lora 4.1.3's create_network hands it to every module (LycorisNetworkKohya's
root kwargs), DiagOFTModule and ButterflyOFTModule bound their blocks' norm by constraint x out_dim, the other
module classes never read it; the converter writes it as those entries' blocks' alpha (lycoris_maps._blocks,
an entry's own constraint replacing it). Checked on tiny SD 1.x against lycoris-lora's network from the same
network_args and preset: every OFT layer's blocks, alpha, constraint and rescale; our export loads strictly
into its network and each OFT layer computes our output and the same blocks' gradient on a fixed input (the
constraint binding: the blocks' norm above it)."""

from __future__ import annotations

import pytest
import torch

from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import _converted_plan
from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_own_opts_networks import _built, _loaded
from tests.runtime.test_lycoris_own_opts_networks import _network as own_network
from tests.runtime.test_lycoris_tlora_oft_dylora import _layers, _modules

lycoris_kohya = pytest.importorskip("lycoris.kohya")

CONSTRAINT = "0.0001"  # small enough that the randomised blocks' norm exceeds constraint x out_dim

# the transformers' feed-forwards Diag-OFT, their blocks' other layers (the attention) BOFT, the
# transformers' own layers (proj_in / proj_out) and CLIP's attention the network's algorithm
PRESET = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention"]

[module_algo_map.FeedForward]
algo = "diag-oft"
[module_algo_map.BasicTransformerBlock]
algo = "boft"
"""


def _network(pipe, path, monkeypatch, algo: str):  # noqa: F811
    return own_network(pipe, path, monkeypatch, algo, {"constraint": CONSTRAINT})


def oft_layers_alike(made, unet, their_unet, oft):
    """Each of LyCORIS's OFT modules named in `oft` and our layer on the same base: equal outputs and
    block gradients on a random input; yields (their module, our layer) for more checks."""
    modules = dict(unet.named_modules())
    paths = {id(m): p for p, m in their_unet.named_modules()}
    g = torch.Generator().manual_seed(3)
    for m in made.unet_loras:
        if m.lora_name not in oft:
            continue
        layer = modules[paths[id(m.org_module[0])]]
        base = layer.get_base_layer()
        x = torch.randn(2, base.in_features, generator=g)
        torch.testing.assert_close(m(x), layer(x), rtol=1e-4, atol=1e-5, msg=m.lora_name)
        m(x).square().sum().backward()
        layer(x).square().sum().backward()
        ours = layer.lora_oft_blocks["default"].grad
        torch.testing.assert_close(m.oft_blocks.grad, ours, rtol=1e-4, atol=1e-5, msg=m.lora_name)
        yield m, layer


@pytest.mark.parametrize("algo", ["locon", "glora"])
def test_network_constraint_reaches_oft_entries(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """A LoCon and a GLoRA network's constraint on their Diag-OFT / BOFT entries: the blocks' alpha, each OFT
    layer's constraint x out_dim as lycoris-lora's; outputs and the blocks' gradients alike."""
    path, plan = _converted_plan(tmp_path, "oft", algo, f'"constraint={CONSTRAINT}"', text=PRESET)
    a = plan.adapter
    assert {(b.kind, b.alpha) for b in a.blocks} == {("diag-oft", 1e-4), ("boft", 1e-4)}
    made, named, their_unet = _network(pipe, path, monkeypatch, algo)
    unet, text = _built(pipe, a)
    oft = {k: v for k, v in _modules(made).items() if v[0] in ("DiagOFTModule", "ButterflyOFTModule")}
    assert {v[0] for v in oft.values()} == {"DiagOFTModule", "ButterflyOFTModule"}
    assert all(v[2] == 1e-4 and v[3] > 0.0 for v in oft.values())  # alpha, constraint x out_dim
    assert _layers(unet, "lora_unet_") == oft

    tensors = lycoris_state(unet=unet, text_encoders=[text], family=plan.model.family, dtype="fp32")
    assert _loaded(made, named, their_unet, tensors, strict=True) == set()
    bound = 0
    for m, _layer in oft_layers_alike(made, unet, their_unet, oft):
        with torch.no_grad():  # the constraint binds: the skew blocks' norm above constraint x out_dim
            bound += bool((m.oft_blocks - m.oft_blocks.transpose(-1, -2)).norm() > m.constraint)
    assert bound == len(oft)
