"""LyCORIS's Tucker form on SD3's patch convolution (issue 12): lycoris.kohya with sd3_train_network.py and
`use_tucker`, presets full / unet-only or a preset file's PatchEmbed (a map entry's dim and use_tucker of its
own there: a block's conv_rank, the adapter's tucker). LoCon's (LoConModule's 1x1 `lora_down`, 2x2 stride-2
`lora_mid`, 1x1 `lora_up`: runtime/locon_tucker.py, written by the lora_sd3 writer with its `lora_mid`) and
LoKr's / LoHa's (`lokr_t2`, `hada_t1` / `hada_t2`) start as lycoris-lora 4.1.3's module built on the same
convolution at that dim and alpha (shapes, scale, output), train, resume bit-exact, and the kohya_lora export
is what lycoris-lora's module with use_tucker loads: the trained layer's output."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from lycoris.modules.locon import LoConModule
from lycoris.modules.loha import LohaModule
from lycoris.modules.lokr import LokrModule
from safetensors.torch import load_file

from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.prepare import configure_models
from tests.runtime.runspec import make_plan
from tests.runtime.test_lycoris_sd3 import BASE, LOKR

NAME = "lora_unet_x_embedder_proj"
CLASSES = {"lora": LoConModule, "lokr": LokrModule, "loha": LohaModule}


def _extra(kind: str, conv_rank: int, block: int = 0) -> str:
    """The converter's spec for `--network_args algo=<kind> use_tucker=True` (preset full-lin's Linears and
    the patch convolution at conv_dim `conv_rank`, conv_alpha 1), with `block`: a preset file's PatchEmbed
    entry at dim `block`, alpha 1 (a block's conv_rank)."""
    patch = f'conv_rank = {conv_rank}\nconv_alpha = 1\nconv_targets = ["pos_embed.proj"]\ntucker = true\n'
    adapter, checkpoints = LOKR.replace('kind = "lokr"', f'kind = "{kind}"').split("\n\n[checkpoints]")
    blocks = ""
    if block:
        blocks = (
            '\n[[adapter.blocks]]\npattern = "(?:^|\\\\.)(?:pos_embed\\\\.proj)$"\n'
            f"rank = 2\nalpha = 1.5\nconv_rank = {block}\nconv_alpha = 1\n"
        )
    return f"{adapter}\n{patch}{blocks}\n[checkpoints]{checkpoints}".replace("every = 2", "every = 1")


def _theirs(kind: str, conv: torch.nn.Conv2d, rank: int) -> torch.nn.Module:
    """lycoris-lora's module with use_tucker on a copy of the plain patch convolution (dim `rank`,
    alpha 1)."""
    return CLASSES[kind](NAME, copy.deepcopy(conv), 1.0, rank, 1.0, use_tucker=True)


def _check_start(kind: str, layer, rank: int) -> None:
    """The untrained layer is LyCORIS's module at that dim and alpha: the same factor shapes, Tucker core
    and scale, and (its zeroed factor) the base output."""
    theirs = _theirs(kind, layer.base_layer, rank)
    if kind == "lora":
        ours = {n: getattr(layer, n)["default"].weight for n in ("lora_A", "lora_mid", "lora_B")}
        mine = dict(zip(("lora_down.weight", "lora_mid.weight", "lora_up.weight"), ours.values()))
        scale = layer.scaling["default"]
        assert not ours["lora_B"].any()  # LyCORIS zeroes lora_up
    else:
        mine = {k: v for k, v in layer.state_dict().items() if k.split(".")[0].startswith(("hada_", "lokr_"))}
        mine = {k.split(".")[0]: v for k, v in mine.items()}
        scale = layer.scaling["default"]
    theirs_state = {k: v for k, v in theirs.state_dict().items() if k not in ("alpha",)}
    assert {k: tuple(v.shape) for k, v in mine.items()} == {
        k: tuple(v.shape) for k, v in theirs_state.items()
    }
    assert any(k in mine for k in ("lora_mid.weight", "lokr_t2", "hada_t1"))  # the Tucker core
    assert scale == pytest.approx(float(theirs.scale))
    x = torch.randn(2, layer.base_layer.in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=0, atol=1e-6)


def _check_export(plan, result, kind: str, rank: int) -> None:
    tensors = load_file(str(Path(result.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    own = {k.removeprefix(NAME + "."): v for k, v in tensors.items() if k.startswith(NAME + ".")}
    core = {"lora": "lora_mid.weight", "lokr": "lokr_t2", "loha": "hada_t1"}[kind]
    assert own[core].shape[:2] == (rank, rank) and own[core].shape[2:] == (2, 2)
    layer = result.components.unet.float().eval().pos_embed.proj
    theirs = _theirs(kind, layer.base_layer, rank)
    theirs.load_state_dict(own)
    theirs.apply_to()
    x = torch.randn(2, layer.base_layer.in_channels, 8, 8)
    with torch.no_grad():
        trained = layer(x)
        assert not torch.allclose(trained, layer.base_layer(x), atol=1e-6)  # it trained
        torch.testing.assert_close(theirs.eval()(x), trained, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("kind", "conv_rank", "block"), [("lora", 2, 0), ("lora", 4, 3), ("lokr", 4, 1), ("loha", 4, 2)]
)
def test_tucker_patch_convolution_is_lycoris_module(tmp_path, kind, conv_rank, block):
    """LoCon at conv_dim 2 (presets full / unet-only), and a preset file's PatchEmbed entry at its own dim
    (LoCon 3, LoKr 1: LokrModule's low-rank second factor with `lokr_t2`, LoHa 2) beside conv_dim 4."""
    extra = _extra(kind, conv_rank, block)
    rank = block or conv_rank
    start = make_plan(tmp_path / "start", base=BASE, steps=1, extra=extra)
    comps = family_runtime(start.model.family).load(start)
    configure_models(start, comps, torch.device("cpu"))  # the adapters as a run attaches them
    _check_start(kind, comps.unet.float().eval().pos_embed.proj, rank)
    plan = make_plan(tmp_path / "whole", base=BASE, steps=2, extra=extra)
    assert plan.adapter.tucker and plan.adapter.conv_targets == ("pos_embed.proj",)
    result = execute(plan, keep_models=True)
    assert result.status == "finished"
    parts = make_plan(tmp_path / "parts", base=BASE, steps=2, extra=extra)
    first = execute(parts, stop_after=1)
    second = execute(parts, resume=True, keep_models=True)
    assert second.status == "finished" and first.losses + second.losses == result.losses
    ours = dict(result.components.unet.named_parameters())
    for key, p in second.components.unet.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, ours[key]), key
    _check_export(plan, result, kind, rank)
