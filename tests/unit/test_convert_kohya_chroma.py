"""kohya flux_train_network.py --model_type chroma (sd-scripts' docs/flux_train_network.md, "Training Chroma
Models", with its recommended --timestep_sampling sigmoid --model_prediction_type raw --guidance_scale 0.0)
converts to the chroma family: T5 alone (no --clip_l), the T5 mask kohya requires, networks.lora_flux's
targets on Chroma's blocks (no modulation Linears), and plans."""

from __future__ import annotations

import re

import pytest
from convert_kit import (  # noqa: F401
    codes,
    component_file,
    empty_hub_cache,
    errors,
    fate,
    images,
    kohya,
    messages,
    out_path,
    plan_of,
)

from dbspec.families import family_spec


CACHED = "--network_train_unet_only --cache_text_encoder_outputs --cache_text_encoder_outputs_to_disk "


def _chroma(
    tmp_path,
    extra: str = "",
    *,
    mask: str = "--apply_t5_attn_mask ",
    cached: str = CACHED,
    allow: bool = False,
):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("Chroma1-HD.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    return kohya(
        tmp_path,
        allow=allow,
        command="accelerate launch --num_cpu_threads_per_process 1 flux_train_network.py "
        "--pretrained_model_name_or_path Chroma1-HD.safetensors --model_type chroma "
        "--t5xxl t5xxl_fp16.safetensors --ae ae.safetensors --train_data_dir x --resolution 512 "
        "--output_dir out --output_name my_chroma_lora --save_model_as safetensors --sdpa "
        "--persistent_data_loader_workers --max_data_loader_n_workers 2 --seed 42 --gradient_checkpointing "
        "--mixed_precision bf16 --save_precision bf16 --network_module networks.lora_flux --network_dim 16 "
        "--network_alpha 8 --optimizer_type adamw8bit --learning_rate 1e-4 --cache_latents_to_disk "
        f"{cached}"
        f"--guidance_scale 0.0 --timestep_sampling sigmoid --model_prediction_type raw {mask}"
        f"--max_train_epochs 4 --save_every_n_epochs 1 {extra}",
    )


def m_base(plan) -> str:
    return plan.model.base


def test_kohya_chroma_docs_command_plans_the_chroma_family(tmp_path):
    outcome = _chroma(tmp_path)
    assert outcome.written, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert m_base(plan) == "lodestones/Chroma1-HD"  # its configs and tokenizers (kohya builds its own)
    m = plan.model
    assert (m.family, m.prediction, m.t5_max_length, m.t5_attention_mask) == (
        "chroma",
        "flow_matching",
        512,  # kohya: 512 unless schnell, and Chroma is not
        True,
    )
    assert m.denoiser_file.endswith("Chroma1-HD.safetensors")
    assert [f.rsplit("/", 1)[-1] for f in m.text_encoder_files] == ["t5xxl_fp16.safetensors"]  # T5 alone
    flow = plan.loss.flow
    # sigmoid(N(0, 1)), unshifted and continuous; raw velocity loss; the approximator's guidance input 0
    assert (flow.timesteps, flow.logit_mean, flow.logit_std, flow.shift, flow.draw) == (
        "logit_normal",
        0.0,
        1.0,
        1.0,
        "continuous",
    )
    assert (flow.prediction, flow.weighting, flow.guidance) == ("raw", "none", 0.0)
    a = plan.adapter
    assert (a.kind, a.rank, a.alpha) == ("lora", 16, 8.0) and len(a.fused) == 3  # qkv x 2, linear1
    assert set(a.denoiser_targets) == set(family_spec("chroma").kohya_lora_targets)
    assert not any("norm1" in t or "norm.linear" in t for t in a.denoiser_targets)  # no modulation Linears
    assert plan.checkpoints.exports == ("kohya_lora",) and not plan.train_text_encoder
    assert plan.optimizer.lr == 1e-4 and plan.schedule.total_steps == 4 * 40
    assert fate(outcome, "model_type") == "mapped" and fate(outcome, "apply_t5_attn_mask") == "mapped"
    assert fate(outcome, "guidance_scale") == "mapped"


def test_kohya_chroma_without_the_t5_mask_is_kohyas_assertion(tmp_path):
    outcome = _chroma(tmp_path, mask="")
    assert fate(outcome, "apply_t5_attn_mask") == "invalid"
    assert any("asserts apply_t5_attn_mask" in e for e in errors(outcome))


