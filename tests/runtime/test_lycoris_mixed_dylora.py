"""LyCORIS preset files giving some SD layers LyCORIS's DyLoRA beside a LoCon / LoKr network's layers (issue
12): the converted plan's `kind = "dylora"` blocks (each with its `unit`: the entry's block_size, else the
network's, 4 unless given) against lycoris-lora 4.1.3's create_network on tiny SD 1.x (every layer's module
class, dim, block size and scale), LyCORIS's DyLoraModule forward for a drawn block, and a tiny run: it
resumes bit-exact, its one kohya export (DyLoraModule's `lora_down` / `lora_up` / `alpha` beside the others'
keys) loads in lycoris-lora's create_network_from_weights to the trained U-Net's output, and its adapter
folders load back as `dbspec sample` loads them (runtime/mixed_kinds.py, dylora.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.adapters import add_lora
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    MIXED,
    PRESETS,
    _converted_plan,
    _decomposed_by,
    _decomposed_of,
    _lycoris,
    pipe,
)

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# DyLoRA on the transformers' MLPs in blocks of 2 (the entry's own block_size), on CLIP's attention in the
# network's block_size; LoCon on the ResNets and conv_in, LoHa on CLIP's MLPs
MIXED_DYLORA = MIXED.replace(
    '[module_algo_map.FeedForward]\nalgo = "loha"\ndim = 2',
    '[module_algo_map.FeedForward]\nalgo = "dylora"\ndim = 4\nalpha = 2\nblock_size = 2',
)
MIXED_DYLORA += '[module_algo_map.CLIPAttention]\nalgo = "dylora"\n'


def _classes(model: nn.Module, prefix: str) -> dict[str, tuple]:
    """Each adapted layer as LyCORIS's class, its rank, its scale (the saved alpha / rank) and, for DyLoRA,
    its block size."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer

    from dbspec.runtime.dylora import DyloraLayer

    out = {}
    for name, layer in model.named_modules():
        key = prefix + name.replace(".", "_")
        if isinstance(layer, DyloraLayer) and "default" in layer.lora_dylora_down:
            scale = round(float(layer.scaling["default"]), 12)
            out[key] = ("DyLoraModule", layer.r["default"], scale, layer.unit)
            continue
        found = next(
            (
                c
                for t, c in ((LoraLayer, "LoConModule"), (LoHaLayer, "LohaModule"), (LoKrLayer, "LokrModule"))
                if isinstance(layer, t)
            ),
            None,
        )
        if found and "default" in layer.r:
            out[key] = (found, layer.r["default"], round(float(layer.scaling["default"]), 12))
    return out


def _lycoris_classes(made) -> dict[str, tuple]:
    return {
        m.lora_name: (type(m).__name__, m.lora_dim, round(float(m.scale), 12))
        + ((m.block_size,) if type(m).__name__ == "DyLoraModule" else ())
        for m in [*made.unet_loras, *made.text_encoder_loras]
    }


def _plan(tmp_path: Path, algo: str, args: str = ""):
    PRESETS["mixed_dylora"] = MIXED_DYLORA
    try:
        return _converted_plan(tmp_path, "mixed_dylora", algo, args)
    finally:
        del PRESETS["mixed_dylora"]


