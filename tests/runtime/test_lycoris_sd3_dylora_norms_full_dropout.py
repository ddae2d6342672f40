"""LyCORIS dropouts on SD3 / Chroma checked layer by layer on fixed inputs against lycoris-lora 4.1.3's
network built from the same preset file on kohya's layers, without a tiny run (issue 12; the Flux cases are
test_lycoris_flow_rank_dropout_layers.py's and test_lycoris_flux_full_dropout.py's):

- An algo=dylora network with `train_norm`, `rank_dropout` and `module_dropout` on SD3 (it converted, was
  checked on Flux's CLIP-L alone): the entries on the fused q/k/v draw the adapter's `rank_dropout`, the
  NormModules on CLIP-L's and CLIP-G's LayerNorms `norm_rank_dropout` (the same rate), DyLoraModule none.
  Each CLIP encoder whole, as runtime/prepare.py builds it (DyLoRA on its Linears, a LoCon entry on its
  MLPs, the norm offsets), against the encoder lycoris-lora's network patches, over three training forwards
  from one generator state: outputs, generator state after each (every module's `torch.rand` in forward
  order), the offsets', DyLoRA blocks' and LoCon factors' gradients; the fused entries as
  check_fused_layers compares them.
- Flux's CLIP-L and T5-XXL whole with train_norm, rank_dropout and module_dropout on a DyLoRA network whose
  file has one algorithm (the norms alone draw the rate: `norm_rank_dropout`) and on a full one (FullModule's
  draws on every CLIP / T5 Linear but T5's gated-MLP output, where it stops kohya); LyCORIS's NormModules on
  T5's T5LayerNorms are "not supported": no offsets, no draw.
- An algo=full network's `module_dropout` and `rank_dropout` on SD3's and Chroma's fused Linears (Flux's
  by test_lycoris_flux_full_dropout.py's tiny run): one FullModule per kohya layer, its parts sharing the
  draws (SD3's last context modulation in kohya's row order)."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from dbspec.convert.kohya.chroma_rows import chroma_model, chroma_parts
from dbspec.convert.kohya.lycoris_flow_file import mmdit, sd3_parts
from dbspec.runtime.prepare import text_targets
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.test_lycoris_flow_rank_dropout_layers import (
    CHROMA,
    DROP,
    FLUX,
    RATE,
    SD3,
    _classes,
    _kohya_clip,
    _network,
    _plan,
    _prepared,
    check_fused_layers,
)

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# SD3: LoHa / full entries on the joint blocks' fused q/k/v, DyLoRA on every CLIP Linear but the MLPs'
# LoCon entry, NormModules on both CLIP encoders' LayerNorms
SD3_NORMS_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["joint_blocks.*.attn.qkv"]
text_encoder_target_module = ["CLIPEncoderLayer"]

[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "loha"
dim = 2
[name_algo_map."joint_blocks.*.context_block.attn.qkv"]
algo = "full"
[module_algo_map.CLIPMLP]
algo = "locon"
dim = 2
alpha = 1
"""
# Flux: one image q/k/v, every CLIP-L encoder layer and T5-XXL block whole (a FullModule on T5's gated MLP
# output stops kohya: lycoris_flow_file._t5_full_output; the full network's file leaves it out)
FLUX_T5_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.0.img_attn.qkv"]
text_encoder_target_module = ["CLIPEncoderLayer", "T5Block"]
"""
SD3_FULL_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["joint_blocks.*.attn.qkv", "joint_blocks.*.adaLN_modulation.1"]
text_encoder_target_module = []
"""
CHROMA_FULL_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = []
exclude_name = ["*.norm*"]
"""
# each kind's trained tensors: (LyCORIS module class, its tensor, our layer's)
PAIRS = {
    "NormModule": (("w_norm", "lora_w_norm"), ("b_norm", "lora_b_norm")),
    "LoConModule": (("lora_down.weight", "lora_A"), ("lora_up.weight", "lora_B")),
    "FullModule": (("weight", "lora_full"), ("bias", "lora_full_bias")),
}


def _ours(model: nn.Module, prefix: str) -> dict[str, nn.Module]:
    """Our text encoder's layers under LyCORIS's names (`prefix`_..., a CLIP's with _kohya_clip's
    `text_model` level)."""
    clip = type(model).__name__.startswith("CLIP") and not hasattr(model, "text_model")
    level = "text_model." if clip else ""
    return {f"{prefix}_" + (level + path).replace(".", "_"): m for path, m in model.named_modules()}


def _tensor(layer: nn.Module, name: str) -> torch.Tensor:
    value = getattr(layer, name)
    value = value["default"] if isinstance(value, (nn.ModuleDict, nn.ParameterDict)) else value
    return value.weight if isinstance(value, nn.Module) else value


def _same_encoder(ours: nn.Module, theirs: nn.Module, made, prefix: str) -> set[str]:
    """Our prepared CLIP `ours` against the base CLIP `theirs` that lycoris-lora's network `made` patches:
    LyCORIS's modules take our tensors (DyLoRA's blocks by hand: DyLoraModule loads none; both draw the last
    block), then three training forwards from one generator state: outputs and generator state after each,
    every trained tensor's gradient. The classes compared."""
    layers = _ours(ours, prefix)
    modules = [m for m in made.text_encoder_loras if m.lora_name.startswith(prefix + "_")]
    with torch.no_grad():
        for module in modules:
            layer = layers[module.lora_name]
            kind = type(module).__name__
            if kind == "NormModule" and module.not_supported:  # T5LayerNorm: no offsets, no draw
                assert not hasattr(layer, "lora_w_norm"), module.lora_name
                continue
            if kind == "DyLoraModule":
                for mine, other in zip(layer.lora_dylora_down["default"], module.down_list):
                    other.copy_(mine.flatten(1))
                for mine, other in zip(layer.lora_dylora_up["default"], module.up_list):
                    other.copy_(mine.flatten(1))
                layer.drawn["default"] = module.block_count - 1
                continue
            for other, mine in PAIRS[kind]:
                if getattr(module, other.split(".")[0]) is None:  # FullModule on a Linear without bias
                    continue
                module.get_parameter(other).copy_(
                    _tensor(layer, mine).reshape(module.get_parameter(other).shape)
                )
    ids = torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(5))
    ours.train(), theirs.train(), made.train()
    outputs = []
    for model in (theirs, ours):
        torch.manual_seed(17)
        runs = []
        for _ in range(3):
            out = model(ids).last_hidden_state
            out.pow(2).mean().backward()
            runs.append((out.detach(), torch.get_rng_state()))
        outputs.append(runs)
    for (want, after), (got, state) in zip(*outputs):
        assert torch.equal(after, state), prefix  # every draw, in forward order
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outputs[1][0][0], outputs[1][1][0], atol=1e-5)  # the draws move on
    checked = set()
    for module in modules:
        layer, kind = layers[module.lora_name], type(module).__name__
        if kind == "NormModule" and module.not_supported:
            checked.add("unsupported NormModule")
            continue
        if kind == "DyLoraModule":
            b = module.block_count - 1
            for mine, other in (
                (layer.lora_dylora_down, module.down_list),
                (layer.lora_dylora_up, module.up_list),
            ):
                got, want = mine["default"][b].grad, other[b].grad
                assert (got is None) == (want is None), module.lora_name
                if want is not None:
                    torch.testing.assert_close(got.flatten(1), want, rtol=1e-3, atol=1e-6)
        else:
            for other, mine in PAIRS[kind]:
                if getattr(module, other.split(".")[0]) is None:
                    continue
                want, got = module.get_parameter(other).grad, _tensor(layer, mine).grad
                assert (got is None) == (want is None), (module.lora_name, other)
                if want is not None:
                    torch.testing.assert_close(got.reshape(want.shape), want, rtol=1e-3, atol=1e-6)
        checked.add(kind)
    return checked


