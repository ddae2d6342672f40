"""kohya flux_train_network.py / sd3_train_network.py command lines (the settings of sd-scripts' README)
convert without --allow-unsupported, pass `dbspec check`, and plan kohya's flow draw: the timestep density,
its shift, the loss weighting and Flux's training guidance (library/flux_train_utils.py,
sd3_train_utils.py)."""

from __future__ import annotations

from convert_kit import (  # noqa: F401
    component_file,
    empty_hub_cache,
    errors,
    expressible,
    fate,
    images,
    kohya,
    messages,
    plan_of,
)

from dbspec.plan.summary import noise_summary

FLUX = "black-forest-labs/FLUX.1-dev"
SD35 = "stabilityai/stable-diffusion-3.5-large"


def _flux(tmp_path, extra: str, *, allow: bool = False):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    return kohya(
        tmp_path,
        allow=allow,
        command=f"accelerate launch --mixed_precision bf16 flux_train_network.py "
        f"--pretrained_model_name_or_path {FLUX} --clip_l clip_l.safetensors --t5xxl t5xxl_fp16.safetensors "
        "--ae ae.safetensors --train_data_dir x --resolution 512 --cache_latents_to_disk --save_model_as "
        "safetensors --sdpa --persistent_data_loader_workers --max_data_loader_n_workers 2 --seed 42 "
        "--gradient_checkpointing --mixed_precision bf16 --save_precision bf16 --network_module "
        "networks.lora_flux --network_dim 4 --network_train_unet_only --optimizer_type adamw8bit "
        "--learning_rate 1e-4 --cache_text_encoder_outputs --cache_text_encoder_outputs_to_disk "
        f"--highvram --max_train_steps 400 {extra}",
    )