@pytest.mark.parametrize(
    ("algo", "network"), [("locon", ""), ("lokr", "block_size=4"), ("dylora", "dora_wd=True")]
)
def test_dylora_entries_build_lycoris_modules(pipe, tmp_path, monkeypatch, algo, network):  # noqa: F811
    """Every layer of tiny SD 1.x and its CLIP the file adapts has, in the converted plan, the module class,
    dim, scale and (DyLoRA) block size of lycoris-lora's create_network's; a DyLoRA layer's training forward
    with block b drawn is DyLoraModule's get_weight(b x block_size) (blocks 0..b at alpha / (b + 1)). The
    DyLoRA network's dora_wd (was DBS403: its adapter has no dora) decomposes the layers lycoris-lora's
    does, in the same shapes: its LoCon / LoHa entries' (their blocks' `dora`), never DyLoraModule's."""
    path, plan = _plan(tmp_path, algo, f'"{network}"' if network else "")  # more network_args
    a = plan.adapter
    if algo == "dylora":  # a DyLoRA network (block_size 4) with LoCon / LoHa entries; its MLPs' own unit
        assert (a.kind, a.dylora_unit, a.dylora_form) == ("dylora", 4, "lycoris")
        assert {b.kind for b in a.blocks} == {"adapter", "lora"} and [
            (b.rank, b.unit) for b in a.blocks if b.kind == "adapter"
        ] == [(4, 2)]
        assert {b.kind for b in a.text_encoder_blocks} == {"loha"}
    else:
        dylora = [b for b in (*a.blocks, *a.text_encoder_blocks) if b.kind == "dylora"]
        assert sorted((b.rank, b.unit) for b in dylora) == [(4, 2), (4, 4)]
    made = _lycoris(pipe, path, monkeypatch, algo, **dict([network.split("=")] if network else []))
    theirs = _lycoris_classes(made)
    assert {v[0] for v in theirs.values()} >= {"DyLoraModule", "LoConModule", "LohaModule"}
    unet = copy.deepcopy(pipe.unet)
    add_lora(unet, a, a.denoiser_targets, seed=0, conv=True)
    assert _classes(unet, "lora_unet_") == {k: v for k, v in theirs.items() if k.startswith("lora_unet_")}
    text = copy.deepcopy(pipe.text_encoder)
    add_lora(text, a, a.text_encoder_targets, seed=0, component="text_encoder")
    theirs_text = {k: v for k, v in theirs.items() if k.startswith("lora_te_")}
    assert _classes(text, "lora_te_text_model_") == theirs_text
    decomposed = _decomposed_of(made)
    assert bool(decomposed) == (algo == "dylora")
    assert {theirs[k][0] for k in decomposed} <= {"LoConModule", "LohaModule"}
    assert _decomposed_by(unet, "lora_unet_") == {
        k: v for k, v in decomposed.items() if k.startswith("lora_unet_")
    }
    assert _decomposed_by(text, "lora_te_text_model_") == {
        k: v for k, v in decomposed.items() if k.startswith("lora_te_")
    }

    # the training forward of a drawn block, on LyCORIS's module holding the same blocks
    name = "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2"
    ours = unet.get_submodule(name)
    module = next(m for m in made.unet_loras if m.lora_name == "lora_unet_" + name.replace(".", "_"))
    torch.manual_seed(1)
    with torch.no_grad():
        for i, (down, up) in enumerate(zip(module.down_list, module.up_list)):
            down.copy_(ours.lora_dylora_down["default"][i])
            up.copy_(torch.randn_like(up))
            ours.lora_dylora_up["default"][i].copy_(up)
    module.multiplier = 1.0
    x = torch.randn(2, 5, ours.base_layer.in_features)
    ours.train()
    for b in range(module.block_count):
        ours.drawn["default"] = b
        delta, _ = module.get_diff_weight(rank=b * module.block_size)
        theirs_out = ours.base_layer(x) + nn.functional.linear(x, delta)
        torch.testing.assert_close(ours(x), theirs_out, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("algo", ["locon", "dylora"])
def test_dylora_entries_train_resume_and_load_in_lycoris(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """A tiny run of the file on a LoCon network (DyLoRA entries) and on a DyLoRA network (LoCon entries):
    one block per DyLoRA layer trains in a step, it resumes bit-exact, the export loads in lycoris-lora to
    the trained output, and the adapter folders load back. The run is LoRA+'s (loraplus_lr_ratio=4, the
    network_args of test_loraplus_raises_the_locon_ups_not_the_dylora_blocks, whose own run and bit-exact
    resume it was): LoRA+ changes the ups' learning rate, none of the above. This is the one resume of these
    networks (test_lycoris_mixed_file.py's test_mixed_run_beside_dylora_entries_takes_only_their_alphas
    checks their start from a file and trains the LoCon network's alone)."""
    from dbspec.runtime.weights import load_peft_adapters
    from tests.runtime.test_lycoris import _unet_output
    from tests.unit.convert_kit import out_path

    path, plan = _plan(tmp_path, algo, '"loraplus_lr_ratio=4"')
    assert plan.optimizer.loraplus_denoiser_ratio == 4.0
    spec = out_path(tmp_path)
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2", "train.text_encoder=false"]
    whole = execute(compile_spec(spec, [*base, "output.dir=whole"]), keep_models=True)
    split = compile_spec(spec, [*base, "output.dir=parts"])
    first = execute(split, stop_after=1, keep_models=True)
    # one block drawn per DyLoRA layer and step (draw_blocks): after the first step one up block moved
    moved = [
        sum(bool(u.abs().sum()) for u in layer.lora_dylora_up["default"])
        for layer in first.components.unet.modules()
        if hasattr(layer, "lora_dylora_up") and "default" in layer.lora_dylora_up
    ]
    assert moved and set(moved) == {1}, moved
    resumed = execute(split, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    files = sorted(str(p.relative_to(whole.final)) for p in Path(whole.final).rglob("*.safetensors"))
    other = {"locon": "dylora", "dylora": "lora"}[algo]  # the other kind's folder beside the adapter's
    assert {"unet/adapter_model.safetensors", f"unet/{other}/adapter_model.safetensors"} <= set(files)
    for name in files:
        x, y = load_file(str(Path(whole.final) / name)), load_file(str(Path(resumed.final) / name))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name

    trained = whole.components.unet.eval()
    theirs = _lycoris_classes(_lycoris(pipe, path, monkeypatch, algo))
    assert _classes(trained, "lora_unet_") == {k: v for k, v in theirs.items() if k.startswith("lora_unet_")}

    fresh = copy.deepcopy(pipe.unet)
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    tensors = load_file(str(export))
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2"
    assert tensors[f"{key}.lora_down.weight"].shape[0] == 4 and float(tensors[f"{key}.alpha"]) == 2.0
    network = lycoris_kohya.LycorisNetworkKohya
    for attr in (
        "UNET_TARGET_REPLACE_MODULE",
        "UNET_TARGET_REPLACE_NAME",
        "TEXT_ENCODER_TARGET_REPLACE_MODULE",
    ):
        monkeypatch.setattr(network, attr, [])  # every module from the file (test_lycoris.py's loader)
    loaded, _ = lycoris_kohya.create_network_from_weights(
        1.0, str(export), None, named, fresh, for_inference=True
    )
    loaded.apply_to(named, fresh, apply_text_encoder=False, apply_unet=True)
    assert len(loaded.unet_loras) == len(_classes(trained, "lora_unet_"))
    output = _unet_output(trained)
    torch.testing.assert_close(_unet_output(fresh), output, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_unet_output(pipe.unet), output, atol=1e-3)  # training moved it
    again = copy.deepcopy(pipe.unet)
    assert load_peft_adapters(Path(whole.final), {"unet": again}, lokr_unit_scale=True) == ["unet"]
    assert _classes(again, "lora_unet_") == _classes(trained, "lora_unet_")
    torch.testing.assert_close(_unet_output(again.eval()), output, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("algo", ["locon", "dylora"])
def test_loraplus_raises_the_locon_ups_not_the_dylora_blocks(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """LoRA+ on a LoCon network with DyLoRA entries, and on a DyLoRA network with LoCon entries (was DBS403):
    dbspec's raised parameters are, module for module, those lycoris-lora 4.1.3's prepare_optimizer_params
    puts in its plus groups at lr x the ratio (the LoConModules' `lora_up`), none of the DyLoRA layers' ups
    (its `up_list`). The tiny run of this plan, resumed bit-exact, is test_dylora_entries_train_resume_...'s
    (it trains with these network_args)."""
    from types import SimpleNamespace

    from dbspec.runtime.prepare import lora_up_ids, raises_dylora_ups

    path, plan = _plan(tmp_path, algo, '"loraplus_lr_ratio=4"')
    a = plan.adapter
    assert a.kind == ("lora" if algo == "locon" else "dylora")
    assert plan.optimizer.loraplus_denoiser_ratio == 4.0
    made = _lycoris(pipe, path, monkeypatch, algo, loraplus_lr_ratio="4")
    names = {
        id(p): f"{m.lora_name}.{n}"
        for m in [*made.unet_loras, *made.text_encoder_loras]
        for n, p in m.named_parameters()
    }
    groups, _ = made.prepare_optimizer_params(text_encoder_lr=1e-3, unet_lr=1e-3)
    theirs = {names[id(p)] for g in groups if g["lr"] == pytest.approx(4e-3) for p in g["params"]}
    assert theirs and {n.rsplit(".", 2)[-2] for n in theirs} == {"lora_up"}
    theirs_modules = {n.split(".")[0] for n in theirs}

    unet, text = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    add_lora(unet, a, a.denoiser_targets, seed=0, conv=True)
    add_lora(text, a, a.text_encoder_targets, seed=0, component="text_encoder")
    unet.requires_grad_(False), text.requires_grad_(False)
    for module in (unet, text):  # the adapters' parameters train, as configure_models leaves them
        for name, p in module.named_parameters():
            p.requires_grad_(".lora_" in name)
    ids = lora_up_ids(SimpleNamespace(unet=unet, text_encoders=[text]), dylora=raises_dylora_ups(a))

    def raised(module: nn.Module, prefix: str, ids) -> set[str]:
        return {
            prefix + name.split(".lora_")[0].replace(".", "_")
            for name, p in module.named_parameters()
            if id(p) in ids
        }

    ours = raised(unet, "lora_unet_", ids) | raised(text, "lora_te_text_model_", ids)
    assert ours == theirs_modules
    every = lora_up_ids(SimpleNamespace(unet=unet, text_encoders=[text]))  # the DyLoRA ups too: more
    dylora = {k for k, v in _classes(unet, "lora_unet_").items() if v[0] == "DyLoraModule"}
    assert dylora and dylora <= raised(unet, "lora_unet_", every) and not dylora & ours
