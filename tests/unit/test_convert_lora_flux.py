"""kohya's networks.lora_flux converted exactly (dbspec/convert/kohya/lora_flux.py): every Linear of the
double and single blocks (the family registry's kohya target set, the final layer's proj_out kept out), one
shared down-projection per fused Linear (adapter.fused_projections) or, with split_qkv=True, one LoRA per
part; and the network_args dbspec expresses (block selection, per-type ranks, in_dims, dropouts, LoRA+),
with the rest reported."""

from __future__ import annotations

import re

from convert_kit import (  # noqa: F401
    codes,
    component_file,
    errors,
    fate,
    images,
    kohya,
    messages,
    out_path,
    plan_of,
    write,
)

from dbspec.families import family_spec

FLUX = "black-forest-labs/FLUX.1-dev"
# sd-scripts' README Flux LoRA command line (docs/flux_train_network.md), 400 steps
README = (
    f"accelerate launch --mixed_precision bf16 --num_cpu_threads_per_process 1 flux_train_network.py "
    f"--pretrained_model_name_or_path {FLUX} --clip_l clip_l.safetensors --t5xxl t5xxl_fp16.safetensors "
    "--ae ae.safetensors --train_data_dir x --resolution 512 --cache_latents_to_disk --save_model_as "
    "safetensors --sdpa --persistent_data_loader_workers --max_data_loader_n_workers 2 --seed 42 "
    "--gradient_checkpointing --mixed_precision bf16 --save_precision bf16 --network_module "
    "networks.lora_flux --network_dim 16 --network_alpha 8 --network_train_unet_only --optimizer_type "
    "adamw8bit --learning_rate 1e-4 --cache_text_encoder_outputs --cache_text_encoder_outputs_to_disk "
    "--fp8_base --highvram --max_train_steps 400 --timestep_sampling shift --discrete_flow_shift 3.1582 "
    "--model_prediction_type raw --guidance_scale 1.0"
)
KOHYA = list(family_spec("flux").kohya_lora_targets)


def _flux(tmp_path, extra: str = "", *, allow: bool = False):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)  # kohya's separate files: model.text_encoder_files, model.vae
    return kohya(tmp_path, allow=allow, command=f"{README} {extra}")


def _block(plan, pattern: str):
    return next(b for b in plan.adapter.blocks if b.pattern == pattern)


def test_the_readme_network_is_kohyas_targets_with_shared_downs(tmp_path):
    outcome = _flux(tmp_path)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.kind, a.rank, a.alpha) == ("lora", 16, 8.0)
    assert list(a.denoiser_targets) == KOHYA
    assert {"norm1.linear", "norm1_context.linear", "norm.linear", "proj_mlp"} <= set(a.denoiser_targets)
    assert [(b.pattern, b.rank) for b in a.blocks] == [("^proj_out$", 0)]  # the final layer stays out
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert list(a.text_encoder_targets) == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert fate(outcome, "network_module") == "mapped"
    assert "networks.lora_flux" not in messages(outcome, "DBS404")
    assert not {"DBS403", "DBS506", "DBS507"} & codes(outcome)
    assert "fused_projections = true" in out_path(tmp_path).read_text()


def test_split_qkv_with_single_blocks_only_is_one_lora_per_part(tmp_path):
    outcome = _flux(tmp_path, '--network_args "split_qkv=True" "train_blocks=single" --network_dropout 0.1')
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.fused == ()
    assert _block(plan, r"^transformer_blocks\.").rank == 0  # no double block trains
    assert a.down_dropout == 0.1 and fate(outcome, "network_dropout") == "mapped"  # per part in kohya too
    assert not errors(outcome) and "network" not in messages(outcome, "DBS404")
    # the parts' masks drawn together, in kohya's part order (q, k, v, MLP input): exact
    assert [(f.name, f.parts) for f in a.split_fused] == [
        ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"))
    ]


