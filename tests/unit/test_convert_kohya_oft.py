"""kohya's own OFT network (`network_module = "networks.oft"`, sd-scripts networks/oft.py): once refused
(DBS403), now [adapter] kind "diag-oft" with form "kohya". The expectations are what kohya's create_network
and OFTNetwork do with the arguments (network_dim the block count, network_alpha the constraint per row,
`enable_all_linear` / `enable_conv` read as bool() of a string, the U-Net alone), not read back from the
converter; tests/runtime/test_kohya_oft.py checks the layers against kohya's OFTModule."""

from __future__ import annotations

import pytest
from convert_kit import SD15, SDXL, codes, errors, expressible, fate, images, kohya, messages, plan_of, write

from dbspec.spec.model import KOHYA_CONV_TARGETS

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
ALL_LINEAR = {*ATTENTION, "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"}

SD15_TOML = """\
pretrained_model_name_or_path = "{model}"
train_data_dir = "img"
resolution = "512,512"
output_dir = "out"
output_name = "oft_cat"
network_module = "networks.oft"
network_dim = 8
network_alpha = 0.001
{extra}
learning_rate = 1e-4
unet_lr = 1e-4
text_encoder_lr = 5e-5
optimizer_type = "AdamW"
max_train_steps = 800
mixed_precision = "fp16"
save_precision = "fp16"
save_model_as = "safetensors"
"""


def _toml(tmp_path, extra: str = "", model: str = SD15, script: str = "train_network.py"):
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    write(tmp_path / "cfg.toml", SD15_TOML.format(model=model, extra=extra))
    return kohya(tmp_path, config_file=tmp_path / "cfg.toml", command=f"accelerate launch {script}")


def test_sd15_attention_blocks_and_constraint(tmp_path):
    outcome = expressible(_toml(tmp_path))
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.kind, a.oft_form, a.oft_blocks, a.oft_constraint) == ("diag-oft", "kohya", 8, 0.001)
    assert list(a.denoiser_targets) == ATTENTION and a.conv_targets == () and a.text_encoder_targets == ()
    assert not a.oft_rescaled and not a.bypass
    assert plan.train_denoiser and not plan.train_text_encoder  # OFTNetwork adapts the U-Net alone
    assert fate(outcome, "network_module") == "mapped" and fate(outcome, "network_dim") == "mapped"
    assert fate(outcome, "network_alpha") == "mapped"
    assert plan.optimizer.lr == 1e-4
    from dbspec.plan.summary import adapter_rows

    assert dict(adapter_rows(a))["adapter"].startswith("diag-oft (kohya's networks.oft: 8 orthogonal blocks")


@pytest.mark.parametrize(
    ("args", "linear", "convs"),
    [
        ('network_args = ["enable_all_linear=True"]', True, False),
        ('network_args = ["enable_conv=True"]', False, True),
        # create_network's bool() of kohya's string: "False" is true too; an empty value is false
        ('network_args = ["enable_all_linear=False", "enable_conv=0"]', True, True),
        ('network_args = ["enable_all_linear="]', False, False),
    ],
)
def test_network_args_widen_the_targets(tmp_path, args, linear, convs):
    outcome = expressible(_toml(tmp_path, args))
    a = plan_of(outcome, tmp_path).adapter
    expected = set(ALL_LINEAR if linear else ATTENTION) | (
        {"time_emb_proj", "conv_shortcut"} if convs else set()
    )
    assert set(a.denoiser_targets) == expected
    assert list(a.conv_targets) == (KOHYA_CONV_TARGETS if convs else [])


def _sdxl(tmp_path, flags: str):
    """sdxl_train_network.py with networks.oft on the U-Net alone, mixed bf16, and `flags`: its plan."""
    images(tmp_path / "img" / "10_ohwx cat", 2, (1024, 1024))
    command = (
        f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
        "--train_data_dir=img --resolution=1024 --output_dir=out --network_module=networks.oft "
        "--network_train_unet_only --learning_rate=1e-4 --max_train_steps=400 --mixed_precision=bf16 "
        f"--save_model_as=safetensors {flags}"
    )
    return plan_of(expressible(kohya(tmp_path, command=command)), tmp_path)


