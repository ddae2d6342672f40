"""lycoris.kohya --network_weights with algo=ia3, diag-oft or boft on SD 1.x and SDXL (issue 12):
create_network's IA3Modules (`weight` / `on_input`), DiagOFTModules / ButterflyOFTModules (`oft_blocks`,
`rescale`; `alpha` unread) load the file through load_state_dict(strict=False) -> adapter.init_weights /
init_partial; the plan checks the file's tensors and prefixes. On Flux Diag-OFT's file stays DBS403. The
numbers against lycoris-lora 4.1.3: tests/runtime/test_lycoris_sd_ia3_file.py, test_lycoris_sd_oft_file.py."""

from __future__ import annotations

import numpy as np
import pytest
from convert_kit import SDXL, codes, errors, fate, kohya, kohya_lora, messages, plan_of
from safetensors.numpy import save_file

Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
TE = "lora_te_text_model_encoder_layers_3_self_attn_k_proj"
FROM = "--network_module lycoris.kohya --network_args algo=ia3 --network_weights prev.safetensors"
OFT = "--network_module lycoris.kohya --network_args algo={} rescaled=True --network_weights prev.safetensors"


def _file(path, tensors: dict[str, tuple[int, ...]]) -> None:
    """Zeros, alphas 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: (np.ones if k.endswith(".alpha") else np.zeros)(s, np.float32) for k, s in tensors.items()},
        str(path),
    )


def test_ia3_file_starts_the_scales(tmp_path):
    _file(tmp_path / "prev.safetensors", {f"{Q}.weight": (320,), f"{Q}.on_input": (), f"{TE}.weight": (768,)})
    outcome = kohya_lora(tmp_path, FROM)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "ia3" and a.init_partial and a.init_weights.endswith("prev.safetensors")
    assert a.init_layers == 2


def test_sdxl_ia3_file_in_kohyas_names(tmp_path):
    from convert_kit import images

    _file(
        tmp_path / "prev.safetensors",
        {
            "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_v.weight": (640,),
            "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.weight": (1280,),
        },
    )
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
        f"--train_data_dir=x --resolution=64 {FROM} --learning_rate=1e-4 --max_train_steps=3 "
        "--output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "ia3" and a.init_partial and a.init_layers == 2


def test_a_file_of_another_algo_or_model_is_refused_naming_it(tmp_path):
    _file(tmp_path / "a" / "prev.safetensors", {f"{Q}.lokr_w1": (4, 4), f"{Q}.lokr_w2": (80, 80)})
    lokr = kohya_lora(tmp_path / "a", FROM)
    assert not {"DBS402", "DBS403"} & codes(lokr), errors(lokr)
    assert f"`{Q}.lokr_w1` is not LyCORIS ia3's" in _plan_errors(tmp_path / "a")
    _file(tmp_path / "c" / "prev.safetensors", {"lora_flux_double_blocks_0_img_attn_qkv.weight": (9,)})
    kohya_lora(tmp_path / "c", FROM)
    assert "`lora_flux_double_blocks_0_img_attn_qkv` belongs to no model" in _plan_errors(tmp_path / "c")


def _plan_errors(folder) -> str:
    from convert_kit import GPU, out_path

    from dbspec.frontend import plan_spec

    planned = plan_spec(out_path(folder), GPU)
    assert planned.plan is None
    return " ".join(d.message for d in planned.diagnostics if d.code == "DBS356")


@pytest.mark.parametrize(("algo", "blocks"), [("diag-oft", (80, 4, 4)), ("boft", (3, 80, 4, 4))])
def test_oft_file_starts_the_blocks(tmp_path, algo, blocks):
    _file(
        tmp_path / "prev.safetensors",
        {f"{Q}.oft_blocks": blocks, f"{Q}.rescale": (320, 1), f"{Q}.alpha": (), f"{TE}.oft_blocks": blocks},
    )
    outcome = kohya_lora(tmp_path, OFT.format(algo))
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (
        a.kind == algo and a.oft_rescaled and a.init_partial and a.init_weights.endswith("prev.safetensors")
    )
    assert a.init_layers == 2


@pytest.mark.parametrize(("algo", "blocks"), [("diag-oft", (3, 80, 4, 4)), ("boft", (80, 4, 4))])
def test_the_other_ofts_blocks_are_refused_naming_the_tensor(tmp_path, algo, blocks):
    _file(tmp_path / "prev.safetensors", {f"{Q}.oft_blocks": blocks})
    outcome = kohya_lora(tmp_path, OFT.format(algo))
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert f"`{Q}.oft_blocks` has {len(blocks)} dimensions" in _plan_errors(tmp_path)


@pytest.mark.parametrize(
    ("algo", "tensor", "shape"), [("diag-oft", "oft_blocks", (9, 4, 4)), ("glora", "a1.weight", (4, 4))]
)
def test_diag_oft_or_glora_file_on_flux_starts_the_fused_network(tmp_path, algo, tensor, shape):
    """Was DBS403 (and for GLoRA before that a converter crash): one module per fused Linear, cut into its
    parts when the run loads it (runtime/lycoris_whole_init.py; its shapes checked then)."""
    from test_convert_lycoris_flux import _flux

    _file(tmp_path / "prev.safetensors", {f"lora_unet_double_blocks_0_img_attn_qkv.{tensor}": shape})
    outcome = _flux(tmp_path, f"--network_args algo={algo} --network_weights prev.safetensors")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "network_weights") == "mapped"


GLORA = "--network_module lycoris.kohya --network_args algo=glora {} --network_weights prev.safetensors"
GLORA_Q = {f"{Q}.a1.weight": (320, 4), f"{Q}.a2.weight": (4, 320), f"{Q}.b1.weight": (320, 4)}


def test_glora_file_starts_the_pairs(tmp_path):
    _file(tmp_path / "prev.safetensors", {**GLORA_Q, f"{Q}.b2.weight": (4, 320), f"{Q}.alpha": ()})
    outcome = kohya_lora(tmp_path, GLORA.format(""))
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "glora" and a.init_partial and a.init_layers == 1


def test_glora_file_with_another_algos_tensors_is_refused_naming_it(tmp_path):
    _file(tmp_path / "prev.safetensors", {**GLORA_Q, f"{Q}.lora_down.weight": (4, 320)})
    outcome = kohya_lora(tmp_path, GLORA.format(""))
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert f"`{Q}.lora_down.weight` is not LyCORIS glora's" in _plan_errors(tmp_path)


def test_glora_dim_from_weights_builds_the_files_modules(tmp_path):
    """create_network_from_weights builds the file's GLoRA modules (convert/kohya/lycoris_sd_rebuilt.py; was
    DBS403): at a2's rows and the file's alpha; a module without alpha stops it (float(None)): DBS402."""
    _file(tmp_path / "prev.safetensors", {**GLORA_Q, f"{Q}.b2.weight": (4, 320)})
    outcome = kohya_lora(tmp_path, GLORA.format("") + " --dim_from_weights")
    assert "float(alpha)" in messages(outcome, "DBS402"), errors(outcome)
    assert any(d.code == "DBS402" and d.path == "dim_from_weights" for d in outcome.diagnostics)
    _file(tmp_path / "prev.safetensors", {**GLORA_Q, f"{Q}.b2.weight": (4, 320), f"{Q}.alpha": ()})
    outcome = kohya_lora(tmp_path, GLORA.format("") + " --dim_from_weights")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "glora" and a.rank == 4 and a.init_partial


@pytest.mark.parametrize("algo", ["glora", "locon"])
def test_use_scalar_starts_from_the_file_at_scalar_one(tmp_path, algo):
    """LyCORIS's load hook sets every module's scalar to 1 (runtime/init_weights.py does too): it converts
    (was DBS403 / DBS520)."""
    tensors = (
        {**GLORA_Q, f"{Q}.b2.weight": (4, 320)}
        if algo == "glora"
        else {f"{Q}.lora_down.weight": (4, 320), f"{Q}.lora_up.weight": (320, 4), f"{Q}.alpha": ()}
    )
    _file(tmp_path / "prev.safetensors", tensors)
    extra = "--network_dim 4 --network_alpha 1" if algo == "locon" else ""
    outcome = kohya_lora(tmp_path, GLORA.replace("glora", algo).format("use_scalar=True") + f" {extra}")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == ("lora" if algo == "locon" else algo) and a.scalar and a.init_layers == 1


@pytest.mark.parametrize(
    ("algo", "tensors"),
    [
        ("lokr", {"lokr_w1": (4, 4), "lokr_w2": (80, 80), "alpha": ()}),
        (
            "loha",
            {"hada_w1_a": (320, 4), "hada_w1_b": (4, 320), "hada_w2_a": (320, 4), "hada_w2_b": (4, 320)},
        ),
    ],
)
def test_lokr_loha_files_start_on_sd(tmp_path, algo, tensors):
    """One module per layer (the plan refused them as a Flux / SD3 layout before)."""
    _file(tmp_path / "prev.safetensors", {f"{Q}.{k}": s for k, s in tensors.items()})
    outcome = kohya_lora(
        tmp_path,
        f"--network_module lycoris.kohya --network_args algo={algo} --network_weights prev.safetensors",
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == algo and a.init_partial and a.init_layers == 1
