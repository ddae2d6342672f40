"""kohya's `--scale_weight_norms` (max-norm regularisation after each step; train_network.py calls the
network's apply_max_norm_regularization): once refused (DBS403), now `adapter.max_norm` for kohya's own
LoRA networks (networks.lora, lora_flux, lora_sd3: they share one implementation). Off when unset or 0
(train_network.py tests `if args.scale_weight_norms`); for lycoris.kohya LyCORIS's own variant
(`max_norm_form = "lycoris"`: a per-module scalar, LoKr's factors), inert where its modules scale nothing;
invalid where kohya would crash (split_qkv) or produce NaN (a negative
limit)."""

from __future__ import annotations

import pytest

from convert_kit import SD15, SDXL, codes, component_file, empty_hub_cache, errors, fate, images  # noqa: F401
from convert_kit import kohya, messages, plan_of, write

# A kohya_ss GUI LoRA dump (its "Save config" TOML, the keys train_network.py reads), SDXL at 1024
GUI_DUMP = """\
bucket_no_upscale = true
bucket_reso_steps = 64
cache_latents = true
caption_extension = ".txt"
enable_bucket = true
gradient_accumulation_steps = 1
gradient_checkpointing = true
huber_c = 0.1
huber_schedule = "snr"
learning_rate = 0.0001
loss_type = "l2"
lr_scheduler = "cosine"
lr_scheduler_num_cycles = 1
lr_warmup_steps = 0
max_bucket_reso = 2048
max_data_loader_n_workers = 0
max_grad_norm = 1
max_timestep = 1000
max_train_steps = 1600
min_bucket_reso = 256
mixed_precision = "bf16"
network_alpha = 16
network_dim = 32
network_module = "{module}"
{network_args}
no_half_vae = true
optimizer_type = "AdamW"
output_dir = "out"
output_name = "sks-dog"
pretrained_model_name_or_path = "{model}"
prior_loss_weight = 1
resolution = "1024,1024"
save_every_n_epochs = 1
save_model_as = "safetensors"
save_precision = "bf16"
scale_weight_norms = {norms}
sdpa = true
seed = 1234
text_encoder_lr = 5e-05
train_batch_size = 1
train_data_dir = "img"
unet_lr = 0.0001
"""


def _gui(tmp_path, norms, module: str = "networks.lora", network_args: str = ""):
    images(tmp_path / "img" / "20_sks dog", 3, (1024, 1024))
    config = GUI_DUMP.format(model=SDXL, module=module, network_args=network_args, norms=norms)
    write(tmp_path / "cfg.toml", config)
    return kohya(
        tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch sdxl_train_network.py"
    )


def test_a_gui_dump_with_scale_weight_norms_plans_max_norm(tmp_path):
    outcome = _gui(tmp_path, 5)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.kind, a.rank, a.alpha, a.max_norm) == ("lora", 32, 16.0, 5.0)
    assert fate(outcome, "scale_weight_norms") == "mapped"
    assert "max_norm = 5.0" in (tmp_path / "specs" / "converted.toml").read_text()


@pytest.mark.parametrize("norms", [0, 0.0])
def test_zero_is_off(tmp_path, norms):
    outcome = _gui(tmp_path, norms)
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.max_norm == 0.0 and fate(outcome, "scale_weight_norms") == "inert"
    assert "max_norm" not in (tmp_path / "specs" / "converted.toml").read_text()


def test_locon_through_networks_lora_keeps_it(tmp_path):
    """networks.lora's conv_dim modules take part too (their 3x3 update as a convolution)."""
    outcome = _gui(tmp_path, 1.5, network_args='network_args = ["conv_dim=8", "conv_alpha=4"]')
    a = plan_of(outcome, tmp_path).adapter
    assert (a.conv_rank, a.conv_alpha, a.max_norm) == (8, 4.0, 1.5)


