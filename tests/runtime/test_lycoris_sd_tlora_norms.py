"""lycoris.kohya algo=tlora with `train_norm` on SD 1.x / 2.x (issue 12; converted since 182c2b33, checked on
Flux's CLIP alone there, the SD layers by hand): the plan's U-Net and CLIP as runtime/prepare.py builds them
for a run against lycoris-lora 4.1.3's network from the same kohya network_args and preset, no tiny run.
Both build the same layers (T-LoRA on LyCORIS's TLoraModules, norm offsets on its NormModules); our export
(lycoris_state's T-LoRA tensors, kohya_norms' `w_norm` / `b_norm`), every trained tensor moved at random,
loads into the network (TLoraModule's frozen start its own SVD of the same base weights); then four
training forwards CLIP -> U-Net from one generator state, with module_dropout (every module's
`torch.rand(1)`) and rank_dropout (the NormModules' alone: TLoraModule never reads it, the adapter's
`norm_rank_dropout`): equal outputs, generator state after each, and gradients of every T-LoRA q / p / λ
and norm offset."""

from __future__ import annotations

import copy
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from dbspec.runtime.tiny import build_pipeline
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_tlora import _no_gc

lycoris_kohya = pytest.importorskip("lycoris.kohya")

RANK, MODULE = 0.3, 0.2
# the transformers (their GroupNorm and LayerNorms, 1x1 / Linear proj_in / proj_out) and CLIP's encoder
# layers (their LayerNorms): T-LoRA on every Linear, no k x k convolution (TLoraModule cannot run one)
FILE = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = ["CLIPEncoderLayer"]
"""
SD2 = "--v2 --v_parameterization --pretrained_model_name_or_path=stabilityai/stable-diffusion-2-1"


def _plan(tmp_path: Path, base: str, args: dict[str, str]):
    from tests.unit.convert_kit import SD15, errors, images, kohya, plan_of

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    model = SD2 if base == "sd2" else f"--pretrained_model_name_or_path={SD15}"
    network_args = " ".join(f'"{k}={v}"' for k, v in args.items())
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch train_network.py {model} --train_data_dir=x --resolution=64 "
        "--network_module=lycoris.kohya --network_dim=4 --network_alpha=1 "
        f"--network_args {network_args} --learning_rate=1e-2 --max_train_steps=2 --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return plan_of(outcome, tmp_path, [f"model.base=builtin:tiny-{base}"])


def _ours(pipe, plan):
    """The plan's U-Net and CLIP as runtime/prepare.py builds them, every trainable tensor moved at random."""
    from dbspec.runtime.prepare import _prepare, text_targets

    unet, clip = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    _prepare(unet, "unet", plan, torch.device("cpu"), plan.adapter.denoiser_targets, 0)
    _prepare(clip, "text_encoder", plan, torch.device("cpu"), text_targets(plan.adapter, "text_encoder"), 0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for model in (unet, clip):
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return types.SimpleNamespace(unet=unet, text_encoders=[clip])


@pytest.mark.parametrize(("preset", "base"), [("attn-mlp", "sd1"), ("p.toml", "sd2")])
def test_tlora_norm_offsets_train_as_lycoris(tmp_path, monkeypatch, preset, base):
    """LyCORIS's attn-mlp on SD 1.x (the U-Net's norms beside T-LoRA on the transformers, the time
    embedding and CLIP's attention / MLP) and a file reaching CLIP's LayerNorms too on SD 2.x."""
    from dbspec.runtime.exports import kohya_norms
    from dbspec.runtime.lycoris_export import lycoris_state
    from dbspec.runtime.lycoris_tlora import TloraLayer
    from tests.runtime.lycoris_sd_file_kit import kohya_layers
    from tests.runtime.test_lycoris_sd_norm_file import _ours_norms

    _no_gc(monkeypatch)
    (tmp_path / "p.toml").write_text(FILE, encoding="utf-8")
    args = {"algo": "tlora", "train_norm": "True", "rank_dropout": str(RANK), "module_dropout": str(MODULE)}
    plan = _plan(tmp_path, base, {**args, "preset": preset})
    a = plan.adapter
    assert (a.kind, a.rank_dropout, a.norm_rank_dropout, a.module_dropout) == ("tlora", 0.0, RANK, MODULE)
    assert a.denoiser_norms and bool(a.text_encoder_norms) == (preset == "p.toml")
    pipe = build_pipeline(f"builtin:tiny-{base}")
    comps = _ours(pipe, plan)
    kept_lycoris_presets(monkeypatch)
    named, theirs = nn.Module(), copy.deepcopy(pipe.unet)
    named.text_model = copy.deepcopy(pipe.text_encoder)  # kohya's CLIP names its modules text_model.*
    path = str(tmp_path / preset) if preset.endswith(".toml") else preset
    made = lycoris_kohya.create_network(1.0, 4, 1.0, None, named, theirs, preset=path, **args)
    made.apply_to(named, theirs, True, True)

    modules = [*made.unet_loras, *made.text_encoder_loras]
    kinds = {m.lora_name: type(m).__name__ for m in modules}
    assert len(kinds) == len(modules) and set(kinds.values()) == {"TLoraModule", "NormModule"}
    layers, norms = kohya_layers(comps, TloraLayer, adapter=True), _ours_norms(comps)
    assert sorted(norms) == sorted(n for n, k in kinds.items() if k == "NormModule")
    assert sorted(layers) == sorted(n for n, k in kinds.items() if k == "TLoraModule")
    assert any(n.startswith("lora_te_") for n in norms) == (preset == "p.toml")
    for module in modules:  # the network hands both kinds both rates; TLoraModule's forward reads one
        assert (module.module_dropout, module.rank_dropout) == (MODULE, RANK), module.lora_name
    state = lycoris_state(
        unet=comps.unet, text_encoders=comps.text_encoders, family=plan.model.family, dtype="fp32"
    )
    result = made.load_state_dict({**state, **kohya_norms(plan, comps)}, strict=False)
    assert not result.unexpected_keys, result
    assert all(k.rsplit(".", 1)[-1].startswith("base_") for k in result.missing_keys), result

    unet, (clip,) = comps.unet, comps.text_encoders
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, pipe.text_encoder.config.vocab_size, (2, 7), generator=g)
    latents, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700])
    for model in (unet, clip, theirs, named, made):
        model.train()
    torch.manual_seed(11)
    outputs = []
    for step in range(4):
        before = torch.get_rng_state()
        mine = unet(latents, t, clip(ids)[0]).sample
        after = torch.get_rng_state()
        torch.set_rng_state(before)
        other = theirs(latents, t, named.text_model(ids)[0]).sample
        assert torch.equal(torch.get_rng_state(), after), f"forward {step}: the generator's state differs"
        torch.testing.assert_close(mine, other, rtol=1e-4, atol=1e-5, msg=f"forward {step}")
        mine.square().mean().backward()
        other.square().mean().backward()
        outputs.append(mine.detach())
    assert all(not torch.allclose(outputs[0], o, atol=1e-4) for o in outputs[1:])  # the draws move on
    params = dict(made.named_parameters())
    pairs = [
        (getattr(layer, ours)["default"], params[f"{name}.{key}"])
        for name, layer in layers.items()
        for ours, key in (("lora_tlora_q", "q_layer.weight"), ("lora_tlora_p", "p_layer.weight"),
                          ("lora_tlora_lambda", "lambda_layer"))
    ]  # fmt: skip
    pairs += [
        (getattr(layer, f"lora_{key}"), params[f"{name}.{key}"])
        for name, layer in norms.items()
        for key in ("w_norm", "b_norm")
    ]
    assert sum(other.grad is not None for _, other in pairs) > len(pairs) * 0.9
    for mine, other in pairs:  # a module skipped in every forward has no gradient in both
        assert (mine.grad is None) == (other.grad is None)
        if other.grad is not None:
            torch.testing.assert_close(mine.grad.view_as(other.grad), other.grad, rtol=1e-3, atol=1e-6)
