"""kohya `--network_weights` saved at another alpha than `--network_alpha` (issue 12): networks.lora's
LoRAModule fixes its scale from network_alpha when it is built and load_weights only overwrites the `alpha`
buffer, so kohya trains the file's weights at network_alpha / dim. The converted spec says so
(`adapter.init_alpha = "ignore"`), plans at the network's alpha, and warns (DBS404) that kohya's saved file
would carry the file's alpha; a spec that does not say so is still refused (DBS356). kohya's max-norm,
which reads the alpha buffer, takes the file's alphas (plan.adapter.max_norm_alphas; was DBS601 / DBS403)."""

from __future__ import annotations

from convert_kit import SDXL, codes, fate, messages, plan_of  # noqa: F401
from convert_kit import empty_hub_cache  # noqa: F401
from dbspec.plan.summary import adapter_rows
from test_init_weights import CONV, MODULES, OUT, Q, TE, _convert, _plan, write_lora

NET = "--network_dim=8 --network_alpha=4 --network_weights=prev.safetensors"
OTHER = {Q: (8, 8.0, 320, 0), OUT: (8, 8.0, 320, 0), TE: (8, 8.0, 768, 0)}  # trained earlier at alpha 8


def test_a_file_of_other_alphas_trains_at_network_alpha_and_warns_that_kohyas_file_differs(tmp_path):
    lora = write_lora(tmp_path / "prev.safetensors", OTHER)
    outcome = _convert(tmp_path, NET)
    assert outcome.written, outcome.diagnostics
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.rank, a.alpha, a.init_alpha, a.init_layers) == (8, 4.0, "ignore", 3)
    assert a.init_weights == str(lora.resolve())
    assert fate(outcome, "network_weights") == "differs"
    said = messages(outcome, "DBS404")
    assert f"`{TE}.alpha` is 8, not the network's 4" in said and "save_weights" in said
    rows = dict(adapter_rows(a))
    assert "alphas ignored" in rows["  starts from"]


def test_a_file_of_the_network_alpha_keeps_the_check(tmp_path):
    write_lora(tmp_path / "prev.safetensors", MODULES)  # alpha 4 everywhere: kohya's and dbspec's agree
    outcome = _convert(tmp_path, NET)
    a = plan_of(outcome, tmp_path).adapter
    assert a.init_alpha == "match" and "DBS404" not in codes(outcome)
    assert fate(outcome, "network_weights") == "mapped"


def test_conv_modules_compare_with_conv_alpha_and_sdxl_converts_alike(tmp_path):
    # a k x k convolution at conv_alpha 1 (the network's), Linears at another alpha: SD 1.5
    write_lora(tmp_path / "prev.safetensors", {**MODULES, CONV: (4, 1.0, 320, 3)})
    outcome = _convert(tmp_path, NET + ' --network_args "conv_dim=4" "conv_alpha=1"')
    assert plan_of(outcome, tmp_path).adapter.init_alpha == "match"
    write_lora(tmp_path / "prev.safetensors", {**MODULES, CONV: (4, 2.0, 320, 3)})
    outcome = _convert(tmp_path, NET + ' --network_args "conv_dim=4" "conv_alpha=1"')
    a = plan_of(outcome, tmp_path).adapter
    assert (a.conv_rank, a.conv_alpha, a.init_alpha) == (4, 1.0, "ignore")
    assert f"`{CONV}.alpha` is 2, not the network's 1" in messages(outcome, "DBS404")


def test_sdxl_original_layout_file_of_other_alphas(tmp_path):
    from convert_kit import images, kohya

    modules = {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_out_0": (8, 16.0, 640, 0),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (8, 16.0, 768, 0),
    }
    write_lora(tmp_path / "prev.safetensors", modules)
    images(tmp_path / "x" / "10_ohwx", 3, (1024, 1024))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
        f"--train_data_dir=x --resolution=1024 --network_module=networks.lora {NET} --learning_rate=1e-4 "
        "--max_train_steps=200 --save_model_as=safetensors",
    )
    a = plan_of(outcome, tmp_path).adapter
    assert (a.alpha, a.init_alpha, a.init_layers) == (4.0, "ignore", 2)
    assert "is 16, not the network's 4" in messages(outcome, "DBS404")


def test_a_spec_that_does_not_say_so_is_refused_and_one_that_does_plans(tmp_path):
    lora = write_lora(tmp_path / "prev.safetensors", OTHER)
    text = "[train]\ntext_encoder = true"
    planned = _plan(tmp_path, 'rank = 8\nalpha = 4.0\ninit_weights = "prev.safetensors"', text)
    (hit,) = [d for d in planned.diagnostics if d.code == "DBS356"]
    assert f"`{TE}.alpha` is 8; adapter.alpha is 4" in hit.message and str(lora.resolve()) in hit.message
    assert 'init_alpha = "ignore"' in hit.help
    planned = _plan(
        tmp_path, 'rank = 8\nalpha = 4.0\ninit_weights = "prev.safetensors"\ninit_alpha = "ignore"', text
    )
    assert planned.plan is not None, planned.diagnostics
    assert (planned.plan.adapter.alpha, planned.plan.adapter.init_alpha) == (4.0, "ignore")
    # the rank still has to fit: only the alphas are not read
    planned = _plan(
        tmp_path, 'rank = 16\nalpha = 4.0\ninit_weights = "prev.safetensors"\ninit_alpha = "ignore"', text
    )
    (hit,) = [d for d in planned.diagnostics if d.code == "DBS356"]
    assert "has rank 8" in hit.message


