"""kohya's per-module ranks on Chroma (flux_train_network.py --model_type chroma, networks.lora_flux): a
command with in_dims, network_reg_dims and network_reg_lrs converts, and its [adapter] trains tiny Chroma
(1 double and 1 single block) with kohya's module set, exported under kohya's names at kohya's ranks; that
export, given back as --network_weights with --dim_from_weights, converts to blocks at the file's ranks and
starts a run whose LoRAs are the file's (runtime/flow_init.py reads Chroma's file as Flux's layout)."""

from __future__ import annotations

import shlex
from pathlib import Path

import torch
from safetensors.torch import load_file

from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec, write_spec
from tests.runtime.test_flow_init import _loaded
from tests.unit.convert_kit import component_file, errors, images, kohya, out_path

COMMAND = (
    "accelerate launch flux_train_network.py --pretrained_model_name_or_path Chroma1-HD.safetensors "
    "--model_type chroma --t5xxl t5xxl_fp16.safetensors --ae ae.safetensors --train_data_dir x "
    "--resolution 512 --output_dir out --output_name c --save_model_as safetensors --seed 42 "
    "--mixed_precision bf16 --network_module networks.lora_flux --network_dim 16 --network_alpha 8 "
    "--optimizer_type adamw --learning_rate 1e-3 --apply_t5_attn_mask --guidance_scale 0.0 "
    "--timestep_sampling sigmoid --model_prediction_type raw --max_train_steps 100 "
    "--network_train_unet_only --cache_text_encoder_outputs "
)
ARGS = (
    "in_dims=[4,0,0,0,3]",  # img_in 4, txt_in 3 (Chroma has no time_in, vector_in, guidance_in)
    "network_reg_dims=single_blocks_0_=2,txt_in=6,img_mlp=0",  # txt_in: the regex wins over in_dims
    "network_reg_lrs=double_blocks_0_img=3e-3",
)
# kohya's LoRANetwork on tiny Chroma with ARGS: name -> rank (kohya_side.py in the scratch check)
KOHYA_RANKS = {
    "lora_unet_double_blocks_0_img_attn_qkv": 16,
    "lora_unet_double_blocks_0_img_attn_proj": 16,
    "lora_unet_double_blocks_0_txt_attn_qkv": 16,
    "lora_unet_double_blocks_0_txt_attn_proj": 16,
    "lora_unet_double_blocks_0_txt_mlp_0": 16,
    "lora_unet_double_blocks_0_txt_mlp_2": 16,
    "lora_unet_single_blocks_0_linear1": 2,
    "lora_unet_single_blocks_0_linear2": 2,
    "lora_unet_img_in": 4,
    "lora_unet_txt_in": 6,
}


def _adapter(tmp_path: Path, command: str) -> str:
    """The [adapter] tables of the spec `dbspec convert kohya` writes for `command`."""
    images(tmp_path / "x" / "10_ohwx dog", 1, (512, 512))
    for name in ("Chroma1-HD.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(tmp_path, command=command)
    assert outcome.written, errors(outcome)
    lines = out_path(tmp_path).read_text().splitlines()
    start = lines.index("[adapter]")
    end = next(
        i for i in range(start + 1, len(lines)) if lines[i].startswith("[") and "adapter." not in lines[i]
    )
    return "\n".join(lines[start:end]) + "\n"


def test_kohya_chroma_ranks_train_export_kohyas_names_and_start_a_run_from_weights(tmp_path):
    args = " ".join(shlex.quote(a) for a in ARGS)
    adapter = _adapter(tmp_path / "kohya", f"{COMMAND} --network_args {args}")
    extra = adapter + '\n[checkpoints]\nexports = ["kohya_lora"]\n'
    plan = compile_spec(write_spec(tmp_path / "first", base="builtin:tiny-chroma", steps=1, extra=extra))
    result = execute(plan)
    assert result.status == "finished"
    (export,) = Path(result.final).glob("*.kohya.safetensors")
    saved = load_file(str(export))
    ranks = {k.split(".")[0]: v.shape[0] for k, v in saved.items() if k.endswith(".lora_down.weight")}
    assert ranks == KOHYA_RANKS
    assert all(saved[f"{name}.alpha"].item() == 8.0 for name in ranks)

    # the export back as kohya's --network_weights with --dim_from_weights: its modules at their ranks
    command = f"{COMMAND} --network_weights {export} --dim_from_weights"
    adapter = _adapter(tmp_path / "again", command)
    second = write_spec(tmp_path / "second", base="builtin:tiny-chroma", steps=1, extra=adapter)
    plan = compile_spec(second, [f"adapter.init_weights={export}"])
    assert plan.adapter.init_partial
    comps, count = _loaded(plan)
    assert count == len(KOHYA_RANKS)
    x = comps.unet.x_embedder
    assert x.lora_A["default"].weight.shape[0] == 4
    torch.testing.assert_close(x.lora_A["default"].weight, saved["lora_unet_img_in.lora_down.weight"])
    torch.testing.assert_close(x.lora_B["default"].weight, saved["lora_unet_img_in.lora_up.weight"])
    assert not hasattr(comps.unet.transformer_blocks[0].ff.net[2], "lora_A")  # img_mlp: not in the file
    assert execute(plan).status == "finished"