def test_kohya_chroma_ignores_clip_l_and_maps_train_t5xxl(tmp_path):
    component_file(tmp_path / "clip_l.safetensors")
    outcome = _chroma(
        tmp_path,
        "--clip_l clip_l.safetensors --network_args train_t5xxl=True img_mod_dim=4 "
        "--text_encoder_lr 1e-5 5e-5",
        cached="",
    )
    assert outcome.written, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    # kohya trains no CLIP-L for Chroma (use_clip_l False); T5-XXL's LoRA at text_encoder_lr's second value
    assert plan.adapter.t5_targets == ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
    assert plan.optimizer.text_encoder_lr == 5e-5 and plan.optimizer.lr == 1e-4
    # no CLIP-L LoRA though network_train_unet_only is not given: T5 (Chroma's text_encoder) is what trains
    text = out_path(tmp_path).read_text()
    assert "\ntext_encoder = true" not in text and "text_encoder_targets" not in text
    assert {c.name: c.trainable for c in plan.precision.components}["text_encoder"] == "lora"
    assert fate(outcome, "clip_l") == "inert"  # kohya loads a dummy CLIP-L for Chroma (a warning says so)
    assert "dummy" in messages(outcome, "DBS405") + "".join(errors(outcome))
    assert fate(outcome, "network_args img_mod_dim") == "inert"  # Chroma's blocks have no mod.lin


def test_kohya_chroma_flux_shift_and_sigma_scaled_plan_as_for_flux(tmp_path):
    """The draw and the prediction transforms are flux_train_network.py's for both model types
    (get_noisy_model_input_and_timesteps, apply_model_prediction_type)."""
    outcome = _chroma(
        tmp_path, "--timestep_sampling flux_shift --model_prediction_type sigma_scaled --guidance_scale 1.0"
    )
    flow = plan_of(outcome, tmp_path).loss.flow
    assert (flow.base_shift, flow.max_shift, flow.draw) == (0.5, 1.15, "continuous")
    assert (flow.prediction, flow.guidance) == ("sigma_scaled", 1.0)  # the approximator's guidance input


def test_kohya_chroma_lycoris_preset_file_over_chromas_modules(tmp_path):
    """A LyCORIS preset file is walked over kohya's Chroma (chroma_rows.py): the approximator's MLPEmbedder
    layers and the final layer are Linears LyCORIS builds there (a LoCon trains them, a LoKr too: plain
    Linears), and T5-XXL's classes are LyCORIS's lora_te2 modules (with network_train_unet_only apply_to
    drops them, DBS405; trained: test_kohya_chroma_lycoris_t5_file)."""
    (tmp_path / "approx.toml").write_text(
        'unet_target_module = ["MLPEmbedder"]\nunet_target_name = ["final_layer.linear"]\n'
        "text_encoder_target_module = []\n"
    )
    (tmp_path / "t5.toml").write_text('text_encoder_target_module = ["T5Attention"]\n')
    outcome = _chroma(tmp_path, '--network_module lycoris.kohya --network_args "preset=approx.toml"')
    plan = plan_of(outcome, tmp_path)
    targets = set(plan.adapter.denoiser_targets)
    assert {"linear_1", "linear_2", "proj_out"} <= targets and len(targets) == 3
    assert [b.pattern for b in plan.adapter.blocks] == [
        r"^single_transformer_blocks\.(" + "|".join(map(str, range(38))) + r")\.proj_out$"
    ]
    # LoKr there: LokrModule on plain Linears, peft's LoKr on the same layers (exported under kohya's names)
    lokr = _chroma(tmp_path, '--network_module lycoris.kohya --network_args "algo=lokr" "preset=approx.toml"')
    assert not {"DBS402", "DBS403"} & codes(lokr), errors(lokr)
    lokr_plan = plan_of(lokr, tmp_path).adapter
    assert lokr_plan.kind == "lokr" and set(lokr_plan.denoiser_targets) == targets
    assert _adapted(lokr_plan) == _adapted(plan.adapter)
    dropped = _chroma(tmp_path, '--network_module lycoris.kohya --network_args "preset=t5.toml"')
    assert "T5-XXL" in messages(dropped, "DBS405") and "DBS403" not in codes(dropped)


