"""sd3_train_network.py --network_weights FILE --dim_from_weights with the file's CLIP modules (issue 12;
convert/kohya/model.py map_file_text_encoders, train.py map_text_encoder). lora_sd3's and LyCORIS's
create_network_from_weights build the file's modules alone (lora_te1_ = CLIP-L, lora_te2_ = CLIP-G);
sd3_train_network.py runs both CLIP encoders under grad whenever --network_train_unet_only is off
(train_clip); lora_sd3's prepare_optimizer_params_with_multiple_te_lrs gives CLIP-L text_encoder_lr's first
value and CLIP-G its second (one value: both; none: learning_rate) and leaves a group at rate 0 out ("NO LR
skipping!"), LyCORIS one text group at the first value."""

from __future__ import annotations

import numpy as np
import pytest
from convert_kit import codes, component_file, images, kohya, plan_of
from safetensors.numpy import save_file

UNET = "lora_unet_joint_blocks_0_x_block_attn_qkv"
CLIP_L = "lora_te1_text_model_encoder_layers_0_mlp_fc2"
CLIP_G = "lora_te2_text_model_encoder_layers_0_mlp_fc2"
SHAPES = {UNET: (3 * 2432, 2432), CLIP_L: (768, 3072), CLIP_G: (1280, 5120)}
SD3 = (
    "accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
    "stabilityai/stable-diffusion-3.5-large --clip_l sd3/clip_l.safetensors --clip_g "
    "sd3/clip_g.safetensors --t5xxl sd3/t5xxl_fp16.safetensors --train_data_dir x --resolution 512 "
    "--network_dim 16 --network_alpha 8 --learning_rate 1e-4 --max_train_steps 10 "
    "--network_weights prev.safetensors --dim_from_weights "
)
NETWORKS = {
    "networks.lora_sd3": "--network_module networks.lora_sd3",
    "lycoris": "--network_module lycoris.kohya --network_args algo=locon",
}


def _sd3(tmp_path, held: tuple[str, ...], flags: str, network: str = "networks.lora_sd3", allow=False):
    """The command converted with a --dim_from_weights file of the U-Net module and `held`'s modules."""
    images(tmp_path / "x" / "10_ohwx dog", 2, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    tensors = {}
    for name in (UNET, *held):
        out, inp = SHAPES[name]
        tensors[f"{name}.lora_down.weight"] = np.zeros((4, inp), np.float16)
        tensors[f"{name}.lora_up.weight"] = np.zeros((out, 4), np.float16)
        tensors[f"{name}.alpha"] = np.array(2.0, np.float32)
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    return kohya(tmp_path, allow=allow, command=f"{SD3}{NETWORKS[network]} {flags}")


def test_clip_g_file_at_rate_0_does_not_train_clip_g(tmp_path):
    """Regression: a file holding CLIP-G's modules alone, CLIP-G's rate 0 (text_encoder_lr's second value):
    kohya leaves CLIP-G's group out of the optimizer, so nothing of CLIP-G trains. map_file_text_encoders
    wrote train.text_encoder_2 = true for such a file whatever CLIP-G's rate (CLIP-L's first value > 0 made
    the text encoders `train`)."""
    for rates in ("5e-5 0", "0"):
        outcome = _sd3(tmp_path, (CLIP_G,), f"--text_encoder_lr {rates}", allow=True)
        values = outcome.conversion.values
        assert values[("train", "text_encoder")][0] is False
        assert values.get(("train", "text_encoder_2"), (False, ""))[0] is False, values


ENCODERS = {"text_encoder": CLIP_L, "text_encoder_2": CLIP_G}


def _kohya(held: tuple[str, ...], rates: str, network: str) -> tuple[dict[str, float], tuple[str, ...]]:
    """What kohya's network does with the file's CLIP modules: the encoders that train (at their rate) and
    the ones whose modules sit at rate 0 (applied, never stepped). lora_sd3's
    prepare_optimizer_params_with_multiple_te_lrs pads text_encoder_lr to [CLIP-L, CLIP-G, T5-XXL] ([a] ->
    [a, a, a], [a, b] -> [a, b, b], none -> learning_rate); LyCORIS has one text group at the first value
    (train_network.py hands a network without per-encoder rates the first)."""
    values = [float(v) for v in rates.split()] or [1e-4]  # --learning_rate 1e-4
    if network == "networks.lora_sd3":
        rate = {"text_encoder": values[0], "text_encoder_2": values[min(1, len(values) - 1)]}
    else:
        rate = dict.fromkeys(ENCODERS, values[0])
    trained = {e: rate[e] for e, module in ENCODERS.items() if module in held and rate[e] > 0}
    idle = tuple(e for e, module in ENCODERS.items() if module in held and rate[e] == 0)
    return trained, idle


@pytest.mark.parametrize("network", sorted(NETWORKS))
@pytest.mark.parametrize("held", [(CLIP_L,), (CLIP_G,), (CLIP_L, CLIP_G), ()], ids=["l", "g", "lg", "none"])
def test_each_clip_encoder_as_kohya_builds_and_rates_it(tmp_path, network, held):
    """Every file (CLIP-L's modules alone, CLIP-G's alone, both, neither) at every rate pattern: the encoder
    with modules trains at its rate, or at 0 stays idle (train.text_encoder_idle = "kohya", loaded with the
    file's modules, with max_grad_norm or without: the file's modules change the encoder's output); the
    encoder without modules carries nothing (kohya's network has none there: its targets written empty
    beside an idle one). Nothing is refused (DBS402 / DBS403) or warned about (DBS404)."""
    for rates in ("0", "5e-5", "0 5e-5", "5e-5 0", "5e-5 2e-5"):
        trained, idle = _kohya(held, rates, network)
        clips = ("", " --max_grad_norm 0") if idle else ("",)
        for clip in clips:
            given = f"--text_encoder_lr {rates}" if rates else ""
            outcome = _sd3(tmp_path, held, given + clip, network)
            assert not {"DBS402", "DBS403", "DBS404"} & codes(outcome), (rates, clip, outcome.diagnostics)
            plan = plan_of(outcome, tmp_path)
            o = plan.optimizer
            rate = {
                "text_encoder": o.text_encoder_lr,
                "text_encoder_2": o.text_encoder_2_lr or o.text_encoder_lr,
            }
            adapted = {
                c.name for c in plan.precision.components if c.name in ENCODERS and c.trainable == "lora"
            }
            assert plan.idle_text_encoders == idle, rates
            assert adapted == set(trained) | set(idle), rates  # the encoder without modules: plain
            assert {e: rate[e] for e in adapted - set(idle)} == pytest.approx(trained), rates
            assert plan.optimizer.max_grad_norm == (0.0 if clip else 1.0)
            assert plan.adapter.init_weights.endswith("prev.safetensors")
