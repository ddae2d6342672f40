"""A lycoris.kohya algo=tlora network with a LyCORIS preset file on Flux / SD3 (issue 12; was DBS403): the
file's targets (classes, names, map entries) as the T-LoRA adapter's, its T-LoRA entries' own dim / alpha
as [[adapter.blocks]] over whole fused Linears (one TLoraModule per fused Linear: one SVD of the stacked
weight, runtime/lycoris_tlora.py fit_fused_tlora), its entries of other algorithms as blocks of their kind
(lycoris_maps._beside_tlora), SD3's patch convolution at its entry's dim. Checked against lycoris-lora
4.1.3's create_network from the same file on kohya's layers (the parts' base weights stacked in kohya's row
order): every module's class, dim and scale, each T-LoRA module's frozen SVD start; one tiny Flux run
(resumed in test_lycoris_flow_tlora.py: the same kinds of state) trains and its kohya export loads strictly
into create_network's modules, which compute the trained layers' outputs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model, mmdit, sd3_parts
from dbspec.runtime.adapters import ADAPTER_NAME
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_mixed_flow_full import (
    _BASE,
    _check_kohya_outputs,
    _kohya_layers,
    _kohya_tree,
    _run,
)

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# T-LoRA on the double blocks' attention and the single blocks' Linears at the network's dim 4 / alpha 1;
# the image q/k/v at its entry's dim 2 / alpha 2 from the last singular triplets (its sig_type); LoCon on the
# text stream's out projection
FLUX_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = []

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "tlora"
dim = 2
alpha = 2
sig_type = "last"
[name_algo_map."double_blocks.*.txt_attn.proj"]
algo = "locon"
dim = 2
alpha = 1
"""
# SD3: T-LoRA on the x blocks' q/k/v (the network's dim) and the patch convolution at its entry's dim 2
SD3_FILE = """\
use_fnmatch = true
unet_target_module = ["PatchEmbed"]
unet_target_name = ["joint_blocks.*.x_block.attn.qkv"]
text_encoder_target_module = []

[module_algo_map.PatchEmbed]
dim = 2
alpha = 2
"""
_COMMANDS = {
    "flux": (
        ("clip_l", "t5xxl", "ae"),
        "accelerate launch flux_train_network.py --pretrained_model_name_or_path "
        "black-forest-labs/FLUX.1-dev "
        "--clip_l clip_l.safetensors --t5xxl t5xxl.safetensors --ae ae.safetensors "
        "--model_prediction_type raw --guidance_scale 1.0 ",
    ),
    "sd3": (
        ("clip_l", "clip_g", "t5xxl"),
        "accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
        "stabilityai/stable-diffusion-3.5-large --clip_l clip_l.safetensors --clip_g clip_g.safetensors "
        "--t5xxl t5xxl.safetensors ",
    ),
}


