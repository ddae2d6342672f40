"""Signs and starts LyCORIS keeps that convert (issue 12, was DBS403): a Diag-OFT entry's negative constraint,
GLoRA and T-LoRA entries' negative alphas, a T-LoRA entry's sig_type beside LoCon / LoHa, a T-LoRA network's
negative network_alpha. Each is checked against lycoris-lora 4.1.3's create_network from the same preset file
and network_args on the tiny SD 1.x U-Net: our plan's layers (adapters.add_lora, as the run builds them),
their trained tensors moved at random, exported (lycoris_state) and loaded into LyCORIS's network (every key
but T-LoRA's frozen start, which LyCORIS builds itself); both U-Nets then compute the same output in eval mode
and in a training forward (1e-4), and every trained tensor's gradient by LyCORIS's saved name (1e-4). On Flux,
one fused Linear's TLoraModule at a negative alpha. No tiny run."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.runtime.adapters import add_lora
from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)

lycoris_kohya = pytest.importorskip("lycoris.kohya")
tlora = pytest.importorskip("lycoris.modules.tlora")

SCRIPT = (
    "accelerate launch train_network.py --pretrained_model_name_or_path={sd15} --train_data_dir=x "
    "--resolution=64 --network_module=lycoris.kohya --network_dim=4 --network_alpha={alpha} "
    "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out "
)


def _preset(algo: str, extra: str) -> str:
    """The transformers the network's, their feed-forwards an entry of `algo` with `extra` of its own."""
    return (
        'unet_target_module = ["Transformer2DModel"]\nunet_target_name = []\n'
        f'text_encoder_target_module = []\n[module_algo_map.FeedForward]\nalgo = "{algo}"\n{extra}\n'
    )


def _plan(tmp_path, preset: str, args: dict[str, str], alpha: float):
    """The kohya command line (network_alpha `alpha`, `args` and the preset file) converted without DBS402 /
    DBS403: its plan on the tiny SD 1.x."""
    from tests.unit.convert_kit import SD15, errors, images, kohya, plan_of

    (tmp_path / "p.toml").write_text(preset, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    given = " ".join(f'"{k}={v}"' for k, v in {**args, "preset": "p.toml"}.items())
    command = SCRIPT.format(sd15=SD15, alpha=f"{alpha:g}") + f"--network_args {given}"
    outcome = kohya(tmp_path, command=command)
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"])


def _theirs(pipe, tmp_path, monkeypatch, args: dict[str, str], alpha: float):  # noqa: F811
    """lycoris-lora's create_network (dim 4, `alpha`, `args`, the preset file) applied to a copy of the tiny
    U-Net: (the network, that U-Net); the class attributes apply_preset sets restored after the test."""
    kept_lycoris_presets(monkeypatch)
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)
    unet = copy.deepcopy(pipe.unet)
    made = lycoris_kohya.create_network(
        1.0, 4, alpha, None, named, unet, preset=str(tmp_path / "p.toml"), **args
    )
    made.apply_to(named, unet, apply_text_encoder=False, apply_unet=True)
    return made, unet


def _ours(pipe, adapter, spread: dict[str, float]):  # noqa: F811
    """The plan's U-Net layers, every trained tensor moved by seeded noise (x 0.05, or x `spread[part]` for
    tensors whose name holds `part`)."""
    unet = copy.deepcopy(pipe.unet)
    add_lora(unet, adapter, adapter.denoiser_targets, seed=0, conv=True)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.requires_grad:
                scale = next((v for k, v in spread.items() if k in name), 0.05)
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return unet


