"""Negative alphas on LoCon / LoHa / LoKr map entries (issue 12, was DBS403): lycoris-lora 4.1.3's
LoConModule, LohaModule and LokrModule read `alpha` as the rank only when it is None or 0 and keep its sign
(scale alpha / dim, alpha / sqrt(dim) with rs_lora; the `alpha` buffer they save signed too), so an entry's
own
`alpha = -2` trains those layers with their update flipped; the plan's block at -2 trains them alike. Checked
against lycoris-lora's create_network from the same preset file: on the tiny SD 1.x U-Net with
test_lycoris_entry_signs.same_as_lycoris (outputs, gradients, the export loading into LyCORIS's network), with
--scale_weight_norms (LoConModule's norm is its unscaled update's times the negative scale: never scaled;
LohaModule's and LokrModule's the norm of their scaled update, scaled as at +2), on CLIP entries, and on
Flux's fused Linears and CLIP-L beside the network's dropouts in bypass_mode
(test_lycoris_mixed_flow_bypass_dropout's helpers: each module against the parts, draws and gradients). No
tiny run."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.runtime.adapters import add_lora
from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_entry_signs import SCRIPT, _ours, _preset, _theirs, same_as_lycoris

lycoris_kohya = pytest.importorskip("lycoris.kohya")

_CLASS = {"locon": "LoConModule", "loha": "LohaModule", "lokr": "LokrModule"}
_CLASS.update(glora="GLoRAModule", tlora="TLoraModule")
# a trained tensor of each algorithm's modules, by the name LyCORIS saves it under
_HELD = {"locon": "lora_up", "loha": "hada_w1_a", "lokr": "lokr_w1", "glora": "a1", "tlora": "lambda_layer"}
_HELD["diag-oft"] = "oft_blocks"
_FROZEN = (".base_q", ".base_p", ".base_lambda")  # T-LoRA's frozen start: LyCORIS builds its own


def _plan(tmp_path, preset: str, args: dict[str, str], flags: str = "", alpha: float = 1.0):
    """The kohya command (network_alpha `alpha`, `args`, the preset file, `flags`) converted without DBS402 /
    DBS403: its plan on the tiny SD 1.x."""
    from tests.unit.convert_kit import SD15, errors, images, kohya, plan_of

    (tmp_path / "p.toml").write_text(preset, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    given = " ".join(f'"{k}={v}"' for k, v in {**args, "preset": "p.toml"}.items())
    command = SCRIPT.format(sd15=SD15, alpha=f"{alpha:g}") + f"--network_args {given} {flags}"
    outcome = kohya(tmp_path, command=command)
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"])


@pytest.mark.parametrize(
    ("network", "entry", "kind"),
    [
        ("locon", "locon", "adapter"),
        ("locon", "loha", "loha"),
        ("loha", "lokr", "lokr"),
        ("lokr", "locon", "lora"),
        # beside GLoRA, T-LoRA, Diag-OFT and full networks' layers (runtime/mixed_kinds.py)
        ("glora", "lokr", "lokr"),
        ("tlora", "loha", "loha"),
        ("diag-oft", "locon", "adapter"),
    ],
)
def test_entry_negative_alpha_is_lycoris(pipe, tmp_path, monkeypatch, network, entry, kind):  # noqa: F811
    """An entry's own `alpha = -2` (LoCon, LoHa or LoKr) on another network: its block at -2, the network's
    layers as they convert, trained as lycoris-lora's network (LyCORIS's entry modules at scale -0.5)."""
    args = {"algo": network}
    plan = _plan(tmp_path, _preset(entry, "alpha = -2"), args)
    a = plan.adapter
    assert (kind, 4, -2.0) in [(b.kind, b.rank, b.alpha) for b in a.blocks], a.blocks
    held = (f"ff_net_0_proj.{_HELD[entry]}", f"attn1_to_q.{_HELD[network]}")
    made = same_as_lycoris(pipe, tmp_path, monkeypatch, a, args, 1.0, held)
    entries = [m for m in made.unet_loras if "_ff_net_" in m.lora_name]
    assert entries and {type(m).__name__ for m in entries} == {_CLASS[entry]}
    assert any(m.scale == pytest.approx(-0.5) for m in entries)
    full = [m for m in entries if getattr(m, "use_w1", False) and getattr(m, "use_w2", False)]
    assert all(m.scale == 1.0 for m in full)  # LokrModule: both factors full, scale 1 whatever the alpha
    assert all(m.alpha.item() == pytest.approx(-2.0) for m in entries if m not in full)


def test_locon_entry_negative_alpha_on_full_network(pipe, tmp_path, monkeypatch):  # noqa: F811
    """A LoCon entry's own `alpha = -2` on a full network (its ScaleBlock of kind lora, was DBS403: those
    blocks took no alpha below 0): the export loads into lycoris-lora's network, both U-Nets compute the same
    output (eval and training) and the LoCon modules' gradients are equal (the full layers train the base
    weights, which same_as_lycoris does not compare)."""
    args = {"algo": "full"}
    plan = _plan(tmp_path, _preset("locon", "alpha = -2"), args)
    a = plan.adapter
    assert a.kind == "full" and [(b.kind, b.rank, b.alpha) for b in a.blocks] == [("lora", 4, -2.0)]
    ours = _ours(pipe, a, {})
    made, theirs = _theirs(pipe, tmp_path, monkeypatch, args, 1.0)
    result = made.load_state_dict(
        lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32"), False
    )
    assert not result.unexpected_keys and not [k for k in result.missing_keys if k.startswith("lora_")]
    entries = [m for m in made.unet_loras if "_ff_net_" in m.lora_name]
    assert entries and all(m.scale == pytest.approx(-0.5) for m in entries)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([10, 700])
    ours.train(), theirs.train(), made.train()
    mine, other = ours(latents, t, context).sample, theirs(latents, t, context).sample
    torch.testing.assert_close(other, mine, rtol=1e-4, atol=1e-5)
    mine.square().mean().backward()
    other.square().mean().backward()
    grads = {k: v.grad for k, v in made.named_parameters() if "_ff_net_" in k and v.grad is not None}
    for p in ours.parameters():
        if p.requires_grad:
            p.data = p.grad if p.grad is not None else torch.zeros_like(p)
    moved = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    assert grads and all(k.endswith(("lora_up.weight", "lora_down.weight")) for k in grads)
    for key, grad in grads.items():
        torch.testing.assert_close(moved[key], grad.reshape(moved[key].shape), rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize(
    ("network", "entry", "alpha"),
    [
        ("loha", "locon", 1.0),
        ("locon", "loha", 1.0),
        ("locon", "lokr", 1.0),
        # the network's own negative alpha (--network_alpha=-1): LoCon's never scaled, LoHa's all
        ("locon", "locon", -1.0),
        ("loha", "lokr", -1.0),
    ],
)
def test_negative_alpha_max_norm_is_lycoris(pipe, tmp_path, monkeypatch, network, entry, alpha):  # noqa: F811
    """--scale_weight_norms beside an entry's own `alpha = -2` (and the network's `alpha`): lycoris.kohya's
    apply_max_norm_regularization and ours (runtime/max_norm.py) scale the same modules (LoConModule at a
    negative scale never: its norm below 0, clamped up to half the limit; LohaModule and LokrModule as at the
    positive alpha), log the same mean and largest norm, and leave equal networks (outputs after)."""
    from dbspec.runtime.max_norm import apply_lycoris_max_norm, lycoris_norm_modules, lycoris_update

    args = {"algo": network}
    plan = _plan(tmp_path, _preset(entry, "alpha = -2"), args, "--scale_weight_norms=1", alpha)
    a = plan.adapter
    assert (a.max_norm, a.max_norm_form, a.alpha) == (1.0, "lycoris", alpha)
    ours = _ours(pipe, a, {})
    made, theirs = _theirs(pipe, tmp_path, monkeypatch, args, alpha)
    tensors = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if k.startswith("lora_")]
    modules = lycoris_norm_modules(ours, [])
    limit = min(float(lycoris_update(m).detach().norm()) for m in modules) / 4  # binds every module at +alpha
    mine = apply_lycoris_max_norm(modules, limit)
    want = made.apply_max_norm_regularization(limit, "cpu")
    kept = [m for m in made.unet_loras if type(m).__name__ == "LoConModule" and m.scale < 0]  # never scaled
    assert bool(kept) == (entry == "locon" or (network == "locon" and alpha < 0))
    assert mine[0] == want[0] == len(made.unet_loras) - len(kept)
    assert mine[1:] == pytest.approx((float(want[1]), float(want[2])), rel=1e-4)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([10, 700])
    ours.eval(), theirs.eval(), made.eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(latents, t, context).sample, ours(latents, t, context).sample)


# the transformers' and the ResNets' layers the network's (their 3x3 convolutions at conv_dim / conv_alpha)
NETWORK_PRESET = """\
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = []
"""


@pytest.mark.parametrize("network", ["locon", "loha", "lokr"])
def test_network_negative_alpha_is_lycoris(pipe, tmp_path, monkeypatch, network):  # noqa: F811
    """`--network_alpha=-1` with `conv_alpha=-2` on a LoCon / LoHa / LoKr network (was DBS403: the adapter's
    alpha above 0, conv_alpha 0 or more): the adapter's alpha -1 and conv_alpha -2, trained as lycoris-lora's
    network at those alphas (its modules at scale -1 / 4 and -2 / 4, a LokrModule with two full factors at
    1)."""
    args = {"algo": network, "conv_dim": "4", "conv_alpha": "-2"}
    plan = _plan(tmp_path, NETWORK_PRESET, args, alpha=-1.0)
    a = plan.adapter
    assert (a.kind, a.rank, a.alpha, a.conv_rank, a.conv_alpha) == (
        {"locon": "lora"}.get(network, network),
        4,
        -1.0,
        4,
        -2.0,
    )
    held = (f"attn1_to_q.{_HELD[network]}", f"resnets_0_conv1.{_HELD[network]}")
    made = same_as_lycoris(pipe, tmp_path, monkeypatch, a, args, -1.0, held)
    scales = {m.scale for m in made.unet_loras}
    assert {-0.25, -0.5} <= scales <= {-0.25, -0.5, 1.0}


def test_flux_network_negative_alpha_is_lycoris(tmp_path, monkeypatch):
    """On Flux `--network_alpha=-1` on a LoCon network (one LoConModule per fused Linear) beside LoHa / LoKr
    entries at their own negative alphas, in bypass_mode with the network's dropouts: each kohya layer's
    module against the plan's parts, CLIP-L's alike."""
    from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
    from tests.runtime.shared import moved_components
    from tests.runtime.test_lycoris_mixed_flow_bypass_dropout import DROPOUT, MODULE, _layers_as_lycoris
    from tests.runtime.test_lycoris_mixed_flow_full import _BASE, _kohya_layers, _kohya_tree
    from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
    from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip
    from tests.unit.convert_kit import FLUX_LYCORIS, component_file, errors, images, kohya, plan_of

    file = tmp_path / "mixed.toml"
    file.write_text(FLUX_FILE.replace("QKV", "lokr").replace("LINEAR1", "loha"), encoding="utf-8")
    drops = {"bypass_mode": "True", "dropout": str(DROPOUT), "module_dropout": str(MODULE)}
    given = " ".join(f'"{k}={v}"' for k, v in {"algo": "locon", "preset": file.name, **drops}.items())
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    command = FLUX_LYCORIS.replace("--network_alpha=1", "--network_alpha=-1") + f"--network_args {given}"
    outcome = kohya(tmp_path, command=command)
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    plan = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-flux", *_BASE])
    a = plan.adapter
    assert a.fused and (a.kind, a.alpha) == ("lora", -1.0)
    comps = moved_components(plan, text_encoder=True)
    tensors = lycoris_state(unet=comps.unet, text_encoders=comps.text_encoders, family="flux", dtype="fp32")
    layers = _kohya_layers(comps.unet, flux_model(1, 1), diffusers_parts)
    clip = _kohya_clip(_unwrapped(comps.text_encoders[0]))
    kept_lycoris_presets(monkeypatch)
    tree = _kohya_tree(layers)
    built = lycoris_kohya.create_network(
        1.0, 4, -1.0, None, [clip, nn.Module()], tree, algo="locon", preset=str(file), **drops
    )
    built.apply_to([clip, nn.Module()], tree, apply_text_encoder=True, apply_unet=True)
    result = built.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys and not result.missing_keys, result
    made = {m.lora_name: m for m in [*built.unet_loras, *built.text_encoder_loras]}
    assert made["lora_unet_double_blocks_0_txt_attn_qkv"].scale == -0.25  # the network's LoConModule
    assert _layers_as_lycoris(made, layers, comps, "flux") == 3


CLIP_PRESET = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
[module_algo_map.CLIPAttention]
algo = "{algo}"
alpha = -2
"""


