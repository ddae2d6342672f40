"""LyCORIS Diag-OFT on the Linear kohya's Flux holds with its halves of rows the other way round (diffusers'
norm_out.linear, (scale, shift) where kohya's final_layer.adaLN_modulation.1 reads (shift, scale):
runtime/kohya_rows.py), split into an odd number of blocks (issue 12). DiagOFTModule's blocks follow
kohya's rows: with an even count they are diffusers' blocks, the halves' swapped, but with an odd count the
middle block spans the end of the shift rows and the start of the scale rows, which no block of diffusers'
rows is. dbspec rotated diffusers' blocks there and its export failed after training (the halves of 9 blocks
do not swap). Such a count needs a width 2 x (an odd number at least sqrt(2 x width)) x the block size:
FLUX.1's 6144 rows (2^11 x 3) and SD3 / SD3.5's (3072, 4864) have none, so a tiny Flux of width 36 (72
rows: dim 8 and up give 9 blocks of 8, dim 4 18 blocks of 4) stands in.

Layer by layer, no tiny run: the plan's denoiser as runtime/prepare.py builds it (trainable tensors moved at
random), its export loaded into lycoris-lora 4.1.3's create_network from the same preset on kohya's layers
(weights in kohya's rows); the swapped layer's DiagOFTModule against ours over six training forwards from one
generator state (outputs in kohya's rows, input gradients, generator state after; the blocks' and rescale's
gradients in the export's layout), for the default forward with rank dropout and the bypass forward. The odd
count's peft adapter loads back for sampling (runtime/weights.py) and LyCORIS's file starts a run
(init_weights), each computing the same layer."""

from __future__ import annotations

import copy
from pathlib import Path

import attrs
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model, mmdit, sd3_parts
from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_flow_rank_dropout_layers import FILES, FLUX, SD3, _prepared, _same_training
from tests.runtime.test_lycoris_mixed_flow_full import _base, _kohya_layers, _kohya_tree

lycoris_kohya = pytest.importorskip("lycoris.kohya")

