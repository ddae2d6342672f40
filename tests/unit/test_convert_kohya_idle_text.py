"""A --network_weights file's text-encoder modules at text_encoder_lr 0 (convert/kohya/idle_text.py; issue
12): train_network.py's apply_to keeps them with the file's weights (is_train_text_encoder reads no rate) and
prepare_optimizer_params leaves their group out ("NO LR skipping!"), so CLIP encodes through modules that
never train. dbspec adapts a text encoder only while it trains: every path (networks.lora, networks.dylora,
lycoris.kohya's LoCon / LoKr / LoHa / full / DyLoRA / Diag-OFT files, networks.lora_flux / lora_sd3 and
LyCORIS on Flux / SD3) refuses it alike (DBS403) instead of leaving CLIP plain; --network_train_unet_only
(apply_to drops them) and a rate for them convert."""

from __future__ import annotations

import io

import numpy as np
import pytest
from convert_kit import (
    GPU,
    KOHYA_LORA,
    SD15,
    SDXL,
    codes,
    component_file,
    errors,
    fate,
    images,
    kohya,
    kohya_lora,
    messages,
    plan_of,
)
from rich.console import Console
from safetensors.numpy import save_file

from dbspec.frontend import plan_spec
from dbspec.plan.summary import render_summary

Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
TE = "lora_te_text_model_encoder_layers_3_self_attn_k_proj"
IDLE = "whose text_encoder_lr is 0"
CLIPPED = "count in the total norm"  # clipped_idle_text: fresh modules at rate 0 under max_grad_norm


def _lora(out: int, inp: int, rank: int = 4) -> dict:
    return {"lora_down.weight": (rank, inp), "lora_up.weight": (out, rank)}