@pytest.mark.parametrize("algo", ["locon", "lokr", "loha"])
def test_kohya_chroma_lycoris_t5_file_is_train_t5(tmp_path, algo):
    """kohya's Chroma hands LyCORIS [the dummy CLIP-L, T5-XXL] and encodes with T5 at every step (outputs not
    cached, network_train_unet_only off): a file's T5 modules (LoConModule, LokrModule or LohaModule) train in
    LyCORIS's one text group at text_encoder_lr's first value: `train.t5` on Chroma's T5 (its text_encoder),
    the file's T5 Linears at the network's dim (map entry: its own), the others at rank 0."""
    (tmp_path / "t5.toml").write_text(
        'unet_target_module = ["DoubleStreamBlock"]\ntext_encoder_target_module = ["T5Attention"]\n'
        "[module_algo_map.T5Attention]\ndim = 4\nalpha = 2\n"
    )
    outcome = _chroma(
        tmp_path,
        f'--network_module lycoris.kohya --network_args "algo={algo}" "preset=t5.toml" '
        "--text_encoder_lr 2e-5 5e-5",
        cached="",
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.kind == ("lora" if algo == "locon" else algo)
    assert a.kohya_names == ("lycoris" if algo == "locon" else "kohya")  # LoKr / LoHa: LyCORIS's anyway
    assert {c.name: c.trainable for c in plan.precision.components}["text_encoder"] == "lora"
    assert a.t5_targets == ("q", "k", "v", "o", "wi_0", "wi_1", "wo") and a.text_encoder_targets == ()
    assert plan.optimizer.text_encoder_lr == 2e-5  # LyCORIS's text group: the first value
    own, rest = a.text_encoder_blocks[1], a.text_encoder_blocks[0]
    assert (own.rank, own.alpha) == (4, 2.0) and rest.rank == 0
    assert re.search(own.pattern, "text_encoder.encoder.block.7.layer.0.SelfAttention.v")
    assert re.search(rest.pattern, "text_encoder.encoder.block.7.layer.1.DenseReluDense.wi_1")


def _adapted(adapter) -> set[str]:
    """The diffusers Chroma Linears (kohya's Chroma's, chroma_rows.py) the plan's targets reach, without
    those its rank-0 blocks drop."""
    import re

    from dbspec.convert.kohya.chroma_rows import chroma_model, chroma_parts

    layers = {p for path, _cls, kind in chroma_model() if kind == "linear" for p in chroma_parts(path)}
    zero = [b.pattern for b in adapter.blocks if b.rank == 0]
    return {
        p
        for p in layers
        if any(p == t or p.endswith("." + t) for t in adapter.denoiser_targets)
        and not any(re.search(z, p) for z in zero)
    }


@pytest.mark.parametrize(
    "args, classes",
    [
        ('"algo=locon"', '["DoubleStreamBlock", "SingleStreamBlock"]'),
        ('"algo=lokr" "preset=unet-only"', '["DoubleStreamBlock", "SingleStreamBlock"]'),
        ('"algo=locon" "preset=attn-only"', '["SelfAttention"]'),
    ],
)
def test_kohya_chroma_lycoris_builtin_presets_target_chromas_layers(tmp_path, args, classes):
    """LyCORIS's built-in presets pick DoubleStreamBlock / SingleStreamBlock (attn-only: SelfAttention), whose
    Linears on kohya's Chroma are Flux's without the modulation ones, and no CLIP-L Linear (kohya's dummy):
    the plan lists only layers Chroma has, the same a preset file of those classes walks to (checked with
    lycoris-lora 4.1.3's own preset lists in a scratch run)."""
    (tmp_path / "same.toml").write_text(f"unet_target_module = {classes}\ntext_encoder_target_module = []\n")
    outcome = _chroma(tmp_path, f"--network_module lycoris.kohya --network_args {args}")
    a = plan_of(outcome, tmp_path).adapter
    assert not any(
        t.endswith(("norm1.linear", "norm1_context.linear", "norm.linear")) for t in a.denoiser_targets
    )
    assert a.text_encoder_targets == ()
    preset = args.replace('"preset=unet-only"', "").replace('"preset=attn-only"', "")
    walked = _chroma(tmp_path, f'--network_module lycoris.kohya --network_args {preset} "preset=same.toml"')
    ours, theirs = _adapted(a), _adapted(plan_of(walked, tmp_path).adapter)
    assert ours and ours == theirs


def test_kohya_chroma_t5_at_rate_0_is_idle(tmp_path):
    """Chroma's T5-XXL (its only text encoder) with train_t5xxl=True at text_encoder_lr's second value 0:
    flux_train_network.py encodes with it under grad (not --network_train_unet_only; no output cache with
    T5's modules) and lora_flux leaves its group out, its gradients in the clip: train.t5_idle (issue 12;
    was DBS404). --gradient_checkpointing puts it in train mode, as dbspec's "trained" does."""
    outcome = _chroma(tmp_path, "--network_args train_t5xxl=True --text_encoder_lr 1e-5 0", cached="")
    assert outcome.written and not {"DBS402", "DBS403", "DBS404"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.idle_text_encoders == ("text_encoder",) and not plan.train_text_encoder
    assert plan.adapter.t5_targets and plan.text_encoder_mode == "trained"
