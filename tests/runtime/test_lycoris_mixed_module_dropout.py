"""The network's `module_dropout` in a run of several LyCORIS algorithms (a preset file's `module_algo_map`
entries of other algos, issue 12): every module of every kind draws as its own lycoris-lora 4.1.3 class
does, one `torch.rand(1)` from torch's global generator per training forward in forward order, the layer's
base output alone below the rate (runtime/mixed_kinds.py add_module_dropout, lora_dropout.py, peft's LoHa /
LoKr, GLoRA's own). Checked against lycoris-lora's network built from the same file on tiny SD 1.x with the
same weights: training-mode outputs and the generator state after each forward equal; a tiny run trains
and resumes bit-exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.runtime.adapters import add_lora
from dbspec.runtime.execute import execute
from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.mixed_kinds import add_module_dropout
from tests.runtime.runspec import compile_spec
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    PRESETS,
    _converted_plan,
    pipe,
)
from tests.runtime.test_lycoris_mixed_full import MIXED_FULL

lycoris_kohya = pytest.importorskip("lycoris.kohya")

RATE = 0.5


def _inputs(seed: int, unet) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    return latents, torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)


def lycoris_unet(pipe, monkeypatch, algo: str, preset, **network_args):  # noqa: F811
    """lycoris-lora's kohya network (dim 4, alpha 1, conv_dim 4, `preset` a file) applied to a copy of the
    tiny U-Net: (the network, that U-Net); the class attributes apply_preset sets restored after the test."""
    kept_lycoris_presets(monkeypatch)
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)
    theirs = copy.deepcopy(pipe.unet)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, theirs, algo=algo, conv_dim="4", preset=str(preset), **network_args
    )
    made.apply_to(named, theirs, apply_text_encoder=False, apply_unet=True)
    return made, theirs


def same_draws(ours, theirs, inputs, forwards: int, backward: bool = False) -> list[torch.Tensor]:
    """`forwards` training forwards of our U-Net and LyCORIS's from torch's generator at seed 11, each pair
    from the same generator state: equal outputs (1e-4) and the generator left where ours leaves it (the
    same draws); with `backward` each output's squared mean back-propagated (gradients summed over them).
    Our outputs."""
    torch.manual_seed(11)
    outputs = []
    for _ in range(forwards):
        before = torch.get_rng_state()
        mine = ours(*inputs).sample
        after = torch.get_rng_state()
        torch.set_rng_state(before)
        other = theirs(*inputs).sample
        assert torch.equal(torch.get_rng_state(), after)
        torch.testing.assert_close(other, mine, rtol=1e-4, atol=1e-4)
        if backward:
            mine.square().mean().backward()
            other.square().mean().backward()
        outputs.append(mine.detach())
    return outputs


def calm_then_dropped(ours, theirs, made, unet) -> None:
    """Our U-Net and LyCORIS's (`theirs`, its network `made`) on the same inputs: equal in eval mode (no
    draws), then three training forwards from the same generator states with gradients (same_draws), whose
    outputs differ from the eval one and from each other (the dropouts drew)."""
    latents, context = _inputs(1, unet)
    t = torch.tensor([10, 700])
    ours.eval(), theirs.eval(), made.eval()
    with torch.no_grad():
        calm = ours(latents, t, context).sample
        torch.testing.assert_close(theirs(latents, t, context).sample, calm, rtol=1e-4, atol=1e-4)
    ours.train(), theirs.train(), made.train()
    outputs = same_draws(ours, theirs, (latents, t, context), 3, backward=True)
    assert not torch.allclose(outputs[0], calm, atol=1e-4)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)


def grads_as_lycoris(ours, made, held, least: int = 20) -> dict:
    """After calm_then_dropped: every trained tensor's gradient of our U-Net, by the name LyCORIS saves it
    under, equals the LyCORIS network's (`made`); more than `least` compared, among them a tensor of each
    name part in `held` (each kind's layers). Our gradients replace our weights (lycoris_state moves them as
    it moves weights). Returns ours by name."""
    grads = {k: v.grad for k, v in made.named_parameters() if v.grad is not None}
    for p in ours.parameters():
        if p.requires_grad:
            p.data = p.grad if p.grad is not None else torch.zeros_like(p)
    moved = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    mine = {k: v for k, v in moved.items() if k in grads and not k.endswith(".alpha")}
    assert len(mine) > least and all(any(h in key for key in mine) for h in held), sorted(mine)
    for key, value in mine.items():
        torch.testing.assert_close(value, grads[key].reshape(value.shape), rtol=1e-3, atol=1e-6, msg=key)
    return mine


def _ours(pipe, adapter, rate: float):  # noqa: F811
    """The converted plan's U-Net layers with every trainable tensor drawn at random (so no update is 0),
    and the mixed run's module dropout."""
    from dbspec.runtime.lora_dropout import add_lora_dropout

    unet = copy.deepcopy(pipe.unet)
    add_lora(unet, adapter, adapter.denoiser_targets, seed=0, conv=True)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in unet.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (p if p.abs().sum() else 0))
    wrapped = add_module_dropout(unet, adapter) if rate else 0
    if adapter.kind == "lora" and rate:  # prepare.py's own for a lora adapter's layers
        wrapped += add_lora_dropout(unet, adapter.rank_dropout, rate, form=adapter.rank_dropout_form)
    return unet, wrapped


