"""SD3 with kohya's networks.lora_sd3 targets and shared down-projections (adapter.fused_projections): a tiny
SD3 run adapts every Linear of its joint blocks and, as lora_sd3's emb_dims x value does, the patch
convolution (exported as kohya's `lora_unet_x_embedder_proj`), and nothing else, and each block's q/k/v (image
and context streams) keep one lora_A through training.

Both tests read one tiny run (`kohya_run`, with the text encoders trained and kohya's export: the denoiser's
targets and ties are the same with or without them); each test trained its own before."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer

from dbspec.families import family_spec
from dbspec.runtime.execute import execute
from tests.runtime.runspec import make_plan

_TARGETS = ", ".join(f'"{t}"' for t in family_spec("sd3").kohya_lora_targets)
KOHYA = (
    '[adapter]\nkind = "lora"\nrank = 4\nalpha = 2\nfused_projections = true\n'
    f"denoiser_targets = [{_TARGETS}]\n"
    # lora_sd3's emb_dims x rank 3 at network_alpha 2: its LoRAModule on the patch convolution (converted so)
    'conv_targets = ["pos_embed.proj"]\nconv_rank = 3\nconv_alpha = 2\n'
)


@pytest.fixture(scope="module")
def kohya_run(tmp_path_factory):
    """A 2-step tiny SD3 run with KOHYA's targets, the text encoders trained and kohya's LoRA export: its
    plan and result (models kept)."""
    extra = KOHYA + '\n[train]\ntext_encoder = true\n\n[checkpoints]\nexports = ["kohya_lora"]\n'
    plan = make_plan(tmp_path_factory.mktemp("sd3-kohya"), base="builtin:tiny-sd3", steps=2, extra=extra)
    result = execute(plan, keep_models=True)
    assert result.status == "finished"
    return plan, result


def test_tiny_sd3_trains_kohyas_targets_with_one_down_per_fused_qkv(kohya_run):
    _, result = kohya_run
    transformer = result.components.unet
    base = {n.removesuffix(".base_layer") for n, m in transformer.named_modules()
            if type(m) is torch.nn.Linear and ".lora_" not in n}  # fmt: skip
    adapted = {n for n, m in transformer.named_modules() if isinstance(m, LoraLayer)}
    assert adapted == {n for n in base if n.startswith("transformer_blocks.")} | {"pos_embed.proj"}
    patch = transformer.pos_embed.proj
    assert patch.lora_A["default"].weight.shape[1:] == (
        patch.base_layer.in_channels,
        *patch.base_layer.kernel_size,
    )
    assert patch.lora_B["default"].weight.any()  # the patch convolution's LoRA trains
    for block in transformer.transformer_blocks:
        a = block.attn
        assert a.to_k.lora_A["default"].weight is a.to_q.lora_A["default"].weight
        assert a.add_v_proj.lora_A["default"].weight is a.add_q_proj.lora_A["default"].weight
        assert not torch.equal(
            a.to_q.lora_B["default"].weight, torch.zeros_like(a.to_q.lora_B["default"].weight)
        )


def _delta(layer) -> torch.Tensor:
    """A peft LoRA layer's weight update: scaling * B @ A."""
    return layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight


def test_tiny_sd3_kohya_export_is_lora_sd3s_layout(kohya_run):
    """kohya's networks/lora_sd3.py names (joint_blocks_{i}_{x|context}_block_...), the fused q/k/v's shared
    down written once with the ups stacked, every layer's update alpha / rows(down) * up @ down equal to the
    trained update (the last block's context modulation and nothing else swapped: (scale, shift) ->
    (shift, scale)), and kohya's model type as ss_base_model_version."""
    from safetensors import safe_open

    plan, result = kohya_run
    transformer = result.components.unet
    path = f"{result.final}/{plan.checkpoints.name}.kohya.safetensors"
    with safe_open(path, "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata()
    assert metadata["ss_network_module"] == "networks.lora_sd3"
    config = transformer.config
    assert metadata["ss_base_model_version"] == (
        ("5-medium" if config.dual_attention_layers else "5-large") if config.qk_norm else "medium"
    )

    def update(name: str) -> torch.Tensor:
        down, up = tensors[f"lora_unet_{name}.lora_down.weight"], tensors[f"lora_unet_{name}.lora_up.weight"]
        return tensors[f"lora_unet_{name}.alpha"] / down.shape[0] * up.float() @ down.float()

    last = len(transformer.transformer_blocks) - 1
    with torch.no_grad():
        for i, block in enumerate(transformer.transformer_blocks):
            a = block.attn
            qkv = torch.cat([_delta(a.to_q), _delta(a.to_k), _delta(a.to_v)])
            torch.testing.assert_close(update(f"joint_blocks_{i}_x_block_attn_qkv"), qkv, rtol=0, atol=1e-6)
            assert tensors[f"lora_unet_joint_blocks_{i}_x_block_attn_qkv.lora_down.weight"].shape[0] == 4
            ctx = torch.cat([_delta(a.add_q_proj), _delta(a.add_k_proj), _delta(a.add_v_proj)])
            torch.testing.assert_close(
                update(f"joint_blocks_{i}_context_block_attn_qkv"), ctx, rtol=0, atol=1e-6
            )
            fc1 = _delta(block.ff.net[0].proj)
            torch.testing.assert_close(update(f"joint_blocks_{i}_x_block_mlp_fc1"), fc1, rtol=0, atol=1e-6)
            mod = _delta(block.norm1_context.linear)
            if i == last:  # AdaLayerNormContinuous: diffusers (scale, shift), the original (shift, scale)
                mod = torch.cat(mod.chunk(2)[::-1])
            torch.testing.assert_close(update(f"joint_blocks_{i}_context_block_adaLN_modulation_1"), mod,
                                       rtol=0, atol=1e-6)  # fmt: skip
    _check_patch(tensors, transformer.float().eval().pos_embed.proj)
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_") for k in tensors)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_0_") for k in tensors)


def _check_patch(tensors: dict, layer) -> None:
    """kohya's lora_sd3 module on the x embedder (emb_dims' x value): `lora_unet_x_embedder_proj`, a
    lora_down Conv2d of the patch kernel and stride, a 1x1 lora_up, its alpha; LoRAModule.forward
    (networks/lora_flux.py: org_forward(x) + lora_up(lora_down(x)) x alpha / rank) on the exported tensors
    is the trained layer."""
    name = "lora_unet_x_embedder_proj"
    down, up = tensors[f"{name}.lora_down.weight"].float(), tensors[f"{name}.lora_up.weight"].float()
    base = layer.base_layer
    assert tuple(down.shape) == (3, base.in_channels, *base.kernel_size)
    assert tuple(up.shape) == (base.out_channels, 3, 1, 1) and float(tensors[f"{name}.alpha"]) == 2.0
    x = torch.randn(2, base.in_channels, 8, 8)
    with torch.no_grad():
        lx = torch.nn.functional.conv2d(x, down, stride=base.stride, padding=base.padding)
        theirs = base(x) + torch.nn.functional.conv2d(lx, up) * 2.0 / 3
        assert not torch.allclose(layer(x), base(x), atol=1e-6)  # it trained
        torch.testing.assert_close(theirs, layer(x), rtol=0, atol=1e-5)
