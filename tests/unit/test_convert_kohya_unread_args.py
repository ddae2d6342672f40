"""network_args kohya's create_network never reads (issue 12): lycoris-lora 4.1.3's lycoris/kohya.py reads
its **kwargs by name and hands none of the rest on, so a typo, a network-level `weight_decompose` (LyCORIS
reads `dora_wd`) or `constraint` outside Diag-OFT / BOFT changes nothing. One rule (network_reads.py) reports
them ignored (DBS405) on every family: on Flux / SD3 they were refused (DBS403)."""

from __future__ import annotations

import inspect

import pytest
from convert_kit import (
    KOHYA_LORA,
    codes,
    component_file,
    errors,
    fate,
    flux_lycoris,
    images,
    kohya,
    kohya_lora,
    messages,
    plan_of,
)

from dbspec.convert.kohya.network_reads import KIND_ONLY, LYCORIS_READS, unread_network_arg

SD35 = "stabilityai/stable-diffusion-3.5-large"
SD_LYCORIS = KOHYA_LORA.replace("networks.lora", "lycoris.kohya")


def _sd3(tmp_path, network_args: str):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    return kohya(
        tmp_path,
        command=f"accelerate launch sd3_train_network.py --pretrained_model_name_or_path {SD35} "
        "--clip_l sd3/clip_l.safetensors --clip_g sd3/clip_g.safetensors --t5xxl sd3/t5xxl_fp16.safetensors "
        "--train_data_dir x --resolution 512 --save_model_as safetensors --sdpa --seed 42 "
        "--mixed_precision bf16 --network_module lycoris.kohya --network_dim 16 --network_alpha 8 "
        f"--learning_rate 1e-4 --max_train_epochs 4 --network_args {network_args}",
    )


def test_the_rule_reads_what_lycoris_create_network_reads():
    """Every key lycoris-lora 4.1.3's kohya create_network reads from its kwargs (its source, read here) is
    read or algo-bound in the rule; anything else is unread."""
    import re

    from lycoris import kohya as lycoris_kohya
    from lycoris.wrapper import deprecated_arg_dict

    source = inspect.getsource(lycoris_kohya.create_network)
    read = set(re.findall(r'kwargs\.get\(\s*"(\w+)"', source)) | set(deprecated_arg_dict)
    assert read == LYCORIS_READS | set(KIND_ONLY)
    for key in read:
        assert unread_network_arg(key, "diag-oft", "diag-oft", "lycoris.kohya") is None or key in KIND_ONLY
    why = unread_network_arg("weight_decompose", "lora", "locon", "lycoris.kohya")
    assert why is not None and "dora_wd" in why


@pytest.mark.parametrize(
    ("network_args", "key", "said"),
    [
        ('"algo=locon" "weight_decompose=True"', "weight_decompose", "dora_wd"),
        ('"algo=locon" "dora_wdd=True"', "dora_wdd", "does not read it"),
        ('"algo=locon" "constraint=0.1"', "constraint", "Diag-OFT / BOFT only, not algo=locon"),
        ('"algo=lokr" "factr=8"', "factr", "does not read it"),
        ('"algo=full" "rank=4"', "rank", "does not read it"),
        ('"algo=dylora" "blocksize=2"', "blocksize", "does not read it"),
        ('"algo=glora" "use_scalr=True"', "use_scalr", "does not read it"),
        # LokrModule's split and switches on another algorithm's modules (was DBS403 for LoCon, IA^3, DyLoRA)
        ('"algo=locon" "factor=8"', "factor", "LoKr only, not algo=locon"),
        ('"algo=ia3" "decompose_both=True"', "decompose_both", "LoKr only, not algo=ia3"),
        ('"algo=dylora" "factor=4"', "factor", "LoKr only, not algo=dylora"),
    ],
)
def test_flux_unread_network_args_are_ignored_not_refused(tmp_path, network_args, key, said):
    outcome = flux_lycoris(tmp_path, network_args)  # asserts no DBS402 / DBS403
    plan = plan_of(outcome, tmp_path)
    assert fate(outcome, f"network_args {key}") == "inert" and fate(outcome, "network_args") == "mapped"
    assert said in messages(outcome, "DBS405")
    algo = network_args.split('"')[1].removeprefix("algo=")
    assert plan.adapter.kind == {"locon": "lora"}.get(algo, algo)
    assert plan.adapter.rank == (0 if algo in ("full", "ia3") else 4)  # FullModule / IA3Module have no rank
    assert not plan.adapter.dora  # weight_decompose does not turn LyCORIS's weight decomposition on


def test_flux_ia3_constraint_is_ignored(tmp_path):
    outcome = flux_lycoris(tmp_path, '"algo=ia3" "constraint=0.1" "rescaled=True"')
    assert plan_of(outcome, tmp_path).adapter.kind == "ia3"
    assert fate(outcome, "network_args constraint") == "inert"
    assert "Diag-OFT / BOFT only, not algo=ia3" in messages(outcome, "DBS405")


def test_flux_diag_oft_constraint_still_maps(tmp_path):
    """constraint is read by Diag-OFT: the rule leaves it to the OFT mapping (no DBS405)."""
    outcome = flux_lycoris(tmp_path, '"algo=diag-oft" "constraint=0.001" "typo=1"')
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.kind == "diag-oft" and plan.adapter.oft_constraint == 0.001
    assert fate(outcome, "network_args constraint") == "mapped"
    assert fate(outcome, "network_args typo") == "inert"
    assert "constraint" not in messages(outcome, "DBS405")


def test_sd3_lokr_with_a_network_level_weight_decompose_is_ignored(tmp_path):
    outcome = _sd3(tmp_path, "algo=lokr preset=attn-mlp weight_decompose=True")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert (plan.adapter.kind, plan.adapter.rank, plan.adapter.dora) == ("lokr", 16, False)
    assert "dora_wd" in messages(outcome, "DBS405")


def test_sd_says_the_same_as_flux(tmp_path):
    """SD 1.x's lycoris.kohya goes through the same rule: the same DBS405 message."""
    sd = kohya_lora(tmp_path / "sd", '--network_args "algo=locon" "weight_decompose=True"', base=SD_LYCORIS)
    assert not {"DBS402", "DBS403"} & codes(sd), errors(sd)
    flux = flux_lycoris(tmp_path / "flux", '"algo=locon" "weight_decompose=True"')
    assert messages(sd, "DBS405") == messages(flux, "DBS405")
    assert fate(sd, "network_args weight_decompose") == "inert"


@pytest.mark.parametrize("algo", ["locon", "loha", "full", "ia3", "diag-oft", "boft", "dylora", "glora"])
def test_sd_lokr_args_on_another_algorithm_are_ignored(tmp_path, algo):
    """A LoKr network's `factor` and `decompose_both` left in network_args when the algo changed (was
    DBS403 on SD): create_network hands them every module and LokrModule alone reads them, so no module of
    this network does (DBS405); beside LoKr entries they are those entries' blocks'
    (lycoris_maps._network_lokr)."""
    outcome = kohya_lora(
        tmp_path, f'--network_args "algo={algo}" "factor=8" "decompose_both=True"', base=SD_LYCORIS
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    for key in ("factor", "decompose_both"):
        assert fate(outcome, f"network_args {key}") == "inert"
        assert f"`network_args {key}`: LyCORIS reads it for LoKr only, not algo={algo}" in messages(
            outcome, "DBS405"
        )
