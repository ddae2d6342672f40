"""Weights & Biases settings of kohya (`log_with`), diffusers (`--report_to`) and SimpleTuner (`report_to`,
`tracker_*`) convert to `[logging] wandb*`; an API key is never written to the spec."""

from __future__ import annotations

import json
import sys

import pytest
from convert_kit import (
    SD15,
    SDXL,
    codes,
    diffusers,
    fate,
    images,
    kohya,
    messages,
    out_path,
    plan_of,
    simpletuner,
    write,
)

pytest.importorskip("wandb")  # the converted specs are checked, and DBS379 needs wandb installed

KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B API key
KOHYA_CONFIG = f"""\
[model_arguments]
pretrained_model_name_or_path = "{SDXL}"

[dataset_arguments]
train_data_dir = "d"
resolution = "1024,1024"

[training_arguments]
output_dir = "out"
output_name = "sks-dog"
max_train_steps = 300
learning_rate = 1e-4
network_module = "networks.lora"
logging_dir = "logs"
log_with = "{{log_with}}"
log_tracker_name = "sks-dog-lora"
wandb_run_name = "sdxl-rank16"
wandb_api_key = "{KEY}"
{{extra}}
"""


def kohya_config(tmp_path, log_with: str = "wandb", extra: str = "", script: str = "sdxl_train_network.py"):
    images(tmp_path / "d" / "10_sks dog", 3, (1024, 1024))
    write(tmp_path / "cfg.toml", KOHYA_CONFIG.format(log_with=log_with, extra=extra))
    return kohya(tmp_path, config_file=tmp_path / "cfg.toml", command=f"accelerate launch {script}")


@pytest.mark.parametrize(("log_with", "tensorboard"), [("wandb", False), ("all", True)])
def test_kohya_log_with_wandb_converts_its_project_run_name_and_leaves_out_the_key(
    tmp_path, log_with, tensorboard
):
    outcome = kohya_config(tmp_path, log_with)
    assert "DBS404" not in codes(outcome), messages(outcome, "DBS404")
    g = plan_of(outcome, tmp_path).logging
    assert (g.wandb, g.tensorboard) == (True, tensorboard)
    assert (g.wandb_project, g.wandb_run_name, g.wandb_entity) == ("sks-dog-lora", "sdxl-rank16", "")
    text = out_path(tmp_path).read_text()
    assert KEY not in text and "wandb login" in text  # the header says how to log in instead
    assert fate(outcome, "wandb_api_key") == "inert"
    assert "a secret" in outcome.conversion.reports["wandb_api_key"].note
    assert {fate(outcome, k) for k in ("log_with", "log_tracker_name", "wandb_run_name")} == {"mapped"}


@pytest.mark.parametrize(
    ("script", "project"),
    [("train_db.py", "dreambooth"), ("sdxl_train.py", "finetuning"), ("train_network.py", "network_train")],
)
def test_kohya_default_tracker_name_is_the_scripts(tmp_path, script, project):
    images(tmp_path / "d" / "10_sks dog", 3, (512, 512))
    base = SDXL if "sdxl" in script else SD15
    line = (
        f"accelerate launch {script} --pretrained_model_name_or_path {base} "
        "--train_data_dir d --resolution 512 --max_train_steps 30 --output_dir out --log_with wandb"
        + (" --network_module networks.lora" if "network" in script else "")
    )
    outcome = kohya(tmp_path, command=line)
    g = plan_of(outcome, tmp_path).logging
    assert (g.wandb, g.tensorboard, g.wandb_project) == (True, False, project)
    assert g.wandb_run_name == "out"  # no wandb_run_name: the output folder's name (kohya: W&B's random one)


def test_kohya_tracker_config_file_replaces_the_run_name(tmp_path):
    write(tmp_path / "trackers.toml", '[wandb]\nname = "from-file"\nentity = "my-team"\ntags = ["dog"]\n')
    outcome = kohya_config(tmp_path, extra='log_tracker_config = "trackers.toml"')
    g = plan_of(outcome, tmp_path).logging
    assert (g.wandb_project, g.wandb_run_name, g.wandb_entity) == ("sks-dog-lora", "from-file", "my-team")
    assert "replace the run name" in messages(outcome, "DBS405")  # kohya ignores wandb_run_name then
    assert "tags have no dbspec option" in messages(outcome, "DBS404")


def test_kohya_unreadable_tracker_config_is_a_stated_difference(tmp_path):
    outcome = kohya_config(tmp_path, extra='log_tracker_config = "missing.toml"')
    assert "cannot be read here" in messages(outcome, "DBS404")
    assert plan_of(outcome, tmp_path).logging.wandb_run_name == "out"


def test_kohya_log_with_wandb_converts_where_wandb_is_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # Python's own way to make a package unimportable
    outcome = kohya_config(tmp_path)
    assert outcome.written and outcome.exit_code == 0  # the spec is fine; this machine lacks a package
    assert "install it to run" in messages(outcome, "DBS379")
    assert "\nwandb = true" in out_path(tmp_path).read_text()


