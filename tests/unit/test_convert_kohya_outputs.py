"""kohya's output formats and state retention from realistic configs: save_model_as "ckpt" / "pt" ->
`checkpoints.export_format` (kohya's pickle files, written by torch.save), and save_last_n_*_state ->
`checkpoints.keep_state`, each exact (no DBS404).

kohya's rules restated from sd-scripts: train_db.py / sdxl_train.py write a single file when save_model_as is
"ckpt" or "safetensors", or when it is unset and the base is a single file, and its suffix is .safetensors
only with use_safetensors or save_model_as "safetensors" (else .ckpt); the LoRA scripts write
"<name>." + save_model_as, with torch.save for every suffix but .safetensors (networks/lora.py
save_weights)."""

from __future__ import annotations

import tomllib

import pytest

from convert_kit import SD15, SDXL, codes, expressible, fate, images, kohya, out_path, plan_of, write


def _full(tmp_path, script: str, base: str, args: str):
    images(tmp_path / "t" / "10_ohwx toy", 2, (1024, 1024))
    return kohya(
        tmp_path,
        command=f"accelerate launch {script} --pretrained_model_name_or_path={base} --train_data_dir=t "
        f"--resolution 1024 --max_train_steps 10 --output_dir out --output_name toy {args}",
    )


def _spec(tmp_path) -> dict:
    return tomllib.loads(out_path(tmp_path).read_text(encoding="utf-8"))


@pytest.mark.parametrize(("script", "base"), [("train_db.py", SD15), ("sdxl_train.py", SDXL)])
def test_full_fine_tune_ckpt_is_a_pickle_single_file(tmp_path, script, base):
    outcome = expressible(_full(tmp_path, script, base, "--save_model_as ckpt --save_precision fp16"))
    c = plan_of(outcome, tmp_path).checkpoints
    assert c.exports == ("single_file",) and c.export_format == "ckpt" and c.name == "toy"
    assert fate(outcome, "save_model_as") == "mapped" and "DBS404" not in codes(outcome)


def test_full_fine_tune_ckpt_with_use_safetensors_is_safetensors(tmp_path):
    # kohya: use_safetensors = args.use_safetensors or "safetensors" in save_model_as -> .safetensors
    outcome = expressible(_full(tmp_path, "train_db.py", SD15, "--save_model_as ckpt --use_safetensors"))
    c = plan_of(outcome, tmp_path).checkpoints
    assert c.exports == ("single_file",) and c.export_format == "safetensors"
    assert fate(outcome, "use_safetensors") == "mapped" and "DBS404" not in codes(outcome)


@pytest.mark.parametrize(("flag", "fmt"), [("", "ckpt"), ("--use_safetensors", "safetensors")])
def test_a_single_file_base_without_save_model_as_keeps_the_format_and_kohyas_suffix(tmp_path, flag, fmt):
    # save_model_as unset: kohya saves a single file (the base's format) and .ckpt unless use_safetensors,
    # whatever the base file's own suffix
    (tmp_path / "base.safetensors").write_bytes(b"")
    outcome = _full(tmp_path, "train_db.py", "base.safetensors", flag)
    assert outcome.written and "DBS404" not in codes(outcome)
    checkpoints = _spec(tmp_path)["checkpoints"]
    assert checkpoints["exports"] == ["single_file"]
    assert checkpoints.get("export_format", "safetensors") == fmt


def test_diffusers_outputs_have_no_export(tmp_path):
    outcome = expressible(_full(tmp_path, "train_db.py", SD15, "--save_model_as diffusers"))
    c = plan_of(outcome, tmp_path).checkpoints
    assert c.exports == () and c.export_format == "safetensors"


LORA_CONFIG = """
pretrained_model_name_or_path = "{base}"
train_data_dir = "d"
resolution = "1024,1024"
network_module = "networks.lora"
network_dim = 16
network_alpha = 8
learning_rate = 1e-4
max_train_steps = 40
output_dir = "out"
output_name = "sks-dog"
save_model_as = "{fmt}"
save_precision = "fp16"
"""


