"""kohya's bitsandbytes Lion optimizers (issue 12): sd-scripts library/train_util.py get_optimizer builds
`bnb.optim.Lion8bit` for optimizer_type "Lion8bit" and `bnb.optim.PagedLion8bit` for "PagedLion8bit"
(lower-cased, in its "8bit" branch), and any `bitsandbytes.optim.<Class>` path as written, each as
`cls(params, lr=learning_rate, **optimizer_args)`. dbspec has them as lion8bit, paged_lion, paged_lion8bit,
the same classes. Expected values: bitsandbytes 0.50's constructor defaults (inspect.signature: betas
(0.9, 0.99), weight_decay 0) unless optimizer_args give others."""

from __future__ import annotations

import inspect

import pytest

from convert_kit import (
    exact,
    kohya_lora,
    SD15,
    SDXL,
    empty_hub_cache,  # noqa: F401 (an autouse fixture)
    fate,
    images,
    kohya,
    messages,
    plan_of,
    write,
)


def _bnb_defaults(class_name: str) -> dict:
    """The constructor defaults of the bitsandbytes class kohya builds (read from the installed package)."""
    bnb = pytest.importorskip("bitsandbytes")
    sig = inspect.signature(getattr(bnb.optim, class_name).__init__)
    return {
        "betas": tuple(sig.parameters["betas"].default),
        "weight_decay": sig.parameters["weight_decay"].default,
    }


def test_sdxl_lora_lion8bit_config_file_with_betas_and_weight_decay(tmp_path):
    """An SDXL LoRA config as kohya users write it: Lion8bit with its usual lower LR and weight decay."""
    images(tmp_path / "img" / "10_ohwx woman", 3, (1024, 1024))
    write(
        tmp_path / "config.toml",
        f"""
pretrained_model_name_or_path = "{SDXL}"
train_data_dir = "img"
resolution = "1024,1024"
network_module = "networks.lora"
network_dim = 32
network_alpha = 16
learning_rate = 3e-5
unet_lr = 3e-5
text_encoder_lr = 1e-5
max_train_steps = 1600
optimizer_type = "Lion8bit"
optimizer_args = [ "betas=(0.95, 0.98)", "weight_decay=0.1" ]
lr_scheduler = "cosine"
max_grad_norm = 1.0
""",
    )
    outcome = exact(
        kohya(
            tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train_network.py"
        )
    )
    assert fate(outcome, "optimizer_type") == "mapped" and fate(outcome, "optimizer_args") == "mapped"
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.lr, o.betas, o.weight_decay) == ("lion8bit", 3e-5, (0.95, 0.98), 0.1)
    assert o.text_encoder_lr == 1e-5


def test_paged_lion8bit_from_the_command_line_keeps_bitsandbytes_defaults(tmp_path):
    outcome = exact(kohya_lora(tmp_path, "--optimizer_type PagedLion8bit"))
    assert fate(outcome, "optimizer_type") == "mapped"
    o = plan_of(outcome, tmp_path).optimizer
    expected = _bnb_defaults("PagedLion8bit")
    assert (o.kind, o.betas, o.weight_decay) == (
        "paged_lion8bit",
        expected["betas"],
        expected["weight_decay"],
    )


def test_paged_lion8bit_with_optimizer_args_in_a_config(tmp_path):
    images(tmp_path / "img" / "5_sks dog", 2, (512, 512))
    write(
        tmp_path / "config.toml",
        f"""
pretrained_model_name_or_path = "{SD15}"
train_data_dir = "img"
resolution = "512"
network_module = "networks.lora"
network_dim = 8
learning_rate = 2e-5
max_train_steps = 400
optimizer_type = "pagedlion8bit"
optimizer_args = [ "weight_decay=0.05", "betas=0.9,0.98", "min_8bit_size=4096" ]
""",
    )
    outcome = exact(
        kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch train_network.py")
    )
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.betas, o.weight_decay, o.lr) == ("paged_lion8bit", (0.9, 0.98), 0.05, 2e-5)


@pytest.mark.parametrize(
    ("path", "kind", "class_name"),
    [
        ("bitsandbytes.optim.Lion8bit", "lion8bit", "Lion8bit"),
        ("bitsandbytes.optim.PagedLion", "paged_lion", "PagedLion"),
        ("bitsandbytes.optim.PagedLion32bit", "paged_lion", "PagedLion32bit"),
        ("bitsandbytes.optim.PagedLion8bit", "paged_lion8bit", "PagedLion8bit"),
    ],
)
def test_each_lion_class_path_converts_to_its_kind_with_the_class_defaults(tmp_path, path, kind, class_name):
    outcome = exact(kohya_lora(tmp_path, f"--optimizer_type {path}"))
    o = plan_of(outcome, tmp_path).optimizer
    expected = _bnb_defaults(class_name)
    assert (o.kind, o.betas, o.weight_decay) == (kind, expected["betas"], expected["weight_decay"])