def test_kohya_log_with_all_needs_a_logging_dir(tmp_path):
    images(tmp_path / "d" / "10_sks dog", 3, (512, 512))
    line = (
        f"train_network.py --pretrained_model_name_or_path {SD15} --network_module networks.lora "
        "--train_data_dir d --resolution 512 --max_train_steps 30 --log_with all"
    )
    outcome = kohya(tmp_path, command=line)
    assert outcome.exit_code == 1 and "requires logging_dir" in messages(outcome, "DBS402")


def test_kohya_wandb_keys_without_log_with_wandb_are_inert(tmp_path):
    outcome = kohya_config(tmp_path, log_with="tensorboard")
    g = plan_of(outcome, tmp_path).logging
    assert (g.wandb, g.tensorboard) == (False, True)
    assert {fate(outcome, k) for k in ("log_tracker_name", "wandb_run_name", "wandb_api_key")} == {"inert"}
    assert KEY not in out_path(tmp_path).read_text()


DIFFUSERS = (
    "accelerate launch train_dreambooth_lora_sdxl.py --pretrained_model_name_or_path={base} "
    "--instance_data_dir=dog --instance_prompt='a photo of sks dog' --output_dir=lora-trained-xl "
    "--resolution=1024 --max_train_steps=500 --report_to={report}"
)


@pytest.mark.parametrize(("report", "tensorboard"), [("wandb", False), ("all", True)])
def test_diffusers_report_to_wandb_logs_to_the_scripts_project(tmp_path, report, tensorboard):
    images(tmp_path / "dog", 3, (1024, 1024))
    outcome = diffusers(tmp_path, DIFFUSERS.format(base=SDXL, report=report))
    g = plan_of(outcome, tmp_path).logging
    assert (g.wandb, g.tensorboard, g.wandb_project) == (True, tensorboard, "dreambooth-lora-sd-xl")
    assert g.wandb_run_name == "lora-trained-xl"
    if report == "wandb":
        assert "DBS404" not in codes(outcome), messages(outcome, "DBS404")
    else:
        assert "Comet" in messages(outcome, "DBS404")  # accelerate's "all": every tracker installed


def test_diffusers_refuses_wandb_with_a_hub_token(tmp_path):
    images(tmp_path / "dog", 3, (1024, 1024))
    outcome = diffusers(tmp_path, DIFFUSERS.format(base=SDXL, report="wandb") + f" --hub_token={KEY}")
    assert outcome.exit_code == 1 and "--hub_token" in messages(outcome, "DBS402")
    assert KEY not in messages(outcome, "DBS402")


def test_diffusers_other_trackers_are_a_stated_difference(tmp_path):
    images(tmp_path / "dog", 3, (1024, 1024))
    outcome = diffusers(tmp_path, DIFFUSERS.format(base=SDXL, report="comet_ml"))
    assert "TensorBoard and Weights & Biases only" in messages(outcome, "DBS404")
    assert not plan_of(outcome, tmp_path).logging.wandb


def simpletuner_config(tmp_path, extra: dict):
    images(tmp_path / "img", 2, (512, 512))
    config = {
        "model_family": "sd1x",
        "model_type": "lora",
        "pretrained_model_name_or_path": SD15,
        "output_dir": "output/models",
        "max_train_steps": 100,
        "learning_rate": 1e-4,
        **extra,
    }
    backend = [{"id": "subject", "type": "local", "instance_data_dir": "img", "resolution": 512}]
    write(tmp_path / "config" / "config.json", json.dumps(config))
    write(tmp_path / "config" / "multidatabackend.json", json.dumps(backend))
    return simpletuner(tmp_path, "config/config.json", "config/multidatabackend.json")


def test_simpletuner_report_to_wandb_with_its_tracker_names(tmp_path):
    outcome = simpletuner_config(
        tmp_path,
        {"report_to": "wandb", "tracker_project_name": "dog-lora", "tracker_run_name": "sd15-rank16"},
    )
    differences = messages(outcome, "DBS404")  # others: SimpleTuner's captions, buckets, optimizer
    assert not any(word in differences for word in ("report_to", "tracker", "Weights", "TensorBoard"))
    g = plan_of(outcome, tmp_path).logging
    assert (g.wandb, g.tensorboard, g.wandb_project, g.wandb_run_name) == (
        True,
        False,
        "dog-lora",
        "sd15-rank16",
    )
    assert {fate(outcome, k) for k in ("report_to", "tracker_project_name", "tracker_run_name")} == {"mapped"}


def test_simpletuner_tracker_names_default_to_simpletuners(tmp_path):
    g = plan_of(simpletuner_config(tmp_path, {"report_to": "wandb"}), tmp_path).logging
    assert (g.wandb, g.wandb_project, g.wandb_run_name) == (True, "simpletuner", "simpletuner-testing")
    names = {"report_to": "wandb", "tracker_project_name": " ", "tracker_run_name": ""}
    g = plan_of(simpletuner_config(tmp_path, names), tmp_path).logging  # given empty: the trainer's fallbacks
    assert (g.wandb_project, g.wandb_run_name) == ("simpletuner-training", "simpletuner-training-run")


def test_simpletuner_tracker_names_without_wandb_are_inert(tmp_path):
    outcome = simpletuner_config(tmp_path, {"report_to": "tensorboard", "tracker_run_name": "x"})
    assert not plan_of(outcome, tmp_path).logging.wandb and fate(outcome, "tracker_run_name") == "inert"
