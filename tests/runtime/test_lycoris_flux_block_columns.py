"""A GLoRA or DyLoRA network's dora_wd with wd_on_output=False beside a preset file's LoCon, LoKr and LoHa
entries on kohya's fused Flux Linears (issue 12; was DBS403, a spec's DBS583): create_single_module hands
weight_decompose and wd_on_out to every module, LoConModule, LokrModule and LohaModule decompose each fused
Linear per input column of the stacked weight (one (1, in) `dora_scale`, its norm spanning every part's merged
rows), GLoRAModule and DyLoraModule never read them. dbspec's blocks get their own `dora_axis = "input"` and
each fused layer's parts share one magnitude (runtime/lycoris_dora.py tie_fused_doras); so do a LoCon
network's entries with their own weight_decompose and wd_on_out = false. Checked without a
run (the (1, in) magnitude on fused parts is saved, resumed and loaded as the adapter's own axis is:
test_lycoris_flux_locon_columns.py): the adapted model, its factors and magnitudes moved at random, exports
exactly create_network's state-dict keys and shapes from the same file; lycoris-lora 4.1.3's decomposed
modules loaded with it compute their fused layers' outputs to 1e-5, and the decomposed modules' `dora_scale`
gradients equal the parts' shared magnitude's; with the network's module_dropout each fused layer's parts
share the module's one draw (in training the same outputs and generator state)."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
from dbspec.runtime.exports import exports_for_plan
from dbspec.runtime.families import family_runtime
from dbspec.runtime.lycoris_dora import dora_scale_of
from dbspec.runtime.prepare import configure_models
from tests.runtime.test_lycoris_mixed_flow_dylora import (
    _converted,
    _export_matches_their_state,
    _their_network,
)
from tests.runtime.test_lycoris_mixed_flow_full import _BASE, _check_kohya_outputs, _kohya_layers, _kohya_tree

pytest.importorskip("lycoris.kohya")

# LoCon on the text stream's q/k/v, LoKr on linear1, LoHa on the image q/k/v; the network's kind on the
# image out projection
COLUMNS_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.qkv", "double_blocks.*.img_attn.proj", "single_blocks.*.linear1"]
text_encoder_target_module = []
exclude_name = []

[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "locon"
dim = 2
alpha = 1
[name_algo_map."single_blocks.*.linear1"]
algo = "lokr"
[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "loha"
dim = 2
"""
RATE = 0.25
_DECOMPOSED = {"double_blocks.0.txt_attn.qkv", "double_blocks.0.img_attn.qkv", "single_blocks.0.linear1"}


# a LoCon network's entries with their own weight_decompose and wd_on_out = false (the blocks' own `dora` and
# `dora_axis`; the LoCon out projection undecomposed)
OWN_FILE = re.sub(
    r"(\[name_algo_map[^\n]*\n)", r"\1weight_decompose = true\nwd_on_out = false\n", COLUMNS_FILE
)