def test_sdxl_command_line_with_defaults(tmp_path):
    """sdxl_train_network.py; network_dim unset (4 blocks) and network_alpha unset (train_network.py's 1:
    kohya warns it is large, a constraint of the layer's width)."""
    flags = "--network_args enable_all_linear=1 --cache_text_encoder_outputs --optimizer_type=AdamW8bit "
    plan = _sdxl(tmp_path, flags + "--gradient_checkpointing")
    a = plan.adapter
    assert (a.kind, a.oft_form, a.oft_blocks, a.oft_constraint) == ("diag-oft", "kohya", 4, 1.0)
    assert set(a.denoiser_targets) == ALL_LINEAR and not plan.train_text_encoder
    assert "kohya_lora" in plan.checkpoints.exports


def test_sdxl_fp8_base_is_the_cast_backend_under_the_rotation(tmp_path):
    """--fp8_base (was DBS403, a spec's DBS522): the U-Net and the text encoders stored as float8 (the cast
    backend), OFTModule rotating the float8 weight upcast (tests/runtime/test_kohya_oft_fp8_base.py); the
    text encoders carry no OFT layer, so their cast refuses nothing."""
    plan = _sdxl(tmp_path, "--fp8_base")
    quantized = {c.name: c.quantized for c in plan.precision.components}
    assert (plan.adapter.kind, plan.adapter.oft_form, plan.precision.quantize_backend) == (
        "diag-oft",
        "kohya",
        "cast",
    )
    assert quantized["unet"] == "fp8" and quantized["text_encoder"] == "fp8"


def test_what_networks_oft_ignores(tmp_path):
    extra = 'network_args = ["enable_conv=1", "dropout=0.1", "loraplus_lr_ratio=4"]\nnetwork_dropout = 0.1\n'
    extra += "scale_weight_norms = 1.0\n"
    outcome = expressible(_toml(tmp_path, extra))
    assert "DBS405" in codes(outcome)
    ignored = messages(outcome, "DBS405")
    assert "reads only enable_all_linear and enable_conv" in ignored
    assert "never reads the dropout" in ignored and "apply_max_norm_regularization" in ignored
    a = plan_of(outcome, tmp_path).adapter
    assert a.max_norm == 0 and a.conv_targets


@pytest.mark.parametrize("dim", [3, 7, 640])
def test_a_block_count_not_dividing_the_widths_is_what_kohya_crashes_on(tmp_path, dim):
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    write(
        tmp_path / "cfg.toml",
        SD15_TOML.format(model=SD15, extra="").replace("network_dim = 8", f"network_dim = {dim}"),
    )
    outcome = kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    assert outcome.exit_code == 1 and "DBS402" in codes(outcome), errors(outcome)
    assert "does not divide" in messages(outcome, "DBS402")


def test_text_encoder_only_crashes_in_kohya(tmp_path):
    outcome = _toml(tmp_path, "network_train_text_encoder_only = true")
    assert outcome.exit_code == 1 and "asserts apply_unet" in messages(outcome, "DBS402")


def test_not_expressed(tmp_path):
    text = SD15_TOML.format(model=SD15, extra="").replace("network_alpha = 0.001", "network_alpha = -1")
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    write(tmp_path / "cfg.toml", text)
    outcome = kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    assert outcome.exit_code == 1 and "DBS403" in codes(outcome), errors(outcome)


# kohya's networks.oft file (OFTNetwork.save_weights): `oft_unet_<module>.oft_blocks` (blocks, size, size) and
# `.alpha`, saved in the save precision (fp16 here, as kohya casts every tensor)
SD15_ATTN = "oft_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
SD15_FF = "oft_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2"
SD15_CONV = "oft_unet_down_blocks_0_resnets_0_conv1"
SDXL_CONV = "oft_unet_input_blocks_1_0_in_layers_2"


