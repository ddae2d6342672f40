"""lycoris.kohya --dim_from_weights on SD3 with SD3's patch convolution in the file (issue 12): lycoris-lora
4.1.3 writes LoConModules on tiny-sd3's patch convolution and fused x-block q/k/v (kohya's MMDiT layers) and
rebuilds them with create_network_from_weights on a tree of kohya's names; the converted run (conv_targets
pos_embed.proj at the file's rank and alpha) starts both layers at LyCORIS's outputs; so do LokrModules /
LohaModules there in LyCORIS's Tucker form (`lokr_t2`, `hada_t1` / `hada_t2`: tucker = true)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.runtime.runspec import compile_spec
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_flux import _fused_linear

lycoris_kohya = pytest.importorskip("lycoris.kohya")
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


# (class, (rank, alpha) of the patch convolution's module and the q/k/v's, the patch's options)
CASES = [
    (LoConModule, ((2, 1.0), (3, 1.5)), {}),
    (LokrModule, ((1, 0.5), (1, 1.5)), {"use_tucker": True, "decompose_both": True}),
    (LohaModule, ((2, 1.0), (3, 1.5)), {"use_tucker": True}),
]


@pytest.mark.parametrize(("cls", "ranks", "options"), CASES)
def test_patch_convolution_starts_where_lycoris_rebuilds_it(tmp_path, cls, ranks, options):
    from dbspec.runtime.tiny import build_pipeline
    from tests.unit.convert_kit import component_file, errors, images, kohya, out_path

    torch.manual_seed(11)
    tensors, layers = {}, {}
    for (name, parts), (rank, alpha) in zip(
        _layers(build_pipeline("builtin:tiny-sd3").transformer.float()).items(), ranks
    ):
        layers[name] = _copy(parts)
        own = options if name.endswith("x_embedder_proj") else {"decompose_both": True} if options else {}
        module = cls(name, layers[name], 1.0, rank, alpha, **own)
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.2)
        tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    tree = nn.Module()
    tree.x_embedder = nn.Module()
    tree.x_embedder.proj = layers["lora_unet_x_embedder_proj"]
    tree.joint_blocks = nn.ModuleList([nn.Module()])
    tree.joint_blocks[0].x_block = nn.Module()
    tree.joint_blocks[0].x_block.attn = nn.Module()
    tree.joint_blocks[0].x_block.attn.qkv = layers["lora_unet_joint_blocks_0_x_block_attn_qkv"]
    network, _ = lycoris_kohya.create_network_from_weights(
        1.0, str(tmp_path / "prev.safetensors"), None, None, tree
    )
    assert sorted((m.lora_name, m.lora_dim, type(m)) for m in network.unet_loras) == [
        ("lora_unet_joint_blocks_0_x_block_attn_qkv", ranks[1][0], cls),
        ("lora_unet_x_embedder_proj", ranks[0][0], cls),
    ]
    for module in network.unet_loras:
        module.apply_to()

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
    plan = compile_spec(out_path(tmp_path), RUN)
    a = plan.adapter
    assert (a.conv_rank, a.conv_alpha, a.conv_targets, a.tucker) == (
        *ranks[0],
        ("pos_embed.proj",),
        bool(options),
    )
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
