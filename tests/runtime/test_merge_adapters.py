"""`model.merge_adapters` (kohya `--base_weights`; runtime/merge_adapters.py): each layer merged exactly as
kohya's own `LoRAInfModule.merge_to` merges it (tests/runtime/kohya_reference/kohya_merge.safetensors, made by
running kohya's code), to the formula restated here in float64; the plan checks the files (DBS391) and
folds them into the identities the caches use; a tiny run trains on the merged base and resumes bit-exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dbspec.frontend import plan_spec
from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.merge_adapters import kohya_layers, merge_layer
from tests.runtime.runspec import CPU, compile_spec, summary_text, write_spec

REFERENCE = load_file(str(Path(__file__).parent / "kohya_reference" / "kohya_merge.safetensors"))
DTYPES = {16.0: torch.float16, 8.0: torch.bfloat16, 32.0: torch.float32}
CASES = sorted({int(k.split(".")[1]) for k in REFERENCE})


def _layer(weight: torch.Tensor) -> torch.nn.Module:
    if weight.dim() == 2:
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
    else:
        layer = torch.nn.Conv2d(
            weight.shape[1], weight.shape[0], weight.shape[2], padding=weight.shape[2] // 2
        )
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


@pytest.mark.parametrize("case", CASES)
def test_a_layer_merges_as_kohyas_merge_to(case):
    p = f"merge.{case}"
    multiplier, bits = REFERENCE[f"{p}.options"].tolist()
    layer = _layer(REFERENCE[f"{p}.weight"])
    with torch.no_grad():
        merge_layer(
            layer,
            REFERENCE[f"{p}.up"],
            REFERENCE[f"{p}.down"],
            REFERENCE.get(f"{p}.alpha"),
            multiplier,
            DTYPES[bits],
        )
    assert torch.equal(layer.weight.detach(), REFERENCE[f"{p}.merged"])
    # the formula in float64, then kohya's rounding to the mixed dtype (an alpha of 0, or none, is the rank)
    up, down = REFERENCE[f"{p}.up"].double().numpy(), REFERENCE[f"{p}.down"].double().numpy()
    rank = down.shape[0]
    alpha = float(REFERENCE[f"{p}.alpha"]) if f"{p}.alpha" in REFERENCE else 0.0
    scale = (alpha or rank) / rank
    if down.ndim == 2:
        update = up @ down
    else:
        update = np.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
    expected = REFERENCE[f"{p}.weight"].double().numpy() + multiplier * scale * update
    rounded = torch.from_numpy(expected).to(DTYPES[bits]).float().numpy()
    tolerance = {16.0: 2e-3, 8.0: 1.6e-2, 32.0: 1e-5}[bits]
    np.testing.assert_allclose(layer.weight.detach().numpy(), rounded, rtol=tolerance, atol=tolerance)


def _kohya_file(tmp_path: Path, plan, names: list[str], extra: tuple[str, ...] = ()) -> tuple[Path, dict]:
    """A kohya-layout LoRA file for the first `names` layers of the run's model (random fp16 tensors, alpha 2,
    rank 2) plus `extra` module names; the layers it merges into, by name."""
    comps = family_runtime(plan.model.family).load(plan)
    layers = kohya_layers(plan, comps.unet, comps.text_encoders)
    g = torch.Generator().manual_seed(4)
    tensors = {}
    for name in names:
        weight = layers[name].weight
        if weight.dim() == 2:
            down, up = (
                torch.randn(2, weight.shape[1], generator=g),
                torch.randn(weight.shape[0], 2, generator=g),
            )
        else:
            k = weight.shape[2]
            down = torch.randn(2, weight.shape[1], k, k, generator=g)
            up = torch.randn(weight.shape[0], 2, 1, 1, generator=g)
        tensors |= {f"{name}.lora_down.weight": down.half(), f"{name}.lora_up.weight": up.half()}
        tensors[f"{name}.alpha"] = torch.tensor(2.0)
    for name in extra:
        tensors |= {
            f"{name}.lora_down.weight": torch.zeros(2, 4).half(),
            f"{name}.lora_up.weight": torch.zeros(4, 2).half(),
        }
    path = tmp_path / "style.safetensors"
    save_file(tensors, str(path))
    return path, {name: layers[name].weight.detach().clone() for name in names}


MERGE = '\n[[model.merge_adapters]]\npath = "style.safetensors"\nmultiplier = 0.5\n'
LORA = '[adapter]\nkind = "lora"\nrank = 2\n'


def test_a_run_trains_on_the_merged_base_and_resumes_bit_exact(tmp_path):
    spec = write_spec(tmp_path, steps=2, extra=LORA)
    plain = compile_spec(spec)
    te = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    resnet = "lora_unet_down_blocks_0_resnets_0_conv1"  # a 3x3 convolution no adapter of this run targets
    path, before = _kohya_file(tmp_path, plain, [te, resnet], extra=("lora_unet_conv_in",))
    text = spec.read_text().replace('base = "builtin:tiny-sd1"\n', 'base = "builtin:tiny-sd1"\n' + MERGE)
    spec.write_text(text)
    plan = compile_spec(spec)
    (merge,) = plan.model.merge_adapters
    assert (merge.path, merge.multiplier, merge.components, merge.layers) == (
        str(path),
        0.5,
        ("text_encoder", "unet"),
        3,
    )
    # the merged text encoder and denoiser are other models: other text-cache keys; the VAE is the same
    assert (
        plan.model.text_identity != plain.model.text_identity and plan.model.identity != plain.model.identity
    )
    assert plan.model.vae_identity == plain.model.vae_identity
    assert "style.safetensors" in summary_text(plan)
    whole = execute(compile_spec(spec, ["output.dir=whole"]), keep_models=True)
    state = load_file(str(path))
    unet = whole.components.unet
    conv1 = unet.down_blocks[0].resnets[0].conv1
    down, up = state[f"{resnet}.lora_down.weight"].float(), state[f"{resnet}.lora_up.weight"].float()
    update = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
    torch.testing.assert_close(conv1.weight.detach().float(), before[resnet] + 0.5 * update * (2.0 / 2))
    encoder = whole.components.text_encoders[0]
    fc1 = getattr(encoder, "text_model", encoder).encoder.layers[0].mlp.fc1  # transformers 5 drops text_model
    merged_te = before[te] + 0.5 * (
        state[f"{te}.lora_up.weight"].float() @ state[f"{te}.lora_down.weight"].float()
    )
    torch.testing.assert_close(getattr(fc1, "base_layer", fc1).weight.detach().float(), merged_te)
    # `dbspec sample` rebuilds the run's merged base under the LoRA
    from dbspec.runtime.sample import SampleRequest, load_pipeline

    pipe = load_pipeline(SampleRequest(source=Path(whole.output), settings=plan.validation))
    sampled = pipe.unet.down_blocks[0].resnets[0].conv1
    assert torch.equal(
        getattr(sampled, "base_layer", sampled).weight.detach(), conv1.weight.detach().to("cpu")
    )
    parts = compile_spec(spec, ["output.dir=parts"])
    assert execute(parts, stop_after=1).status == "interrupted"
    resumed = execute(parts, resume=True)
    ours = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    theirs = load_file(str(Path(resumed.final) / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def _codes(spec: Path) -> list[str]:
    return [d.code for d in plan_spec(spec, CPU, str(spec), []).diagnostics if d.severity == "error"]


def test_the_plan_refuses_files_that_do_not_fit(tmp_path):
    spec = write_spec(tmp_path, steps=2, extra=LORA)
    text = spec.read_text().replace('base = "builtin:tiny-sd1"\n', 'base = "builtin:tiny-sd1"\n' + MERGE)
    spec.write_text(text)
    assert _codes(spec) == ["DBS391"]  # missing
    save_file(
        {"lora_te2_x.lora_down.weight": torch.zeros(2, 4), "lora_te2_x.lora_up.weight": torch.zeros(4, 2)},
        str(tmp_path / "style.safetensors"),
    )
    assert _codes(spec) == ["DBS391"]  # an SDXL second text encoder's layer on SD 1.x
    flux = write_spec(tmp_path, base="builtin:tiny-flux", steps=2, extra=LORA)
    flux.write_text(
        flux.read_text().replace('base = "builtin:tiny-flux"\n', 'base = "builtin:tiny-flux"\n' + MERGE)
    )
    assert _codes(flux) == [
        "DBS391"
    ]  # Flux merges kohya's lora_flux layout: no lora_te2_ (CLIP-L, T5: te1, te3)
