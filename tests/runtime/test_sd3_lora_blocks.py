"""diffusers' train_dreambooth_lora_sd3.py --lora_blocks / --lora_layers converted (dbspec/convert/diffusers/
flow.py): dbspec's LoRA lands on exactly the modules the script's LoraConfig targets, on SD3.5 large's layout
(built on the meta device, peft's own matching) and in a tiny SD3 run's prepared transformer (the script's
own add_adapter call on the same model)."""

from __future__ import annotations

import torch
from diffusers import SD3Transformer2DModel
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import check_target_module_exists

from dbspec.runtime.adapters import lora_config
from dbspec.runtime.families import family_runtime
from dbspec.runtime.prepare import configure_models
from dbspec.runtime.tiny import build_pipeline
from tests.bench.real_models import SD35L
from tests.runtime.runspec import compile_spec
from tests.unit.convert_kit import (  # noqa: F401
    diffusers,
    empty_hub_cache,
    errors,
    images,
    out_path,
    plan_of,
    sd3_script_targets,
)

README = (
    '--instance_data_dir=dog --output_dir=out --instance_prompt="a photo of sks dog" --train_batch_size=1 '
    "--max_train_steps=2 --mixed_precision=bf16"
)


def _matched(model: torch.nn.Module, config) -> set[str]:
    """The Linears peft's LoraConfig matching adapts in `model` (what inject_adapter_in_model walks)."""
    return {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and check_target_module_exists(config, name)
    }


def _convert(tmp_path, base: str, flags: str, resolution: int):
    images(tmp_path / "dog", 2, (resolution, resolution))
    return diffusers(
        tmp_path,
        f"accelerate launch train_dreambooth_lora_sd3.py --pretrained_model_name_or_path={base} "
        f"--resolution={resolution} {flags} {README}",
    )


# (--lora_layers, --lora_blocks): README_sd3.md's leaner layers; block 37's context stream is pre-only
CASES = [
    (None, "12,30"),
    ("attn.to_k,attn.to_q,attn.to_v,attn.to_out.0", "12,13,30"),
    ("ff.net.2,ff_context.net.2,attn.to_add_out", "36,37"),
]


def test_sd35_large_layout_adapts_the_scripts_modules(tmp_path):
    with torch.device("meta"):
        model = SD3Transformer2DModel(**SD35L)
    for i, (layers, blocks) in enumerate(CASES):
        given = (f"--lora_layers={layers} " if layers else "") + f'--lora_blocks "{blocks}"'
        outcome = _convert(tmp_path / str(i), "stabilityai/stable-diffusion-3.5-large", given, 512)
        plan = plan_of(outcome, tmp_path / str(i))
        ours = _matched(model, lora_config(plan.adapter, plan.adapter.denoiser_targets))
        script = LoraConfig(r=4, lora_alpha=4, target_modules=sd3_script_targets(layers, blocks))
        theirs = _matched(model, script)
        assert ours == theirs and {n.split(".")[1] for n in ours} == set(blocks.split(",")), (layers, blocks)
    # the pre-only last block has neither to_add_out nor ff_context: in both, block 37 adapts ff.net.2 alone
    assert {n for n in ours if ".37." in n} == {"transformer_blocks.37.ff.net.2"}


def test_tiny_sd3_run_adapts_the_modules_the_scripts_add_adapter_does(tmp_path):
    """The prepared transformer of a run (runtime/prepare.py) against the script's own LoraConfig and
    add_adapter on the same tiny model: block 1 of 2, the pre-only one, with the default layers."""
    outcome = _convert(tmp_path, "builtin:tiny-sd3", "--lora_blocks 1", 64)
    assert outcome.written, errors(outcome)
    plan = compile_spec(out_path(tmp_path))
    comps = family_runtime("sd3").load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    ours = {n for n, m in comps.unet.named_modules() if isinstance(m, LoraLayer)}

    transformer = build_pipeline("builtin:tiny-sd3").transformer
    transformer.add_adapter(  # train_dreambooth_lora_sd3.py's call, its target_modules from its rule
        LoraConfig(
            r=4,
            lora_alpha=4,
            lora_dropout=0.0,
            init_lora_weights="gaussian",
            target_modules=sd3_script_targets(None, "1"),
        )
    )
    theirs = {n for n, m in transformer.named_modules() if isinstance(m, LoraLayer)}
    assert ours == theirs
    assert "transformer_blocks.1.attn.to_q" in ours and not any(".0." in n for n in ours)