FINAL = "final_layer.adaLN_modulation.1"
PRESET = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["final_layer.adaLN_modulation.1", "double_blocks.*.img_mod.lin"]
text_encoder_target_module = []
"""
SD3_LAST = "joint_blocks.1.context_block.adaLN_modulation.1"  # SD3's last context modulation, swapped too
SD3_PRESET = PRESET.replace("double_blocks.*.img_mod.lin", SD3_LAST)


@pytest.fixture(scope="module")
def wide() -> nn.Module:
    """The tiny Flux at width 36 (2 heads of 18): norm_out.linear has 72 rows."""
    tiny = build_pipeline("builtin:tiny-flux").transformer
    config = {k: v for k, v in tiny.config.items() if not k.startswith("_")}
    torch.manual_seed(0)
    return type(tiny)(**{**config, "attention_head_dim": 18, "axes_dims_rope": [2, 8, 8]}).float()


def _wide_sd3() -> nn.Module:
    """The tiny SD3 at width 36: its last context modulation and norm_out.linear have 72 rows."""
    tiny = build_pipeline("builtin:tiny-sd3").transformer
    config = {k: v for k, v in tiny.config.items() if not k.startswith("_")}
    torch.manual_seed(0)
    return type(tiny)(**{**config, "attention_head_dim": 18, "caption_projection_dim": 36}).float()


def _plan(tmp_path: Path, dim: int, args: dict[str, str], family: str = "flux"):
    """kohya's Flux (SD3) command with lycoris.kohya algo=diag-oft at network_dim `dim` and `args`, converted
    without refusal and planned on the tiny model."""
    from tests.unit.convert_kit import component_file, errors, images, kohya, plan_of

    sd3 = family == "sd3"
    (tmp_path / "p.toml").write_text(SD3_PRESET if sd3 else PRESET, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in FILES[family]:
        component_file(tmp_path / f"{name}.safetensors")
    network_args = " ".join(f'"{k}={v}"' for k, v in {"preset": "p.toml", **args}.items())
    outcome = kohya(
        tmp_path,
        command=f"{SD3 if sd3 else FLUX} --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        f"--network_dim={dim} --network_alpha=1 --network_args {network_args} --learning_rate=1e-2 "
        "--max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    base = [f"model.base=builtin:tiny-{family}", "model.text_encoder_files=[]", 'model.vae=""']
    return plan_of(outcome, tmp_path, base)


def _network(monkeypatch, dim: int, file: Path, tree: nn.Module, args: dict[str, str]):
    kept_lycoris_presets(monkeypatch)
    encoders = [nn.Module()] * 3
    made = lycoris_kohya.create_network(1.0, dim, 1.0, None, encoders, tree, preset=str(file), **args)
    made.apply_to(encoders, tree, apply_text_encoder=True, apply_unet=True)
    return made


def _output(layer: nn.Module, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return layer(x)[..., order]


@pytest.mark.parametrize(
    ("dim", "blocks", "args"),
    [
        (8, 9, {"rank_dropout": "0.3"}),  # 9 blocks of 8: the fifth spans rows 32..40, across row 36
        (8, 9, {"bypass_mode": "True"}),  # the output rotated in kohya's rows, its bias too
        (4, 18, {"rank_dropout": "0.3"}),  # 18 blocks of 4: kohya's are diffusers', the halves swapped
    ],
)
def test_swapped_modulation_oft_blocks_follow_kohyas_rows(tmp_path, monkeypatch, wide, dim, blocks, args):
    from dbspec.runtime.sd3_kohya import swapped

    args = {"algo": "diag-oft", "constraint": "0.5", "rescaled": "True", **args}
    plan = _plan(tmp_path, dim, args)
    assert (plan.adapter.kind, plan.adapter.oft_block_size) == ("diag-oft", dim)
    ours = _prepared(copy.deepcopy(wide), "unet", plan, plan.adapter.denoiser_targets)
    tensors = lycoris_state(unet=ours, text_encoders=[], family="flux", dtype="fp32")
    key = "lora_unet_" + FINAL.replace(".", "_")
    assert tensors[f"{key}.oft_blocks"].shape == (blocks, 72 // blocks, 72 // blocks)  # the export's layout
    layers = _kohya_layers(ours, flux_model(1, 1), diffusers_parts, swapped)
    made = _network(monkeypatch, dim, tmp_path / "p.toml", _kohya_tree(layers), args)
    result = made.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys and not result.missing_keys, result
    module = next(m for m in made.unet_loras if m.lora_name == key)
    assert module.oft_blocks.shape[0] == blocks
    (layer,), order = layers[FINAL]
    ours.train()

    def stacked(x):
        return layer(x)[..., order]

    x = torch.randn(3, _base(layer).in_features)
    moved = _same_training(module.train(), stacked, x, FINAL)
    assert moved == ("rank_dropout" in args)  # the rank dropout's masks move on; the bypass draws none
    # the trained tensors' gradients, ours in the export's layout (an even count's halves swapped)
    grad = layer.lora_oft_blocks["default"].grad
    grad = grad if blocks % 2 else grad.roll(blocks // 2, dims=0)
    torch.testing.assert_close(grad, module.oft_blocks.grad, rtol=1e-4, atol=1e-6)
    rescale = layer.lora_oft_rescale["default"].grad
    torch.testing.assert_close(rescale[order], module.rescale.grad, rtol=1e-4, atol=1e-6)
    if blocks % 2 and "rank_dropout" in args:
        _loads_back(tmp_path, wide, plan, ours, layer, order, made)


def _loads_back(tmp_path: Path, wide: nn.Module, plan, ours: nn.Module, layer, order, made) -> None:
    """The trained odd count loads back for sampling (peft's folder: runtime/weights.py marks the swapped
    rows), and LyCORIS's file (the trained module's state) starts a run (init_weights) on a fresh model:
    each computes the trained layer's output."""
    from dbspec.runtime.lycoris_init import load_fused_lycoris_init
    from dbspec.runtime.lycoris_whole_init import whole_layer_slots
    from dbspec.runtime.weights import load_peft_adapters, save_peft_adapters

    x = torch.randn(3, _base(layer).in_features)
    want = _output(layer.eval(), x, order)
    assert not torch.allclose(want, _output(_base(layer), x, order), atol=1e-6)  # the blocks rotate
    save_peft_adapters(tmp_path / "saved", {"unet": ours}, "fp32")
    sampled = copy.deepcopy(wide)
    load_peft_adapters(tmp_path / "saved", {"unet": sampled}, bypass=plan.adapter.bypass)
    torch.testing.assert_close(_output(sampled.norm_out.linear.eval(), x, order), want, rtol=0, atol=1e-6)

    file = tmp_path / "lycoris.safetensors"
    save_file({k: v.detach().contiguous() for k, v in made.state_dict().items()}, str(file))
    started = attrs.evolve(plan, adapter=attrs.evolve(plan.adapter, init_weights=str(file)))
    fresh = _prepared(copy.deepcopy(wide), "unet", plan, plan.adapter.denoiser_targets)
    assert load_fused_lycoris_init(started, fresh, [], whole_layer_slots(started, fresh, [])) == 2
    torch.testing.assert_close(_output(fresh.norm_out.linear.eval(), x, order), want, rtol=0, atol=1e-6)


def test_sd3_swapped_modulations_oft_blocks_follow_kohyas_rows(tmp_path, monkeypatch):
    """SD3's last context modulation and final modulation (both swapped, runtime/sd3_kohya.py) at 9 blocks
    of 8 with rank dropout: each layer's DiagOFTModule on kohya's layer against ours, outputs, input and
    block gradients, generator state."""
    from dbspec.runtime.sd3_kohya import swapped

    args = {"algo": "diag-oft", "constraint": "0.5", "rescaled": "True", "rank_dropout": "0.3"}
    plan = _plan(tmp_path, 8, args, "sd3")
    ours = _prepared(_wide_sd3(), "unet", plan, plan.adapter.denoiser_targets)
    tensors = lycoris_state(unet=ours, text_encoders=[], family="sd3", dtype="fp32")
    layers = _kohya_layers(ours, mmdit(2, ()), sd3_parts, swapped)
    made = _network(monkeypatch, 8, tmp_path / "p.toml", _kohya_tree(layers), args)
    result = made.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys and not result.missing_keys, result
    theirs = {m.lora_name: m for m in made.unet_loras}
    ours.train()
    for path in (SD3_LAST, FINAL):
        (layer,), order = layers[path]
        module = theirs["lora_unet_" + path.replace(".", "_")]
        assert module.oft_blocks.shape[0] == 9 and order is not None, path

        def stacked(x, layer=layer, order=order):
            return layer(x)[..., order]

        assert _same_training(module.train(), stacked, torch.randn(3, _base(layer).in_features), path)
        grad = layer.lora_oft_blocks["default"].grad
        torch.testing.assert_close(grad, module.oft_blocks.grad, rtol=1e-4, atol=1e-6, msg=path)
