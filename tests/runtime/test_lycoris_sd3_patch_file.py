"""lycoris.kohya --dim_from_weights on SD3 with SD3's patch convolution in the file (issue 12): lycoris-lora
4.1.3 writes LoConModules on tiny-sd3's patch convolution and fused x-block q/k/v (kohya's MMDiT layers) and
rebuilds them with create_network_from_weights on a tree of kohya's names; the converted run (conv_targets
pos_embed.proj at the file's rank and alpha) starts both layers at LyCORIS's outputs; so do LokrModules /
LohaModules there in LyCORIS's Tucker form (`lokr_t2`, `hada_t1` / `hada_t2`: tucker = true), every module
with weight_decompose (`dora_scale`, the patch convolution's (out, 1, 1, 1) too: dora = true), and FullModules
(`diff` / `diff_b`, the patch convolution's 4-D: kind full with conv_targets, W + 2 diff after kohya's
load_weights), and LoConModule's Tucker form there (`lora_mid`: tucker = true; runtime/flow_init.py reads
it). Such runs train, resume bit-exact, and their export is what lycoris-lora's module on the patch
convolution loads."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tests.runtime.runspec import compile_spec, spec_whole_and_resumed
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_flux import _fused_linear

lycoris_kohya = pytest.importorskip("lycoris.kohya")
from lycoris.modules.boft import ButterflyOFTModule  # noqa: E402
from lycoris.modules.diag_oft import DiagOFTModule  # noqa: E402
from lycoris.modules.full import FullModule  # noqa: E402
from lycoris.modules.glora import GLoRAModule  # noqa: E402
from lycoris.modules.locon import LoConModule  # noqa: E402
from lycoris.modules.loha import LohaModule  # noqa: E402
from lycoris.modules.lokr import LokrModule  # noqa: E402

RUN = [
    "model.base=builtin:tiny-sd3",
    "model.text_encoder_files=[]",
    'model.vae=""',
    "model.t5_max_length=16",
]


def _layers(model) -> dict[str, tuple]:
    attn = model.transformer_blocks[0].attn
    return {
        "lora_unet_x_embedder_proj": (model.pos_embed.proj,),
        "lora_unet_joint_blocks_0_x_block_attn_qkv": (attn.to_q, attn.to_k, attn.to_v),
    }


def _copy(parts) -> nn.Module:
    if isinstance(parts[0], nn.Conv2d):
        conv = nn.Conv2d(parts[0].in_channels, parts[0].out_channels, 2, stride=2)
        conv.load_state_dict(parts[0].state_dict())
        return conv
    return _fused_linear(parts)


# (class, (rank, alpha) of the patch convolution's module and the q/k/v's, the patch's options, the
# Linears')
WD = {"weight_decompose": True}
CASES = [
    (LoConModule, ((2, 1.0), (3, 1.5)), {}, {}),
    (
        LokrModule,
        ((1, 0.5), (1, 1.5)),
        {"use_tucker": True, "decompose_both": True},
        {"decompose_both": True},
    ),
    (LohaModule, ((2, 1.0), (3, 1.5)), {"use_tucker": True}, {}),
    (LoConModule, ((2, 1.0), (3, 1.5)), {"use_tucker": True}, {}),  # lora_mid
    (LoConModule, ((2, 1.0), (3, 1.5)), WD, WD),
    (
        LokrModule,
        ((1, 0.5), (1, 1.5)),
        {"use_tucker": True, "decompose_both": True, **WD},
        {"decompose_both": True, **WD},
    ),
    (LohaModule, ((2, 1.0), (3, 1.5)), {"use_tucker": True, **WD}, WD),
    (FullModule, ((0, 0.0), (0, 0.0)), {}, {}),
    # `dora_scale` in some modules only (issue 12; was DBS403): the patch convolution's alone (its block's
    # dora "on"), or the q/k/v's alone (the patch convolution without, the adapter's dora off)
    (
        LokrModule,
        ((1, 0.5), (1, 1.5)),
        {"use_tucker": True, "decompose_both": True, **WD},
        {"decompose_both": True},
    ),
    (LohaModule, ((2, 1.0), (3, 1.5)), {"use_tucker": True}, WD),
    (LohaModule, ((2, 1.0), (3, 1.5)), WD, {}),
]


# LyCORIS's DiagOFTModule / ButterflyOFTModule / GLoRAModule on the patch convolution beside the q/k/v's (was
# DBS403): (class, the lora_dims and alphas, the patch's options, the q/k/v's). Diag-OFT: the patch at blocks
# of 2 with a constraint and rescale of its own beside the q/k/v's blocks of 4; BOFT: the patch split 4 x 4
# (lora_dim 4), which the adapter's hint 12 (the q/k/v's 4 x 12) would split 2 x 8: a block of its own;
# GLoRA: the patch at its own rank and alpha (conv_rank / conv_alpha)
ROTATIONS = [
    (DiagOFTModule, ((2, 0.0), (4, 0.0)), {"constraint": 0.05, "rescaled": True}, {}),
    (ButterflyOFTModule, ((4, 0.0), (16, 0.0)), {"constraint": 0.05}, {"constraint": 0.05}),
    (GLoRAModule, ((2, 1.0), (3, 1.5)), {}, {}),
]


@functools.cache
def _base_transformer() -> nn.Module:
    """tiny-sd3's transformer (float), built once per test process: only read (_copy copies its layers)."""
    from dbspec.runtime.tiny import build_pipeline

    return build_pipeline("builtin:tiny-sd3").transformer.float()


