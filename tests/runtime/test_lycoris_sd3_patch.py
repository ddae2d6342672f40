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
    (LoCon 3, LoKr 1: LokrModule's low-rank second factor with `lokr_t2`, LoHa 2) beside conv_dim 4. The
    first case's run also resumes bit-exact (the patch convolution's `lora_mid`); the others' cores resume,
    as they save through the same path, in test_lycoris_mixed_file's
    test_mixed_preset_run_starts_from_its_file_as_lycoris[lokr-tucker-lora-loha] (LoCon's lora_mid,
    LoHa's hada_t1 / hada_t2, LoKr's lokr_t2)."""
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
    if (kind, conv_rank, block) == ("lora", 2, 0):
        parts = make_plan(tmp_path / "parts", base=BASE, steps=2, extra=extra)
        first = execute(parts, stop_after=1)
        second = execute(parts, resume=True, keep_models=True)
        assert second.status == "finished" and first.losses + second.losses == result.losses
        ours = dict(result.components.unet.named_parameters())
        for key, p in second.components.unet.named_parameters():
            if p.requires_grad:
                assert torch.equal(p, ours[key]), key
    _check_export(plan, result, kind, rank)


@pytest.mark.parametrize(
    ("algo", "args"),
    [
        ("lora", "use_tucker=True conv_dim=4 conv_alpha=0"),  # alpha 0: the module's dim
        ("lora", "use_tucker=True conv_dim=4 conv_alpha=2 rs_lora=True"),  # alpha / sqrt(dim)
        ("lora", "conv_dim=3 conv_alpha="),  # "": network_alpha
        ("loha", "use_tucker=True conv_dim=4 rs_lora=True"),
        ("lokr", "use_tucker=True conv_dim=1 conv_alpha=0"),
    ],
)
def test_converted_patch_convolution_scale_is_lycoris(tmp_path, algo, args):
    """The patch convolution's conv_rank / conv_alpha as converted from `--network_args algo=<algo> <args>`
    (network_dim 16, network_alpha 8) give the layer dbspec builds LyCORIS's dim and scale: its module built
    as lycoris.kohya's create_network builds it (conv_dim / conv_alpha from the same strings, its alpha-0 and
    rs_lora rules), on tiny-sd3's patch convolution."""
    from tests.unit.convert_kit import component_file, images, kohya, plan_of

    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    outcome = kohya(
        tmp_path,
        command="accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
        "stabilityai/stable-diffusion-3.5-large --clip_l sd3/clip_l.safetensors "
        "--clip_g sd3/clip_g.safetensors --t5xxl sd3/t5xxl_fp16.safetensors --train_data_dir x "
        "--resolution 512 --network_module lycoris.kohya "
        f"--network_dim 16 --network_alpha 8 --learning_rate 1e-4 --network_args algo={algo} {args}",
    )
    a = plan_of(outcome, tmp_path).adapter
    kwargs = dict(item.split("=", 1) for item in args.split())
    conv_dim = int(kwargs.get("conv_dim", 16) or 16)  # create_network's reading of the strings
    conv_alpha = float(kwargs.get("conv_alpha", 8.0) or 8.0)
    rs = kwargs.get("rs_lora", "false").lower() != "false"
    conv = torch.nn.Conv2d(16, 16, 2, 2)
    theirs = CLASSES[algo](NAME, conv, 1.0, conv_dim, conv_alpha, use_tucker=a.tucker, rs_lora=rs)
    extra = _extra(algo, a.conv_rank).replace("conv_alpha = 1\n", f"conv_alpha = {a.conv_alpha}\n")
    extra = extra.replace("tucker = true", f"tucker = {str(a.tucker).lower()}")
    if a.kind == "lokr" and a.lokr_rank_stabilized:  # LokrModule's full factors (its rs_lora)
        extra = extra.replace('kind = "lokr"', 'kind = "lokr"\nrank_stabilized = true')
    plan = make_plan(tmp_path / "run", base=BASE, steps=1, extra=extra)
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    layer = comps.unet.pos_embed.proj
    assert a.conv_rank == conv_dim
    assert layer.scaling["default"] == pytest.approx(float(theirs.scale))
    assert layer.r["default"] == conv_dim


@pytest.mark.parametrize(
    ("option", "extra", "theirs"),
    [
        ("dora_wd", 'dora = true\ndora_form = "lycoris"\n', {"weight_decompose": True}),
        ("use_scalar", "scalar = true\n", {"use_scalar": True}),
        ("scale_weight_norms", 'max_norm = 1e-3\nmax_norm_form = "lycoris"\n', {}),
        ("rank_dropout", 'rank_dropout = 0.1\nrank_dropout_form = "lycoris"\nmodule_dropout = 0.1\n', {}),
    ],
)
def test_tucker_patch_convolution_with_lycoris_options(tmp_path, option, extra, theirs):
    """use_tucker beside dora_wd, use_scalar, --scale_weight_norms or the dropouts (converted as on the
    other layers): the run's patch convolution, exported by the lora_sd3 writer (dora_scale; the scalars
    folded into lora_up, as LoConModule's custom_state_dict saves them), is what lycoris-lora's LoConModule
    with use_tucker and that option loads (load_state_dict(strict=False), as lycoris.kohya's load_weights)."""
    spec = _extra("lora", 2).replace("tucker = true\n", "tucker = true\n" + extra)
    plan = make_plan(tmp_path, base=BASE, steps=2, extra=spec)
    result = execute(plan, keep_models=True)
    assert result.status == "finished"
    tensors = load_file(str(Path(result.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    own = {k.removeprefix(NAME + "."): v for k, v in tensors.items() if k.startswith(NAME + ".")}
    assert ("dora_scale" in own) == (option == "dora_wd") and "lora_mid.weight" in own
    layer = result.components.unet.float().eval().pos_embed.proj
    base = layer.get_base_layer()
    module = LoConModule(NAME, copy.deepcopy(base), 1.0, 2, own["alpha"].item(), use_tucker=True, **theirs)
    missing, unexpected = module.load_state_dict(own, strict=False)
    assert not unexpected and set(missing) <= {"scalar"}
    module.apply_to()
    x = torch.randn(2, base.in_channels, 8, 8)
    with torch.no_grad():
        trained = layer(x)
        assert not torch.allclose(trained, base(x), atol=1e-6)
        torch.testing.assert_close(module.eval()(x), trained, rtol=0, atol=1e-5)