def same_as_lycoris(pipe, tmp_path, monkeypatch, adapter, args, alpha, held, spread=None):  # noqa: F811
    """Our U-Net (the plan's `adapter`) and LyCORIS's from the same preset, `args` and `alpha`, our weights
    loaded into LyCORIS's (all its trained keys): equal outputs (eval and training) and gradients by
    LyCORIS's names, among them tensors whose names hold each of `held`; our output differs from the base
    U-Net's. Returns LyCORIS's network."""
    ours = _ours(pipe, adapter, spread or {})
    made, theirs = _theirs(pipe, tmp_path, monkeypatch, args, alpha)
    tensors = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(tensors, strict=False)
    frozen = (".base_q", ".base_p", ".base_lambda")  # T-LoRA's frozen start: LyCORIS builds its own
    missing = [k for k in result.missing_keys if k.startswith("lora_") and not k.endswith(frozen)]
    assert not result.unexpected_keys and not missing, result
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([10, 700])
    ours.eval(), theirs.eval(), made.eval()
    with torch.no_grad():
        mine = ours(latents, t, context).sample
        assert not torch.allclose(pipe.unet(latents, t, context).sample, mine, atol=1e-4)
        torch.testing.assert_close(theirs(latents, t, context).sample, mine, rtol=1e-4, atol=1e-5)
    ours.train(), theirs.train(), made.train()
    mine = ours(latents, t, context).sample
    other = theirs(latents, t, context).sample
    torch.testing.assert_close(other, mine, rtol=1e-4, atol=1e-5)
    mine.square().mean().backward()
    other.square().mean().backward()
    grads = {k: v.grad for k, v in made.named_parameters() if v.grad is not None}
    for p in ours.parameters():
        if p.requires_grad:
            p.data = p.grad if p.grad is not None else torch.zeros_like(p)
    moved = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    compared = {k: v for k, v in moved.items() if k in grads and not k.endswith(".alpha")}
    assert all(any(h in key for key in compared) for h in held), sorted(compared)
    assert compared.keys() == grads.keys() - {k for k in grads if k.endswith(".alpha")}
    for key, value in compared.items():
        torch.testing.assert_close(value, grads[key].reshape(value.shape), rtol=1e-4, atol=1e-6, msg=key)
    return made