@pytest.mark.parametrize(("script", "base"), [("train_network.py", SD15), ("sdxl_train_network.py", SDXL)])
@pytest.mark.parametrize("fmt", ["ckpt", "pt"])
def test_lora_ckpt_and_pt_are_pickle_kohya_loras(tmp_path, script, base, fmt):
    images(tmp_path / "d" / "10_sks dog", 3, (1024, 1024))
    write(tmp_path / "cfg.toml", LORA_CONFIG.format(base=base, fmt=fmt))
    outcome = expressible(
        kohya(tmp_path, config_file=tmp_path / "cfg.toml", command=f"accelerate launch {script}")
    )
    c = plan_of(outcome, tmp_path).checkpoints
    assert c.exports == ("kohya_lora",) and c.export_format == fmt and c.save_precision == "fp16"
    assert fate(outcome, "save_model_as") == "mapped" and "DBS404" not in codes(outcome)


def test_lora_safetensors_stays_the_default_format(tmp_path):
    images(tmp_path / "d" / "10_sks dog", 3, (1024, 1024))
    write(tmp_path / "cfg.toml", LORA_CONFIG.format(base=SD15, fmt="safetensors"))
    outcome = expressible(
        kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    )
    c = plan_of(outcome, tmp_path).checkpoints
    assert c.exports == ("kohya_lora",) and c.export_format == "safetensors"
    assert "export_format" not in _spec(tmp_path)["checkpoints"]


STATE_CONFIG = """
pretrained_model_name_or_path = "{base}"
train_data_dir = "d"
resolution = "512,512"
network_module = "networks.lora"
network_dim = 8
learning_rate = 1e-4
max_train_epochs = 10
save_every_n_epochs = 1
save_last_n_epochs = {models}
save_state = true
save_last_n_epochs_state = {states}
output_dir = "out"
"""


@pytest.mark.parametrize(("models", "states"), [(5, 2), (2, 4)])
def test_state_counts_from_a_config_file(tmp_path, models, states):
    images(tmp_path / "d" / "1_sks dog", 4, (512, 512))
    write(tmp_path / "cfg.toml", STATE_CONFIG.format(base=SD15, models=models, states=states))
    outcome = expressible(
        kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    )
    c = plan_of(outcome, tmp_path).checkpoints
    # kohya's epoch saves skip the last epoch (its `last` file and `last-state` folder are the end, where
    # dbspec always saves): N epoch saves survive, plus that one
    if states < models:  # the older kept checkpoints lose their state, as kohya removes the state folders
        assert (c.keep, c.keep_state) == (models + 1, states + 1)
    else:  # kohya's extra state folders hold the weights too: each is a whole dbspec checkpoint
        assert (c.keep, c.keep_state) == (states + 1, 0)
    assert fate(outcome, "save_last_n_epochs") == "mapped"
    assert fate(outcome, "save_last_n_epochs_state") == "mapped" and "DBS404" not in codes(outcome)
    assert "kohya keeps the last" in out_path(tmp_path).read_text(encoding="utf-8")


def test_the_plan_summary_shows_state_retention_and_the_pickle_format(tmp_path):
    from tests.runtime.runspec import summary_text

    images(tmp_path / "d" / "1_sks dog", 4, (512, 512))
    config = STATE_CONFIG.format(base=SD15, models=5, states=2) + 'save_model_as = "pt"\n'
    write(tmp_path / "cfg.toml", config)
    outcome = expressible(
        kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    )
    text = summary_text(plan_of(outcome, tmp_path))
    assert "resume state" in text and "the newest 3 checkpoint(s) keep it" in text and "last 6" in text
    assert "export format" in text and ".pt: pickle" in text and "kohya_lora" in text
    write(tmp_path / "cfg.toml", STATE_CONFIG.format(base=SD15, models=2, states=2))
    plain = summary_text(
        plan_of(
            kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py"),
            tmp_path,
        )
    )
    assert "resume state" not in plain and "export format" not in plain  # the defaults add no row