@pytest.mark.parametrize(
    ("network", "entry"), [("locon", "loha"), ("loha", "locon"), ("glora", "glora"), ("tlora", "tlora")]
)
def test_clip_entry_negative_alpha_is_lycoris(pipe, tmp_path, monkeypatch, network, entry):  # noqa: F811
    """A CLIP entry's own `alpha = -2` (CLIPAttention's) beside the network's CLIPMLP layers: its text-encoder
    block at -2 (was DBS403: text_encoder_blocks took no alpha below 0; GLoRA's and T-LoRA's CLIP entries
    alike); the plan's text encoder and lycoris-lora's equal in outputs and every trained tensor's gradient,
    the export loading into LyCORIS's."""
    args = {"algo": network}
    plan = _plan(tmp_path, CLIP_PRESET.format(algo=entry), args)
    a = plan.adapter
    own = "adapter" if entry == network else {"locon": "lora"}.get(entry, entry)
    assert [(b.kind, b.rank, b.alpha) for b in a.text_encoder_blocks] == [(own, 4, -2.0)]
    ours = copy.deepcopy(pipe.text_encoder)
    add_lora(ours, a, a.text_encoder_targets, seed=0, component="text_encoder")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    kept_lycoris_presets(monkeypatch)
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)  # kohya's `text_model.` level
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, copy.deepcopy(pipe.unet), preset=str(tmp_path / "p.toml"), **args
    )
    made.apply_to(named, None, apply_text_encoder=True, apply_unet=False)
    tensors = lycoris_state(unet=None, text_encoders=[ours], family="sd1", dtype="fp32")
    assert tensors and all(k.startswith("lora_te_") for k in tensors)
    result = made.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if k.startswith("lora_te") and not k.endswith(_FROZEN)]
    assert not result.unexpected_keys and not missing, result
    entries = [m for m in made.text_encoder_loras if "_self_attn_" in m.lora_name]
    assert entries and {type(m).__name__ for m in entries} == {_CLASS[entry]}
    assert all(m.scale == pytest.approx(-0.5) for m in entries)
    ids = torch.randint(0, pipe.text_encoder.config.vocab_size, (2, 8), generator=g)
    ours.train(), named.train(), made.train()
    mine = ours(ids).last_hidden_state
    other = named.text_model(ids).last_hidden_state
    assert not torch.allclose(pipe.text_encoder(ids).last_hidden_state, mine, atol=1e-4)
    torch.testing.assert_close(other, mine, rtol=1e-4, atol=1e-5)
    mine.square().mean().backward()
    other.square().mean().backward()
    grads = {k: v.grad for k, v in made.named_parameters() if v.grad is not None}
    for p in ours.parameters():
        if p.requires_grad:
            p.data = p.grad if p.grad is not None else torch.zeros_like(p)
    moved = lycoris_state(unet=None, text_encoders=[ours], family="sd1", dtype="fp32")
    compared = {k: v for k, v in moved.items() if k in grads and not k.endswith(".alpha")}
    assert compared.keys() == {k for k in grads if not k.endswith(".alpha")}
    assert any("_self_attn_" in k for k in compared) and any("_mlp_" in k for k in compared)
    for key, value in compared.items():
        torch.testing.assert_close(value, grads[key].reshape(value.shape), rtol=1e-4, atol=1e-6, msg=key)