def _oft_file(path, modules: dict[str, tuple[int, int, float]]):
    """{module: (blocks, size, alpha)} as kohya saves it (fp16)."""
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for name, (blocks, size, alpha) in modules.items():
        tensors[f"{name}.oft_blocks"] = torch.full((blocks, size, size), 0.01, dtype=torch.float16)
        tensors[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    save_file(tensors, str(path), {"ss_network_module": "networks.oft"})


def _weights_toml(tmp_path, modules, extra: str, model: str = SD15):
    _oft_file(tmp_path / "prev.safetensors", modules)
    script = "sdxl_train_network.py" if model == SDXL else "train_network.py"
    return _toml(tmp_path, f'network_weights = "prev.safetensors"\n{extra}', model=model, script=script)


def test_network_weights_start_the_blocks_from_kohyas_file(tmp_path):
    """OFTNetwork.load_weights (load_state_dict(strict=False)): adapter.init_weights, init_partial; the
    file's modules of adapted layers count (its feed-forward module, which the attention-only network lacks,
    is ignored: DBS387 at plan time)."""
    modules = {SD15_ATTN: (8, 40, 0.001), SD15_FF: (8, 40, 0.001)}
    outcome = expressible(_weights_toml(tmp_path, modules, ""))
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.init_weights == str(tmp_path / "prev.safetensors") and a.init_partial and a.init_layers == 1
    assert (a.oft_blocks, a.oft_constraint) == (8, 0.001) and list(a.denoiser_targets) == ATTENTION
    assert fate(outcome, "network_weights") == "mapped"


def test_network_weights_of_a_pt_file_start_the_blocks_as_its_safetensors_twin(tmp_path):
    """kohya's save_model_as pt (torch.save of the state dict), which OFTNetwork.load_weights torch.loads:
    converted and planned as the .safetensors file (was DBS403); the fp16 alpha read without torch."""
    import torch
    from safetensors.torch import load_file

    _oft_file(tmp_path / "prev.safetensors", {SD15_ATTN: (8, 40, 0.001)})
    torch.save(load_file(str(tmp_path / "prev.safetensors")), tmp_path / "prev.pt")
    outcome = expressible(_toml(tmp_path, 'network_weights = "prev.pt"'))
    a = plan_of(outcome, tmp_path).adapter
    assert a.init_weights == str(tmp_path / "prev.pt") and a.init_partial and a.init_layers == 1
    assert (a.oft_blocks, a.oft_constraint) == (8, 0.001)


def test_network_weights_with_another_alpha_train_at_network_alphas_constraint(tmp_path):
    """OFTModule's constraint is network_alpha x width, a Python float fixed when it is built; load_weights
    only overwrites the `alpha` buffer (save_weights writes it back): adapter.init_alpha = "ignore" at
    constraint 0.001 and a DBS404 warning naming the module whose alpha differs. The feed-forward module,
    which the attention-only network never loads, is not the one named."""
    modules = {SD15_ATTN: (8, 40, 0.25), SD15_FF: (8, 40, 0.5)}  # exact in fp16
    outcome = expressible(_weights_toml(tmp_path, modules, ""))
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.oft_blocks, a.oft_constraint, a.init_alpha, a.init_layers) == (8, 0.001, "ignore", 1)
    said = messages(outcome, "DBS404")
    assert f"`{SD15_ATTN}.alpha` is 0.25, not the network's 0.001" in said and "save_weights" in said
    assert SD15_FF not in said
    assert fate(outcome, "network_weights") == "differs"
    from dbspec.plan.summary import adapter_rows

    assert "blocks train at the adapter's constraint" in dict(adapter_rows(a))["  starts from"]


def test_network_weights_of_the_network_alpha_keep_the_check(tmp_path):
    """An fp16 alpha of network_alpha (kohya saves every tensor in the save precision) is the network's."""
    outcome = expressible(_weights_toml(tmp_path, {SD15_ATTN: (8, 40, 0.001)}, ""))
    assert plan_of(outcome, tmp_path).adapter.init_alpha == "match" and "DBS404" not in codes(outcome)


def test_dim_from_weights_with_modules_of_other_alphas_trains_all_at_the_first(tmp_path):
    """create_network_from_weights builds every OFTModule at the first `.alpha` of load_file's sorted keys
    (here the convolution's, input_blocks_1 before input_blocks_4, 0.5); the attention module's 0.25 only
    fills its buffer."""
    attention = "oft_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    modules = {attention: (4, 160, 0.25), SDXL_CONV: (4, 80, 0.5)}
    outcome = expressible(_weights_toml(tmp_path, modules, "dim_from_weights = true", model=SDXL))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.oft_blocks, a.oft_constraint, a.init_alpha, a.init_layers) == (4, 0.5, "ignore", 2)
    assert f"`{attention}.alpha` is 0.25, not the network's 0.5" in messages(outcome, "DBS404")


def test_network_weights_with_another_block_count_crash(tmp_path):
    outcome = _weights_toml(tmp_path, {SD15_ATTN: (4, 80, 0.001)}, "")
    assert outcome.exit_code == 1 and "raises on the shape" in messages(outcome, "DBS402")