def _converted(tmp_path: Path, text: str, script: str, overrides, algo: str = "tlora"):
    """The kohya command (network_dim 4, alpha 1, `algo`, the preset file `text`) converted: its plan."""
    from tests.unit.convert_kit import component_file, errors, images, kohya, plan_of

    (tmp_path / "tl.toml").write_text(text, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    files, command = _COMMANDS[script]
    for name in files:
        component_file(tmp_path / f"{name}.safetensors")
    outcome = kohya(
        tmp_path,
        command=command + "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=4 "
        f'--network_alpha=1 --network_args "algo={algo}" "preset=tl.toml" --network_train_unet_only '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return plan_of(outcome, tmp_path, overrides)


def _their_network(monkeypatch, file: Path, tree, algo: str = "tlora"):
    """lycoris-lora's create_network (`algo`, dim 4, alpha 1) from the preset file on kohya's layers,
    applied to the denoiser: its modules by name, and the network."""
    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(1.0, 4, 1.0, None, [nn.Module()], tree, algo=algo, preset=str(file))
    made.apply_to([nn.Module()], tree, apply_text_encoder=False, apply_unet=True)
    return {m.lora_name: m for m in made.unet_loras}, made


def _start(parts, order) -> dict[str, torch.Tensor]:
    """Our T-LoRA parts' frozen start as the one TLoraModule on kohya's layer holds it (P0's rows stacked in
    kohya's order)."""
    first = parts[0]
    p0 = torch.cat([p.lora_tlora_base_p[ADAPTER_NAME] for p in parts])
    return {
        "base_q": first.lora_tlora_base_q[ADAPTER_NAME],
        "base_lambda": first.lora_tlora_base_lambda[ADAPTER_NAME],
        "base_p": p0 if order is None else p0[order],
    }


def _check_modules(theirs, layers, expected) -> None:
    """create_network built `expected` (kohya path -> (class, dim, scale)) and nothing else; each of our
    T-LoRA layers has its dim, scale and frozen SVD start (their modules' base_q / base_lambda / base_p)."""
    got = {n: type(m).__name__ for n, m in theirs.items()}
    assert got == {"lora_unet_" + p.replace(".", "_"): c for p, (c, _, _) in expected.items()}
    for path, (cls, dim, scale) in expected.items():
        module, (parts, order) = theirs["lora_unet_" + path.replace(".", "_")], layers[path]
        assert (module.lora_dim, float(module.scale)) == (dim, scale), path
        if cls != "TLoraModule":
            assert all(type(p).__name__ != "TloraLayer" for p in parts), path
            continue
        assert {(p.r[ADAPTER_NAME], float(p.scaling[ADAPTER_NAME])) for p in parts} == {(dim, scale)}, path
        for key, value in _start(parts, order).items():
            want = module.get_buffer(key)
            torch.testing.assert_close(
                value.reshape(want.shape), want, rtol=0, atol=1e-6, msg=f"{path} {key}"
            )


def test_tlora_network_file_on_flux_builds_lycoris_network_trains_and_loads_back(tmp_path, monkeypatch):
    base = ["model.base=builtin:tiny-flux", *_BASE]
    plan = _converted(tmp_path, FLUX_FILE, "flux", base)
    a = plan.adapter
    assert (a.kind, a.rank, a.alpha) == ("tlora", 4, 1.0) and len(a.fused) == 3
    assert sorted((b.kind, b.rank, b.alpha, b.sig_type) for b in a.blocks) == [
        ("adapter", 2, 2.0, "last"),
        ("lora", 2, 1.0, "principal"),
    ]
    planned, whole, tensors = _run(tmp_path, {"lora"}, base, resume=False)
    unet = whole.components.unet.float().eval()
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    tree = _kohya_tree(layers)
    theirs, _ = _their_network(monkeypatch, tmp_path / "tl.toml", tree)
    expected = {
        "double_blocks.0.img_attn.qkv": ("TLoraModule", 2, 1.0),
        "double_blocks.0.img_attn.proj": ("TLoraModule", 4, 0.25),
        "double_blocks.0.txt_attn.qkv": ("TLoraModule", 4, 0.25),
        "double_blocks.0.txt_attn.proj": ("LoConModule", 2, 0.5),
        "single_blocks.0.linear1": ("TLoraModule", 4, 0.25),
        "single_blocks.0.linear2": ("TLoraModule", 4, 0.25),
    }
    _check_modules(theirs, layers, expected)
    # the export, loaded strictly but for TLoraModule's frozen start (its loader recomputes it from the base)
    result = nn.ModuleDict(theirs).load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    assert not result.unexpected_keys, result
    assert {k for k in result.missing_keys if not k.rsplit(".", 1)[-1].startswith("base_")} == set()
    assert set(layers) >= set(expected)
    _check_kohya_outputs(tree, {p: layers[p] for p in expected}, set(theirs))


class PatchEmbed(nn.Module):
    """kohya's sd3_models.PatchEmbed as LyCORIS's class walk sees it: its `proj` convolution."""

    def __init__(self, proj: nn.Conv2d) -> None:
        super().__init__()
        self.proj = proj


def test_tlora_network_file_on_sd3_builds_lycoris_network(tmp_path, monkeypatch):
    """SD3 (no run: the layers as the run builds them): the x blocks' q/k/v one TLoraModule each at the
    network's dim, the 2x2 patch convolution at its entry's dim 2 / alpha 2 (a block of its own)."""
    from dbspec.runtime.adapters import add_lora
    from dbspec.runtime.prepare import _tie_fused
    from dbspec.runtime.sd3_kohya import swapped
    from dbspec.runtime.tiny import build_pipeline
    from tests.runtime.runspec import compile_spec
    from tests.runtime.test_lycoris_preset_file_flow import _spec

    base = ["model.base=builtin:tiny-sd3", *_BASE]
    plan = _converted(tmp_path, SD3_FILE, "sd3", base)
    a = plan.adapter
    assert (a.kind, a.rank, a.alpha, [f.name for f in a.fused]) == ("tlora", 4, 1.0, ["x_block_attn_qkv"])
    assert [(b.pattern, b.kind, b.rank, b.alpha) for b in a.blocks] == [
        ("^pos_embed\\.proj$", "adapter", 2, 2.0)
    ]
    assert "pos_embed.proj" in a.denoiser_targets
    plan = compile_spec(_spec(tmp_path), base)
    transformer = build_pipeline("builtin:tiny-sd3").transformer
    add_lora(transformer, plan.adapter, plan.adapter.denoiser_targets, seed=0, conv=True, component="unet")
    _tie_fused(transformer, plan.adapter)
    layers = _kohya_layers(transformer, mmdit(2, ()), sd3_parts, swapped)
    tree = _kohya_tree(layers)
    conv = transformer.pos_embed.proj
    tree.add_module("x_embedder", PatchEmbed(copy.deepcopy(conv.base_layer)))
    layers["x_embedder.proj"] = ([conv], None)
    theirs, _ = _their_network(monkeypatch, tmp_path / "tl.toml", tree)
    expected = {f"joint_blocks.{i}.x_block.attn.qkv": ("TLoraModule", 4, 0.25) for i in (0, 1)}
    expected["x_embedder.proj"] = ("TLoraModule", 2, 1.0)
    _check_modules(theirs, layers, expected)


# a LoCon network's file (issue 12; was DBS402, though kohya trains it): T-LoRA on SD3's 2x2 stride-2 patch
# convolution at its entry's dim 2 / alpha 2, LoCon on the x blocks' q/k/v
SD3_PATCH_ENTRY = SD3_FILE.replace(
    "[module_algo_map.PatchEmbed]\n", '[module_algo_map.PatchEmbed]\nalgo = "tlora"\n'
)


def test_tlora_entry_on_sd3_patch_beside_locon_trains_and_loads_in_lycoris(tmp_path, monkeypatch):
    """A tlora entry on SD3's patch convolution in a LoCon network: TLoraModule's 1x1 factors at the
    patch's stride give an output of the layer's size (its bypass path), so kohya trains it. A block of kind
    tlora at the entry's conv dim (runtime/blocks.py with_blocks); create_network from the same file builds
    TLoraModule there (dim 2, scale 1, its SVD start ours) and LoConModule on the q/k/v; a tiny run's export
    loads strictly into those modules, which compute the trained layers' outputs."""
    from dbspec.runtime.sd3_kohya import swapped

    base = ["model.base=builtin:tiny-sd3", *_BASE]
    plan = _converted(tmp_path, SD3_PATCH_ENTRY, "sd3", base, algo="locon")
    a = plan.adapter
    assert (a.kind, a.conv_targets) == ("lora", ("pos_embed.proj",))
    assert [(b.kind, b.conv_rank, b.conv_alpha) for b in a.blocks] == [("tlora", 2, 2.0)]
    _, whole, tensors = _run(tmp_path, {"tlora"}, base, resume=False)
    unet = whole.components.unet.float().eval()
    conv = unet.pos_embed.proj
    assert type(conv).__name__ == "TloraLayer" and conv.r[ADAPTER_NAME] == 2
    layers = _kohya_layers(unet, mmdit(2, ()), sd3_parts, swapped)
    tree = _kohya_tree(layers)
    tree.add_module("x_embedder", PatchEmbed(copy.deepcopy(conv.base_layer)))
    theirs, _ = _their_network(monkeypatch, tmp_path / "tl.toml", tree, algo="locon")
    expected = {f"joint_blocks.{i}.x_block.attn.qkv": ("LoConModule", 4, 0.25) for i in (0, 1)}
    expected["x_embedder.proj"] = ("TLoraModule", 2, 1.0)
    patch = theirs["lora_unet_x_embedder_proj"]
    for key, value in _start([conv], None).items():  # its frozen start (the base weight's SVD), ours
        torch.testing.assert_close(value, patch.get_buffer(key), rtol=0, atol=1e-6, msg=key)
    result = nn.ModuleDict(theirs).load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if ".base_" not in k], result
    assert {n: type(m).__name__ for n, m in theirs.items()} == {
        "lora_unet_" + p.replace(".", "_"): c for p, (c, _, _) in expected.items()
    }
    _check_kohya_outputs(tree, {p: layers[p] for p in expected if p in layers}, set(theirs))
    x = torch.randn(2, conv.base_layer.in_channels, 8, 8)
    with torch.no_grad():
        trained = conv(x)
        assert not torch.allclose(trained, conv.base_layer(x), atol=1e-7)
        torch.testing.assert_close(tree.x_embedder.proj(x), trained, rtol=0, atol=1e-5)


def test_tlora_dropout_outside_bypass_drops_the_patch_alone_as_lycoris():
    """`dropout` outside bypass_mode (issue 12; was DBS403): TLoraModule's forward on SD3's 2x2 stride-2
    patch convolution takes its bypass path (its 1x1 update's shape differs from the kernel's) and drops the
    update there after the module_dropout draw, while a Linear's default forward never reads it. Our layers
    built as the plan builds them (tlora_config with the adapter's dropout, add_own_module_dropout) equal
    lycoris-lora 4.1.3's modules from the same generator state: outputs and generator state, training."""
    from lycoris.modules.tlora import TLoraModule
    from peft import inject_adapter_in_model

    from dbspec.runtime.lycoris_tlora import tlora_config
    from dbspec.runtime.mixed_kinds import add_own_module_dropout

    torch.manual_seed(0)
    holder = nn.Module()
    holder.proj, holder.linear = nn.Conv2d(16, 24, 2, stride=2), nn.Linear(16, 24)
    base = {name: copy.deepcopy(getattr(holder, name)) for name in ("proj", "linear")}
    rates = {"dropout": 0.4, "module_dropout": 0.3}
    theirs = {n: TLoraModule(n, m, 1.0, lora_dim=4, alpha=2.0, **rates) for n, m in base.items()}
    inject_adapter_in_model(tlora_config(["proj", "linear"], 4, 2.0, bypass=False, dropout=0.4), holder)
    assert add_own_module_dropout(holder, 0.3) == 2
    with torch.no_grad():  # moved singular values: an update to drop
        for name, module in theirs.items():
            module.apply_to()
            module.lambda_layer.add_(0.5)
            getattr(holder, name).lora_tlora_lambda[ADAPTER_NAME].copy_(module.lambda_layer)
    inputs = {"proj": torch.randn(2, 16, 8, 8), "linear": torch.randn(3, 16)}
    holder.train()
    for module in theirs.values():
        module.train()
    torch.manual_seed(5)
    with torch.no_grad():
        want = [[theirs[n](x) for n, x in inputs.items()] for _ in range(6)]
    state = torch.get_rng_state()
    torch.manual_seed(5)
    with torch.no_grad():
        got = [[getattr(holder, n)(x) for n, x in inputs.items()] for _ in range(6)]
    assert torch.equal(torch.get_rng_state(), state)
    for ours, their in zip(got, want):
        for a, b in zip(ours, their):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    x = inputs["proj"]
    with torch.no_grad():
        plain, full = theirs["proj"].org_forward(x), holder.eval().proj(x)  # eval: the whole update
    kept = [g[0] for g in got if not torch.allclose(g[0], plain)]  # past module_dropout's draw
    assert kept and all(not torch.allclose(k, full) for k in kept)  # the dropout's masks
    with torch.no_grad():  # the Linear: its whole update or (module_dropout) none, never a dropout mask
        ends = (holder.linear(inputs["linear"]), theirs["linear"].org_forward(inputs["linear"]))
    assert all(any(torch.allclose(g[1], end, atol=1e-6) for end in ends) for g in got)