# the image stream's q/k/v and CLIP-L's attention an entry at -2, the single blocks' linear1 one at -1 (dim 2)
FLUX_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "QKV"
alpha = -2
[name_algo_map."single_blocks.*.linear1"]
algo = "LINEAR1"
dim = 2
alpha = -1
[module_algo_map.CLIPAttention]
algo = "QKV"
alpha = -2
"""


@pytest.mark.parametrize(
    ("algo", "qkv", "linear1"),
    [
        ("lokr", "locon", "loha"),
        ("locon", "lokr", "loha"),
        ("glora", "locon", "lokr"),
    ],
)
def test_flux_entry_negative_alpha_is_lycoris(tmp_path, monkeypatch, algo, qkv, linear1):
    """On Flux (one LyCORIS module per fused Linear) entries' own negative alphas beside the network's layers
    in bypass_mode with its dropouts: each kohya layer's module against the plan's parts (draws, outputs,
    input and weight gradients), CLIP-L's entry alike."""
    from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
    from tests.runtime.shared import moved_components
    from tests.runtime.test_lycoris_mixed_flow_bypass_dropout import DROPOUT, MODULE, _layers_as_lycoris
    from tests.runtime.test_lycoris_mixed_flow_full import _BASE, _kohya_layers, _kohya_tree, _lycoris_network
    from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
    from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip
    from tests.unit.convert_kit import flux_lycoris, plan_of

    file = tmp_path / "mixed.toml"
    file.write_text(FLUX_FILE.replace("QKV", qkv).replace("LINEAR1", linear1), encoding="utf-8")
    drops = {"bypass_mode": "True", "dropout": str(DROPOUT), "module_dropout": str(MODULE)}
    given = " ".join(f'"{k}={v}"' for k, v in drops.items())
    plan = plan_of(
        flux_lycoris(tmp_path, f'"algo={algo}" "preset={file.name}" {given}'),
        tmp_path,
        ["model.base=builtin:tiny-flux", *_BASE],
    )
    a = plan.adapter
    kind = {"locon": "lora"}
    assert a.fused and (a.kind, a.alpha) == (kind.get(algo, algo), 1.0)
    assert {(b.kind, b.alpha) for b in a.blocks} == {
        (kind.get(qkv, qkv), -2.0),
        (kind.get(linear1, linear1), -1.0),
    }
    assert {(b.kind, b.alpha) for b in a.text_encoder_blocks} == {(kind.get(qkv, qkv), -2.0)}
    comps = moved_components(plan, text_encoder=True)
    unet, clip_ours = comps.unet, comps.text_encoders[0]
    tensors = lycoris_state(unet=unet, text_encoders=comps.text_encoders, family="flux", dtype="fp32")
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    clip = _kohya_clip(_unwrapped(clip_ours))
    made = _lycoris_network(
        monkeypatch, algo, file, [clip, nn.Module()], _kohya_tree(layers), tensors, **drops
    )
    scales = {
        path: made["lora_unet_" + path.replace(".", "_")].scale
        for path in (
            "double_blocks.0.img_attn.qkv",
            "single_blocks.0.linear1",
            "double_blocks.0.txt_attn.qkv",
        )
    }
    assert scales["double_blocks.0.img_attn.qkv"] in (-0.5, 1.0)  # a LokrModule with two full factors: 1
    assert scales["single_blocks.0.linear1"] == -0.5  # the network's at +1 / 4 (or a full LokrModule's 1)
    assert scales["double_blocks.0.txt_attn.qkv"] in (0.25, 1.0)
    assert {m.scale for n, m in made.items() if n.startswith("lora_te1_")} <= {-0.5, 1.0}
    assert _layers_as_lycoris(made, layers, comps, "flux") == 3