def _file(tmp_path, cls, ranks, options, linear):
    """lycoris-lora's modules on tiny-sd3's patch convolution and fused x-block q/k/v (every tensor random),
    saved as its network saves them, and the layers as kohya's --dim_from_weights leaves them: LyCORIS's
    create_network_from_weights on a tree of kohya's names, apply_to, then train_network.py's load_weights
    (for FullModule a second diff: W + 2 diff)."""
    torch.manual_seed(11)
    tensors, layers = {}, {}
    for (name, parts), (rank, alpha) in zip(_layers(_base_transformer()).items(), ranks):
        layers[name] = _copy(parts)
        own = options if name.endswith("x_embedder_proj") else linear
        if cls is FullModule:
            module = cls(name, copy.deepcopy(layers[name]), 1.0)
            module.apply_to()
            with torch.no_grad():
                for p in module.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
        else:
            module = cls(name, layers[name], 1.0, rank, alpha, **own)
            for p in module.parameters():
                torch.nn.init.normal_(p, std=0.2)
        tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
    file = tmp_path / "prev.safetensors"
    save_file(tensors, str(file))
    tree = nn.Module()
    tree.x_embedder = nn.Module()
    tree.x_embedder.proj = layers["lora_unet_x_embedder_proj"]
    tree.joint_blocks = nn.ModuleList([nn.Module()])
    tree.joint_blocks[0].x_block = nn.Module()
    tree.joint_blocks[0].x_block.attn = nn.Module()
    tree.joint_blocks[0].x_block.attn.qkv = layers["lora_unet_joint_blocks_0_x_block_attn_qkv"]
    network, _ = lycoris_kohya.create_network_from_weights(1.0, str(file), None, None, tree)
    want = [
        ("lora_unet_joint_blocks_0_x_block_attn_qkv", ranks[1][0]),
        ("lora_unet_x_embedder_proj", ranks[0][0]),
    ]
    if cls not in (FullModule, DiagOFTModule, ButterflyOFTModule):  # OFT's lora_dim: the block size
        assert sorted((m.lora_name, m.lora_dim) for m in network.unet_loras) == want
    assert all(type(m) is cls for m in network.unet_loras)
    network.apply_to(None, tree, apply_text_encoder=False, apply_unet=True)
    network.load_weights(str(file))
    return layers