def test_kohyas_max_norm_takes_the_files_alphas(tmp_path):
    """kohya's apply_max_norm_regularization scales each update by the module's alpha buffer, which
    load_weights set from the file (was DBS601 / DBS403): the plan carries the file's alphas by module name
    for dbspec's max-norm while the layers train at network_alpha."""
    write_lora(tmp_path / "prev.safetensors", {**OTHER, Q: (8, 2.0, 320, 0)})
    adapter = (
        'rank = 8\nalpha = 4.0\ninit_weights = "prev.safetensors"\ninit_alpha = "ignore"\nmax_norm = 1.0'
    )
    planned = _plan(tmp_path, adapter, "[train]\ntext_encoder = true")
    assert planned.plan is not None, planned.diagnostics
    a = planned.plan.adapter
    assert (a.alpha, a.init_alpha, a.max_norm, a.max_norm_form) == (4.0, "ignore", 1.0, "kohya")
    assert a.max_norm_alphas == {Q: 2.0, OUT: 8.0, TE: 8.0}
    # LyCORIS's max-norm takes the module's own scale: no file alphas
    planned = _plan(tmp_path, adapter + '\nmax_norm_form = "lycoris"', "[train]\ntext_encoder = true")
    assert planned.plan is not None and planned.plan.adapter.max_norm_alphas == {}
    # without max-norm nothing is carried
    planned = _plan(tmp_path, adapter.replace("max_norm = 1.0", ""), "[train]\ntext_encoder = true")
    assert planned.plan.adapter.max_norm_alphas == {}
    outcome = _convert(tmp_path, NET + " --scale_weight_norms=1")
    assert outcome.written, outcome.diagnostics
    assert fate(outcome, "scale_weight_norms") == "mapped" and "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.alpha, a.init_alpha, a.max_norm) == (4.0, "ignore", 1.0)
    assert a.max_norm_alphas == {Q: 2.0, OUT: 8.0, TE: 8.0}
    assert "the starting file's alphas (3)" in dict(adapter_rows(a))["  max norm"]
    assert "is 8, not the network's 4" in messages(outcome, "DBS404")


def test_a_file_at_the_networks_alpha_carries_its_exact_values(tmp_path):
    """With the file's alphas the network's ("match", checked to 1e-3) kohya's max-norm still reads the
    buffer: the file's exact value (0.3 stored in fp16 is 0.2998...), not network_alpha's."""
    import numpy as np

    write_lora(tmp_path / "prev.safetensors", {Q: (8, 0.3, 320, 0)})
    outcome = _convert(
        tmp_path,
        "--network_dim=8 --network_alpha=0.3 --network_weights=prev.safetensors --scale_weight_norms=1",
    )
    assert fate(outcome, "scale_weight_norms") == "mapped", outcome.diagnostics
    a = plan_of(outcome, tmp_path).adapter
    assert (a.alpha, a.init_alpha) == (0.3, "match")
    assert a.max_norm_alphas == {Q: float(np.float16(0.3))} and a.max_norm_alphas[Q] != 0.3


def test_a_lora_flux_file_of_other_alphas_trains_at_network_alpha(tmp_path):
    """networks.lora_flux's LoRAModule alike: the README's network (dim 16, alpha 8) from a file saved at
    alpha 2 plans at alpha 8 with the file's alphas unread (no scale unfolded from its lora_up)."""
    from test_convert_lora_flux import _flux, _kohya_flux_file

    _kohya_flux_file(tmp_path / "prev.safetensors", rank=16, alpha=2.0)
    outcome = _flux(tmp_path, "--network_weights prev.safetensors")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank, a.alpha, a.init_alpha, a.init_layers) == (16, 8.0, "ignore", 3)
    assert "is 2, not the network's 8" in messages(outcome, "DBS404")
    # alpha 1: the rank-0 blocks' (modules kohya does not build) is not the run's
    _kohya_flux_file(tmp_path / "prev.safetensors", rank=16, alpha=1.0)
    outcome = _flux(tmp_path, "--network_weights prev.safetensors")
    assert plan_of(outcome, tmp_path).adapter.init_alpha == "ignore"
    _kohya_flux_file(tmp_path / "prev.safetensors", rank=16, alpha=8.0)  # the network's: nothing to say
    outcome = _flux(tmp_path, "--network_weights prev.safetensors")
    assert plan_of(outcome, tmp_path).adapter.init_alpha == "match" and "DBS404" not in codes(outcome)