def test_split_qkv_with_double_blocks_fails_in_kohya_and_is_refused(tmp_path):
    outcome = _flux(tmp_path, '--network_args "split_qkv=True"')
    assert not outcome.written
    assert "too many values to unpack" in "".join(errors(outcome))


def test_split_qkv_is_kohyas_exact_string(tmp_path):
    plan = plan_of(_flux(tmp_path, '--network_args "split_qkv=true"'), tmp_path)
    assert len(plan.adapter.fused) == 3  # "true" is not "True": kohya keeps the fused layers


def test_block_selection_type_ranks_and_in_dims(tmp_path):
    args = (
        '--network_args "train_double_block_indices=0-3,10" "train_single_block_indices=none" '
        '"img_mod_dim=0" "txt_attn_dim=8" "in_dims=[4,0,0,0,2]" "loraplus_lr_ratio=4" "verbose=True"'
    )
    outcome = _flux(tmp_path, args)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    skipped = _block(plan, r"^transformer_blocks\.(4|5|6|7|8|9|11|12|13|14|15|16|17|18)\.")
    assert skipped.rank == 0
    assert _block(plan, r"^single_transformer_blocks\.").rank == 0  # none: no single block
    txt = next(b for b in a.blocks if "add_q_proj" in b.pattern)
    assert (txt.rank, txt.alpha) == (8, 8.0)
    assert re.search(txt.pattern, "transformer_blocks.2.attn.add_k_proj")
    assert not re.search(txt.pattern, "transformer_blocks.2.attn.to_k")
    mod = next(b for b in a.blocks if "norm1" in b.pattern and "context" not in b.pattern)
    assert mod.rank == 0
    assert {"x_embedder", "context_embedder"} <= set(a.denoiser_targets)
    assert "timestep_embedder.linear_1" not in a.denoiser_targets  # in_dims 0: not adapted
    assert (_block(plan, "^x_embedder$").rank, _block(plan, "^context_embedder$").rank) == (4, 2)
    assert plan.optimizer.loraplus_denoiser_ratio == 4.0
    assert fate(outcome, "network_args") == "mapped"
    # the double blocks kept (0-3, 10) plan their fused layers; the first pattern wins over the type ranks
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv"]


def test_dropouts_on_fused_layers_map_exactly(tmp_path):
    outcome = _flux(tmp_path, '--network_args "rank_dropout=0.1" "module_dropout=0.05" --network_dropout 0.1')
    plan = plan_of(outcome, tmp_path)
    assert (plan.adapter.rank_dropout, plan.adapter.module_dropout, plan.adapter.down_dropout) == (
        0.1,
        0.05,
        0.1,
    )
    # drawn once per fused Linear, as kohya draws them (runtime/fused_dropout.py): exact, no DBS404 or DBS508
    assert not {"DBS404", "DBS508"} & codes(outcome)
    assert fate(outcome, "network_dropout") == "mapped" and plan.adapter.fused


def test_module_dropout_with_split_qkv_skips_a_fused_layers_parts_together(tmp_path):
    """kohya's split LoRAModule draws one `torch.rand(1) < module_dropout` for all the parts of a fused
    Linear: adapter.fused_dropout, the split parts' draws shared (no DBS404)."""
    split = _flux(tmp_path, '--network_args "module_dropout=0.05" "split_qkv=True" "train_blocks=single"')
    plan = plan_of(split, tmp_path)
    a = plan.adapter
    assert (a.module_dropout, a.fused, [f.name for f in a.split_fused]) == (0.05, (), ["linear1"])
    assert "DBS404" not in codes(split) and "fused_dropout = true" in out_path(tmp_path).read_text()
    folder = tmp_path / "sd3"
    folder.mkdir()
    sd3 = plan_of(_sd3_split(folder), folder).adapter
    assert {"x_block_attn_qkv", "context_block_attn_qkv"} <= {f.name for f in sd3.split_fused}