@pytest.mark.parametrize(
    "args, kind, tucker",
    [
        ('"algo=locon", "conv_dim=8", "conv_alpha=4", "use_tucker=True"', "lora", True),
        ('"algo=loha", "conv_dim=4", "conv_alpha=2"', "loha", False),
        ('"algo=lokr", "factor=8"', "lokr", False),
        ('"algo=loha", "conv_dim=4", "conv_alpha=2", "dora_wd=True"', "loha", False),
    ],
)
def test_lycoris_plans_lycoris_max_norm(tmp_path, args, kind, tucker):
    """lycoris.kohya's apply_max_norm_regularization calls each module's own: LyCORIS's form in the plan."""
    outcome = _gui(tmp_path, 1.5, module="lycoris.kohya", network_args=f"network_args = [{args}]")
    assert fate(outcome, "scale_weight_norms") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.max_norm, a.max_norm_form, a.tucker) == (kind, 1.5, "lycoris", tucker)
    assert a.dora == ("dora_wd" in args) and a.dora_form == ("lycoris" if a.dora else "peft")
    if kind == "lokr":
        assert a.factor == 8
    else:
        assert a.conv_rank == {"lora": 8, "loha": 4}[kind]


def test_lycoris_algos_without_max_norm_are_inert(tmp_path):
    """LyCORIS's full / IA3 modules keep the base apply_max_norm (nothing scaled)."""
    outcome = _gui(tmp_path, 1, module="lycoris.kohya", network_args='network_args = ["algo=full"]')
    assert fate(outcome, "scale_weight_norms") == "inert"
    assert plan_of(outcome, tmp_path).adapter.max_norm == 0.0


@pytest.mark.parametrize(
    ("args", "kind", "constraint", "rescaled", "bypass"),
    [
        ('"algo=diag-oft", "preset=attn-mlp"', "diag-oft", 0.0, False, False),
        (
            '"algo=diag-oft", "constraint=1e-4", "rescaled=True", "bypass_mode=True"',
            "diag-oft",
            1e-4,
            True,
            True,
        ),
        ('"algo=boft", "preset=attn-mlp"', "boft", 0.0, False, False),
        ('"algo=boft", "preset=attn-mlp", "rescaled=True", "bypass_mode=True"', "boft", 0.0, True, True),
    ],
)
def test_lycoris_oft_plans_its_blocks_max_norm(tmp_path, args, kind, constraint, rescaled, bypass):
    """Diag-OFT's and BOFT's apply_max_norm scale their trained blocks (once DBS403): LyCORIS's form."""
    outcome = _gui(tmp_path, 0.5, module="lycoris.kohya", network_args=f"network_args = [{args}]")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "scale_weight_norms") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.max_norm, a.max_norm_form, a.oft_block_size) == (kind, 0.5, "lycoris", 32)
    assert (a.oft_constraint, a.oft_rescaled, a.bypass) == (constraint, rescaled, bypass)
    from dbspec.plan.summary import adapter_rows

    assert "blocks' norm exceeds it" in dict(adapter_rows(a))["  max norm"]
    assert "max_norm = 0.5" in (tmp_path / "specs" / "converted.toml").read_text()


def test_lycoris_oft_max_norm_on_the_command_line(tmp_path):
    """The same from a command line (sdxl_train_network.py with its flags), BOFT."""
    images(tmp_path / "img" / "20_sks dog", 3, (1024, 1024))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path {SDXL} "
        "--train_data_dir img --output_dir out --resolution 1024 --network_module lycoris.kohya "
        '--network_dim 16 --network_args "algo=boft" "preset=attn-only" --scale_weight_norms 2 '
        "--learning_rate 1e-4 --max_train_steps 100",
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.max_norm, a.max_norm_form, a.oft_block_size) == ("boft", 2.0, "lycoris", 16)


@pytest.mark.parametrize(
    ("args", "kind"),
    [
        ('"algo=loha", "rank_dropout=0.1", "conv_dim=4"', "loha"),
    ],
)
def test_lycoris_loha_lokr_rank_dropout_with_max_norm_converts(tmp_path, args, kind):
    """LoHa's norm draws the rank-dropout mask in training mode, as dbspec's does (once DBS403); LoKr's
    crashes kohya on a GPU (below)."""
    outcome = _gui(tmp_path, 1, module="lycoris.kohya", network_args=f"network_args = [{args}]")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "scale_weight_norms") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.max_norm, a.max_norm_form) == (kind, 1.0, "lycoris")
    assert a.rank_dropout == (0.1 if kind == "loha" else 0.25) and not a.rank_dropout_scale
    from dbspec.plan.summary import adapter_rows

    assert "rank-dropout mask drawn inside the norm" in dict(adapter_rows(a))["  max norm"]


