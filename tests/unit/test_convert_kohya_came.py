"""kohya's `optimizer_type = "came_pytorch.CAME"` (issue 12): converted to optimizer.kind = "came", checked,
and asserted on the plan.

Expected values follow sd-scripts library/train_util.py get_optimizer: a class path imported as written
(case-sensitive), built as `CAME(params, lr=learning_rate, **optimizer_args)` with the arguments parsed by
ast.literal_eval; and came_pytorch's CAME constructor (eps=(1e-30, 1e-16), clip_threshold=1.0,
betas=(0.9, 0.999, 0.9999), weight_decay=0.0; `assert lr > 0`, every beta in [0, 1]).
"""

from __future__ import annotations

import inspect

import pytest
from came_pytorch import CAME

from convert_kit import (
    KOHYA_LORA,
    expressible,
    kohya_lora,
    SDXL,
    empty_hub_cache,  # noqa: F401 (an autouse fixture)
    fate,
    images,
    kohya,
    messages,
    plan_of,
    write,
)

# CAME's own defaults, read from its constructor (kohya passes nothing else)
CAME_DEFAULTS = {k: p.default for k, p in inspect.signature(CAME.__init__).parameters.items() if k != "self"}


def test_kohya_ss_gui_sdxl_lora_with_came_and_its_arguments(tmp_path):
    """A kohya_ss GUI SDXL LoRA config_file: CAME with decoupled weight decay and its (default) betas and eps
    written out, as the GUI's optimizer-extra-arguments box passes them."""
    images(tmp_path / "img" / "20_ohwx woman", 4, (1024, 1024))
    write(
        tmp_path / "config_lora.toml",
        f"""
pretrained_model_name_or_path = "{SDXL}"
train_data_dir = "img"
resolution = "1024,1024"
enable_bucket = true
network_module = "networks.lora"
network_dim = 16
network_alpha = 8
learning_rate = 0.0001
unet_lr = 0.0001
text_encoder_lr = 0.00005
max_train_steps = 1600
lr_scheduler = "cosine"
lr_warmup_steps = 80
optimizer_type = "came_pytorch.CAME"
optimizer_args = ["weight_decay=0.01", "betas=(0.9, 0.999, 0.9999)", "eps=(1e-30, 1e-16)"]
max_grad_norm = 1
mixed_precision = "bf16"
save_precision = "bf16"
train_batch_size = 1
""",
    )
    outcome = expressible(
        kohya(
            tmp_path,
            config_file=tmp_path / "config_lora.toml",
            command="accelerate launch sdxl_train_network.py",
        )
    )
    assert fate(outcome, "optimizer_type") == "mapped" and fate(outcome, "optimizer_args") == "mapped"
    o = plan_of(outcome, tmp_path).optimizer
    assert o.kind == "came" and o.came is not None
    assert (o.lr, o.text_encoder_lr, o.weight_decay) == (1e-4, 5e-5, 0.01)
    assert o.betas == (0.9, 0.999, 0.9999) and o.came.eps == (1e-30, 1e-16)
    assert o.came.clip_threshold == CAME_DEFAULTS["clip_threshold"]


def test_command_line_came_with_its_own_clip_betas_and_eps(tmp_path):
    outcome = expressible(
        kohya_lora(
            tmp_path,
            '--optimizer_type came_pytorch.CAME --optimizer_args "betas=0.9,0.99,0.995" clip_threshold=2 '
            '"eps=(1e-29,1e-15)" weight_decay=0.02',
        )
    )
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.betas, o.weight_decay) == ("came", (0.9, 0.99, 0.995), 0.02)
    assert (o.came.clip_threshold, o.came.eps) == (2.0, (1e-29, 1e-15))
    assert isinstance(o.came.clip_threshold, float)  # clip_threshold=2 is an int literal


def test_came_without_arguments_takes_cames_defaults_not_dbspecs(tmp_path):
    """kohya passes only lr: CAME's weight_decay 0.0 (dbspec's own default is 1e-2), its betas and eps."""
    outcome = expressible(kohya_lora(tmp_path, "--optimizer_type came_pytorch.CAME"))
    o = plan_of(outcome, tmp_path).optimizer
    assert o.kind == "came" and o.lr == 1e-4
    assert o.weight_decay == CAME_DEFAULTS["weight_decay"]
    assert o.betas == CAME_DEFAULTS["betas"] and o.came.eps == CAME_DEFAULTS["eps"]
    assert o.came.clip_threshold == CAME_DEFAULTS["clip_threshold"]


@pytest.mark.parametrize("name", ["came_pytorch.came", "Came_pytorch.CAME", "CAME_PYTORCH.CAME"])
def test_came_in_the_wrong_case_is_invalid(tmp_path, name):
    outcome = kohya_lora(tmp_path, f"--optimizer_type {name}")
    assert outcome.exit_code == 1 and not outcome.written
    assert "did you mean came_pytorch.CAME" in messages(outcome, "DBS402")


def test_a_bare_came_name_is_invalid_with_the_class_path_as_help(tmp_path):
    """kohya has no CAME branch: getattr(torch.optim, "CAME") raises."""
    outcome = kohya_lora(tmp_path, "--optimizer_type CAME")
    assert outcome.exit_code == 1 and "torch.optim" in messages(outcome, "DBS402")
    assert any(d.help == 'optimizer_type = "came_pytorch.CAME"' for d in outcome.diagnostics)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ("amsgrad=True", "`amsgrad`: came_pytorch.CAME's constructor has no such argument (TypeError)"),
        ("lr=1e-3", "gets it twice (TypeError)"),
        ('"betas=0.9,0.999"', "expected three numbers such as betas=0.9,0.999,0.9999"),
        ('"betas=0.9,0.999,1.5"', "CAME asserts every beta is in [0, 1]"),
        ("eps=1e-30", "takes a pair such as eps=(1e-30,1e-16)"),
    ],
)
def test_came_arguments_its_constructor_refuses_are_invalid(tmp_path, args, says):
    outcome = kohya_lora(tmp_path, f"--optimizer_type came_pytorch.CAME --optimizer_args {args}")
    assert outcome.exit_code == 1 and says in messages(outcome, "DBS402")


def test_came_arguments_match_its_constructor():
    """The keywords the converter accepts for came_pytorch.CAME are exactly its constructor's."""
    from dbspec.convert.common.optimizers import _KOHYA_ACCEPTS

    assert set(_KOHYA_ACCEPTS["came"]) == set(CAME_DEFAULTS) - {"params", "lr"}


def test_a_learning_rate_of_0_is_invalid_with_came(tmp_path):
    """kohya passes lr=learning_rate to CAME even when unet_lr and text_encoder_lr set the groups' rates, and
    CAME asserts lr > 0."""
    base = KOHYA_LORA.replace(
        "--learning_rate 1e-4", "--learning_rate 0 --unet_lr 1e-4 --text_encoder_lr 5e-5"
    )
    outcome = kohya_lora(tmp_path, "--optimizer_type came_pytorch.CAME", base=base)
    assert outcome.exit_code == 1 and "asserts lr > 0" in messages(outcome, "DBS402")
    adamw = expressible(
        kohya_lora(tmp_path / "adamw", "--optimizer_type AdamW", base=base)
    )  # AdamW takes lr 0
    assert plan_of(adamw, tmp_path / "adamw").optimizer.lr == 1e-4