def test_diag_oft_entry_negative_constraint_is_unconstrained(pipe, tmp_path, monkeypatch):  # noqa: F811
    """A Diag-OFT entry's own `constraint = -0.1` on a Diag-OFT network constrained at 0.001: DiagOFTModule
    scales its skew blocks only `if constraint > 0`, so those layers train unconstrained; the plan's block
    constraint 0 trains them alike (blocks large enough that 0.1 x the width, and the network's 0.001, bind:
    the same module at +0.1 computes another output)."""
    args = {"algo": "diag-oft", "constraint": "0.001"}
    plan = _plan(tmp_path, _preset("diag-oft", "constraint = -0.1"), args, 1.0)
    a = plan.adapter
    assert (a.kind, a.oft_constraint) == ("diag-oft", 0.001)
    assert [b.alpha for b in a.blocks] == [0.0]
    assert "ff" in a.blocks[0].pattern
    made = same_as_lycoris(pipe, tmp_path, monkeypatch, a, args, 1.0, ("ff_net", "attn1"), {"oft": 1.0})
    entries = [m for m in made.unet_loras if "_ff_net_" in m.lora_name]
    # built at -0.1 x the width (the alpha buffer, which kohya saves, took our export's 0 on loading)
    assert entries and all(m.constraint == pytest.approx(-0.1 * m.dim) for m in entries)
    m = entries[0]
    x = torch.randn(2, m.org_module[0].in_features, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        free = m(x)
        m.constraint = 0.1 * m.dim  # the same module at +0.1
        assert not torch.allclose(m(x), free, atol=1e-4)


@pytest.mark.parametrize(
    ("algo", "kind", "held"), [("locon", "lora", "lora_up"), ("tlora", "tlora", "lambda_layer")]
)
def test_glora_entry_negative_alpha_on_another_network(pipe, tmp_path, monkeypatch, algo, kind, held):  # noqa: F811
    """A GLoRA entry's own `alpha = -2` on a LoCon (or T-LoRA) network: create_single_module hands
    GLoRAModule `alpha or self.alpha` (-2), which it keeps signed (scale -2 / 4), so those layers train with
    their update's sign flipped; the plan's block of kind glora at alpha -2 trains them alike, the network's
    layers at its alpha."""
    args = {"algo": algo}
    plan = _plan(tmp_path, _preset("glora", "alpha = -2"), args, 1.0)
    a = plan.adapter
    assert (a.kind, a.alpha) == (kind, 1.0)
    assert [(b.kind, b.rank, b.alpha) for b in a.blocks] == [("glora", 4, -2.0)]
    made = same_as_lycoris(
        pipe, tmp_path, monkeypatch, a, args, 1.0, ("ff_net_0_proj.a1", f"attn1_to_q.{held}")
    )
    entries = [m for m in made.unet_loras if type(m).__name__ == "GLoRAModule"]
    assert entries and all(m.scale == pytest.approx(-0.5) for m in entries)


@pytest.mark.parametrize("algo", ["locon", "loha"])
def test_tlora_entry_sig_type_beside_locon_and_loha(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """A T-LoRA entry's own `sig_type = "last"` on a LoCon / LoHa network: create_single_module hands it to
    TLoraModule, which starts those layers (and their frozen copy) from the weight's last singular
    triplets; the plan's block of kind tlora at sig_type last starts them alike (each frozen start LyCORIS's,
    not the principal one) and trains them alike beside the network's layers."""
    args = {"algo": algo}
    plan = _plan(tmp_path, _preset("tlora", 'sig_type = "last"'), args, 1.0)
    a = plan.adapter
    assert [(b.kind, b.sig_type, b.data_init) for b in a.blocks] == [("tlora", "last", True)]
    ours = _ours(pipe, a, {})
    held = ("ff_net_0_proj.lambda_layer", "attn1_to_q.lora_up" if algo == "locon" else "attn1_to_q.hada_w1_a")
    made = same_as_lycoris(pipe, tmp_path, monkeypatch, a, args, 1.0, held)
    theirs = {m.lora_name: m for m in made.unet_loras if type(m).__name__ == "TLoraModule"}
    assert theirs and all(m.sig_type == "last" for m in theirs.values())
    frozen = {
        "lora_unet_" + n.replace(".", "_"): m.lora_tlora_base_lambda["default"]
        for n, m in ours.named_modules()
        if hasattr(m, "lora_tlora_base_lambda")
    }
    assert frozen.keys() == theirs.keys()
    for name, m in theirs.items():
        torch.testing.assert_close(frozen[name].reshape(m.base_lambda.shape), m.base_lambda, msg=name)
        s = torch.linalg.svdvals(m.org_module[0].weight.detach().float().reshape(m.shape[0], -1))
        assert not torch.allclose(m.base_lambda.flatten(), s[: m.lora_dim], atol=1e-4), name  # not principal


def test_tlora_network_negative_alpha(pipe, tmp_path, monkeypatch):  # noqa: F811
    """A T-LoRA network at `--network_alpha=-1`, its feed-forwards an entry's own `alpha = -2`: TLoraModule
    keeps the sign (scale -1 / 4, -2 / 4), so the updates train flipped; the plan's adapter alpha -1 and its
    block's -2 train them alike. With --scale_weight_norms LyCORIS's apply_max_norm takes the update's norm
    times the negative scale, clamps it up to half the limit and never scales: neither does ours, on updates
    whose norm the limit would bind at a positive alpha."""
    from dbspec.runtime.max_norm import apply_lycoris_max_norm, lycoris_norm_modules

    args = {"algo": "tlora"}
    plan = _plan(tmp_path, _preset("tlora", "alpha = -2"), args, -1.0)
    a = plan.adapter
    assert (a.kind, a.rank, a.alpha) == ("tlora", 4, -1.0)
    assert [(b.kind, b.rank, b.alpha) for b in a.blocks] == [("adapter", 4, -2.0)]
    made = same_as_lycoris(
        pipe, tmp_path, monkeypatch, a, args, -1.0, ("ff_net_0_proj.lambda_layer", "attn1")
    )
    scales = {m.scale for m in made.unet_loras}
    assert scales == {-0.25, -0.5}
    ours = _ours(pipe, a, {"lambda": 5.0})
    norms = [float(lycoris_update_norm(m)) for m in lycoris_norm_modules(ours, [])]
    limit = min(norms) / 8  # at scale +1 / 4 (or +2 / 4) every module's norm x scale would exceed it
    before = {n: p.clone() for n, p in ours.named_parameters() if p.requires_grad}
    assert apply_lycoris_max_norm(lycoris_norm_modules(ours, []), limit)[0] == 0
    assert all(torch.equal(p, before[n]) for n, p in ours.named_parameters() if p.requires_grad)
    for m in made.unet_loras:
        assert m.apply_max_norm(limit)[0] == False  # noqa: E712 (a tensor)


def lycoris_update_norm(module) -> torch.Tensor:
    """The Frobenius norm of a T-LoRA module's update (its frozen start subtracted, times alpha / rank)."""
    from dbspec.runtime.max_norm import lycoris_update

    return lycoris_update(module).norm()


def test_tlora_entry_negative_alpha_on_locon(pipe, tmp_path, monkeypatch):  # noqa: F811
    """A T-LoRA entry's own `alpha = -2` on a LoCon network: its block of kind tlora at -2 (TLoraModule keeps
    the sign), trained as lycoris-lora's beside the LoCon layers."""
    args = {"algo": "locon"}
    plan = _plan(tmp_path, _preset("tlora", "alpha = -2"), args, 1.0)
    a = plan.adapter
    assert [(b.kind, b.rank, b.alpha) for b in a.blocks] == [("tlora", 4, -2.0)]
    made = same_as_lycoris(pipe, tmp_path, monkeypatch, a, args, 1.0, ("ff_net_0_proj.lambda_layer", "attn1"))
    assert {m.scale for m in made.unet_loras if type(m).__name__ == "TLoraModule"} == {-0.5}


def test_flux_fused_tlora_negative_alpha(tmp_path):
    """On Flux (one TLoraModule per fused Linear) `--network_alpha=-2` converts to the adapter's alpha -2 (was
    DBS403); each fused layer's parts then compute lycoris-lora's TLoraModule at alpha -2 on kohya's stacked
    Linear, outputs and the gradients of its shared Q, λ and stacked P, from the same moved tensors."""
    from tests.runtime.test_lycoris_flow_tlora import (
        FLUX,
        FLUX_SPEC,
        RANK,
        _built,
        _flux_layers,
        _kohya_linear,
    )
    from tests.runtime.test_lycoris_flow_tlora import _ours as _fused_ours
    from tests.runtime.test_lycoris_flow_tlora import _outputs, _swap
    from tests.unit.convert_kit import FLUX_LYCORIS, component_file, errors, images, kohya, plan_of

    images(tmp_path / "convert" / "x" / "10_ohwx", 2, (64, 64))
    for file in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / "convert" / file)
    command = FLUX_LYCORIS.replace("--network_alpha=1", "--network_alpha=-2") + "--network_args algo=tlora"
    outcome = kohya(tmp_path / "convert", command=command)
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    assert plan_of(outcome, tmp_path / "convert").adapter.alpha == -2.0
    spec = FLUX_SPEC.replace("alpha = 2.0", "alpha = -2.0").replace("module_dropout = 0.3\n", "")
    plan, transformer = _built(tmp_path, FLUX, spec)
    assert plan.adapter.alpha == -2.0
    g = torch.Generator().manual_seed(0)
    for name, parts, swap in _flux_layers(transformer)[:3]:
        theirs = tlora.TLoraModule("fused", _kohya_linear(parts, swap), 1.0, lora_dim=RANK, alpha=-2.0)
        theirs.apply_to()
        ours = _fused_ours(parts, swap)
        with torch.no_grad():
            for key, param in (
                ("q_layer.weight", theirs.q_layer.weight),
                ("lambda_layer", theirs.lambda_layer),
            ):
                param.add_(torch.randn(param.shape, generator=g) * 0.1)
                ours[key].copy_(param)
            theirs.p_layer.weight.add_(torch.randn(theirs.p_layer.weight.shape, generator=g) * 0.1)
            rows = _swap(theirs.p_layer.weight, swap).split([p.base_layer.out_features for p in parts])
            for part, own in zip(parts, rows):
                part.lora_tlora_p["default"].copy_(own)
        x = torch.randn(2, 3, parts[0].base_layer.in_features, generator=g)
        want, got = theirs(x), _outputs(parts, swap, x)
        assert not torch.allclose(want, theirs.org_forward(x), atol=1e-5)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
        want.square().sum().backward()
        got.square().sum().backward()
        first = parts[0]
        torch.testing.assert_close(
            first.lora_tlora_q["default"].grad, theirs.q_layer.weight.grad, rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(
            first.lora_tlora_lambda["default"].grad, theirs.lambda_layer.grad, rtol=1e-4, atol=1e-5
        )
        stacked = _swap(torch.cat([p.lora_tlora_p["default"].grad for p in parts]), swap)
        torch.testing.assert_close(stacked, theirs.p_layer.weight.grad, rtol=1e-4, atol=1e-5, msg=name)