def test_sd3_dylora_network_with_norms_rank_dropout(tmp_path, monkeypatch):
    """algo=dylora with train_norm, rank_dropout and module_dropout on SD3: both CLIP encoders whole, their
    NormModules drawing norm_rank_dropout in forward order with the DyLoRA / LoCon modules' draws, and the
    fused entries."""
    args = {"algo": "dylora", "block_size": "2", "train_norm": "True"}
    args |= {"rank_dropout": str(RATE), "module_dropout": str(DROP)}
    plan = _plan(tmp_path, "sd3", SD3, SD3_NORMS_FILE, args)
    a = plan.adapter
    assert (a.kind, a.rank_dropout, a.norm_rank_dropout, a.module_dropout) == ("dylora", RATE, RATE, DROP)
    assert a.text_encoder_norms == ("layer_norm1", "layer_norm2") and a.fused
    assert a.text_encoder_2_norms in (None, a.text_encoder_norms)
    monkeypatch.setattr(random, "randint", lambda lo, hi: hi)  # DyLoraModule's block: the last
    pipe = build_pipeline("builtin:tiny-sd3")
    drops = {k: args[k] for k in ("rank_dropout", "module_dropout", "block_size")}
    compared = check_fused_layers(
        monkeypatch, plan, pipe.transformer.float(), tmp_path / "p.toml", "dylora", drops, mmdit(2, ()),
        sd3_parts,
    )  # fmt: skip
    assert _classes(compared) == {"LohaModule", "FullModule"}

    bases = [copy.deepcopy(pipe.text_encoder).float(), copy.deepcopy(pipe.text_encoder_2).float()]
    clips = [
        _prepared(getattr(pipe, name).float(), name, plan, text_targets(a, name))
        for name in ("text_encoder", "text_encoder_2")
    ]
    encoders = [_kohya_clip(b) for b in bases]
    made = _network(
        monkeypatch, "dylora", tmp_path / "p.toml", [*encoders, nn.Module()], nn.Module(),
        {**drops, "train_norm": "True"},
    )  # fmt: skip
    assert {m.rank_dropout for m in made.text_encoder_loras} == {RATE}
    for clip, base, prefix in zip(clips, bases, ("lora_te1", "lora_te2")):
        kinds = _same_encoder(clip, base, made, prefix)
        assert kinds == {"NormModule", "DyLoraModule", "LoConModule"}, prefix