def test_lycoris_rank_dropout_on_the_command_line(tmp_path):
    images(tmp_path / "img" / "20_sks dog", 3, (1024, 1024))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path {SDXL} "
        "--train_data_dir img --output_dir out --resolution 1024 --network_module lycoris.kohya "
        '--network_dim 8 --network_alpha 4 --network_args "algo=loha" "rank_dropout=0.2" '
        "--scale_weight_norms 1.5 --learning_rate 1e-4 --max_train_steps 100",
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.max_norm, a.max_norm_form, a.rank_dropout) == ("loha", 8, 1.5, "lycoris", 0.2)


def test_a_negative_limit_is_invalid(tmp_path):
    outcome = _gui(tmp_path, -1)
    assert fate(outcome, "scale_weight_norms") == "invalid" and "NaN" in "".join(errors(outcome))


FLUX = "black-forest-labs/FLUX.1-dev"
FLUX_CONFIG = """\
pretrained_model_name_or_path = "{model}"
clip_l = "clip_l.safetensors"
t5xxl = "t5.safetensors"
ae = "ae.safetensors"
train_data_dir = "x"
resolution = "512"
network_module = "networks.lora_flux"
network_dim = 16
network_alpha = 8.0
network_args = [{args}]
network_train_unet_only = true
learning_rate = 1e-4
max_train_steps = 100
mixed_precision = "bf16"
scale_weight_norms = 2.0
"""


def _flux(tmp_path, args: str):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "t5.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    config = write(tmp_path / "flux.toml", FLUX_CONFIG.format(model=FLUX, args=args))
    return kohya(tmp_path, script="flux_train_network", config_file=config)


def test_lora_flux_fused_layers_plan_max_norm(tmp_path):
    outcome = _flux(tmp_path, '"train_blocks=double"')
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.max_norm == 2.0 and [f.name for f in plan.adapter.fused] == [
        "img_attn_qkv",
        "txt_attn_qkv",
    ]
    assert fate(outcome, "scale_weight_norms") == "mapped"


def test_lora_flux_split_qkv_is_invalid(tmp_path):
    """kohya's apply_max_norm_regularization takes a split module's lora_down.N.weight for its alpha."""
    outcome = _flux(tmp_path, '"train_blocks=single", "split_qkv=True"')
    assert fate(outcome, "scale_weight_norms") == "invalid"
    assert "split_qkv" in "".join(errors(outcome))


@pytest.mark.parametrize("bypass", ["", ', "bypass_mode=True"'])
def test_lycoris_locon_rank_dropout_with_max_norm_converts(tmp_path, bypass):
    """LoConModule.apply_max_norm calls make_weight, which in training mode draws a row mask
    `torch.rand(out, device=accelerator.device)` inside each norm, in bypass mode too: dbspec's LyCORIS max
    norm draws it the same way (was DBS403; against LoConModule: tests/runtime/test_lycoris_max_norm.py)."""
    args = f'network_args = ["algo=locon", "rank_dropout=0.1", "conv_dim=4"{bypass}]'
    outcome = _gui(tmp_path, 1, module="lycoris.kohya", network_args=args)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "scale_weight_norms") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.max_norm, a.max_norm_form, a.rank_dropout) == ("lora", 1.0, "lycoris", 0.1)
    assert a.rank_dropout_form == ("lycoris_bypass" if bypass else "lycoris")
    from dbspec.plan.summary import adapter_rows

    assert "rank-dropout mask drawn inside the norm" in dict(adapter_rows(a))["  max norm"]


@pytest.mark.parametrize("bypass", ["", ', "bypass_mode=True"'])
@pytest.mark.parametrize("norms", [0, 1])
def test_lycoris_lokr_rank_dropout_crashes_kohya_on_a_gpu(tmp_path, bypass, norms):
    """LyCORIS's LoKr multiplies its GPU weight by a CPU rank-dropout mask (LyCORIS issue #291): in the
    training forward (not in bypass mode) and in apply_max_norm (both): kohya raises at the first step."""
    args = f'network_args = ["algo=lokr", "rank_dropout=0.25"{bypass}]'
    outcome = _gui(tmp_path, norms, module="lycoris.kohya", network_args=args)
    crashes = not bypass or norms
    assert ("DBS402" in codes(outcome)) == bool(crashes), errors(outcome)
    if crashes:
        assert any("two devices" in e for e in errors(outcome)), errors(outcome)
    else:  # its bypass forward draws no mask: nothing to drop
        assert plan_of(outcome, tmp_path).adapter.rank_dropout == 0
        assert "never draws its rank-dropout mask" in messages(outcome, "DBS405")