def _lokr(out: int, inp: int) -> dict:
    return {"lokr_w1": (4, 4), "lokr_w2": (out // 4, inp // 4)}


def _loha(out: int, inp: int, rank: int = 4) -> dict:
    return {
        "hada_w1_a": (out, rank),
        "hada_w1_b": (rank, inp),
        "hada_w2_a": (out, rank),
        "hada_w2_b": (rank, inp),
    }


def _file(path, modules: dict[str, dict]) -> None:
    tensors = {}
    for name, shapes in modules.items():
        tensors |= {f"{name}.{key}": np.zeros(shape, np.float16) for key, shape in shapes.items()}
        if "diff" not in shapes:
            tensors[f"{name}.alpha"] = np.array(2.0, np.float32)
    save_file(tensors, str(path))


SD_FILES = {
    "networks.lora": ("--network_module networks.lora", _lora),
    "networks.dylora": ("--network_module networks.dylora --network_args unit=4", _lora),
    "locon": ("--network_module lycoris.kohya --network_args algo=locon", _lora),
    "lokr": ("--network_module lycoris.kohya --network_args algo=lokr", lambda o, i: _lokr(o, i)),
    "loha": ("--network_module lycoris.kohya --network_args algo=loha", _loha),
    "full": ("--network_module lycoris.kohya --network_args algo=full", lambda o, i: {"diff": (o, i)}),
    "dylora": ("--network_module lycoris.kohya --network_args algo=dylora", _lora),
}


@pytest.mark.parametrize("kind", sorted(SD_FILES))
def test_sd_file_text_modules_at_rate_0_stay_idle_on_every_path(tmp_path, kind):
    """The file's CLIP modules at rate 0: the idle encoder (train.text_encoder_idle = "kohya") loaded with
    them through adapter.init_weights, whether or not max_grad_norm clips."""
    module, make = SD_FILES[kind]
    _file(tmp_path / "prev.safetensors", {Q: make(320, 320), TE: make(768, 768)})
    command = f"{module} --network_weights prev.safetensors --dim_from_weights"
    trains = kohya_lora(tmp_path, f"{command} --text_encoder_lr 5e-5")  # CLIP's modules train: converts
    assert IDLE not in messages(trains, "DBS403"), errors(trains)
    for clip in ("", " --max_grad_norm 0"):
        outcome = kohya_lora(tmp_path, f"{command} --text_encoder_lr 0{clip}")
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        plan = plan_of(outcome, tmp_path)
        assert plan.idle_text_encoders == ("text_encoder",) and not plan.train_text_encoder
        assert plan.adapter.init_weights.endswith("prev.safetensors")
    # --network_train_unet_only: apply_to drops the text encoder's modules, nothing is left idle
    dropped = kohya_lora(tmp_path, f"{command} --text_encoder_lr 0 --network_train_unet_only")
    assert IDLE not in messages(dropped, "DBS403"), errors(dropped)
    assert plan_of(dropped, tmp_path).idle_text_encoders == ()


def test_network_weights_without_dim_from_weights_too(tmp_path):
    """create_network builds CLIP's modules and load_weights puts the file's in them: the same idle modules;
    a `--text_encoder_lr a 0` takes networks.lora's first value (kohya hands it only that one)."""
    _file(tmp_path / "prev.safetensors", {Q: _lora(320, 320), TE: _lora(768, 768)})
    outcome = kohya_lora(tmp_path, "--network_weights prev.safetensors --text_encoder_lr 0 --max_grad_norm 0")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert outcome.conversion.values[("train", "text_encoder_idle")][0] == "kohya"  # the file's, kept idle
    outcome = kohya_lora(tmp_path, "--network_weights prev.safetensors --text_encoder_lr 5e-5 0")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    # a file without text-encoder modules: create_network still builds fresh ones (lora_up 0), which only
    # max_grad_norm's clip reads; without a clip text_encoder_lr 0 is train.text_encoder = false
    _file(tmp_path / "prev.safetensors", {Q: _lora(320, 320)})
    outcome = kohya_lora(tmp_path, "--network_weights prev.safetensors --text_encoder_lr 0 --max_grad_norm 0")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    outcome = kohya_lora(tmp_path, "--network_weights prev.safetensors --text_encoder_lr 0")
    assert not {"DBS402", "DBS403"} & codes(outcome) and CLIPPED not in messages(outcome, "DBS404")
    # the fresh modules kept idle under kohya's clip beside the file's U-Net modules
    assert outcome.conversion.values[("train", "text_encoder_idle")][0] == "kohya"


FLUX = (
    "accelerate launch flux_train_network.py --pretrained_model_name_or_path black-forest-labs/FLUX.1-dev "
    "--clip_l clip_l.safetensors --t5xxl t5xxl_fp16.safetensors --ae ae.safetensors --train_data_dir x "
    "--resolution 512 --network_dim 8 --network_alpha 4 --learning_rate 1e-4 --max_train_steps 100 "
    "--model_prediction_type raw --guidance_scale 1.0 --network_weights prev.safetensors --dim_from_weights "
)
W = 3072
CLIP_L = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"


def _flux(tmp_path, extra: str):
    images(tmp_path / "x" / "10_ohwx dog", 2, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    return kohya(tmp_path, allow=True, command=FLUX + extra)


@pytest.mark.parametrize("kind", ["lycoris locon", "lycoris loha", "lycoris full", "networks.lora_flux"])
def test_flux_file_clip_modules_at_rate_0(tmp_path, kind):
    """Flux: LyCORIS's CLIP-L modules (lora_te1_) at its one text rate; lora_flux's at text_encoder_lr's
    first value (prepare_optimizer_params_with_multiple_te_lrs: [CLIP-L, T5-XXL]). flux_train_network.py
    runs CLIP-L under grad whenever --network_train_unet_only is off: the idle encoder holds the file's
    modules. T5-XXL's modules at rate 0 beside them (kohya runs T5 under grad too, its outputs not cached,
    and clips their gradients; was DBS403) are train.t5_idle's: T5-XXL idle too, loaded from the file."""
    make = {"lycoris loha": _loha, "lycoris full": lambda o, i: {"diff": (o, i)}}.get(kind, _lora)
    module = "networks.lora_flux" if kind == "networks.lora_flux" else "lycoris.kohya"
    held = {"lora_unet_single_blocks_0_linear1": make(7 * W, W), CLIP_L: make(768, 768)}
    _file(tmp_path / "prev.safetensors", held)
    trains = _flux(tmp_path, f"--network_module {module} --text_encoder_lr 5e-5")
    assert IDLE not in messages(trains, "DBS403"), errors(trains)
    outcome = _flux(tmp_path, f"--network_module {module} --text_encoder_lr 0")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.idle_text_encoders == ("text_encoder",) and not plan.train_text_encoder
    assert plan.adapter.init_weights.endswith("prev.safetensors")
    if module == "networks.lora_flux":  # T5-XXL's rate 0 leaves CLIP-L's modules training
        outcome = _flux(tmp_path, f"--network_module {module} --text_encoder_lr 5e-5 0")
        assert IDLE not in messages(outcome, "DBS403"), errors(outcome)
        assert plan_of(outcome, tmp_path).idle_text_encoders == ()
    # T5-XXL's modules at rate 0 too (lora_flux: lora_te3_; LyCORIS on Flux: lora_te2_, its second encoder)
    t5 = "lora_te3_" if module == "networks.lora_flux" else "lora_te2_"
    held[f"{t5}encoder_block_0_layer_0_SelfAttention_q"] = make(4096, 4096)
    _file(tmp_path / "prev.safetensors", held)
    outcome = _flux(tmp_path, f"--network_module {module} --text_encoder_lr 0")
    assert not {"DBS402", "DBS403", "DBS404"} & codes(outcome), errors(outcome)
    assert outcome.conversion.values[("train", "t5_idle")][0] == "kohya"
    assert ("train", "t5") not in outcome.conversion.values
    plan = plan_of(outcome, tmp_path)
    assert plan.idle_text_encoders == ("text_encoder", "text_encoder_2") and not plan.train_text_encoder
    assert plan.adapter.t5_targets and plan.adapter.init_weights.endswith("prev.safetensors")
    assert {c.name: c.trainable for c in plan.precision.components}["text_encoder_2"] != "frozen"
    assert not plan.cache.text_embeddings  # T5 encodes under grad every step
    # with max_grad_norm 0 the file's T5 modules still shape T5's output: idle all the same
    plan = plan_of(
        _flux(tmp_path, f"--network_module {module} --text_encoder_lr 0 --max_grad_norm 0"), tmp_path
    )
    assert plan.idle_text_encoders == ("text_encoder", "text_encoder_2")


@pytest.mark.parametrize("clip", ["", " --max_grad_norm 0"])
def test_flux_train_t5xxl_file_without_dim_from_weights_at_rate_0(tmp_path, clip):
    """Regression: lora_flux `train_t5xxl=True` at T5-XXL's rate 0 with a --network_weights file (no
    --dim_from_weights) holding T5's modules: create_network builds T5's modules and load_weights puts the
    file's in them, so T5 encodes through modules that never train, clip or not: train.t5_idle, loaded from
    the file (was: T5 frozen without a clip, its modules' effect on T5's output lost). A file without T5's
    modules leaves fresh ones (lora_up 0), which without a clip is T5 frozen."""
    command = FLUX.replace("--dim_from_weights ", "").replace("--network_alpha 4", "--network_alpha 2")
    command += (
        f"--network_module networks.lora_flux --network_args train_t5xxl=True --text_encoder_lr 5e-5 0{clip}"
    )
    held = {"lora_unet_single_blocks_0_linear1": _lora(7 * W, W, 8), CLIP_L: _lora(768, 768, 8)}
    _file(
        tmp_path / "prev.safetensors",
        {**held, "lora_te3_encoder_block_0_layer_0_SelfAttention_q": _lora(4096, 4096, 8)},
    )
    images(tmp_path / "x" / "10_ohwx dog", 2, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(tmp_path, allow=True, command=command)
    assert not {"DBS402", "DBS403", "DBS404"} & codes(outcome), errors(outcome)
    assert outcome.conversion.values[("train", "t5_idle")][0] == "kohya"
    plan = plan_of(outcome, tmp_path)
    assert "text_encoder_2" in plan.idle_text_encoders and plan.adapter.t5_targets
    assert plan.adapter.init_weights.endswith("prev.safetensors")
    _file(tmp_path / "prev.safetensors", held)
    outcome = kohya(tmp_path, allow=True, command=command)
    assert (("train", "t5_idle") in outcome.conversion.values) == (not clip), errors(outcome)


def test_sd3_lora_file_rates_per_clip_encoder(tmp_path):
    """lora_sd3: CLIP-L (lora_te1_) at text_encoder_lr's first value, CLIP-G (lora_te2_) at its second."""
    images(tmp_path / "x" / "10_ohwx dog", 2, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    clip_g = "lora_te2_text_model_encoder_layers_0_mlp_fc2"
    unet = "lora_unet_joint_blocks_0_x_block_attn_qkv"

    def run(rates: str):
        return kohya(
            tmp_path,
            allow=True,
            command="accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
            "stabilityai/stable-diffusion-3.5-large --clip_l sd3/clip_l.safetensors --clip_g "
            "sd3/clip_g.safetensors --t5xxl sd3/t5xxl_fp16.safetensors --train_data_dir x --resolution 512 "
            "--network_module networks.lora_sd3 --network_dim 16 --network_alpha 8 --learning_rate 1e-4 "
            "--max_train_steps 10 --network_weights prev.safetensors --dim_from_weights "
            f"--text_encoder_lr {rates}",
        )

    _file(tmp_path / "prev.safetensors", {unet: _lora(3 * 2432, 2432), clip_g: _lora(1280, 5120)})
    trains = run("0 5e-5")
    assert IDLE not in messages(trains, "DBS403")  # CLIP-G trains, CLIP-L has no module
    assert "CLIP-L" not in messages(trains, "DBS404")  # nor any idle one for max_grad_norm's clip
    plan = plan_of(trains, tmp_path)
    trained = {c.name for c in plan.precision.components if c.trainable != "frozen"}
    assert trained == {"unet", "text_encoder_2"} and plan.optimizer.text_encoder_lr == 5e-5
    # CLIP-G's modules at 0 (one value: every encoder's), CLIP-L without any: --dim_from_weights builds none
    # there, so CLIP-G alone is idle and CLIP-L's targets are written empty (test_convert_kohya_sd3_file_clip)
    for rates in ("5e-5 0", "0"):
        outcome = run(rates)
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        plan = plan_of(outcome, tmp_path)
        assert plan.idle_text_encoders == ("text_encoder_2",) and not plan.adapter.text_encoder_targets
    # both CLIP encoders' modules in the file: the one at rate 0 kept idle with its file modules
    clip_l = "lora_te1_text_model_encoder_layers_0_mlp_fc2"
    held = {unet: _lora(3 * 2432, 2432), clip_l: _lora(768, 3072), clip_g: _lora(1280, 5120)}
    _file(tmp_path / "prev.safetensors", held)
    for rates, idle in (("5e-5 0", ("text_encoder_2",)), ("0 5e-5", ("text_encoder",))):
        outcome = run(rates)
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        plan = plan_of(outcome, tmp_path)
        assert plan.idle_text_encoders == idle and plan.adapter.init_weights.endswith("prev.safetensors")
        trained = {c.name for c in plan.precision.components if c.trainable != "frozen"}
        assert trained == {"unet", "text_encoder", "text_encoder_2"}  # the idle one carries the adapter
    plan = plan_of(run("0"), tmp_path)
    assert plan.idle_text_encoders == ("text_encoder", "text_encoder_2") and not plan.train_text_encoder


# --- fresh text-encoder modules at rate 0 under max_grad_norm ---------------------------------------------
# train_network.py builds the text encoders' modules whatever their rate (apply_to), runs them under grad and
# clips network.get_trainable_params() (every module's parameters) to max_grad_norm (kohya's default 1.0):
# a fresh module's lora_up is 0 but its gradient is not, never cleared (out of the optimizer), so the clip
# coefficient of the trained modules' step counts it: train.text_encoder_idle = "kohya" (exact; checked
# against lycoris-lora in tests/runtime/test_kohya_idle_text_clip.py). networks.lora_fa keeps the group in
# the optimizer at rate 0 (cleared every step): optimizer.text_encoder_lr = 0, tested in
# test_convert_kohya_lora_fa_text_zero.py. Without a clip train.text_encoder = false is the same run.

SD_FRESH = {
    "networks.lora": "",
    "networks.dylora": "--network_module networks.dylora --network_args unit=4",
    "lycoris loha": "--network_module lycoris.kohya --network_args algo=loha",
    "lycoris locon": "--network_module lycoris.kohya --network_args algo=locon",
}


@pytest.mark.parametrize("kind", sorted(SD_FRESH))
def test_fresh_text_modules_at_rate_0_under_a_clip_stay_idle(tmp_path, kind):
    command = f"{SD_FRESH[kind]} --unet_lr 1e-4 --text_encoder_lr 0"
    outcome = kohya_lora(tmp_path, command)  # kohya's default max_grad_norm 1.0
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert not plan.train_text_encoder  # nothing of the encoder moves
    said = messages(outcome, "DBS404")
    # out of the optimizer, their gradients added up and clipped: the idle encoder, exact
    assert CLIPPED not in said, said
    assert plan.idle_text_encoders == ("text_encoder",) and plan.optimizer.max_grad_norm == 1.0
    assert [c.trainable for c in plan.precision.components if c.name == "text_encoder"] == ["lora"]
    assert not plan.cache.text_embeddings
    # without a clip nothing reads their gradients: train.text_encoder = false is the same run (no warning)
    for exact in ("--max_grad_norm 0", "--network_train_unet_only"):
        same = kohya_lora(tmp_path, f"{command} {exact}")
        assert CLIPPED not in messages(same, "DBS404")
        plan = plan_of(same, tmp_path)
        assert not plan.train_text_encoder and plan.optimizer.lr == pytest.approx(1e-4)
        assert plan.idle_text_encoders == ()


def test_networks_without_text_modules_convert_under_a_clip(tmp_path):
    """networks.oft adapts the U-Net alone; a LyCORIS preset matching no text-encoder layer builds none:
    nothing at rate 0 reaches the clip."""
    for command in (
        "--network_module networks.oft --network_alpha 1e-3",
        "--network_module lycoris.kohya --network_args algo=locon preset=unet-transformer-only",
    ):
        outcome = kohya_lora(tmp_path, f"{command} --unet_lr 1e-4 --text_encoder_lr 0")
        assert CLIPPED not in messages(outcome, "DBS404"), errors(outcome)
        assert not plan_of(outcome, tmp_path).train_text_encoder


def test_sdxl_first_value_decides(tmp_path):
    """sdxl_train_network.py with networks.lora: both encoders at text_encoder_lr's first value."""
    sdxl = KOHYA_LORA.replace("train_network.py", "sdxl_train_network.py").replace(SD15, SDXL)
    outcome = kohya_lora(tmp_path, "--text_encoder_lr 0 1e-5", base=sdxl)
    plan = plan_of(outcome, tmp_path)
    assert CLIPPED not in messages(outcome, "DBS404") and not plan.train_text_encoder
    assert plan.idle_text_encoders == ("text_encoder", "text_encoder_2")  # both kept idle, clipped
    plan = plan_of(kohya_lora(tmp_path, "--text_encoder_lr 1e-5 0", base=sdxl), tmp_path)
    assert plan.train_text_encoder and plan.optimizer.text_encoder_lr == pytest.approx(1e-5)


FLUX_FRESH = FLUX.replace("--network_weights prev.safetensors --dim_from_weights ", "")


@pytest.mark.parametrize(
    ("rates", "key", "encoder"),
    [
        ("0 4e-5", "text_encoder_lr", "CLIP-L's"),
        ("4e-5 0", "network_args train_t5xxl", "T5-XXL's"),
    ],
)
def test_flux_encoder_at_rate_0_under_a_clip(tmp_path, rates, key, encoder):
    """lora_flux [CLIP-L, T5-XXL] (train_t5xxl=True): the encoder at rate 0 keeps its modules, clipped.
    flux_train_network.py runs CLIP-L under grad whenever --network_train_unet_only is off, so CLIP-L's
    modules at 0 are the idle encoder (exact); with train_t5xxl it encodes with T5 under grad too (no
    output cache), so T5-XXL's modules at 0 are train.t5_idle's (exact; was DBS404)."""
    images(tmp_path / "x" / "10_ohwx dog", 2, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    command = f'{FLUX_FRESH} --network_module networks.lora_flux --network_args "train_t5xxl=True" '
    outcome = kohya(tmp_path, command=f"{command} --text_encoder_lr {rates}")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    if encoder == "CLIP-L's":
        assert CLIPPED not in messages(outcome, "DBS404"), messages(outcome, "DBS404")
        plan = plan_of(outcome, tmp_path)
        assert plan.idle_text_encoders == ("text_encoder",) and plan.optimizer.max_grad_norm == 1.0
    else:
        assert CLIPPED not in messages(outcome, "DBS404"), messages(outcome, "DBS404")
        assert fate(outcome, key) == "mapped"
        plan = plan_of(outcome, tmp_path)
        assert plan.idle_text_encoders == ("text_encoder_2",) and plan.optimizer.max_grad_norm == 1.0
        assert plan.adapter.t5_targets == ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
        assert plan.text_encoder_mode == "eval"  # kohya without --gradient_checkpointing: T5 in eval mode
    plan = plan_of(
        kohya(tmp_path, command=f"{command} --text_encoder_lr {rates} --max_grad_norm 0"), tmp_path
    )
    assert plan.optimizer.max_grad_norm == 0 and plan.idle_text_encoders == ()
    # the other encoder trains at its own value ([CLIP-L, T5-XXL]; Flux's T5 is text_encoder_2)
    clip_l, t5 = (float(v) for v in rates.split())
    o = plan.optimizer
    rate = {"text_encoder": o.text_encoder_lr, "text_encoder_2": o.text_encoder_2_lr or o.text_encoder_lr}
    trained = {
        c.name: rate[c.name] for c in plan.precision.components if c.name in rate and c.trainable != "frozen"
    }
    assert trained == ({"text_encoder_2": t5} if clip_l == 0 else {"text_encoder": clip_l})


@pytest.mark.parametrize(
    "network",
    ["--network_module networks.lora_flux", "--network_module lycoris.kohya --network_args algo=locon"],
)
def test_flux_clip_and_t5_at_rate_0_both_idle(tmp_path, network):
    """Both of lora_flux's rates 0 (or LyCORIS's one text rate): CLIP-L idle; with train_t5xxl=True T5-XXL's
    modules sit at rate 0 as well (their gradients in kohya's clip too): both idle, T5 by train.t5_idle
    (was DBS404 for both)."""
    images(tmp_path / "x" / "10_ohwx dog", 2, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(tmp_path, command=f"{FLUX_FRESH} {network} --text_encoder_lr 0")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert CLIPPED not in messages(outcome, "DBS404")
    assert plan_of(outcome, tmp_path).idle_text_encoders == ("text_encoder",)
    if "lora_flux" in network:
        held = kohya(
            tmp_path, command=f'{FLUX_FRESH} {network} --network_args "train_t5xxl=True" --text_encoder_lr 0'
        )
        assert CLIPPED not in messages(held, "DBS404") and not errors(held)
        plan = plan_of(held, tmp_path)
        assert plan.idle_text_encoders == ("text_encoder", "text_encoder_2") and not plan.train_text_encoder
        assert {c.name for c in plan.precision.components if c.trainable == "lora"} == {
            "unet",
            "text_encoder",
            "text_encoder_2",
        }


def test_sd3_clip_g_and_t5_at_rate_0_under_a_clip(tmp_path):
    """lora_sd3 [CLIP-L, CLIP-G, T5-XXL]: sd3_train_network.py runs both CLIP encoders under grad, so the one
    at rate 0 is idle (exact); with train_t5xxl T5-XXL too, so its modules at 0 are train.t5_idle's (exact;
    was DBS404)."""
    images(tmp_path / "x" / "10_ohwx dog", 2, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    command = (
        "accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
        "stabilityai/stable-diffusion-3.5-large --clip_l sd3/clip_l.safetensors --clip_g "
        "sd3/clip_g.safetensors --t5xxl sd3/t5xxl_fp16.safetensors --train_data_dir x --resolution 512 "
        "--network_module networks.lora_sd3 --network_dim 16 --network_alpha 8 --learning_rate 1e-4 "
        '--max_train_steps 10 --network_args "train_t5xxl=True" --text_encoder_lr '
    )
    for rates, idle in (("5e-5 0 1e-5", ("text_encoder_2",)), ("0 5e-5 1e-5", ("text_encoder",))):
        outcome = kohya(tmp_path, command=command + rates)
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        assert CLIPPED not in messages(outcome, "DBS404"), messages(outcome, "DBS404")
        plan = plan_of(outcome, tmp_path)
        assert plan.idle_text_encoders == idle and plan.optimizer.max_grad_norm == 1.0
        assert (
            plan_of(
                kohya(tmp_path, command=f"{command}{rates} --max_grad_norm 0"), tmp_path
            ).idle_text_encoders
            == ()
        )
    outcome = kohya(tmp_path, command=command + "5e-5 2e-5 0")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert CLIPPED not in messages(outcome, "DBS404")
    assert fate(outcome, "network_args train_t5xxl") == "mapped"
    plan = plan_of(outcome, tmp_path)
    assert plan.idle_text_encoders == ("text_encoder_3",) and plan.train_text_encoder
    o = plan.optimizer
    assert (o.text_encoder_lr, o.text_encoder_2_lr) == (5e-5, 2e-5) and o.text_encoder_3_lr is None
    free = plan_of(kohya(tmp_path, command=f"{command}5e-5 2e-5 0 --max_grad_norm 0"), tmp_path)
    assert free.idle_text_encoders == ()  # fresh, unclipped: T5 frozen is the same run
    # CLIP-G and T5-XXL both at 0: both idle, CLIP-L trains
    outcome = kohya(tmp_path, command=command + "5e-5 0 0")
    assert CLIPPED not in messages(outcome, "DBS404") and not errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.idle_text_encoders == ("text_encoder_2", "text_encoder_3") and plan.train_text_encoder


def test_sdxl_file_idle_with_dim_from_weights_keeps_the_file_encoders_alone(tmp_path):
    """sdxl_train_network.py --dim_from_weights builds only the file's modules: with both CLIP encoders'
    at rate 0 both stay idle; a file with one encoder's modules alone leaves the other without any (kohya's
    network has none there): its targets are written empty and only the file's encoder is idle, loaded with
    its modules. Without --dim_from_weights create_network builds both."""
    sdxl = KOHYA_LORA.replace("train_network.py", "sdxl_train_network.py").replace(SD15, SDXL)
    unet = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    te1 = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    te2 = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    both = {unet: _lora(640, 640), te1: _lora(768, 768), te2: _lora(1280, 1280)}
    _file(tmp_path / "prev.safetensors", both)
    command = "--network_weights prev.safetensors --dim_from_weights --text_encoder_lr 0"
    outcome = kohya_lora(tmp_path, command, base=sdxl)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert plan_of(outcome, tmp_path).idle_text_encoders == ("text_encoder", "text_encoder_2")
    for held, idle in ((te1, "text_encoder"), (te2, "text_encoder_2")):
        _file(tmp_path / "prev.safetensors", {unet: _lora(640, 640), held: both[held]})
        outcome = kohya_lora(tmp_path, command, base=sdxl)
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        plan = plan_of(outcome, tmp_path)
        assert plan.idle_text_encoders == (idle,) and not plan.train_text_encoder
        modes = {c.name: c.trainable for c in plan.precision.components}
        other = "text_encoder_2" if idle == "text_encoder" else "text_encoder"
        assert (modes[idle], modes[other]) == ("lora", "frozen")  # no module there: plain
        a = plan.adapter
        targets = {"text_encoder": a.text_encoder_targets, "text_encoder_2": a.text_encoder_2_targets}
        assert targets[idle] and not targets[other] and a.init_weights.endswith("prev.safetensors")
        outcome = kohya_lora(tmp_path, command.replace(" --dim_from_weights", ""), base=sdxl)
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        # create_network's modules on both (the file's loaded into one): no empty targets
        assert outcome.conversion.values[("train", "text_encoder_idle")][0] == "kohya"
        assert ("adapter", "text_encoder_2_targets") not in outcome.conversion.values
        assert outcome.conversion.values[("adapter", "text_encoder_targets")][0]


IDLE_SPEC = """spec_version = 2

[model]
base = "builtin:{base}"

[adapter]
kind = "lora"

[train]
{train}

[[datasets]]
name = "dog"
path = "d"
prompt = "a photo of ohwx dog"

[schedule]
steps = 10
"""


def sdxl_idle(first: str, second: str) -> str:
    return IDLE_SPEC.format(
        base="tiny-sdxl",
        train=f'text_encoder = {first}\ntext_encoder_2 = {second}\ntext_encoder_idle = "kohya"',
    )


def t5_idle(base: str, clip: str, idle: str) -> str:
    return IDLE_SPEC.format(base=base, train=f"text_encoder = {clip}\n{idle}")


@pytest.mark.parametrize(
    ("first", "second", "idle"),
    [
        ("false", "false", ("text_encoder", "text_encoder_2")),
        ("true", "false", ("text_encoder_2",)),  # each untrained CLIP encoder on its own
        ("true", "true", ()),  # nothing left idle: DBS598
    ],
)
def test_idle_text_encoders_are_the_untrained_clip_encoders(tmp_path, first, second, idle):
    images(tmp_path / "d", 2, (64, 64))
    (tmp_path / "spec.toml").write_text(sdxl_idle(first, second))
    planned = plan_spec(tmp_path / "spec.toml", GPU)
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    plan = planned.plan
    assert plan.idle_text_encoders == idle
    assert ("DBS598" in {d.code for d in planned.diagnostics}) == (not idle)
    lora = {c.name for c in plan.precision.components if c.trainable == "lora"}
    assert {"text_encoder", "text_encoder_2"} <= lora  # the idle ones carry the adapter too
    assert plan.train_text_encoder == (first == "true")
    if idle:
        console = Console(file=io.StringIO(), width=400)
        render_summary(plan, console)
        assert "held untrained (kohya's modules at text_encoder_lr 0)" in console.file.getvalue()


def test_an_encoder_without_adapter_layers_is_not_left_idle(tmp_path):
    """No targets (nor norms or blocks) on SDXL's second encoder: nothing to carry there (a LyCORIS preset
    leaving one encoder without modules), so only the first is idle."""
    images(tmp_path / "d", 2, (64, 64))
    text = sdxl_idle("false", "false").replace(
        '[adapter]\nkind = "lora"\n', '[adapter]\nkind = "lora"\ntext_encoder_2_targets = []\n'
    )
    (tmp_path / "spec.toml").write_text(text)
    planned = plan_spec(tmp_path / "spec.toml", GPU)
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    assert planned.plan.idle_text_encoders == ("text_encoder",)
    modes = {c.name: c.trainable for c in planned.plan.precision.components}
    assert (modes["text_encoder"], modes["text_encoder_2"]) == ("lora", "frozen")


@pytest.mark.parametrize(
    ("base", "clip", "idle", "expected"),
    [
        ("tiny-flux", "true", 't5_idle = "kohya"', ("text_encoder_2",)),
        (
            "tiny-flux",
            "false",
            't5_idle = "kohya"\ntext_encoder_idle = "kohya"',
            ("text_encoder", "text_encoder_2"),
        ),
        ("tiny-sd3", "true", 't5_idle = "kohya"', ("text_encoder_3",)),
        (
            "tiny-sd3",
            "false",
            't5_idle = "kohya"\ntext_encoder_idle = "kohya"',
            ("text_encoder", "text_encoder_2", "text_encoder_3"),
        ),
        (
            "tiny-flux",
            "true",
            't5_idle = "kohya"\ntext_encoder_idle = "kohya"',
            ("text_encoder_2",),
        ),  # DBS598
    ],
)
def test_t5_idle_holds_t5_untrained_in_the_family_order(tmp_path, base, clip, idle, expected):
    """train.t5_idle = "kohya": T5-XXL carries train.t5's adapter (kohya's T5 targets) without training, in
    the idle list after the CLIP encoders (kohya's network order: the text encoders as kohya hands them);
    its outputs are not cached. train.text_encoder_idle still warns (DBS598) where every CLIP encoder
    trains."""
    images(tmp_path / "d", 2, (64, 64))
    (tmp_path / "spec.toml").write_text(t5_idle(base, clip, idle))
    planned = plan_spec(tmp_path / "spec.toml", GPU)
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    plan = planned.plan
    assert plan.idle_text_encoders == expected
    assert ("DBS598" in {d.code for d in planned.diagnostics}) == (
        "text_encoder_idle" in idle and clip == "true"
    )
    assert plan.adapter.t5_targets == ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
    assert plan.train_text_encoder == (clip == "true") and not plan.cache.text_embeddings
    console = Console(file=io.StringIO(), width=400)
    render_summary(plan, console)
    assert "held untrained (kohya's modules at text_encoder_lr 0)" in console.file.getvalue()


def test_t5_idle_needs_a_t5_family(tmp_path):
    images(tmp_path / "d", 2, (64, 64))
    (tmp_path / "spec.toml").write_text(t5_idle("tiny-sd1", "true", 't5_idle = "kohya"'))
    planned = plan_spec(tmp_path / "spec.toml", GPU)
    assert planned.plan is None
    assert [d.path for d in planned.diagnostics if d.code == "DBS600"] == ["train.t5_idle"]