@pytest.mark.parametrize("family", ["sd3", "chroma"])
def test_full_network_dropouts_on_sd3_and_chroma_fused_layers(tmp_path, monkeypatch, family):
    """algo=full with module_dropout and rank_dropout: each kohya layer's FullModule (SD3's fused q/k/v and
    modulations, the last context one in kohya's rows; Chroma's q/k/v and linear1) against the parts."""
    from dbspec.runtime.sd3_kohya import swapped

    script, preset = (SD3, SD3_FULL_FILE) if family == "sd3" else (CHROMA, CHROMA_FULL_FILE)
    args = {"algo": "full", "rank_dropout": str(RATE), "module_dropout": str(DROP)}
    plan = _plan(tmp_path, family, script, preset, args)
    a = plan.adapter
    assert (a.kind, a.rank_dropout, a.module_dropout) == ("full", RATE, DROP) and a.fused
    transformer = build_pipeline(f"builtin:tiny-{family}").transformer.float()
    rows = mmdit(2, ()) if family == "sd3" else chroma_model(1, 1, 2)
    parts_of = sd3_parts if family == "sd3" else chroma_parts
    drops = {k: args[k] for k in ("rank_dropout", "module_dropout")}
    compared = check_fused_layers(
        monkeypatch, plan, transformer, tmp_path / "p.toml", "full", drops, rows, parts_of,
        swapped if family == "sd3" else None,
    )  # fmt: skip
    assert _classes(compared) == {"FullModule"}
    assert all(m.module_dropout == DROP for m in compared.values())
    # (SD3's last context modulation: its rows in kohya's order, shift then scale)
    fused = {
        "sd3": ("joint_blocks.0.x_block.attn.qkv", "joint_blocks.1.context_block.adaLN_modulation.1"),
        "chroma": ("double_blocks.0.img_attn.qkv", "single_blocks.0.linear1"),
    }[family]
    assert set(fused) <= compared.keys()


@pytest.mark.parametrize("algo", ["dylora", "full"])
def test_flux_text_encoders_with_norms_and_dropouts(tmp_path, monkeypatch, algo):
    """train_norm, rank_dropout and module_dropout on Flux, the file's one algorithm: CLIP-L whole (the
    algo's modules on its Linears, offsets on its LayerNorms) and T5-XXL whole (the algo's modules on its
    Linears; the NormModules LyCORIS puts on its T5LayerNorms are "not supported": no offsets, no draw)
    against lycoris-lora's network. DyLoRA (no module reads rank_dropout): the adapter's rank_dropout 0,
    the norms' norm_rank_dropout; full: FullModule's row masks and the norms' at the adapter's rate."""
    args = {"algo": algo, "train_norm": "True", "rank_dropout": str(RATE), "module_dropout": str(DROP)}
    args |= {"block_size": "2"} if algo == "dylora" else {}
    preset = FLUX_T5_FILE + ('exclude_name = ["*.DenseReluDense.wo"]\n' if algo == "full" else "")
    plan = _plan(tmp_path, "flux", FLUX, preset, args)
    a = plan.adapter
    rate = 0.0 if algo == "dylora" else RATE
    assert (a.kind, a.rank_dropout, a.norm_rank_dropout, a.module_dropout) == (algo, rate, RATE, DROP)
    assert a.text_encoder_norms == ("layer_norm1", "layer_norm2") and a.t5_targets
    monkeypatch.setattr(random, "randint", lambda lo, hi: hi)  # DyLoraModule's block: the last
    pipe = build_pipeline("builtin:tiny-flux")
    bases = [copy.deepcopy(pipe.text_encoder).float(), copy.deepcopy(pipe.text_encoder_2).float()]
    clip = _prepared(pipe.text_encoder.float(), "text_encoder", plan, text_targets(a, "text_encoder"))
    t5 = _prepared(pipe.text_encoder_2.float(), "text_encoder_2", plan, a.t5_targets)
    drops = {k: v for k, v in args.items() if k != "algo"}
    made = _network(
        monkeypatch, algo, tmp_path / "p.toml", [_kohya_clip(bases[0]), bases[1]], nn.Module(), drops
    )
    assert {(m.rank_dropout, m.module_dropout) for m in made.text_encoder_loras} == {(RATE, DROP)}
    own = {"dylora": "DyLoraModule", "full": "FullModule"}[algo]
    assert _same_encoder(clip, bases[0], made, "lora_te1") == {"NormModule", own}
    assert _same_encoder(t5, bases[1], made, "lora_te2") == {"unsupported NormModule", own}
