"""kohya's networks.oft_flux on Chroma (flux_train_network.py --model_type chroma): OFTNetwork picks its
modules by class (SelfAttention; with enable_all_linear DoubleStreamBlock and SingleStreamBlock), which
library/chroma_models.py's Chroma has as Flux's without the modulation Linears, and splits the fused qkv /
linear1 rows as on Flux. The spec the converter writes for `enable_all_linear` trains on tiny-chroma,
resumes bit-exact, and its kohya_lora export is networks.oft_flux's file on Chroma's modules (no mod_lin),
each fused layer's entry kohya's OFTModule formula per part on the stacked weights, and starts a run from
its blocks. (A scratch run built kohya's oft_flux network on kohya's full-size Chroma on the meta device:
its module names and splits equal the layers the converted plans adapt, both target sets.)"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dbspec.families import family_spec
from tests.runtime.runspec import compile_spec, whole_and_resumed, write_spec
from tests.runtime.test_kohya_oft_flux import _kohya_fused

BASE = "builtin:tiny-chroma"
# what the converter writes for `--model_type chroma --network_args enable_all_linear=True` (network_dim
# 4, network_alpha 0.05) on tiny-chroma's one single block (the final layer's Linear shares proj_out)
TARGETS = [t for t in family_spec("chroma").kohya_lora_targets if t != "proj_out"]
SPEC = (
    '[adapter]\nkind = "diag-oft"\nform = "kohya"\nblock_count = 4\nconstraint = 0.05\ndenoiser_targets = ['
    + ", ".join(f'"{t}"' for t in [*TARGETS, "single_transformer_blocks.0.proj_out"])
    + ']\n\n[checkpoints]\nevery = 2\nexports = ["kohya_lora"]\n'
)


def test_chroma_all_linear_trains_resumes_and_exports_kohyas_oft_flux_file(tmp_path):
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=3, extra=SPEC)
    assert (plan.model.family, plan.adapter.oft_form, plan.adapter.fused) == ("chroma", "kohya", ())
    transformer = whole.components.unet.float().eval()
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    with safe_open(str(export), "pt") as handle:
        metadata = handle.metadata()
    assert (metadata["ss_network_module"], metadata["ss_base_model_version"]) == (
        "networks.oft_flux",
        "chroma",
    )
    assert json.loads(metadata["ss_network_args"]) == {"enable_all_linear": "True"}
    tensors = load_file(str(export))
    double = [f"{s}_{n}" for s in ("img", "txt") for n in ("attn_qkv", "attn_proj", "mlp_0", "mlp_2")]
    modules = [f"double_blocks_0_{n}" for n in double] + [
        "single_blocks_0_linear1",
        "single_blocks_0_linear2",
    ]
    splits = {
        "double_blocks_0_img_attn_qkv": 3,
        "double_blocks_0_txt_attn_qkv": 3,
        "single_blocks_0_linear1": 4,
    }
    expected = {f"oft_unet_{m}.alpha" for m in modules}
    expected |= {f"oft_unet_{m}.oft_blocks.{i}" for m in modules for i in range(splits.get(m, 1))}
    assert set(tensors) == expected  # Chroma's blocks: no modulation Linear, no final layer

    attn, single = transformer.transformer_blocks[0].attn, transformer.single_transformer_blocks[0]
    torch.manual_seed(0)
    x = torch.randn(3, attn.to_q.base_layer.in_features)
    for name, layer_parts in (
        ("oft_unet_double_blocks_0_img_attn_qkv", (attn.to_q, attn.to_k, attn.to_v)),
        (
            "oft_unet_single_blocks_0_linear1",
            (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp),
        ),
    ):
        with torch.no_grad():
            trained = torch.cat([p(x) for p in layer_parts], dim=-1)
            plain = torch.cat([p.base_layer(x) for p in layer_parts], dim=-1)
            theirs = _kohya_fused(tensors, name, layer_parts, x)
        assert not torch.equal(trained, plain), name  # the OFT trained
        torch.testing.assert_close(theirs, trained.double(), rtol=0, atol=1e-5)

    # kohya --network_weights (OFTNetwork.load_weights): the export starts a run, each part its blocks
    from dbspec.runtime.adapters import add_lora
    from dbspec.runtime.flux_kohya import original_name
    from dbspec.runtime.init_weights import load_init_weights
    from dbspec.runtime.tiny import build_pipeline

    start = SPEC.replace("[checkpoints]", f'init_weights = "{export}"\n\n[checkpoints]')
    started = compile_spec(write_spec(tmp_path / "start", base=BASE, steps=4, extra=start))
    assert started.adapter.init_layers == len(modules)
    fresh = build_pipeline(BASE).transformer
    add_lora(fresh, started.adapter, started.adapter.denoiser_targets, seed=0, component="unet")
    assert load_init_weights(started, fresh, []) == len(expected) - len(modules)
    for path, layer in fresh.named_modules():
        if hasattr(layer, "lora_oft_blocks"):
            name, part = original_name(path)
            (value,) = layer.lora_oft_blocks.values()
            assert torch.equal(value, tensors[f"oft_unet_{name}.oft_blocks.{part or 0}"]), path
