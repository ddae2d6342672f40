"""An algo=tlora network's preset-file entries of Diag-OFT, BOFT and DyLoRA (was DBS403): the T-LoRA adapter's
blocks of those kinds, against lycoris-lora 4.1.3's create_network from the same file on the tiny SD 1.x:
each module's class, block size / rank, alpha, constraint and scale; a tiny run of the file with the entries'
own options trains, draws as lycoris-lora's network (module_dropout: every module's one draw in forward
order), its export loads back in lycoris-lora's kohya loader and its adapter folders as `dbspec sample` loads
them. The file at the entries' defaults (one DyLoRA block per layer, no Diag-OFT rescale), and with the
network's block_size 2 (the DyLoRA entries' blocks' `unit`, was DBS403), is checked built only, as the run
builds it (adapters.add_lora): its run would train, draw, export and reload the same kinds through the same
paths."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.runtime.test_lycoris import loader  # noqa: F401 (the fixture)
from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_tlora import converted_network

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# the transformers' feed-forwards Diag-OFT at the network's dim (its block-size hint), their blocks' other
# layers (the attention) DyLoRA at the network's dim in blocks of the network's block_size (4: one block),
# CLIP's MLP BOFT at 8; the rest T-LoRA
TLORA_OFT_DYLORA = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]

[module_algo_map.FeedForward]
algo = "diag-oft"
[module_algo_map.BasicTransformerBlock]
algo = "dylora"
[module_algo_map.CLIPMLP]
algo = "boft"
dim = 8
"""
# the entries' own options their blocks carry: Diag-OFT's constraint and rescaled (the block's alpha and
# `rescaled`), DyLoRA's block size (its `unit`: two blocks of 2, drawn at random per step)
TLORA_OWN = TLORA_OFT_DYLORA.replace(
    'algo = "diag-oft"\n', 'algo = "diag-oft"\nconstraint = 0.0001\nrescaled = true\n'
).replace('algo = "dylora"\n', 'algo = "dylora"\nblock_size = 2\n')
ARGS = '"algo=tlora" "module_dropout=0.3"'


def _modules(made) -> dict[str, tuple]:
    """Each lycoris-lora module's class and what it is built with: T-LoRA its dim and scale, Diag-OFT / BOFT
    their blocks' shape, alpha, constraint (x out_dim) and rescale, DyLoRA its dim, block size and scale."""
    out = {}
    for m in [*made.unet_loras, *made.text_encoder_loras]:
        name = type(m).__name__
        if name in ("DiagOFTModule", "ButterflyOFTModule"):
            shape = tuple(m.oft_blocks.shape)
            rescale = "rescale" in dict(m.named_parameters())
            out[m.lora_name] = (name, shape, round(float(m.alpha), 9), round(float(m.constraint), 9), rescale)
        elif name == "DyLoraModule":
            out[m.lora_name] = (name, m.lora_dim, m.block_size, round(float(m.scale), 9))
        else:
            out[m.lora_name] = (name, m.lora_dim, round(float(m.scale), 9))
    return out


def _layers(model, prefix: str) -> dict[str, tuple]:
    """_modules of our trained model's layers."""
    from dbspec.runtime.dylora import DyloraLayer
    from dbspec.runtime.lycoris_boft import BoftLayer
    from dbspec.runtime.lycoris_oft import DiagOftLayer
    from dbspec.runtime.lycoris_tlora import TloraLayer

    out = {}
    for name, layer in model.named_modules():
        key = prefix + name.replace(".", "_")
        if isinstance(layer, DiagOftLayer) and "default" in layer.lora_oft_blocks:
            kind = "ButterflyOFTModule" if isinstance(layer, BoftLayer) else "DiagOFTModule"
            shape = tuple(layer.lora_oft_blocks["default"].shape)
            rescale = "default" in layer.lora_oft_rescale
            alpha, constraint = float(layer.lora_alpha["default"]), float(layer.constraint["default"])
            out[key] = (kind, shape, round(alpha, 9), round(constraint, 9), rescale)
        elif isinstance(layer, DyloraLayer) and "default" in layer.r:
            scale = round(float(layer.scaling["default"]), 9)
            out[key] = ("DyLoraModule", layer.r["default"], layer.unit, scale)
        elif isinstance(layer, TloraLayer) and "default" in layer.r:
            out[key] = ("TLoraModule", layer.r["default"], round(float(layer.scaling["default"]), 9))
    return out