def test_kohya_flux_readme_settings_plan_the_shifted_logit_normal_draw(tmp_path):
    outcome = _flux(
        tmp_path,
        "--timestep_sampling shift --discrete_flow_shift 3.1582 --model_prediction_type raw "
        "--guidance_scale 1.0",
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.model.family == "flux" and plan.loss.target == "flow_matching"
    flow = plan.loss.flow
    # kohya "shift": sigmoid(sigmoid_scale N(0,1)) shifted by discrete_flow_shift
    assert (flow.timesteps, flow.logit_mean, flow.logit_std) == ("logit_normal", 0.0, 1.0)
    assert (flow.shift, flow.weighting, flow.guidance, flow.draw) == (3.1582, "none", 1.0, "continuous")
    assert plan.model.t5_max_length == 512  # kohya's default for dev
    assert (plan.adapter.kind, plan.adapter.rank, plan.adapter.alpha) == ("lora", 4, 1.0)
    assert "attn.to_q" in plan.adapter.denoiser_targets and not plan.train_text_encoder
    assert plan.optimizer.lr == 1e-4 and plan.schedule.total_steps == 400
    assert fate(outcome, "timestep_sampling") == "mapped"  # continuous in kohya and dbspec (flow_draw)
    assert (
        fate(outcome, "network_module") == "mapped"
    )  # kohya's targets, fused q/k/v (test_convert_lora_flux.py)
    assert fate(outcome, "clip_l") == "mapped"  # model.text_encoder_files (kohya's separate files)


def test_kohya_flux_sigma_sampling_is_the_scheduler_draw(tmp_path):
    outcome = _flux(
        tmp_path,
        "--timestep_sampling sigma --weighting_scheme logit_normal --logit_mean 0.2 --logit_std 1.5 "
        "--discrete_flow_shift 1.0 --model_prediction_type raw --t5xxl_max_token_length 256",
    )
    flow = plan_of(outcome, tmp_path).loss.flow
    assert (flow.timesteps, flow.logit_mean, flow.logit_std, flow.shift) == ("logit_normal", 0.2, 1.5, 1.0)
    assert flow.guidance == 3.5  # kohya's default guidance_scale, also the family's
    assert fate(outcome, "weighting_scheme") == "mapped" and fate(outcome, "timestep_sampling") == "mapped"
    assert plan_of(outcome, tmp_path).model.t5_max_length == 256


def test_kohya_flux_uniform_sampling_is_unshifted(tmp_path):
    outcome = _flux(tmp_path, "--timestep_sampling uniform --model_prediction_type raw")
    flow = plan_of(outcome, tmp_path).loss.flow
    assert (flow.timesteps, flow.shift, flow.draw) == ("uniform", 1.0, "continuous")
    assert fate(outcome, "timestep_sampling") == "mapped"


def test_kohya_flux_sigmoid_sampling_is_the_continuous_unshifted_draw(tmp_path):
    outcome = _flux(tmp_path, "--timestep_sampling sigmoid --sigmoid_scale 1.2 --model_prediction_type raw")
    plan = plan_of(outcome, tmp_path)
    flow = plan.loss.flow
    # kohya: sigma = sigmoid(1.2 N(0, 1)); dbspec: 1 - sigmoid(N(0, 1.2)), the same law (mean 0)
    assert (flow.timesteps, flow.logit_mean, flow.logit_std) == ("logit_normal", 0.0, 1.2)
    assert (flow.shift, flow.draw, flow.max_shift) == (1.0, "continuous", 0.0)
    assert "continuous σ = shift(1 − u)" in noise_summary(plan.loss.noise, plan.loss.flow)
    assert fate(outcome, "timestep_sampling") == "mapped"


def test_kohya_flux_defaults_plan_sigma_scaled_and_flux_shift(tmp_path):
    """kohya's defaults (model_prediction_type sigma_scaled, weighting_scheme uniform) with the FLUX.1
    flux_shift draw of sd-scripts' README: the preconditioned prediction and the image-size shift."""
    outcome = _flux(tmp_path, "--timestep_sampling flux_shift --sigmoid_scale 1.5 --guidance_scale 1.0")
    assert outcome.written
    plan = plan_of(outcome, tmp_path)
    flow = plan.loss.flow
    assert (flow.prediction, flow.weighting) == ("sigma_scaled", "none")  # weighting_scheme uniform: none
    assert (flow.timesteps, flow.logit_mean, flow.logit_std) == ("logit_normal", 0.0, 1.5)
    assert (flow.shift, flow.base_shift, flow.max_shift, flow.draw) == (0.0, 0.5, 1.15, "continuous")
    assert "mse(x_t − σ·u\u0302, u)" in plan.loss.formula  # kohya compares it with ε − x₀
    assert fate(outcome, "model_prediction_type") == "defaulted"  # kohya's default, sigma_scaled
    assert fate(outcome, "timestep_sampling") == "mapped"


def test_kohya_flux_sigma_scaled_weights_the_loss_by_weighting_scheme(tmp_path):
    outcome = _flux(
        tmp_path,
        "--timestep_sampling sigma --weighting_scheme sigma_sqrt --discrete_flow_shift 3.1582 "
        "--model_prediction_type sigma_scaled",
    )
    flow = plan_of(outcome, tmp_path).loss.flow
    # sigma_sqrt draws u uniformly (compute_density_for_timestep_sampling) and weights by sigma^-2
    assert (flow.prediction, flow.timesteps, flow.weighting, flow.shift) == (
        "sigma_scaled",
        "uniform",
        "sigma_sqrt",
        3.1582,
    )
    assert (flow.base_shift, flow.max_shift, flow.draw) == (0.0, 0.0, "table")


def test_kohya_flux_additive_prediction_is_unweighted(tmp_path):
    outcome = _flux(
        tmp_path, "--timestep_sampling shift --weighting_scheme cosmap --model_prediction_type additive"
    )
    plan = plan_of(outcome, tmp_path)
    assert (plan.loss.flow.prediction, plan.loss.flow.weighting) == ("additive", "none")
    assert "mse(u\u0302 + x_t, u)" in plan.loss.formula
    assert fate(outcome, "weighting_scheme") == "inert"  # shift draws without it; additive weights nothing


def test_kohya_flux_lora_maps_the_kohya_export(tmp_path):
    outcome = _flux(tmp_path, "--model_prediction_type raw")
    assert plan_of(outcome, tmp_path).checkpoints.exports == ("kohya_lora",)
    assert fate(outcome, "save_model_as") == "mapped"


def test_kohya_flux_wrong_network_module(tmp_path):
    outcome = _flux(tmp_path, "--model_prediction_type raw --network_module networks.lora")
    assert fate(outcome, "network_module") == "unsupported"
    assert "networks.lora_flux" in messages(outcome, "DBS401") + "".join(errors(outcome))


def _sd3(tmp_path, extra: str):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    return kohya(
        tmp_path,
        command=f"accelerate launch sd3_train_network.py --pretrained_model_name_or_path {SD35} "
        "--clip_l sd3/clip_l.safetensors --clip_g sd3/clip_g.safetensors --t5xxl sd3/t5xxl_fp16.safetensors "
        "--train_data_dir x --resolution 512 --save_model_as safetensors --sdpa --seed 42 "
        "--gradient_checkpointing --mixed_precision bf16 --save_precision bf16 --network_module "
        "networks.lora_sd3 --network_dim 16 --network_alpha 8 --network_train_unet_only --optimizer_type "
        f"adamw8bit --learning_rate 1e-4 --max_train_epochs 4 --save_every_n_epochs 1 {extra}",
    )


def test_kohya_sd3_sigma_sqrt_is_the_unweighted_velocity_loss(tmp_path):
    outcome = _sd3(tmp_path, "--weighting_scheme sigma_sqrt --training_shift 3.0")
    plan = plan_of(outcome, tmp_path)
    flow = plan.loss.flow
    assert plan.model.family == "sd3" and plan.model.t5_max_length == 256
    # kohya's preconditioned loss is sigma^2 |v - (noise - x)|^2; sigma^-2 cancels it (except at t = 0,
    # where kohya's is 0 * inf = NaN)
    assert (flow.timesteps, flow.weighting, flow.shift, flow.prediction) == ("uniform", "none", 3.0, "raw")
    assert flow.draw == "floored" and (plan.loss.noise.min_timestep, plan.loss.noise.max_timestep) == (
        0,
        1000,
    )
    assert (plan.adapter.rank, plan.adapter.alpha) == (16, 8.0)
    assert plan.schedule.total_steps == 4 * 40  # 4 images x 10 repeats per epoch, 4 epochs
    assert fate(outcome, "weighting_scheme") == "mapped"


def test_kohya_sd3_logit_normal_is_kohyas_floored_draw_and_preconditioned_loss(tmp_path):
    outcome = _sd3(tmp_path, "--weighting_scheme logit_normal --logit_mean 0.5 --logit_std 1.2")
    plan = plan_of(outcome, tmp_path)
    flow = plan.loss.flow
    # the floored draw takes u in kohya's direction (sigma rises with u): the mean as kohya's
    assert (flow.timesteps, flow.logit_mean, flow.logit_std, flow.shift) == ("logit_normal", 0.5, 1.2, 1.0)
    assert (flow.draw, flow.prediction, flow.weighting) == ("floored", "preconditioned", "none")
    assert "mse(x_t − σ·u\u0302, x₀)" in plan.loss.formula
    assert fate(outcome, "weighting_scheme") == "mapped"
    assert fate(outcome, "logit_mean") == "mapped"


def test_kohya_sd3_mode_and_cosmap_with_timestep_bounds(tmp_path):
    outcome = _sd3(
        tmp_path,
        "--weighting_scheme cosmap --training_shift 2.5 --min_timestep 100 --max_timestep 900 "
        "--mode_scale 1.1",
    )
    plan = plan_of(outcome, tmp_path)
    flow = plan.loss.flow
    # cosmap draws u uniformly (compute_density_for_timestep_sampling) and weights by cosmap(sigma)
    assert (flow.timesteps, flow.weighting, flow.prediction, flow.shift) == (
        "uniform",
        "cosmap",
        "preconditioned",
        2.5,
    )
    assert (plan.loss.noise.min_timestep, plan.loss.noise.max_timestep) == (100, 900)
    assert {fate(outcome, k) for k in ("min_timestep", "max_timestep")} == {"mapped"}
    assert fate(outcome, "mode_scale") == "inert"  # cosmap does not read it
    assert "t = floor(shift(u)·(900 − 100) + 100)" in noise_summary(plan.loss.noise, plan.loss.flow)
    mode = _sd3(tmp_path / "mode", "--weighting_scheme mode --mode_scale 1.1 --training_shift 3.0")
    flow = plan_of(mode, tmp_path / "mode").loss.flow
    assert (flow.timesteps, flow.mode_scale, flow.draw, flow.weighting) == ("mode", 1.1, "floored", "none")
    assert fate(mode, "weighting_scheme") == "mapped"  # no longer mirrored


def test_kohya_sd3_sigma_sqrt_with_a_lower_bound_keeps_kohyas_weighting(tmp_path):
    outcome = _sd3(tmp_path, "--weighting_scheme sigma_sqrt --min_timestep 100")
    plan = plan_of(outcome, tmp_path)
    flow = plan.loss.flow
    assert (flow.prediction, flow.weighting, flow.draw) == ("preconditioned", "sigma_sqrt", "floored")
    assert plan.loss.noise.min_timestep == 100 and fate(outcome, "min_timestep") == "mapped"


def test_kohya_sd3_reversed_bounds_are_kohyas_draw_from_min_down_to_max(tmp_path):
    """sd3_train_utils: t = (shift(u) (t_max - t_min) + t_min).long() with min 900, max 100 draws from 900
    down toward 100 (was DBS403): the floored draw with the bounds as given computes the same expression
    (tests/runtime/test_flow_kohya_draws.py compares it bit for bit)."""
    outcome = expressible(
        _sd3(tmp_path, "--weighting_scheme logit_normal --min_timestep 900 --max_timestep 100")
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.loss.flow.draw == "floored"
    assert (plan.loss.noise.min_timestep, plan.loss.noise.max_timestep) == (900, 100)
    assert {fate(outcome, k) for k in ("min_timestep", "max_timestep")} == {"mapped"}
    summary = noise_summary(plan.loss.noise, plan.loss.flow)
    assert "t = floor(shift(u)·(100 − 900) + 900)" in summary and "falling with u" in summary
    # sigma_sqrt: with reversed bounds t reaches 0 only where max_timestep is 0; 100 keeps kohya's weight
    weighted = expressible(
        _sd3(tmp_path / "w", "--weighting_scheme sigma_sqrt --min_timestep 900 --max_timestep 100")
    )
    flow = plan_of(weighted, tmp_path / "w").loss.flow
    assert (flow.prediction, flow.weighting) == ("preconditioned", "sigma_sqrt")


def test_kohya_sd3_reversed_bounds_down_to_0_and_infinite_weights_are_refused(tmp_path):
    to_zero = _sd3(tmp_path, "--weighting_scheme logit_normal --min_timestep 900 --max_timestep 0")
    assert not to_zero.written and fate(to_zero, "max_timestep") == "unsupported"
    l1 = _sd3(tmp_path / "l1", "--weighting_scheme sigma_sqrt --loss_type l1")
    assert not l1.written and fate(l1, "weighting_scheme") == "unsupported"  # sigma^-2 at t = 0: NaN in kohya


def test_ddpm_loss_options_the_flow_scripts_never_read_are_ignored(tmp_path):
    outcome = _flux(
        tmp_path,
        "--model_prediction_type raw --min_snr_gamma 5 --noise_offset 0.05 --min_timestep 100",
    )
    plan = plan_of(outcome, tmp_path)  # no DBS230: nothing DDPM-only reaches the spec
    assert plan.loss.min_snr_gamma == 0 and plan.loss.noise.offset == 0
    assert {fate(outcome, k) for k in ("min_snr_gamma", "noise_offset", "min_timestep")} == {"inert"}
    assert "DBS405" in {d.code for d in outcome.diagnostics}  # kohya ignores them too: a likely mistake


def test_flux_controlnet_path_is_ignored_as_flux_train_network_ignores_it(tmp_path):
    """add_flux_train_arguments parses --controlnet_model_name_or_path for every Flux script; only
    flux_train_control_net.py loads it, so flux_train_network.py trains the same LoRA without one."""
    component_file(tmp_path / "controlnet.safetensors")
    outcome = _flux(
        tmp_path,
        "--timestep_sampling shift --discrete_flow_shift 3.1582 --model_prediction_type raw "
        "--guidance_scale 1.0 --controlnet_model_name_or_path controlnet.safetensors",
    )
    plan = plan_of(outcome, tmp_path)
    assert (plan.adapter.kind, plan.adapter.rank, plan.loss.flow.shift) == ("lora", 4, 3.1582)
    assert fate(outcome, "controlnet_model_name_or_path") == "inert"
    assert "flux_train_control_net.py" in messages(outcome, "DBS405")
    assert "DBS403" not in {d.code for d in outcome.diagnostics}


def test_flux_samples_validate_with_flow_euler(tmp_path):
    (tmp_path / "prompts.txt").write_text(
        "a photo of ohwx dog on a beach --w 512 --h 512\n", encoding="utf-8"
    )
    outcome = _flux(
        tmp_path,
        "--model_prediction_type raw --sample_prompts prompts.txt --sample_every_n_steps 100 "
        "--sample_sampler euler_a",
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.validation.scheduler == "flow_euler" and plan.validation.steps.every == 100
    assert fate(outcome, "sample_sampler") == "inert"  # kohya's Flux sampling ignores it (DBS405)