def _converted(tmp_path):
    from tests.unit.convert_kit import component_file, errors, images, kohya, out_path

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l", "clip_g", "t5xxl"):
        component_file(tmp_path / f"{name}.safetensors")
    outcome = kohya(
        tmp_path,
        command="accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
        "stabilityai/stable-diffusion-3.5-large --clip_l clip_l.safetensors --clip_g clip_g.safetensors "
        "--t5xxl t5xxl.safetensors --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        "--network_dim=4 --network_alpha=1 --network_weights prev.safetensors --dim_from_weights "
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return out_path(tmp_path)


@pytest.mark.parametrize(("cls", "ranks", "options", "linear"), CASES)
def test_patch_convolution_starts_where_lycoris_rebuilds_it(tmp_path, cls, ranks, options, linear):
    layers = _file(tmp_path, cls, ranks, options, linear)
    plan = compile_spec(_converted(tmp_path), RUN)
    a = plan.adapter
    assert a.conv_targets == ("pos_embed.proj",)
    if cls is FullModule:
        assert (a.kind, a.init_scale) == ("full", 2.0)
    else:
        assert (a.conv_rank, a.conv_alpha, a.tucker) == (*ranks[0], "use_tucker" in options)
        assert a.dora == ("weight_decompose" in options and "weight_decompose" in linear)
        if ("weight_decompose" in options) != ("weight_decompose" in linear):  # some modules only
            own = [b for b in a.blocks if b.dora == "on"]
            assert len(own) == 1 and bool(own[0].conv_rank) == ("weight_decompose" in options)
    comps, count = _loaded(plan)
    assert count == 2
    for name, parts in _layers(comps.unet.float().eval()).items():
        base = parts[0].base_layer
        x = torch.randn(2, base.in_channels, 8, 8) if isinstance(base, nn.Conv2d) else torch.randn(3, 16)
        with torch.no_grad():
            ours = torch.cat([p(x) for p in parts], dim=1 if x.dim() == 4 else -1)
            plain = torch.cat([p.base_layer(x) for p in parts], dim=1 if x.dim() == 4 else -1)
            assert not torch.allclose(ours, plain, atol=1e-3), name
            torch.testing.assert_close(ours, layers[name](x), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "case",
    [CASES[3], CASES[4], CASES[5], CASES[7], CASES[8], CASES[9], *ROTATIONS],
    ids=["locon-tucker", "locon-dora", "lokr-dora", "full", "lokr-patch-dora", "loha-qkv-dora"]
    + ["diag-oft", "boft", "glora"],
)
def test_patch_convolution_from_the_file_trains_resumes_and_exports(tmp_path, case):
    """Runs started from a file with the patch convolution's LoCon in its Tucker form (`lora_mid`), with
    `dora_scale` on every module (LoCon; LoKr with the Tucker form) or a full file: 2 steps resume
    bit-exact, and the export's patch convolution module is what lycoris-lora's module (built as
    make_module_from_state_dict builds it) loads, computing the trained layer."""
    cls, ranks, options, linear = case
    _file(tmp_path, cls, ranks, options, linear)
    spec = _converted(tmp_path)
    plan, whole = spec_whole_and_resumed(spec, [*RUN, "checkpoints.every=1"], tmp_path)
    tensors = load_file(str(Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    name = "lora_unet_x_embedder_proj"
    own = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
    layer = whole.components.unet.float().eval().pos_embed.proj
    base = copy.deepcopy(layer.get_base_layer())
    if cls is FullModule:  # its load hook adds the file's diff to the copy of W (lycoris.kohya's load)
        assert set(own) == {"diff", "diff_b"}
        module = cls(name, base, 1.0)
        module.apply_to()
        module.load_state_dict(own, strict=False)
    else:
        module = cls(name, base, 1.0, ranks[0][0], own["alpha"].item(), **options)
        module.load_state_dict(own)
        module.apply_to()
        if "weight_decompose" in options:
            assert own["dora_scale"].shape == (base.out_channels, 1, 1, 1)
        else:
            assert "dora_scale" not in own
    x = torch.randn(2, base.in_channels, 8, 8)
    with torch.no_grad():
        trained = layer(x)
        assert not torch.allclose(trained, layer.get_base_layer()(x), atol=1e-4)
        torch.testing.assert_close(module.eval()(x), trained, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("cls", "ranks", "options", "linear"), ROTATIONS, ids=["diag-oft", "boft", "glora"])
def test_rotation_and_glora_patch_convolution_starts_where_lycoris_rebuilds_it(
    tmp_path, cls, ranks, options, linear
):
    layers = _file(tmp_path, cls, ranks, options, linear)
    plan = compile_spec(_converted(tmp_path), RUN)
    a = plan.adapter
    assert a.conv_targets == ("pos_embed.proj",) and len(a.fused) == 1
    if cls is GLoRAModule:
        assert (a.kind, a.rank, a.alpha, a.conv_rank, a.conv_alpha) == ("glora", 3, 1.5, 2, 1.0)
    else:  # the patch convolution's block: its own block size (rank), constraint (alpha) and rescale
        (block,) = a.blocks
        size = load_file(str(tmp_path / "prev.safetensors"))["lora_unet_x_embedder_proj.oft_blocks"].shape[-1]
        assert block.pattern == r"^pos_embed\.proj$" and block.conv_rank == size != a.oft_block_size
        assert block.conv_alpha == pytest.approx(0.05)
    comps, count = _loaded(plan)
    assert count == 2
    for name, parts in _layers(comps.unet.float().eval()).items():
        base = parts[0].base_layer
        x = torch.randn(2, base.in_channels, 8, 8) if isinstance(base, nn.Conv2d) else torch.randn(3, 16)
        with torch.no_grad():
            ours = torch.cat([p(x) for p in parts], dim=1 if x.dim() == 4 else -1)
            plain = torch.cat([p.base_layer(x) for p in parts], dim=1 if x.dim() == 4 else -1)
            assert not torch.allclose(ours, plain, atol=1e-3), name
            torch.testing.assert_close(ours, layers[name](x), rtol=0, atol=1e-5)