@pytest.mark.parametrize(
    ("algo", "other"),
    [
        ("lokr", "full"),
        ("locon", "ia3"),
        ("lokr", "diag-oft"),
        ("locon", "boft"),
        ("lokr", "glora"),
        ("glora", "full"),  # a GLoRA network's module_dropout beside other kinds (was DBS403 / DBS578)
        # a full / IA^3 network's beside LoCon / LoHa / LoKr entries (was DBS403: blocks held a rate alone)
        ("full", "loha"),
        ("ia3", "lokr"),
        # ... with dora_wd: its LoHa and LoCon blocks decomposed (was DBS403 / a spec's DBS583), LoHaModule's
        # and LoConModule's draw skipping the renormalised update
        ("glora", "loha+locon"),
    ],
)
def test_each_kind_draws_module_dropout_as_lycoris(pipe, tmp_path, monkeypatch, algo, other):  # noqa: F811
    """LoCon, LoHa, LoKr and the entry's algo on one U-Net, module_dropout 0.5: with lycoris-lora's
    network holding the same weights (our export loaded into it), four training forwards from the same
    generator state give the same outputs and leave the same generator state; they differ from the
    no-dropout output (some layers skipped) and from each other (the draws move on). A GLoRA network's
    dora_wd with LoHa entries (the LoCon ones' weight_decompose false, or true): the decomposed LoHa and
    LoCon layers skipped whole as LohaModule and LoConModule skip them."""
    other, locon_wd = other.split("+")[0], other.endswith("+locon")
    preset = MIXED_FULL.replace('algo = "full"', f'algo = "{other}"')
    wd = {"dora_wd": "True"} if other == "loha" else {}
    if wd and not locon_wd:  # the LoCon entries undecomposed
        preset = preset.replace("alpha = 2\n", "alpha = 2\nweight_decompose = false\n")
        preset = preset.replace('algo = "lora"\n', 'algo = "lora"\nweight_decompose = false\n')
    PRESETS["mixed_drop"] = preset
    try:
        args = " ".join(f'"{k}={v}"' for k, v in {"module_dropout": RATE, **wd}.items())
        path, plan = _converted_plan(tmp_path, "mixed_drop", algo, args)
    finally:
        del PRESETS["mixed_drop"]
    a = plan.adapter
    assert a.module_dropout == RATE and other in {b.kind for b in a.blocks}
    decomposing = {"loha", "lora"} if locon_wd else {"loha"} if wd else set()
    assert {b.kind for b in a.blocks if b.dora == "on"} == decomposing
    ours, wrapped = _ours(pipe, a, RATE)
    lora_layers = sum(1 for b in a.blocks if b.kind in ("lora", "adapter"))
    assert wrapped > lora_layers  # the LoRA blocks' and the entry kind's layers (GLoRA: its own)
    kept_lycoris_presets(monkeypatch)
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)
    theirs = copy.deepcopy(pipe.unet)
    made = lycoris_kohya.create_network(
        1.0,
        4,
        1.0,
        None,
        named,
        theirs,
        algo=algo,
        conv_dim="4",
        preset=str(path),
        module_dropout=str(RATE),
        **wd,
    )
    decomposed = {type(m).__name__ for m in made.unet_loras if getattr(m, "wd", False)}
    assert decomposed == {"LohaModule", *(("LoConModule",) if locon_wd else ())} if wd else not decomposed
    made.apply_to(named, theirs, apply_text_encoder=False, apply_unet=True)
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith("lora_te_") for k in result.missing_keys)
    assert {round(m.module_dropout, 6) for m in made.unet_loras} == {RATE}
    latents, context = _inputs(1, pipe.unet)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        ours.eval(), theirs.eval(), made.eval()  # LyCORIS's modules: the network's children
        calm = ours(latents, t, context).sample
        torch.testing.assert_close(theirs(latents, t, context).sample, calm, rtol=1e-4, atol=1e-4)
        ours.train(), theirs.train(), made.train()
        outputs = same_draws(ours, theirs, (latents, t, context), 4)
    assert not torch.allclose(outputs[0], calm, atol=1e-4)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)


def test_mixed_module_dropout_trains_and_resumes(pipe, tmp_path):  # noqa: F811
    """A LoKr network with LoCon / LoHa / full entries and module_dropout trains 2 steps; stopped after one
    and resumed, the losses and files are bit-identical."""
    PRESETS["mixed_drop"] = MIXED_FULL
    try:
        _, plan = _converted_plan(tmp_path, "mixed_drop", "lokr", '"module_dropout=0.5"')
    finally:
        del PRESETS["mixed_drop"]
    assert plan.adapter.module_dropout == 0.5
    from tests.unit.convert_kit import out_path

    from tests.runtime.shared import resumes_bit_exact

    spec = out_path(tmp_path)
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2"]
    whole = execute(compile_spec(spec, [*base, "output.dir=whole"]))
    assert "unet/full/adapter_model.safetensors" in resumes_bit_exact(spec, base, whole)