def _sd3_split(tmp_path):
    from test_convert_lora_sd3 import _sd3

    return _sd3(tmp_path, '--network_args "module_dropout=0.1" "split_qkv=True"')


def test_rank_dropout_with_split_qkv_fails_in_kohya_and_is_refused(tmp_path):
    """kohya's split forward reads `lx` on its rank-dropout path, unbound there (UnboundLocalError at the
    first training step, checked in a scratch run of networks/lora_flux.py's LoRAModule)."""
    split = _flux(tmp_path, '--network_args "rank_dropout=0.1" "split_qkv=True" "train_blocks=single"')
    assert not split.written and "UnboundLocalError" in "".join(errors(split))


def test_kohya_asserts_are_refused(tmp_path):
    outcome = _flux(tmp_path, '--network_args "train_blocks=both"')
    assert not outcome.written and "train_blocks=both" in "".join(errors(outcome))
    outcome = _flux(tmp_path, '--network_args "train_single_block_indices=30-40"')
    assert not outcome.written and "30-40" in "".join(errors(outcome))


def test_a_config_file_converts_alike(tmp_path):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "t5.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    config = write(
        tmp_path / "flux.toml",
        f'pretrained_model_name_or_path = "{FLUX}"\nclip_l = "clip_l.safetensors"\n'
        't5xxl = "t5.safetensors"\nae = "ae.safetensors"\ntrain_data_dir = "x"\nresolution = "512"\n'
        'network_module = "networks.lora_flux"\nnetwork_dim = 32\nnetwork_alpha = 16.0\n'
        'network_args = ["train_blocks=double", "img_attn_dim=16"]\nnetwork_train_unet_only = true\n'
        'learning_rate = 1e-4\nmax_train_steps = 100\nmixed_precision = "bf16"\n',
    )
    outcome = kohya(tmp_path, script="flux_train_network", config_file=config)
    plan = plan_of(outcome, tmp_path)
    assert (plan.adapter.rank, plan.adapter.alpha) == (32, 16.0)
    assert _block(plan, r"^single_transformer_blocks\.").rank == 0
    attn = next(b for b in plan.adapter.blocks if "to_out" in b.pattern)
    assert (attn.rank, attn.alpha) == (16, 16.0)
    assert [f.name for f in plan.adapter.fused] == ["img_attn_qkv", "txt_attn_qkv"]


def _kohya_flux_file(path, *, rank: int, alpha: float, split: bool = False, single_only: bool = False):
    """A LoRA file in kohya's networks/lora_flux.py layout at FLUX.1's widths (zero tensors): the double
    blocks' fused img_attn.qkv and img_attn.proj, a single block's fused linear1; `split`: the parts' downs
    stacked (kohya's split_qkv writer)."""
    import numpy as np
    from safetensors.numpy import save_file

    width = 3072
    layers = {
        "double_blocks_0_img_attn_qkv": (3 * width, 3),
        "double_blocks_0_img_attn_proj": (width, 0),
        "single_blocks_0_linear1": (3 * width + 4 * width, 4),
    }
    tensors = {}
    for name, (out, parts) in layers.items():
        if single_only and not name.startswith("single_"):
            continue
        rows = rank * parts if split and parts else rank
        tensors[f"lora_unet_{name}.lora_down.weight"] = np.zeros((rows, width), np.float16)
        tensors[f"lora_unet_{name}.lora_up.weight"] = np.zeros((out, rows), np.float16)
        tensors[f"lora_unet_{name}.alpha"] = np.array(alpha, np.float32)
    save_file(tensors, str(path))
    return path