@pytest.mark.parametrize("preset", ["defaults", "own", "network_block_size"])
def test_tlora_network_s_oft_and_dylora_entries_build_train_and_load_as_lycoris(
    pipe,  # noqa: F811
    tmp_path,
    loader,  # noqa: F811
    monkeypatch,
    preset,
):
    from safetensors.torch import load_file

    from dbspec.runtime.adapters import add_lora
    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import compile_spec
    from tests.runtime.test_lycoris import _unet_output
    from tests.runtime.test_lycoris_norm_dropouts import draws_as_lycoris
    from tests.unit.convert_kit import out_path

    # network_block_size: the network's block_size (was DBS403) the DyLoRA entries' blocks' `unit`
    text = TLORA_OWN if preset == "own" else TLORA_OFT_DYLORA
    args = ARGS + (' "block_size=2"' if preset == "network_block_size" else "")
    adapter, made, _, named, unet = converted_network(tmp_path, monkeypatch, text, args, pipe=pipe)
    assert adapter.kind == "tlora" and {b.kind for b in adapter.blocks} == {"diag-oft", "dylora"}
    assert {b.kind for b in adapter.text_encoder_blocks} == {"boft"}
    theirs = _modules(made)
    kinds = {v[0] for v in theirs.values()}
    assert kinds == {"TLoraModule", "DiagOFTModule", "DyLoraModule", "ButterflyOFTModule"}
    own = preset == "own"  # the entries' own options reach lycoris-lora's modules
    assert {v[2] for v in theirs.values() if v[0] == "DyLoraModule"} == ({4} if preset == "defaults" else {2})
    assert {v[4] for v in theirs.values() if v[0] == "DiagOFTModule"} == {own}
    if not own:  # the layers as the run builds them
        built, text = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
        add_lora(built, adapter, adapter.denoiser_targets, seed=0, conv=True)
        add_lora(text, adapter, adapter.text_encoder_targets, seed=0, component="text_encoder")
        ours = {**_layers(built, "lora_unet_"), **_layers(text, "lora_te_text_model_")}
        assert sorted(ours) == sorted(theirs) and {k: v for k, v in ours.items() if theirs[k] != v} == {}
        return

    done = execute(compile_spec(out_path(tmp_path), ["model.base=builtin:tiny-sd1"]), keep_models=True)
    assert done.status == "finished"
    trained = done.components
    ours = {
        **_layers(trained.unet, "lora_unet_"),
        **_layers(trained.text_encoders[0], "lora_te_text_model_"),
    }
    assert sorted(ours) == sorted(theirs)
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}

    # the export loaded into that network (kohya's --network_weights; lycoris-lora's DyLoraModule loads
    # nothing, so its layers are left fresh there: the U-Net's DyLoRA ups zeroed on ours alike) gives our
    # U-Net's outputs and generator state over four training forwards
    (export,) = Path(done.final).glob("*.kohya.safetensors")
    saved = load_file(str(export))
    made.apply_to(named, unet, True, True)
    _, unexpected = made.load_state_dict(saved, strict=False)
    dylora = {k for k, v in theirs.items() if v[0] == "DyLoraModule"}
    assert unexpected and {k.split(".")[0] for k in unexpected} <= dylora  # its keys are not the file's
    from dbspec.runtime.dylora import DyloraLayer

    compared = copy.deepcopy(trained.unet).float()
    for layer in compared.modules():
        if isinstance(layer, DyloraLayer):
            for up in layer.lora_dylora_up["default"]:
                up.data.zero_()
    cfg = pipe.unet.config
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.in_channels, 8, 8, generator=generator)
    hidden = torch.randn(2, 5, cfg.cross_attention_dim, generator=generator)
    with torch.no_grad():
        unet.eval(), made.eval()
        plain = unet(x, 10, hidden).sample
        made.train(), unet.train(), compared.train()
        assert draws_as_lycoris(unet, compared, x, hidden, plain), "module_dropout changed nothing"

    # lycoris-lora's kohya loader builds every trained layer from the file (DyLoRA's in LoRA's layout, as
    # LoConModules) and computes the trained U-Net's and CLIP's outputs
    for attr in (
        "UNET_TARGET_REPLACE_MODULE",
        "UNET_TARGET_REPLACE_NAME",
        "TEXT_ENCODER_TARGET_REPLACE_MODULE",
    ):
        monkeypatch.setattr(lycoris_kohya.LycorisNetworkKohya, attr, [])
    fresh_unet, named = copy.deepcopy(pipe.unet), nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)
    loaded, weights = loader(1.0, str(export), None, named, fresh_unet, for_inference=True)
    assert sorted(m.lora_name for m in [*loaded.unet_loras, *loaded.text_encoder_loras]) == sorted(theirs)
    loaded.apply_to(named, fresh_unet, True, True)
    loaded.load_state_dict(weights, strict=False)
    torch.testing.assert_close(
        _unet_output(fresh_unet), _unet_output(trained.unet.eval()), rtol=1e-4, atol=1e-4
    )
    ids = torch.randint(0, pipe.text_encoder.config.vocab_size, (2, 7), generator=generator)
    with torch.no_grad():
        got = named.text_model(ids).last_hidden_state
        want = trained.text_encoders[0].eval()(ids).last_hidden_state
        assert not torch.allclose(want, pipe.text_encoder(ids).last_hidden_state, atol=1e-4)  # trained
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    # the run's adapter folders (`<component>/<kind>/` beside T-LoRA's) load back as `dbspec sample` does
    from dbspec.runtime.weights import load_peft_adapters

    again = {"unet": copy.deepcopy(pipe.unet), "text_encoder": copy.deepcopy(pipe.text_encoder)}
    assert load_peft_adapters(Path(done.final), again, blocks=adapter) == ["unet", "text_encoder"]
    torch.testing.assert_close(
        _unet_output(again["unet"].eval()), _unet_output(trained.unet), rtol=1e-5, atol=1e-5
    )
    with torch.no_grad():
        back = again["text_encoder"].eval()(ids).last_hidden_state
    torch.testing.assert_close(back, want, rtol=1e-5, atol=1e-5)