def test_a_full_fine_tune_class_path_with_arguments(tmp_path):
    images(tmp_path / "img" / "20_ohwx man", 3, (512, 512))
    write(
        tmp_path / "config.toml",
        f"""
pretrained_model_name_or_path = "{SD15}"
train_data_dir = "img"
resolution = "512,512"
learning_rate = 1e-6
max_train_steps = 800
optimizer_type = "bitsandbytes.optim.PagedLion"
optimizer_args = [ "betas=(0.9, 0.999)", "weight_decay=1e-2", "optim_bits=32" ]
""",
    )
    outcome = exact(
        kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch train_db.py")
    )
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.betas, o.weight_decay, o.lr) == ("paged_lion", (0.9, 0.999), 0.01, 1e-6)


@pytest.mark.parametrize(
    ("args", "kind"),
    [
        ('--optimizer_type Lion8bit --optimizer_args "is_paged=True"', "paged_lion8bit"),
        ('--optimizer_type Lion8bit --optimizer_args "is_paged=False"', "lion8bit"),
        ('--optimizer_type bitsandbytes.optim.PagedLion --optimizer_args "optim_bits=8"', "paged_lion8bit"),
    ],
)
def test_is_paged_and_optim_bits_pick_the_class(tmp_path, args, kind):
    """bitsandbytes' Lion8bit(is_paged=True) is PagedLion8bit; PagedLion(optim_bits=8) is PagedLion8bit."""
    plan = plan_of(exact(kohya_lora(tmp_path, args)), tmp_path)
    assert plan.optimizer.kind == kind


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ('--optimizer_type Lion8bit --optimizer_args "eps=1e-8"', "`eps`"),  # Lion has no eps
        ('--optimizer_type PagedLion8bit --optimizer_args "is_paged=True"', "`is_paged`"),
        ('--optimizer_type Lion8bit --optimizer_args "betas=0.9"', "a pair of numbers"),
        ('--optimizer_type Lion8bit --optimizer_args "lr=1e-3"', "twice"),
    ],
)
def test_arguments_the_bitsandbytes_constructor_refuses_are_invalid(tmp_path, args, needle):
    outcome = kohya_lora(tmp_path, args)
    assert outcome.exit_code == 1 and needle in messages(outcome, "DBS402")


@pytest.mark.parametrize("name", ["PagedLion", "PagedLion32bit"])
def test_a_bare_paged_lion_name_is_invalid_as_kohya_looks_it_up_in_torch_optim(tmp_path, name):
    outcome = kohya_lora(tmp_path, f"--optimizer_type {name}")
    assert outcome.exit_code == 1 and fate(outcome, "optimizer_type") == "invalid"
    found = [d for d in outcome.diagnostics if d.code == "DBS402"]
    assert "torch.optim" in found[0].message and "bitsandbytes.optim.PagedLion" in found[0].help


def test_a_min_8bit_size_other_than_the_default_is_the_optimizer_option(tmp_path):
    """Was DBS403: bitsandbytes keeps 32-bit state for tensors under min_8bit_size elements (issue 12)."""
    outcome = exact(kohya_lora(tmp_path, '--optimizer_type Lion8bit --optimizer_args "min_8bit_size=16384"'))
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.min_8bit_size) == ("lion8bit", 16384)


def test_use_lion_optimizer_stays_lion_pytorch(tmp_path):
    """kohya's --use_lion_optimizer is optimizer_type Lion: lion_pytorch's, not bitsandbytes'."""
    plan = plan_of(exact(kohya_lora(tmp_path, "--use_lion_optimizer")), tmp_path)
    assert plan.optimizer.kind == "lion"


@pytest.mark.parametrize(
    ("kind", "module", "class_name"),
    [
        ("lion", "lion_pytorch", "Lion"),
        ("lion8bit", "bitsandbytes.optim", "Lion8bit"),
        ("paged_lion", "bitsandbytes.optim", "PagedLion"),
        ("paged_lion8bit", "bitsandbytes.optim", "PagedLion8bit"),
    ],
)
def test_a_specs_default_lion_betas_are_the_librarys(kind, module, class_name):
    """A hand-written spec's `kind = "lion"` without betas runs lion_pytorch's Lion at its own defaults
    (0.9, 0.99), as the bitsandbytes kinds run theirs (it defaulted to Adam's 0.999 before)."""
    from dbspec.spec.model import Optimizer

    cls = getattr(pytest.importorskip(module), class_name)
    default = inspect.signature(cls.__init__).parameters["betas"].default
    assert Optimizer(kind=kind).betas == list(default)
