"""An algo=tlora network's options beside its preset file's T-LoRA entries on Flux / SD3 / Chroma's fused
Linears (issue 12; was DBS403 there, the SD case: test_lycoris_tlora_mixed_opts.py): a T-LoRA entry's own
`bypass_mode` beside the network's `dropout` (each TLoraModule drops in its own bypass forward alone, as each
TloraLayer does; a fused Linear is ONE TLoraModule, one torch dropout mask over its stacked output, which
diffusers' parts share, each its rows: runtime/lycoris_tlora.py fit_fused_tlora), both ways round; the
network's `bypass_mode` (and `rank_dropout`) beside LoCon entries (each fused LoConModule's one bypass rank
mask); `--scale_weight_norms` beside Diag-OFT / BOFT entries (one norm per fused module: count, mean and
largest norm, the weights after); Diag-OFT / BOFT entries' own `bypass_mode` and the network's dropout outside
bypass_mode beside them. No tiny run: the plan's denoiser as runtime/prepare.py builds it (every trained
tensor moved at random), its LyCORIS export loaded into lycoris-lora 4.1.3's create_network from the same file
and network_args on kohya's layers (the parts' base weights stacked in kohya's rows; TLoraModule's frozen
start its own SVD of them); each kohya layer's module in its forward mode, in training from one generator
state against the parts called in diffusers' order: outputs, input gradients, the generator state after, and
every trained tensor's gradient (by the name LyCORIS saves it under).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dbspec.convert.kohya.chroma_rows import chroma_model, chroma_parts
from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model, mmdit, sd3_parts
from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.lycoris_tlora import TloraLayer
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.test_lycoris_flow_rank_dropout_layers import (
    CHROMA,
    FLUX,
    SD3,
    _network,
    _plan,
    _prepared,
    _same_training,
)
from tests.runtime.test_lycoris_mixed_flow_bypass_dropout import _grads_as_lycoris
from tests.runtime.test_lycoris_mixed_flow_full import _base, _kohya_layers, _kohya_tree
from tests.runtime.test_lycoris_tlora import _no_gc

pytest.importorskip("lycoris.kohya")

DROPOUT, MODULE = 0.3, 0.2
# T-LoRA on the double blocks' attention and the single blocks' Linears; the image q/k/v (fused) and the
# single blocks' linear1 (fused, proj_mlp called first) an entry's own, OWN its bypass_mode
FLUX_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = []
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "tlora"
OWN
[name_algo_map."single_blocks.*.linear1"]
algo = "tlora"
dim = 2
alpha = 1
OWN
"""
# SD3: the x blocks' q/k/v an entry's own (the context blocks' the network's); Chroma: Flux's names
SD3_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["joint_blocks.*.attn.qkv", "joint_blocks.*.attn.proj"]
text_encoder_target_module = []

