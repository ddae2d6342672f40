"""kohya's networks.oft_flux (convert/kohya/oft_flux.py: Diag-OFT's kohya form on diffusers' Flux, each fused
layer's parts rotated on their own): the spec the converter writes for `enable_all_linear` trains on
tiny-flux, resumes bit-exact, and its kohya_lora export is kohya's networks.oft_flux file
(`oft_unet_<Flux name>.oft_blocks.<part>`, `.alpha`; runtime/flux_oft.py). Applied by kohya's OFTModule
formula, written out here in float64 (tests/runtime/test_kohya_oft.py kohya_weight) on each fused Linear of
the original model (the parts' base weights stacked, as kohya's Flux holds them), one rotation per part with
its own constraint (split_dims) and the bias unrotated, the file gives the trained parts' outputs. (A scratch
run of kohya's own networks/oft_flux.py create_network_from_weights + load_state_dict on kohya's
library/flux_models.py Flux, its 3072-wide split_dims patched to the tiny widths, reproduced the trained
transformer's output exactly, both target sets; its create_network built the file's keys and shapes.)"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dbspec.families import family_spec
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec, write_spec
from tests.runtime.test_kohya_oft import kohya_weight

BASE = "builtin:tiny-flux"
# what the converter writes for `--network_args enable_all_linear=True` (network_dim 4, network_alpha 0.05),
# with tiny-flux's one single block's proj_out (the final layer's Linear shares the name)
TARGETS = [t for t in family_spec("flux").kohya_lora_targets if t != "proj_out"]
SPEC = (
    '[adapter]\nkind = "diag-oft"\nform = "kohya"\nblock_count = 4\nconstraint = 0.05\ndenoiser_targets = ['
    + ", ".join(f'"{t}"' for t in [*TARGETS, "single_transformer_blocks.0.proj_out"])
    + ']\n\n[checkpoints]\nevery = 2\nexports = ["kohya_lora"]\n'
)


def _plan(tmp: Path):
    return compile_spec(write_spec(tmp, base=BASE, steps=4, extra=SPEC), ["optimizer.lr=1e-2"])


def _kohya_fused(tensors, name: str, parts, x: torch.Tensor) -> torch.Tensor:
    """kohya's OFTModule.forward on the fused Linear: per part (split_dims) R^T W of its rows, its bias."""
    alpha = float(tensors[f"{name}.alpha"])
    outputs = []
    for index, part in enumerate(parts):
        base = part.base_layer
        weight = kohya_weight(tensors[f"{name}.oft_blocks.{index}"], base.weight, alpha)
        outputs.append(torch.nn.functional.linear(x.double(), weight, base.bias.double()))
    return torch.cat(outputs, dim=-1)


def test_all_linear_trains_resumes_bit_exact_and_exports_kohyas_oft_flux_file(tmp_path):
    plan = _plan(tmp_path / "whole")
    assert (plan.adapter.oft_form, plan.adapter.oft_blocks, plan.adapter.fused) == ("kohya", 4, ())
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished"
    parts_plan = _plan(tmp_path / "parts")
    first = execute(parts_plan, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(parts_plan, resume=True, keep_models=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    transformer = whole.components.unet.float().eval()
    ours = dict(transformer.named_parameters())
    for name, p in second.components.unet.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, ours[name]), name

    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    with safe_open(str(export), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_network_module"] == "networks.oft_flux"
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("4", "0.05")
    assert json.loads(metadata["ss_network_args"]) == {"enable_all_linear": "True"}
    tensors = load_file(str(export))
    double = [f"img_{n}" for n in ("mod_lin", "attn_qkv", "attn_proj", "mlp_0", "mlp_2")]
    double += [n.replace("img_", "txt_") for n in double]
    modules = [f"double_blocks_0_{n}" for n in double]
    modules += [f"single_blocks_0_{n}" for n in ("linear1", "linear2", "modulation_lin")]
    splits = {
        "double_blocks_0_img_attn_qkv": 3,
        "double_blocks_0_txt_attn_qkv": 3,
        "single_blocks_0_linear1": 4,
    }
    expected = {f"oft_unet_{m}.alpha" for m in modules}
    expected |= {f"oft_unet_{m}.oft_blocks.{i}" for m in modules for i in range(splits.get(m, 1))}
    assert set(tensors) == expected  # OFTNetwork's state dict: a ParameterList per module, no final layer

    double_block, single = transformer.transformer_blocks[0], transformer.single_transformer_blocks[0]
    attn = double_block.attn
    torch.manual_seed(0)
    x = torch.randn(3, attn.to_q.base_layer.in_features)
    for name, layer_parts in (
        ("oft_unet_double_blocks_0_img_attn_qkv", (attn.to_q, attn.to_k, attn.to_v)),
        ("oft_unet_double_blocks_0_txt_attn_qkv", (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)),
        ("oft_unet_double_blocks_0_img_mod_lin", (double_block.norm1.linear,)),
        (
            "oft_unet_single_blocks_0_linear1",
            (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp),
        ),
    ):
        with torch.no_grad():
            trained = torch.cat([p(x) for p in layer_parts], dim=-1)
            plain = torch.cat([p.base_layer(x) for p in layer_parts], dim=-1)
            theirs = _kohya_fused(tensors, name, layer_parts, x)
        assert not torch.allclose(trained, plain, atol=1e-5), name  # the OFT trained
        torch.testing.assert_close(theirs, trained.double(), rtol=0, atol=1e-5)

    # the export starts a run (kohya --network_weights: OFTNetwork.load_weights, strict=False):
    # each part's blocks from its `oft_blocks.<part>`; a module the file lacks keeps its zero blocks
    from safetensors.torch import save_file

    from dbspec.runtime.adapters import add_lora
    from dbspec.runtime.flux_kohya import original_name
    from dbspec.runtime.init_weights import load_init_weights
    from dbspec.runtime.tiny import build_pipeline

    dropped = "oft_unet_single_blocks_0_linear1"
    save_file(
        {k: v for k, v in tensors.items() if not k.startswith(dropped)}, str(tmp_path / "start.safetensors")
    )
    start = SPEC.replace(
        "[checkpoints]",
        f'init_weights = "{tmp_path / "start.safetensors"}"\ninit_partial = true\n\n[checkpoints]',
    )
    started = compile_spec(write_spec(tmp_path / "start", base=BASE, steps=4, extra=start))
    assert started.adapter.init_layers == len(modules) - 1
    fresh = build_pipeline(BASE).transformer
    add_lora(fresh, started.adapter, started.adapter.denoiser_targets, seed=0, component="unet")
    assert load_init_weights(started, fresh, []) == len(expected) - len(modules) - 4  # linear1's 4 parts
    for path, layer in fresh.named_modules():
        if hasattr(layer, "lora_oft_blocks"):
            name, part = original_name(path)
            (value,) = layer.lora_oft_blocks.values()
            if name == dropped.removeprefix("oft_unet_"):
                assert not value.any(), path
            else:
                assert torch.equal(value, tensors[f"oft_unet_{name}.oft_blocks.{part or 0}"]), path