def test_dim_from_weights_on_sd15(tmp_path):
    """create_network_from_weights: 16 blocks and the fp16 alpha from the file (network_dim 8 / alpha 0.001
    inert), enable_all_linear from a `_ff_` key; kohya detects convolutions by the SDXL name in_layers_2
    alone, so an SD 1.x file's conv1 module builds no convolution module (ignored by the load: DBS387)."""
    import torch

    modules = {SD15_ATTN: (16, 20, 0.001), SD15_FF: (16, 20, 0.001), SD15_CONV: (16, 20, 0.001)}
    outcome = expressible(
        _weights_toml(tmp_path, modules, 'dim_from_weights = true\nnetwork_args = ["enable_conv=True"]')
    )
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    fp16_alpha = float(torch.tensor(0.001, dtype=torch.float16))
    assert (a.oft_blocks, a.oft_constraint) == (16, fp16_alpha)
    assert set(a.denoiser_targets) == ALL_LINEAR and a.conv_targets == ()
    assert a.init_weights and a.init_partial and a.init_layers == 2
    assert fate(outcome, "network_dim") == "inert" and fate(outcome, "network_alpha") == "inert"
    assert "DBS405" in codes(outcome)  # network_args: create_network_from_weights reads none


def test_dim_from_weights_on_sdxl_finds_convolutions_by_in_layers_2(tmp_path):
    modules = {
        "oft_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (4, 160, 0.5),
        SDXL_CONV: (4, 80, 0.5),
        "oft_unet_input_blocks_1_0_emb_layers_1": (4, 80, 0.5),
    }
    outcome = _weights_toml(tmp_path, modules, "dim_from_weights = true", model=SDXL)
    outcome = expressible(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.oft_blocks, a.oft_constraint) == (4, 0.5)
    assert set(a.denoiser_targets) == {*ATTENTION, "time_emb_proj", "conv_shortcut"}
    assert list(a.conv_targets) == KOHYA_CONV_TARGETS and a.init_layers == 3


@pytest.mark.parametrize(
    ("modules", "extra", "words"),
    [
        ({SD15_ATTN: (8, 40, 0.001)}, 'dim_from_weights = true\nnetwork_weights = ""', "not given"),
        ({SD15_ATTN: (3, 40, 0.001)}, "dim_from_weights = true", "does not divide"),
        ({SD15_ATTN: (8, 40, 0.001), SD15_FF: (4, 80, 0.001)}, "dim_from_weights = true", "shapes"),
    ],
)
def test_dim_from_weights_crashes(tmp_path, modules, extra, words):
    if "network_weights" in extra:
        outcome = _toml(tmp_path, extra.replace('network_weights = ""', ""))
    else:
        outcome = _weights_toml(tmp_path, modules, extra)
    assert outcome.exit_code == 1 and words in messages(outcome, "DBS402"), errors(outcome)


def test_a_spec_of_other_alphas_is_refused_unless_init_alpha_ignore(tmp_path):
    """Spec side: kohya's OFT file whose alpha is not adapter.constraint is DBS356 naming init_alpha as the
    way out; with init_alpha = "ignore" it plans at the adapter's constraint; the block count still has to
    fit (only the alphas are unread)."""
    from test_init_weights import _plan

    _oft_file(tmp_path / "prev.safetensors", {SD15_ATTN: (8, 40, 0.25)})
    base = 'form = "kohya"\nblock_count = {}\nconstraint = 0.001\ninit_weights = "prev.safetensors"\n'
    base += 'denoiser_targets = ["to_q", "to_k", "to_v", "to_out.0"]\ntext_encoder_targets = []\n'
    planned = _plan(tmp_path, base.format(8), kind="diag-oft")
    (hit,) = [d for d in planned.diagnostics if d.code == "DBS356"]
    assert f"`{SD15_ATTN}.alpha` is 0.25; adapter.constraint is 0.001" in hit.message
    assert 'init_alpha = "ignore"' in hit.help
    planned = _plan(tmp_path, base.format(8) + 'init_alpha = "ignore"', kind="diag-oft")
    assert planned.plan is not None, planned.diagnostics
    a = planned.plan.adapter
    assert (a.oft_constraint, a.init_alpha, a.init_layers) == (0.001, "ignore", 1)
    planned = _plan(tmp_path, base.format(4) + 'init_alpha = "ignore"', kind="diag-oft")
    (hit,) = [d for d in planned.diagnostics if d.code == "DBS356"]
    assert "holds 8 blocks; adapter.block_count is 4" in hit.message and "init_alpha" not in hit.help