[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "tlora"
OWN
"""
FAMILIES = {
    "flux": (FLUX, FLUX_FILE, lambda n: flux_model(1, 1), diffusers_parts),
    "sd3": (SD3, SD3_FILE, lambda n: mmdit(2, ()), sd3_parts),
    "chroma": (CHROMA, FLUX_FILE, lambda n: chroma_model(1, 1, n), chroma_parts),
}
# the entries' own bypass_mode and the network's (dropout and module_dropout on both)
WAYS = {
    "own_bypass": ("bypass_mode = true", {}),
    "own_default": ("bypass_mode = false", {"bypass_mode": "True"}),
}


def _layers_as_lycoris(made, ours, layers, dropout: float = DROPOUT, moves: bool = True, drops=None) -> dict:
    """Each kohya layer's module (TLoraModule, an entry's) against the parts (_same_training; `dropout`: the
    network's, every module's `drop`; `drops`: the T-LoRA layers' bypass dropout, else `dropout`; `moves`:
    some masks differ from forward to forward); {kohya path: (its bypass_mode, whether fused)}."""
    drops = dropout if drops is None else drops
    theirs = {m.lora_name: m for m in made.unet_loras}
    singles = {id(b.proj_mlp) for b in getattr(ours, "single_transformer_blocks", ())}
    ours.train()
    compared, moved = {}, 0
    for path, (parts, order) in layers.items():
        module = theirs.get("lora_unet_" + path.replace(".", "_"))
        if module is None:
            continue
        if type(module).__name__ == "TLoraModule":
            assert getattr(module.drop, "p", 0.0) == dropout, (
                path
            )  # handed to every module: read in the bypass forward alone
            assert {p.tlora_bypass for p in parts} == {bool(module.bypass_mode)}, path  # one mode per module
            assert all(isinstance(p, TloraLayer) and p.tlora_dropout == drops for p in parts), path
        calls = sorted(parts, key=lambda p: id(p) not in singles)  # diffusers calls proj_mlp first

        def stacked(x, parts=parts, calls=calls, order=order):
            got = {id(p): p(x) for p in calls}
            out = torch.cat([got[id(p)] for p in parts], dim=-1)
            return out if order is None else out[..., order]

        x = torch.randn(3, _base(parts[0]).in_features)
        moved += _same_training(module.train(), stacked, x, path)
        compared[path] = (bool(module.bypass_mode), len(parts) > 1)
    assert moved >= 2 or not moves  # the draws move on
    assert len(compared) == len(theirs)
    return compared


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("way", sorted(WAYS))
def test_tlora_entries_own_bypass_beside_the_dropout_on_fused_layers(tmp_path, monkeypatch, family, way):
    _no_gc(monkeypatch)
    script, text, rows, parts_of = FAMILIES[family]
    own, network = WAYS[way]
    file = text.replace("OWN", own)
    args = {"algo": "tlora", **network, "dropout": str(DROPOUT), "module_dropout": str(MODULE)}
    plan = _plan(tmp_path, family, script, file, args)
    a = plan.adapter
    network_bypass = "bypass_mode" in network
    assert a.fused and (a.kind, a.bypass, a.bypass_dropout, a.module_dropout) == (
        "tlora",
        network_bypass,
        DROPOUT,
        MODULE,
    )
    assert {b.bypass for b in a.blocks if b.kind == "adapter"} == {not network_bypass}
    transformer = build_pipeline(f"builtin:tiny-{family}").transformer.float()
    guidance = len(getattr(getattr(transformer, "distilled_guidance_layer", None), "layers", ()))
    ours = _prepared(transformer, "unet", plan, a.denoiser_targets)
    tensors = lycoris_state(unet=ours, text_encoders=[], family=family, dtype="fp32")
    swapped = None
    if family == "sd3":
        from dbspec.runtime.sd3_kohya import swapped
    layers = _kohya_layers(ours, rows(guidance), parts_of, swapped)
    drops = {k: v for k, v in args.items() if k != "algo"}
    made = _network(monkeypatch, "tlora", tmp_path / "p.toml", [nn.Module()] * 3, _kohya_tree(layers), drops)
    result = made.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys, result
    assert all(k.rsplit(".", 1)[-1].startswith("base_") for k in result.missing_keys), result
    compared = _layers_as_lycoris(made, ours, layers)
    # the entries' fused layers in their own mode, the network's layers in its mode
    modes = {mode for mode, _ in compared.values()}
    assert modes == {True, False}
    fused_own = [p for p, (mode, fused) in compared.items() if fused and mode != network_bypass]
    assert fused_own, compared
    made_modules = {m.lora_name: m for m in made.unet_loras}
    assert _grads_as_lycoris(ours, [], made_modules, family) >= 3 * len(made_modules)


def _built(tmp_path, monkeypatch, family: str, file: str, args: dict[str, str], flags: str = "", only=""):
    """The converted plan, our prepared denoiser, kohya's layers and lycoris-lora's network of args' algo
    (the export loaded, of the modules of class `only` if given; TLoraModule's frozen start its own)."""
    script, _, rows, parts_of = FAMILIES[family]
    plan = _plan(tmp_path, family, f"{script} {flags}", file, args)
    transformer = build_pipeline(f"builtin:tiny-{family}").transformer.float()
    guidance = len(getattr(getattr(transformer, "distilled_guidance_layer", None), "layers", ()))
    ours = _prepared(transformer, "unet", plan, plan.adapter.denoiser_targets)
    tensors = lycoris_state(unet=ours, text_encoders=[], family=family, dtype="fp32")
    swapped = None
    if family == "sd3":
        from dbspec.runtime.sd3_kohya import swapped
    layers = _kohya_layers(ours, rows(guidance), parts_of, swapped)
    drops = {k: v for k, v in args.items() if k != "algo"}
    algo = args.get("algo", "tlora")
    made = _network(monkeypatch, algo, tmp_path / "p.toml", [nn.Module()] * 3, _kohya_tree(layers), drops)
    kept = {m.lora_name for m in made.unet_loras if type(m).__name__ == only}
    if only:
        tensors = {k: v for k, v in tensors.items() if k.split(".")[0] in kept}
        assert {k.split(".")[0] for k in tensors} == kept  # each of them from our export
    result = made.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys, result
    missing = [k for k in result.missing_keys if k.split(".")[0] in kept or not only]
    assert all(k.rsplit(".", 1)[-1].startswith("base_") for k in missing), result
    return plan, ours, layers, made


def _entry(algo: str, extra: str = "", family: str = "flux") -> str:
    """The family's file with its entries of `algo` (their own `extra`)."""
    text = FAMILIES[family][1]
    return text.replace('algo = "tlora"', f'algo = "{algo}"').replace("OWN", extra)


@pytest.mark.parametrize(("family", "ranks"), [("flux", 0.0), ("flux", 0.3), ("sd3", 0.3), ("chroma", 0.3)])
def test_tlora_network_bypass_beside_locon_entries_on_fused_layers(tmp_path, monkeypatch, family, ranks):
    """The network's bypass_mode (and rank_dropout) beside LoCon entries on the fused q/k/v (Flux's and
    Chroma's linear1 too; rules.tlora_bypass_locon; was DBS403 with fused_projections): every module in its
    bypass forward,
    TLoraModule reading no rank_dropout, each fused LoConModule one `torch.rand(rank)` mask over its down's
    ranks, which the parts share."""
    _no_gc(monkeypatch)
    args = {"algo": "tlora", "bypass_mode": "True", "module_dropout": str(MODULE)}
    args |= {"rank_dropout": str(ranks)} if ranks else {}
    plan, ours, layers, made = _built(tmp_path, monkeypatch, family, _entry("locon", "", family), args)
    a = plan.adapter
    assert a.fused and (a.kind, a.bypass, a.rank_dropout, a.bypass_dropout) == ("tlora", True, ranks, 0.0)
    assert a.rank_dropout_form == ("lycoris_bypass" if ranks else "kohya")
    assert {(b.kind, b.bypass) for b in a.blocks} == {("lora", True)}
    modules = {m.lora_name: m for m in made.unet_loras}
    assert {(type(m).__name__, bool(m.bypass_mode)) for m in modules.values()} == {
        ("TLoraModule", True),
        ("LoConModule", True),
    }
    compared = _layers_as_lycoris(made, ours, layers, 0.0, moves=bool(ranks))
    fused = {
        type(modules["lora_unet_" + p.replace(".", "_")]).__name__ for p, (_, f) in compared.items() if f
    }
    assert fused == {"LoConModule", "TLoraModule"}  # fused layers of both kinds
    assert _grads_as_lycoris(ours, [], modules, family) >= 2 * len(modules)


@pytest.mark.parametrize(
    ("family", "algo"), [("flux", "diag-oft"), ("flux", "boft"), ("sd3", "diag-oft"), ("chroma", "diag-oft")]
)
def test_tlora_network_max_norm_beside_oft_entries_on_fused_layers(tmp_path, monkeypatch, family, algo):
    """--scale_weight_norms on a T-LoRA network with Diag-OFT / BOFT entries on the fused q/k/v (Flux's and
    Chroma's linear1 too; was DBS403 with fused_projections): lycoris.kohya's apply_max_norm_regularization
    over TLoraModule (one norm of the fused module's stacked update, the shared λ scaled once) and
    DiagOFTModule / ButterflyOFTModule (one norm of the fused module's blocks): the same count, mean and
    largest norm, and every weight after, as runtime/max_norm.py's over the plan's denoiser."""
    from dbspec.runtime.max_norm import apply_lycoris_max_norm, lycoris_norm_modules

    _no_gc(monkeypatch)
    file = _entry(algo, "", family).replace("dim = 2\nalpha = 1\n", "")
    if algo == "boft":  # FLUX.1's q/k/v rows split by 18 (the converter checks its widths), its linear1 not
        file = file.split('[name_algo_map."single_blocks')[0] + "dim = 18\n"
    plan, ours, layers, made = _built(
        tmp_path, monkeypatch, family, file, {"algo": "tlora"}, "--scale_weight_norms=1"
    )
    a = plan.adapter
    assert a.fused and (a.max_norm, a.max_norm_form) == (1.0, "lycoris")
    assert {b.kind for b in a.blocks} == {algo}
    classes = {type(m).__name__ for m in made.unet_loras}
    assert classes == {"TLoraModule", {"diag-oft": "DiagOFTModule", "boft": "ButterflyOFTModule"}[algo]}
    with torch.no_grad():  # every other trained tensor far above the limit, the rest as they are
        moved = [
            p for n, p in ours.named_parameters() if p.requires_grad and ("lambda" in n or "oft_blocks" in n)
        ]
        for p in list({id(p): p for p in moved}.values())[::2]:  # a fused module's shared tensors once
            p.mul_(40.0)
    made.load_state_dict(
        lycoris_state(unet=ours, text_encoders=[], family=family, dtype="fp32"), strict=False
    )
    limit = 0.5
    mine = apply_lycoris_max_norm(lycoris_norm_modules(ours, [], a.fused), limit)
    count, mean, largest = made.apply_max_norm_regularization(limit, "cpu")
    assert 0 < mine[0] < len(made.unet_loras)
    assert mine[0] == int(count)
    torch.testing.assert_close(
        torch.tensor([mine[1], mine[2]]), torch.tensor([float(mean), float(largest)]), rtol=1e-5, atol=1e-6
    )
    after = lycoris_state(unet=ours, text_encoders=[], family=family, dtype="fp32")
    theirs = made.state_dict()
    compared = 0
    for key, value in after.items():
        if key.endswith(".alpha"):
            continue
        torch.testing.assert_close(value, theirs[key].reshape(value.shape), rtol=1e-5, atol=1e-6, msg=key)
        compared += 1
    assert compared >= 2 * len(made.unet_loras)


# id: (the entry's algo, its own options, network_args): Diag-OFT / BOFT entries on the fused q/k/v
# (Diag-OFT's on linear1 too)
OFT_CASES = {
    # the network's dropout, which neither TLoraModule nor DiagOFTModule reads outside bypass_mode (DBS405)
    "diag_oft_network_dropout": ("diag-oft", "", {"dropout": "0.1"}),
    # the entries' own bypass_mode (the network's rank_dropout: DiagOFTModule's bypass forward never reads it)
    "diag_oft_own_bypass": ("diag-oft", "bypass_mode = true", {"rank_dropout": "0.1"}),
    # BOFT's own bypass_mode beside the network's dropout, which ButterflyOFTModule never reads
    "boft_own_bypass_network_dropout": ("boft", "bypass_mode = true", {"dropout": "0.1"}),
}


@pytest.mark.parametrize("case", sorted(OFT_CASES))
def test_tlora_network_options_beside_oft_entries_on_fused_layers(tmp_path, monkeypatch, case):
    """Diag-OFT / BOFT entries on a T-LoRA network on Flux's fused Linears (was DBS403 there): the network's
    dropout outside bypass_mode (read by none: ignored) and their own bypass_mode (their block's `bypass`:
    each fused module's bypass forward, its parts their rows of it): each module's forward mode, training
    outputs, generator state and gradients as lycoris-lora 4.1.3's."""
    from dbspec.runtime.lycoris_oft import DiagOftLayer

    _no_gc(monkeypatch)
    algo, own, network = OFT_CASES[case]
    file = _entry(algo, own).replace("dim = 2\nalpha = 1\n", "")
    if algo == "boft":  # FLUX.1's q/k/v rows split by 18 (the converter checks its widths), its linear1 not
        file = file.split('[name_algo_map."single_blocks')[0].replace(own, f"{own}\ndim = 18")
    args = {"algo": "tlora", **network, "module_dropout": str(MODULE)}
    plan, ours, layers, made = _built(tmp_path, monkeypatch, "flux", file, args)
    a = plan.adapter
    bypass = bool(own)
    assert a.fused and (a.bypass, a.bypass_dropout, a.rank_dropout) == (False, 0.0, 0.0)
    assert {(b.kind, b.bypass) for b in a.blocks} == {(algo, bypass)}
    modules = {m.lora_name: m for m in made.unet_loras}
    kinds = {"diag-oft": "DiagOFTModule", "boft": "ButterflyOFTModule"}
    assert {(type(m).__name__, bool(m.bypass_mode)) for m in modules.values()} == {
        ("TLoraModule", False),
        (kinds[algo], bypass),
    }
    for path, (parts, _) in layers.items():
        module = modules.get("lora_unet_" + path.replace(".", "_"))
        if module is not None and type(module).__name__ != "TLoraModule":
            assert all(isinstance(p, DiagOftLayer) and p.oft_bypass == bypass for p in parts), path
    rate = float(network.get("dropout", 0.0))  # handed to every module, read by none of them here
    compared = _layers_as_lycoris(made, ours, layers, rate, moves=False, drops=0.0)
    fused = {
        type(modules["lora_unet_" + p.replace(".", "_")]).__name__ for p, (_, f) in compared.items() if f
    }
    assert kinds[algo] in fused
    # a bypass rotation keeps the squared sum _same_training back-propagates: BOFT's blocks' gradient is 0 up
    # to rounding on both sides (its fused gradient against ButterflyOFTModule: test_lycoris_flux_boft.py)
    rotated = {n for n, m in modules.items() if type(m).__name__ == "ButterflyOFTModule"}
    for name in rotated:
        assert modules[name].oft_blocks.grad.abs().max() < 1e-3, name
    kept = {n: m for n, m in modules.items() if n not in rotated}
    assert _grads_as_lycoris(ours, [], kept, "flux") >= len(kept)
