"""lycoris.kohya Diag-OFT and BOFT networks whose preset file's entries of the network's own algorithm give
their own `bypass_mode` (issue 12; was DBS403): create_single_module hands an entry's bypass_mode to its
modules over the network's, so one network holds modules in both forwards (the bypass one rotating the
output, its bias included). The converted adapter's blocks carry it (OftBlock `bypass`; runtime/adapters.py
add_lora builds every layer in the default forward, runtime/mixed_kinds.py set_block_bypass then gives each
its block's, else the adapter's). A tiny SD 1.x run's export, loaded into lycoris-lora 4.1.3's network from
the same preset file, computes the trained U-Net's output (1e-5), which the same file without the entry's
own bypass_mode does not; the adapter folders load back (`dbspec sample`) to it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris import _unet_output
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    PRESETS,
    _converted_plan,
    pipe,
)

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# the network's algorithm on the transformers (their MLPs an entry of that algorithm with a bypass_mode of
# its own) and on one ResNet's 3x3 convolutions
OWN_ALGO = """\
enable_conv = true
unet_target_module = ["Transformer2DModel"]
unet_target_name = ['down_blocks\\.0\\.resnets\\.0\\.conv1']
text_encoder_target_module = []
text_encoder_target_name = []

[module_algo_map.FeedForward]
algo = "{algo}"
{own}"""

_CLASS = {"diag-oft": "DiagOFTModule", "boft": "ButterflyOFTModule"}


def _lycoris_unet(base, path: Path, monkeypatch, file: Path, algo: str, network: bool, own) -> nn.Module:
    """The base U-Net under lycoris-lora's create_network from the preset file (an `algo` network, dim 4,
    conv_dim 4, bypass_mode `network`), loaded with the export (kohya's --network_weights load, strict);
    `own`: the bypass_mode its FeedForward modules must hold (None: the network's)."""
    kept_lycoris_presets(monkeypatch)
    named, unet = nn.Module(), copy.deepcopy(base.unet)
    named.text_model = copy.deepcopy(base.text_encoder)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, unet, algo=algo, conv_dim="4", preset=str(path), bypass_mode=str(network)
    )
    made.apply_to(named, unet, apply_text_encoder=False, apply_unet=True)
    state = made.load_weights(str(file))
    assert not state.get("missing keys") and not state.get("unexpected keys"), state
    modes = {}
    for module in made.unet_loras:
        assert type(module).__name__ == _CLASS[algo]
        mlp = "_ff_net_" in module.lora_name
        modes[mlp] = modes.get(mlp, set()) | {module.bypass_mode}
    assert modes == {True: {network if own is None else own}, False: {network}}, modes
    return unet.eval()


@pytest.mark.parametrize("algo", ["diag-oft", "boft"])
def test_own_algorithm_entry_bypass_trains_and_matches_lycoris(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """A Diag-OFT (BOFT) network in bypass_mode whose FeedForward entry turns its own off: the block's
    `bypass = "off"`, the adapter's on; the run equals lycoris-lora's network from the same file (its MLP
    modules in the default forward, the rest in the bypass one) and loads back; without the entry's own
    bypass_mode lycoris-lora's output differs."""
    from dbspec.runtime.tiny import build_pipeline
    from dbspec.runtime.weights import load_peft_adapters
    from tests.unit.convert_kit import out_path

    preset = f"own-{algo}"
    PRESETS[preset] = OWN_ALGO.format(algo=algo, own="bypass_mode = false\n")
    try:
        path, plan = _converted_plan(tmp_path, preset, algo, '"bypass_mode=True"')
    finally:
        del PRESETS[preset]
    a = plan.adapter
    assert (a.kind, a.bypass) == (algo, True)
    assert [(b.kind, b.rank, b.bypass) for b in a.blocks] == [("adapter", 4, False)]
    assert "ff\\.net\\.2" in a.blocks[0].pattern
    spec = out_path(tmp_path)
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2", "train.text_encoder=false"]
    whole = execute(compile_spec(spec, [*base, "output.dir=whole"]), keep_models=True)
    (file,) = Path(whole.final).glob("*.kohya.safetensors")
    trained = _unet_output(whole.components.unet.eval())
    assert not torch.allclose(_unet_output(pipe.unet), trained, atol=1e-3)  # training moved it
    theirs = _unet_output(_lycoris_unet(pipe, path, monkeypatch, file, algo, True, False))
    torch.testing.assert_close(theirs, trained, rtol=1e-5, atol=1e-5)
    # the entry's own bypass_mode is not inert: without it (every module in the bypass forward) the same
    # tensors give another output
    plain = tmp_path / "plain.toml"
    plain.write_text(OWN_ALGO.format(algo=algo, own=""), encoding="utf-8")
    other = _unet_output(_lycoris_unet(pipe, plain, monkeypatch, file, algo, True, None))
    assert (other - trained).abs().max() > 1e-4
    # the adapter folders load back (`dbspec sample`), each block's layers in its own forward
    fresh = build_pipeline("builtin:tiny-sd1").unet
    assert load_peft_adapters(Path(whole.final), {"unet": fresh}, True, a.bypass, blocks=a) == ["unet"]
    torch.testing.assert_close(_unet_output(fresh.eval()), trained, rtol=1e-5, atol=1e-5)