@pytest.mark.parametrize("algo", ["glora", "dylora", "locon"])
def test_network_columns_on_fused_entries_are_lycoris(tmp_path, monkeypatch, algo):
    file = tmp_path / "columns.toml"
    file.write_text(OWN_FILE if algo == "locon" else COLUMNS_FILE, encoding="utf-8")
    base = ["model.base=builtin:tiny-flux", *_BASE]
    args = f'"module_dropout={RATE}"' + ("" if algo == "locon" else ' "dora_wd=True" "wd_on_output=False"')
    plan = _converted(tmp_path, file.name, algo, base, args=args)
    a = plan.adapter
    kind = "lora" if algo == "locon" else algo
    assert (a.kind, a.dora, a.dora_form, a.dora_axis) == (kind, False, "lycoris", "output") and a.fused
    assert a.module_dropout == RATE
    assert {(b.kind, b.dora, b.dora_axis) for b in a.blocks if b.rank} == {
        ("lora" if algo != "locon" else "adapter", "on", "input"),
        ("lokr", "on", "input"),
        ("loha", "on", "input"),
    }
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    unet = comps.unet.float()
    torch.manual_seed(1)
    with torch.no_grad():  # the factors and magnitudes moved (a LoRA up, a LoKr / LoHa factor off zero)
        for name, p in unet.named_parameters():
            if p.requires_grad:
                p.mul_(1 + 0.2 * torch.rand_like(p)) if "dora_scale" in name else p.normal_(std=0.2)
    unet.eval()
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    for path in _DECOMPOSED:
        parts = layers[path][0]
        scale = dora_scale_of(parts[0], "default")
        assert scale is not None and scale.shape == (1, 16), path
        assert all(dora_scale_of(p, "default") is scale for p in parts), path  # one magnitude, shared
    assert dora_scale_of(layers["double_blocks.0.img_attn.proj"][0][0], "default") is None
    (folder := tmp_path / "export").mkdir()
    tensors = load_file(str(exports_for_plan(plan, folder, comps)[0]))
    decomposed = {k.split(".")[0] for k in tensors if k.endswith(".dora_scale")}
    assert decomposed == {"lora_unet_" + p.replace(".", "_") for p in _DECOMPOSED}

    tree = _kohya_tree(layers)
    options = {"module_dropout": str(RATE)}
    options |= {} if algo == "locon" else {"dora_wd": "True", "wd_on_output": "False"}
    theirs, made = _their_network(monkeypatch, algo, file, [nn.Module()], tree, **options)
    assert {n for n, m in theirs.items() if getattr(m, "wd", False)} == decomposed
    _export_matches_their_state(made, tensors)  # dora_scale (1, in) on exactly those modules
    for name in decomposed:  # each decomposed module loads its tensors strictly
        theirs[name].load_state_dict(
            {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(name)}
        )
    made.eval()
    _check_kohya_outputs(tree, {p: layers[p] for p in _DECOMPOSED}, decomposed)
    # the magnitude's gradient through the whole fused layer: LyCORIS's one column norm over every part
    torch.manual_seed(2)
    for path in sorted(_DECOMPOSED):
        parts, _ = layers[path]
        module = theirs["lora_unet_" + path.replace(".", "_")]
        x = torch.randn(3, parts[0].get_base_layer().in_features)
        target = torch.randn(3, module.org_module[0].out_features)
        unet.zero_grad()
        module.zero_grad()
        ours = torch.cat([p(x) for p in parts], dim=-1)
        nn.functional.mse_loss(ours, target).backward()
        nn.functional.mse_loss(tree.get_submodule(path)(x), target).backward()
        got = dora_scale_of(parts[0], "default").grad
        torch.testing.assert_close(got, module.dora_scale.grad, rtol=1e-4, atol=1e-7, msg=path)
    # module_dropout in training: each decomposed fused layer's one LyCORIS draw shared by its parts, from the
    # same generator state the same outputs (skipped and drawn forwards both met) and generator state
    unet.train()
    for path in sorted(_DECOMPOSED):
        parts, _ = layers[path]
        module = theirs["lora_unet_" + path.replace(".", "_")].train()
        x = torch.randn(3, parts[0].get_base_layer().in_features)
        torch.manual_seed(7)
        with torch.no_grad():
            want = [module(x) for _ in range(8)]
        after = torch.get_rng_state()
        torch.manual_seed(7)
        with torch.no_grad():
            ours = [torch.cat([p(x) for p in parts], dim=-1) for _ in range(8)]
        assert torch.equal(after, torch.get_rng_state()), path
        plain = torch.cat([p.get_base_layer()(x) for p in parts], dim=-1)
        for got, expected in zip(ours, want):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5, msg=path)
        assert 0 < sum(torch.equal(got, plain) for got in ours) < 8, path
    unet.eval()
    # the adapter folders (`unet/` and `unet/<kind>/`) load back as `dbspec sample` loads them, each fused
    # layer's parts sharing one (1, in) magnitude again
    from dbspec.runtime.weights import load_peft_adapters, save_peft_adapters
    from tests.runtime.test_lycoris_mixed_flow import _path_in
    from tests.runtime.test_lycoris_preset_file_flow import _unwrapped

    unet.zero_grad()
    save_peft_adapters(tmp_path / "folders", {"unet": unet}, "fp32")
    again = _unwrapped(unet)
    for attr in ("peft_config", "dbspec_kind_configs"):
        if hasattr(again, attr):
            delattr(again, attr)
    assert load_peft_adapters(tmp_path / "folders", {"unet": again}, a.lokr_unit_scale, fused_lokr=a) == [
        "unet"
    ]
    again.eval()
    with torch.no_grad():
        for path in _DECOMPOSED:
            parts = layers[path][0]
            reloaded = [again.get_submodule(_path_in(unet, p)) for p in parts]
            scale = dora_scale_of(reloaded[0], "default")
            assert all(dora_scale_of(p, "default") is scale for p in reloaded), path
            x = torch.randn(3, parts[0].get_base_layer().in_features)
            theirs = torch.cat([p(x) for p in parts], dim=-1)
            torch.testing.assert_close(
                torch.cat([p(x) for p in reloaded], dim=-1), theirs, rtol=0, atol=1e-6, msg=path
            )