def test_starting_from_a_kohya_flux_file_maps_to_init_weights(tmp_path):
    """--network_weights (train_network.py loads it into the network before training): adapter.init_weights,
    whose plan reads the fused layers' shared downs; no DBS403."""
    _kohya_flux_file(tmp_path / "prev.safetensors", rank=16, alpha=8.0)
    outcome = _flux(tmp_path, "--network_weights prev.safetensors")
    assert fate(outcome, "network_weights") == "mapped" and "DBS403" not in codes(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.init_weights == str(tmp_path / "prev.safetensors") and plan.adapter.init_layers == 3
    # the file covers 3 of the network's modules: kohya's load_weights (strict=False) keeps the others' init
    assert plan.adapter.init_partial


def test_a_split_qkv_flux_file_starts_split_qkv_training(tmp_path):
    """kohya's split_qkv file (the parts' downs stacked): with split_qkv=True (kohya trains it on the single
    blocks only) it starts per-part LoRAs; into shared downs it is refused at plan time naming the tensor."""
    _kohya_flux_file(tmp_path / "prev.safetensors", rank=16, alpha=8.0, split=True, single_only=True)
    outcome = _flux(
        tmp_path, '--network_weights prev.safetensors --network_args "split_qkv=True" "train_blocks=single"'
    )
    assert fate(outcome, "network_weights") == "mapped"
    plan = plan_of(outcome, tmp_path)
    assert not plan.adapter.fused and plan.adapter.init_layers == 1
    from convert_kit import GPU

    from dbspec.frontend import plan_spec

    _flux(tmp_path, "--network_weights prev.safetensors")  # shared downs: the stacked file does not fit
    (d,) = [d for d in plan_spec(out_path(tmp_path), GPU).diagnostics if d.code == "DBS356"]
    assert "prev.safetensors" in d.message and "split_qkv" in d.message
    assert "lora_unet_single_blocks_0_linear1.lora_down.weight" in d.message


def test_dim_from_weights_takes_the_rank_of_a_shared_down_file(tmp_path):
    """create_network_from_weights: each module of the file at its rank and alpha, split_qkv off (one shared
    down per fused Linear), and no LoRA where the file has no module: blocks naming the file's modules at its
    rank, then a rank-0 block for the rest."""
    _kohya_flux_file(tmp_path / "prev.safetensors", rank=32, alpha=4.0)
    outcome = _flux(tmp_path, "--network_weights prev.safetensors --dim_from_weights")
    assert fate(outcome, "dim_from_weights") == "mapped" and fate(outcome, "network_dim") == "inert"
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.rank, a.alpha) == (32, 4.0)  # not the README's 16 / 8
    assert [f.name for f in a.fused] == ["img_attn_qkv", "linear1"]  # the file's fused layers, shared downs
    assert a.init_weights.endswith("prev.safetensors") and a.init_partial
    assert _ranks(a) == {
        "transformer_blocks.0.attn.to_q": (32, 4.0),
        "transformer_blocks.0.attn.to_out.0": (32, 4.0),
        "single_transformer_blocks.0.proj_mlp": (32, 4.0),
        "transformer_blocks.1.attn.to_q": (0, 1.0),  # not in the file: kohya creates no LoRA there
        "transformer_blocks.0.attn.add_q_proj": (0, 1.0),
        "single_transformer_blocks.0.proj_out": (0, 1.0),
    }


def _ranks(adapter) -> dict[str, tuple[int, float]]:
    """(rank, alpha) of a few module paths, by the first block whose pattern matches (as the runtime)."""
    paths = (
        "transformer_blocks.0.attn.to_q",
        "transformer_blocks.0.attn.to_out.0",
        "single_transformer_blocks.0.proj_mlp",
        "transformer_blocks.1.attn.to_q",
        "transformer_blocks.0.attn.add_q_proj",
        "single_transformer_blocks.0.proj_out",
    )
    out = {}
    for path in paths:
        block = next(b for b in adapter.blocks if re.search(b.pattern, path))
        out[path] = (block.rank, block.alpha)
    return out


