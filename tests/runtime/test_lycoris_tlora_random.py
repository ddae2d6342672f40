"""LyCORIS's T-LoRA with a random start (a preset file's map entry's `use_data_init = false`, a block's
`data_init = false`): lycoris-lora 4.1.3's TLoraModule then starts from the SVD of torch.normal(0, 1 / rank)
of (out, in x kernel), drawn from torch's global generator after its q_layer's and p_layer's own init, and
subtracts that start (its frozen copy) from its update. Its file holds no frozen start, so LyCORIS's loaders
rebuild another one; dbspec's run folders keep it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from dbspec.runtime.adapters import ADAPTER_NAME

from tests.runtime.test_lycoris import _kohya_names, _merged, loader  # noqa: F401 (the fixture)
from tests.runtime.test_lycoris_tlora import (
    Net,
    _converted_network,
    _inputs,
    _no_gc,
    _reloads_as_trained,
    _tlora_weight,
    tlora,
)

_PARTS = ("q", "p", "lambda", "base_q", "base_p", "base_lambda")


def _lycoris_parts(lyco) -> dict[str, torch.Tensor]:
    return dict(
        zip(
            _PARTS,
            (
                lyco.q_layer.weight,
                lyco.p_layer.weight,
                lyco.lambda_layer,
                lyco.base_q,
                lyco.base_p,
                lyco.base_lambda,
            ),
        )
    )


@pytest.mark.parametrize("sig_type", ["principal", "last"])
def test_tlora_random_start_draws_as_lycoris_tlora_module(sig_type, monkeypatch):
    """A layer whose block starts it at random: its trained and frozen Q, P, λ equal TLoraModule's with
    use_data_init=False built from the same generator state, bit for bit, and the generator ends in the same
    state (a Linear, a 1x1 convolution, a Linear narrower than the rank: LyCORIS's slices and padding); the
    start is the base model's output, and a moved layer's outputs and gradients are TLoraModule's."""
    from dbspec.runtime.lycoris_tlora import with_tlora

    _no_gc(monkeypatch)
    torch.manual_seed(0)
    net = Net()
    base = copy.deepcopy(net)
    names = ("proj", "point", "narrow")
    drawn = frozenset(id(getattr(net, name)) for name in names)
    own = {id(getattr(net, name)): sig_type for name in names}
    config = with_tlora(
        LoraConfig(r=4, lora_alpha=1.0, target_modules=list(names)), sig_types=own, random_starts=drawn
    )
    torch.manual_seed(5)
    inject_adapter_in_model(config, net, "default")
    ours_state = torch.random.get_rng_state()
    torch.manual_seed(5)
    lycos = {
        name: tlora.TLoraModule(
            name, getattr(base, name), 1.0, 4, 1.0, sig_type=sig_type, use_data_init=False
        )
        for name in names
    }
    assert torch.equal(ours_state, torch.random.get_rng_state())
    x = _inputs(torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    for name in names:
        layer, lyco = getattr(net, name), lycos[name]
        theirs = _lycoris_parts(lyco)
        for part in _PARTS:
            assert torch.equal(
                getattr(layer, f"lora_tlora_{part}")["default"].detach(), theirs[part].detach()
            ), (name, part)
        # not the weight's SVD: a random matrix's
        assert not torch.allclose(
            layer.lora_tlora_lambda["default"],
            tlora.TLoraModule(
                name, copy.deepcopy(getattr(base, name)), 1.0, 4, 1.0, sig_type=sig_type
            ).lambda_layer,
        )
        with torch.no_grad():
            torch.testing.assert_close(layer(x[name]), getattr(base, name)(x[name]), rtol=0, atol=0)
            ours = layer.lycoris_weights("default")
            for key in ours:
                ours[key].add_(torch.randn(ours[key].shape, generator=generator) * 0.3)
        lyco.load_state_dict({k: v.detach().clone() for k, v in ours.items()}, strict=False)
        lyco.apply_to()
        params = dict(lyco.named_parameters())
        out, ref = layer(x[name]), lyco(x[name])
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        weights = torch.randn(out.shape, generator=generator)
        (out * weights).sum().backward()
        (ref * weights).sum().backward()
        for key in ours:
            torch.testing.assert_close(ours[key].grad, params[key].grad, rtol=1e-4, atol=1e-5)


# an algo=tlora network's preset file starting every U-Net layer at random, its feed-forwards from the random
# matrix's last singular triplets in bypass_mode; no text-encoder modules
TLORA_RANDOM = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = []

[module_algo_map.Transformer2DModel]
use_data_init = false

[module_algo_map.FeedForward]
use_data_init = false
sig_type = "last"
bypass_mode = true
"""


def test_tlora_random_start_trains_reloads_and_exports(tmp_path, loader, monkeypatch):  # noqa: F811
    """The converted plan's blocks start the run's T-LoRA layers as lycoris-lora 4.1.3's create_network
    from the same file does after torch.manual_seed(the plan's seed), trained and frozen copies bit for bit;
    a tiny run trains, `dbspec sample` reloads its folders as trained (the frozen random start saved with
    them); its kohya export holds LyCORIS's tensors, which LyCORIS's file loader builds at a frozen start
    recomputed from the base model's SVD: another update than the one trained (the file holds no frozen
    start), which the run's own frozen start put back into those modules restores to 1e-4."""
    from lycoris import kohya as lycoris_kohya
    from safetensors.torch import load_file

    from dbspec.runtime.execute import execute
    from dbspec.runtime.lycoris_tlora import TloraLayer
    from dbspec.runtime.tiny import build_pipeline
    from tests.runtime.runspec import compile_spec
    from tests.unit.convert_kit import out_path

    adapter, _, pipe, named, unet = _converted_network(tmp_path, monkeypatch, TLORA_RANDOM)
    assert {(b.data_init, b.sig_type) for b in adapter.blocks} == {(False, "principal"), (False, "last")}
    plan = compile_spec(out_path(tmp_path), ["model.base=builtin:tiny-sd1"])
    torch.manual_seed(plan.schedule.seed)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, copy.deepcopy(pipe.unet), preset=str(tmp_path / "p.toml"), algo="tlora"
    )
    theirs = {m.lora_name: m for m in made.unet_loras}
    assert {m.use_data_init for m in theirs.values()} == {False} and not made.text_encoder_loras
    done = execute(plan, keep_models=True)
    assert done.status == "finished"
    ours = {
        "lora_unet_" + n.replace(".", "_"): m
        for n, m in done.components.unet.named_modules()
        if isinstance(m, TloraLayer)
    }
    assert sorted(ours) == sorted(theirs)
    for key, lyco in theirs.items():
        layer = ours[key]
        assert (layer.tlora_sig_type, layer.tlora_bypass) == (lyco.sig_type, bool(lyco.bypass_mode)), key
        for part in ("base_q", "base_p", "base_lambda"):  # the frozen start: drawn as create_network draws it
            assert torch.equal(getattr(layer, f"lora_tlora_{part}")["default"], _lycoris_parts(lyco)[part]), (
                key,
                part,
            )
        assert not torch.equal(layer.lora_tlora_lambda["default"].detach(), lyco.lambda_layer.detach()), (
            "trained"
        )
    _reloads_as_trained(done, plan)
    (export,) = Path(done.final).glob("*.kohya.safetensors")
    saved = load_file(str(export))
    assert not any("base_" in k for k in saved)  # TLoraModule's custom_state_dict: no frozen start
    fresh = build_pipeline("builtin:tiny-sd1")
    holder = nn.Module()
    holder.text_model = fresh.text_encoder
    loaded, _ = loader(1.0, str(export), None, holder, fresh.unet, for_inference=True)
    merged = _merged(done.components.unet)
    names = _kohya_names(done.components.unet, "lora_unet")
    assert sorted(m.lora_name for m in loaded.unet_loras) == sorted(theirs)
    for lyco in loaded.unet_loras:
        layer, trained = ours[lyco.lora_name], merged[f"{names[lyco.lora_name]}.weight"]
        assert not torch.allclose(_tlora_weight(lyco), trained, atol=1e-3), lyco.lora_name  # another update
        with torch.no_grad():  # the start LyCORIS's file cannot carry
            for part in ("base_q", "base_p", "base_lambda"):
                getattr(lyco, part).copy_(
                    getattr(layer, f"lora_tlora_{part}")["default"].reshape(getattr(lyco, part).shape)
                )
        torch.testing.assert_close(_tlora_weight(lyco), trained, rtol=1e-4, atol=1e-4)


def _random_spec(spec: str, sig_type: str) -> str:
    """`spec` with its T-LoRA layers in one block started at random (a preset entry's use_data_init = false
    over the whole denoiser) from `sig_type`."""
    from tests.runtime.test_lycoris_flow_tlora import ALPHA, RANK

    block = (
        f'[[adapter.blocks]]\npattern = "."\nrank = {RANK}\nalpha = {ALPHA}\ndata_init = false\n'
        f'sig_type = "{sig_type}"\n\n'
    )
    return spec.replace("[checkpoints]", block + "[checkpoints]") if "[checkpoints]" in spec else spec + block


def _fused_cases():
    from tests.runtime.test_lycoris_flow_tlora import FLUX, FLUX_SPEC, SD3, SD3_SPEC, _flux_layers, sd3_layers

    return [
        pytest.param(FLUX, _random_spec(FLUX_SPEC, "principal"), _flux_layers, "principal", id="flux"),
        pytest.param(SD3, _random_spec(SD3_SPEC, "last"), sd3_layers, "last", id="sd3-last"),
    ]


@pytest.mark.parametrize(("base", "spec", "layers", "sig_type"), _fused_cases())
def test_fused_tlora_random_start_is_tlora_module_on_kohyas_layer(
    tmp_path, monkeypatch, base, spec, layers, sig_type
):
    """With fused_projections (Flux's img / txt qkv and linear1, SD3's qkv; a Linear alone; SD3's swapped
    context modulation), each kohya layer's random start is TLoraModule's with use_data_init=False on kohya's
    stacked Linear from the generator state the layer's first-built part drew its own from (one matrix over
    the stacked rows in kohya's order, its SVD's P cut over diffusers' parts): trained and frozen Q, P, λ bit
    for bit, the generator left as TLoraModule leaves it, Q and λ one Parameter; with moved parameters the
    parts compute the module's output and give its gradients."""
    from dbspec.runtime.lycoris_tlora import random_start
    from tests.runtime.test_lycoris_flow_tlora import (
        ALPHA,
        RANK,
        _built,
        _kohya_linear,
        _ours,
        _outputs,
        _swap,
    )

    _no_gc(monkeypatch)
    plan, transformer = _built(tmp_path, base, spec)
    assert plan.adapter.fused and {(b.data_init, b.sig_type) for b in plan.adapter.blocks} == {
        (False, sig_type)
    }
    generator = torch.Generator().manual_seed(3)
    for name, parts, swap in layers(transformer):
        assert all(part.tlora_random for part in parts), name
        _, state = min((part.tlora_rng for part in parts), key=lambda built: built[0])
        kohya = _kohya_linear(parts, swap)
        torch.random.set_rng_state(state)
        theirs = tlora.TLoraModule(
            name, kohya, 1.0, lora_dim=RANK, alpha=ALPHA, sig_type=sig_type, use_data_init=False
        )
        after = torch.random.get_rng_state()
        torch.random.set_rng_state(state)
        random_start(kohya.weight, RANK, sig_type)
        assert torch.equal(torch.random.get_rng_state(), after), name
        theirs.apply_to()
        ours = _ours(parts, swap)
        want = {**dict(theirs.named_parameters()), **dict(theirs.named_buffers())}
        for key, value in ours.items():
            assert torch.equal(value.detach(), want[key].detach()), (name, key)
        data = tlora.TLoraModule(name, _kohya_linear(parts, swap), 1.0, lora_dim=RANK, alpha=ALPHA)
        assert not torch.allclose(ours["lambda_layer"], data.lambda_layer), name  # not the weight's SVD
        for part in parts[1:]:
            assert part.lora_tlora_q[ADAPTER_NAME] is parts[0].lora_tlora_q[ADAPTER_NAME]
            assert part.lora_tlora_lambda[ADAPTER_NAME] is parts[0].lora_tlora_lambda[ADAPTER_NAME]
        with torch.no_grad():  # moved: the module's parameters, then ours from them
            for param in (theirs.q_layer.weight, theirs.lambda_layer, theirs.p_layer.weight):
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
            ours["q_layer.weight"].copy_(theirs.q_layer.weight)
            ours["lambda_layer"].copy_(theirs.lambda_layer)
            rows = _swap(theirs.p_layer.weight, swap).split([p.base_layer.out_features for p in parts])
            for part, own in zip(parts, rows):
                part.lora_tlora_p[ADAPTER_NAME].copy_(own)
        x = torch.randn(2, 3, parts[0].base_layer.in_features, generator=generator)
        got, ref = _outputs(parts, swap, x), theirs(x)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5, msg=name)
        weights = torch.randn(ref.shape, generator=generator)
        (got * weights).sum().backward()
        (ref * weights).sum().backward()
        torch.testing.assert_close(
            ours["q_layer.weight"].grad, theirs.q_layer.weight.grad, rtol=1e-4, atol=1e-5, msg=name
        )
        torch.testing.assert_close(
            ours["lambda_layer"].grad, theirs.lambda_layer.grad, rtol=1e-4, atol=1e-5, msg=name
        )
        grads = torch.cat([part.lora_tlora_p[ADAPTER_NAME].grad for part in parts])
        torch.testing.assert_close(
            _swap(grads, swap), theirs.p_layer.weight.grad, rtol=1e-4, atol=1e-5, msg=name
        )