def test_dim_from_weights_ignores_network_args(tmp_path):
    """kohya's create_network_from_weights takes **kwargs and reads none (split_qkv stays off), and
    train_network.py passes --network_dropout only to create_network."""
    _kohya_flux_file(tmp_path / "prev.safetensors", rank=16, alpha=8.0)
    extra = (
        "--network_weights prev.safetensors --dim_from_weights --network_args split_qkv=True "
        "--network_dropout 0.1"
    )
    outcome = _flux(tmp_path, extra)
    assert fate(outcome, "network_args") == fate(outcome, "network_dropout") == "inert"
    assert "create_network_from_weights reads none" in messages(outcome, "DBS405")
    adapter = plan_of(outcome, tmp_path).adapter
    assert len(adapter.fused) == 2 and adapter.down_dropout == 0


def test_dim_from_weights_with_a_split_file_builds_its_fused_layers_unsplit(tmp_path):
    """A split_qkv file's fused layers hold three (double blocks) or four (linear1) times the rank of the
    others: kohya builds them unsplit at that rank with the file's alpha (one shared down), the others at
    theirs; the plan's blocks say each, and the plan's check of the file against them passes."""
    _kohya_flux_file(tmp_path / "prev.safetensors", rank=16, alpha=8.0, split=True)
    outcome = _flux(tmp_path, "--network_weights prev.safetensors --dim_from_weights")
    assert fate(outcome, "dim_from_weights") == "mapped" and "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    ranks = _ranks(a)
    assert ranks["transformer_blocks.0.attn.to_q"] == (48, 8.0)  # 3 x 16, alpha kept: scale 8 / 48
    assert ranks["single_transformer_blocks.0.proj_mlp"] == (64, 8.0)  # 4 x 16
    assert ranks["transformer_blocks.0.attn.to_out.0"] == (16, 8.0)
    assert ranks["transformer_blocks.1.attn.to_q"] == (0, 1.0)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "linear1"] and a.init_layers == 3
    text = out_path(tmp_path).read_text()
    assert "[[adapter.blocks]]" in text and "rank = 48" in text and "rank = 64" in text


def test_dim_from_weights_needs_alphas_in_the_file(tmp_path):
    from safetensors.numpy import load_file, save_file

    path = _kohya_flux_file(tmp_path / "prev.safetensors", rank=16, alpha=8.0)
    save_file({k: v for k, v in load_file(str(path)).items() if not k.endswith(".alpha")}, str(path))
    outcome = _flux(tmp_path, "--network_weights prev.safetensors --dim_from_weights", allow=True)
    assert "KeyError" in messages(outcome, "DBS402")


def test_ggpo_maps_to_the_fused_layers_perturbation(tmp_path):
    """kohya's docs/flux_train_network.md GGPO arguments on the README run: adapter.ggpo with both shares,
    on the fused layers (one kohya module each)."""
    outcome = _flux(tmp_path, '--network_args "ggpo_sigma=0.03" "ggpo_beta=0.01"')
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.ggpo_sigma, a.ggpo_beta) == (0.03, 0.01)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert fate(outcome, "network_args ggpo_sigma") == "mapped"
    assert fate(outcome, "network_args ggpo_beta") == "mapped"
    assert fate(outcome, "network_args") == "mapped" and not errors(outcome)
    assert not {"DBS403", "DBS405"} & codes(outcome)
    assert "ggpo = true" in out_path(tmp_path).read_text()


def test_one_ggpo_share_alone_is_inert(tmp_path):
    outcome = _flux(tmp_path, '--network_args "ggpo_beta=0.01"')
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.ggpo_sigma is None and plan.adapter.ggpo_beta is None
    assert fate(outcome, "network_args ggpo_beta") == "inert"


def test_ggpo_with_split_qkv_fails_in_kohya_and_is_refused(tmp_path):
    """kohya's update_norms reads lora_up.weight, a ModuleList on a split module (AttributeError)."""
    outcome = _flux(
        tmp_path, '--network_args "split_qkv=True" "train_blocks=single" "ggpo_sigma=0.03" "ggpo_beta=0.01"'
    )
    assert not outcome.written and "AttributeError" in "".join(errors(outcome))
