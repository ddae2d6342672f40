"""lycoris.kohya `algo=full` / `algo=ia3` networks on Flux and SD3 whose preset file gives some layers another
algorithm (issue 12; was DBS403, a spec's DBS578): the converted full / IA^3 adapter's blocks of each entry's
`kind` with `fused_projections` against lycoris-lora 4.1.3's create_network from the same file on kohya's
tiny Flux / MMDiT Linears (the trained or randomised parts' base weights stacked in kohya's rows, as
test_lycoris_mixed_flow_full.py rebuilds them): every module's class, the low-rank modules' scale, the
export loaded strictly (every tensor's shape), each kohya layer's output on fixed inputs; LyCORIS's max
norm (`--scale_weight_norms`) over the entries' modules alone (FullModule / IA3Module keep the base
apply_max_norm); a tiny Flux run of the full network and a tiny SD3 run of the IA^3 one train and export,
the exports loading back in lycoris-lora. No resume run: the saved kinds (full copies, IA^3 scales, LoCon,
LoHa, LoKr, GLoRA, Diag-OFT on fused Linears) resume bit-exact in test_lycoris_mixed_flow_full.py and
test_lycoris_mixed_flow.py."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model, mmdit, sd3_parts
from tests.runtime.shared import moved_components
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_mixed_chroma_full import check_chroma_export
from tests.runtime.test_lycoris_mixed_flow_full import (
    _BASE,
    _check_kohya_outputs,
    check_sd3_network,
    _kohya_layers,
    _kohya_tree,
    _lycoris_network,
    _run,
)
from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# LoKr on the double blocks' image q/k/v, LoHa on the single blocks' linear1, LoCon on the text q/k/v,
# GLoRA on img_in, Diag-OFT on txt_in, BOFT on the image stream's out projection (FLUX.1's 3072 rows in
# blocks of 6), LoHa on CLIP-L's attention; the network's FullModule / IA3Module on the text stream's out
# projection and linear2
FLUX_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*", "img_in", "txt_in"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "lokr"
dim = 4
alpha = 2
[name_algo_map."single_blocks.*.linear1"]
algo = "loha"
dim = 2
alpha = 1
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "locon"
dim = 2
alpha = 4
[name_algo_map.img_in]
algo = "glora"
dim = 4
alpha = 2
[name_algo_map.txt_in]
algo = "diag-oft"
dim = 4
[name_algo_map."double_blocks.*.img_attn.proj"]
algo = "boft"
dim = 6
[module_algo_map.CLIPAttention]
algo = "loha"
dim = 2
alpha = 1
"""
FLUX_KINDS = {
    "double_blocks.0.img_attn.qkv": "LokrModule",
    "single_blocks.0.linear1": "LohaModule",
    "double_blocks.0.txt_attn.qkv": "LoConModule",
    "img_in": "GLoRAModule",
    "txt_in": "DiagOFTModule",
    "double_blocks.0.img_attn.proj": "ButterflyOFTModule",
}
# the network's FullModule / IA3Module
OWN_PATHS = ("double_blocks.0.txt_attn.proj", "single_blocks.0.linear2")
_OWN = {"full": "FullModule", "ia3": "IA3Module"}
# the modules scaled by alpha / dim (LokrModule's full factors here, dim 4 on 48 rows: scale 1, which the
# outputs check)
_LOW_RANK = ("LoConModule", "LohaModule", "GLoRAModule")
# the kinds LyCORIS's apply_max_norm scales (FullModule, IA3Module, GLoRAModule keep the base one)
_SCALED = ("LoConModule", "LohaModule", "LokrModule", "DiagOFTModule", "ButterflyOFTModule")


def _file(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "mixed.toml"
    file.write_text(text, encoding="utf-8")
    return file


def _block(blocks, path: str):
    return next((b for b in blocks if re.search(b.pattern, path)), None)


@pytest.mark.parametrize(
    ("algo", "args"),
    [("full", {}), ("ia3", {}), ("ia3", {"dora_wd": "True"}), ("ia3", {"bypass_mode": "True"})],
)
def test_flux_network_with_entries_builds_as_lycoris(tmp_path, monkeypatch, algo, args):
    """The converted plan's model (random adapter weights, no training) exported: lycoris-lora's
    create_network from the same file on kohya's Flux Linears builds every module of the export (loaded
    strictly) in the class the file gives it, the network's FullModule / IA3Module elsewhere, the low-rank
    modules at their block's scale, each computing what the plan's (fused) layers compute; with
    `--scale_weight_norms` dbspec's LyCORIS max norm over the same layers scales the entries' LoCon, LoHa,
    LoKr, Diag-OFT and BOFT modules alone, as apply_max_norm_regularization does (count, mean and largest
    norm, the outputs after); with `dora_wd` instead (no max norm beside it) the LoCon / LoHa / LoKr modules
    decomposed, each fused Linear whole, as lycoris-lora's network with weight_decompose builds them; with
    IA^3's `bypass_mode` (was DBS403, a spec's DBS578) every module in LyCORIS's bypass forward (IA3Module's
    and DiagOFTModule's scale and rotate the output, its bias too; the others compute their default one)."""
    from dbspec.runtime.lycoris_export import lycoris_state
    from dbspec.runtime.max_norm import apply_max_norm, lycoris_norm_modules, lycoris_update
    from tests.unit.convert_kit import flux_lycoris, plan_of

    file = _file(tmp_path, FLUX_FILE)
    dora, bypass = "dora_wd" in args, "bypass_mode" in args
    network_args, more = args, "".join(f' "{k}={v}"' for k, v in args.items())
    command = f'"algo={algo}" "preset={file.name}"{more}'
    plan = plan_of(
        flux_lycoris(tmp_path, command, "" if args else "--scale_weight_norms 1.0"),
        tmp_path,
        ["model.base=builtin:tiny-flux", *_BASE],
    )
    a = plan.adapter
    assert a.kind == algo and a.fused and a.max_norm == (0.0 if args else 1.0) and a.bypass == bypass
    assert {b.dora for b in a.blocks if b.kind in ("lokr", "loha", "lora")} == {"on" if dora else "adapter"}
    assert {b.kind for b in a.blocks} == {"lokr", "loha", "lora", "glora", "diag-oft", "boft"}
    assert [(b.kind, b.rank, b.alpha) for b in a.text_encoder_blocks] == [("loha", 2, 1.0)]
    comps = moved_components(plan, text_encoder=True)
    unet = comps.unet.eval()
    tensors = lycoris_state(unet=unet, text_encoders=comps.text_encoders, family="flux", dtype="fp32")
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    tree = _kohya_tree(layers)
    clip = _kohya_clip(_unwrapped(comps.text_encoders[0]))
    theirs = _lycoris_network(monkeypatch, algo, file, [clip, nn.Module()], tree, tensors, **network_args)
    decomposed = {n for n, m in theirs.items() if getattr(m, "wd", False)}
    assert decomposed == (
        {n for n, m in theirs.items() if type(m).__name__ in _SCALED[:3]} if dora else set()
    )
    assert {bool(m.bypass_mode) for m in theirs.values()} == {bypass}
    expected = {**dict.fromkeys(OWN_PATHS, _OWN[algo]), **FLUX_KINDS}
    unet_names = {n: type(m).__name__ for n, m in theirs.items() if n.startswith("lora_unet_")}
    assert unet_names == {"lora_unet_" + p.replace(".", "_"): c for p, c in expected.items()}
    assert {type(m).__name__ for n, m in theirs.items() if n.startswith("lora_te1_")} == {"LohaModule"}
    for path in layers:  # the low-rank modules at their block's rank and scale
        module = theirs.get("lora_unet_" + path.replace(".", "_"))
        if module is not None and type(module).__name__ in _LOW_RANK:
            block = _block(a.blocks, diffusers_parts(path)[0])
            assert (module.lora_dim, float(module.scale)) == (
                block.rank,
                pytest.approx(block.alpha / block.rank),
            )
    _check_kohya_outputs(tree, layers, set(unet_names))
    if args:
        return

    # LyCORIS's max norm: the entries' LoCon / LoHa / LoKr / Diag-OFT modules alone
    by_layer = {id(m.layer): m for m in lycoris_norm_modules(unet, [], a.fused)}
    scaled = [
        ("lora_unet_" + path.replace(".", "_"), by_layer[id(parts[0])])
        for path, (parts, _) in layers.items()
        if id(parts[0]) in by_layer
    ]
    assert sorted(type(theirs[n]).__name__ for n, _ in scaled) == sorted(
        c for c in FLUX_KINDS.values() if c in _SCALED
    )
    assert len(by_layer) == len(scaled)  # no full / IA^3 / GLoRA layer among them
    with torch.no_grad():
        norms = sorted(float(lycoris_update(m).norm()) for _, m in scaled)
    limit = norms[len(norms) // 2]
    unet.train()
    result = apply_max_norm([m for _, m in scaled], limit)
    for module in theirs.values():
        module.train()
    reference = lycoris_kohya.LycorisNetworkKohya.apply_max_norm_regularization(
        SimpleNamespace(unet_loras=[theirs[n] for n, _ in scaled], text_encoder_loras=[]), limit, "cpu"
    )
    assert result[0] == int(reference[0]) and 0 < result[0] < len(scaled)
    torch.testing.assert_close(
        torch.tensor(result[1:]),
        torch.tensor([float(reference[1]), float(reference[2])]),
        rtol=1e-6,
        atol=1e-7,
    )
    unet.eval()
    for module in theirs.values():
        module.eval()
    _check_kohya_outputs(tree, layers, set(unet_names))


def test_flux_full_network_with_entries_trains_and_loads_back_in_lycoris(tmp_path, monkeypatch):
    """A tiny Flux run of the full network with the file's entries and `--scale_weight_norms` trains (the
    entries' LoCon / LoHa / LoKr / Diag-OFT modules within the limit after the run) and exports kohya's names
    alone: lycoris-lora's create_network from the file loads the export strictly, its classes the file's, and
    create_network_from_weights rebuilds every module from it, both computing the trained (fused) layers'
    outputs, CLIP-L's LoHa modules too, and T5-XXL's LoCon modules (a T5 entry of another algorithm:
    train.t5 with text-encoder blocks of its kind)."""
    from dbspec.runtime.max_norm import lycoris_norm_modules, lycoris_update
    from tests.unit.convert_kit import flux_lycoris

    limit = 1e-3
    text = FLUX_FILE.replace('["CLIPAttention"]', '["CLIPAttention", "T5Attention"]')
    file = _file(tmp_path, text + '[module_algo_map.T5Attention]\nalgo = "locon"\ndim = 2\nalpha = 1\n')
    flux_lycoris(tmp_path, f'"algo=full" "preset={file.name}"', f"--scale_weight_norms {limit}")
    base = ["model.base=builtin:tiny-flux", *_BASE]
    plan, whole, tensors = _run(
        tmp_path, {"lokr", "loha", "lora", "glora", "diag-oft", "boft"}, base, resume=False
    )
    assert (plan.adapter.kind, plan.adapter.max_norm) == ("full", limit) and plan.adapter.t5_targets
    unet = whole.components.unet.eval()
    modules = lycoris_norm_modules(unet, [], plan.adapter.fused)
    assert {m.kind for m in modules} == {"lora", "loha", "lokr", "oft"}  # no full / GLoRA layer
    with torch.no_grad():
        assert max(float(lycoris_update(m).norm()) for m in modules) <= limit * (1 + 1e-5)
    names = {k.split(".")[0] for k in tensors}
    assert not any("to_q" in n or "proj_mlp" in n or "x_embedder" in n for n in names)  # kohya's names only
    assert {k for k in tensors if k.startswith("lora_unet_double_blocks_0_txt_attn_proj.")} == {
        "lora_unet_double_blocks_0_txt_attn_proj.diff",
        "lora_unet_double_blocks_0_txt_attn_proj.diff_b",
    }
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    clip_trained = whole.components.text_encoders[0]
    tree = _kohya_tree(layers)
    clip = _kohya_clip(_unwrapped(clip_trained))
    t5_trained = whole.components.text_encoders[1]
    t5 = _unwrapped(t5_trained)
    theirs = _lycoris_network(monkeypatch, "full", file, [clip, t5], tree, tensors)
    assert {type(m).__name__ for n, m in theirs.items() if n.startswith("lora_te2_")} == {"LoConModule"}
    expected = {**dict.fromkeys(OWN_PATHS, "FullModule"), **FLUX_KINDS}
    unet_names = {n for n in names if n.startswith("lora_unet_")}
    assert {n: type(theirs[n]).__name__ for n in unet_names} == {
        "lora_unet_" + p.replace(".", "_"): c for p, c in expected.items()
    }
    _check_kohya_outputs(tree, layers, unet_names)
    name = "encoder.layers.0.self_attn.q_proj"
    layer = dict(clip_trained.named_modules())[name]
    x = torch.randn(3, layer.base_layer.in_features)
    with torch.no_grad():
        assert not torch.allclose(layer(x), layer.base_layer(x), atol=1e-7)
        torch.testing.assert_close(clip.get_submodule(f"text_model.{name}")(x), layer(x), rtol=0, atol=1e-5)
    name = "encoder.block.0.layer.0.SelfAttention.o"
    layer = dict(t5_trained.named_modules())[name]
    x = torch.randn(3, layer.base_layer.in_features)
    with torch.no_grad():
        assert not torch.allclose(layer(x), layer.base_layer(x), atol=1e-7)
        torch.testing.assert_close(t5.get_submodule(name)(x), layer(x), rtol=0, atol=1e-5)

    tree = _kohya_tree(layers)  # create_network_from_weights: every module from the file's keys
    network, _ = lycoris_kohya.create_network_from_weights(1.0, None, None, [], tree, tensors)
    network.apply_to([], tree, apply_text_encoder=False, apply_unet=True)
    loaded = {m.lora_name: type(m).__name__ for m in network.unet_loras}
    assert loaded == {"lora_unet_" + p.replace(".", "_"): c for p, c in expected.items()}
    _check_kohya_outputs(tree, layers, set(loaded))


# SD3: the network's IA^3 on the attention projections; LoKr on the x blocks' q/k/v, LoHa on the context
# blocks' q/k/v, LoCon on the context modulations (the last block's rows swapped to kohya's (shift, scale))
SD3_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = [
    "joint_blocks.*.attn.qkv", "joint_blocks.*.attn.proj", "joint_blocks.*.context_block.adaLN_modulation.1"
]
text_encoder_target_module = []

[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "lokr"
dim = 4
alpha = 2
[name_algo_map."joint_blocks.*.context_block.adaLN_modulation.1"]
algo = "locon"
dim = 2
alpha = 1
[name_algo_map."joint_blocks.*.context_block.attn.qkv"]
algo = "loha"
dim = 2
alpha = 4
"""


def test_sd3_ia3_network_with_entries_trains_and_loads_back_in_lycoris(tmp_path, monkeypatch):
    """A tiny SD3 run of the IA^3 network with LoKr / LoHa / LoCon entries trains and exports kohya's MMDiT
    names: lycoris-lora's create_network from the file loads it strictly, every module of the class the file
    gives it (IA3Module on the projections) computing the trained layers' outputs; its
    create_network_from_weights (which cannot build IA3Module: TypeError) rebuilds the entries' modules."""
    from dbspec.runtime.sd3_kohya import swapped
    from tests.unit.convert_kit import component_file, errors, images, kohya

    file = _file(tmp_path, SD3_FILE)
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l", "clip_g", "t5xxl"):
        component_file(tmp_path / f"{name}.safetensors")
    outcome = kohya(
        tmp_path,
        command="accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
        "stabilityai/stable-diffusion-3.5-large --clip_l clip_l.safetensors --clip_g clip_g.safetensors "
        "--t5xxl t5xxl.safetensors --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        '--network_dim=4 --network_alpha=1 --network_args "algo=ia3" "preset=mixed.toml" '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    base = ["model.base=builtin:tiny-sd3", *_BASE]
    plan, whole, tensors = _run(tmp_path, {"lokr", "loha", "lora"}, base, resume=False)
    assert plan.adapter.kind == "ia3"
    unet = whole.components.unet.eval()
    layers = _kohya_layers(unet, mmdit(2, ()), sd3_parts, swapped)
    assert layers["joint_blocks.1.context_block.adaLN_modulation.1"][1] is not None  # kohya's rows
    expected = {
        **{f"joint_blocks.{i}.x_block.attn.qkv": "LokrModule" for i in (0, 1)},
        **{f"joint_blocks.{i}.context_block.adaLN_modulation.1": "LoConModule" for i in (0, 1)},
        **{f"joint_blocks.{i}.context_block.attn.qkv": "LohaModule" for i in (0, 1)},
        **{f"joint_blocks.{i}.x_block.attn.proj": "IA3Module" for i in (0, 1)},
        "joint_blocks.0.context_block.attn.proj": "IA3Module",  # the last context block has none
    }
    check_sd3_network(monkeypatch, "ia3", file, layers, tensors, expected)


def test_flux_module_dropout_draws_as_lycoris_modules(tmp_path, monkeypatch):
    """The network's `module_dropout` on a full network with LoKr / LoHa / LoCon / IA^3 entries on Flux:
    every LyCORIS module (a fused Linear one) draws once per training forward as its class does,
    test_lycoris_mixed_flow_dropout.py's check (outputs and generator state against lycoris-lora's network
    from the same file, its tiny run resumed bit-exact there; an IA^3 network's own layers draw through the
    same add_own_module_dropout as its IA^3 entries here). Its run is not resumed: the kinds' weights and the
    module dropout's draws on fused layers resume in test_lycoris_mixed_flow_dropout.py's first case (full,
    IA^3, LoHa, LoCon), LoKr's in test_lycoris_mixed_flow_full.py."""
    algo = "full"
    from tests.runtime.test_lycoris_mixed_flow_dropout import RATE, _converted, _draws_as_lycoris
    from tests.runtime.test_lycoris_mixed_flow_full import FLUX_FILE as PLACED

    file = tmp_path / "mixed.toml"
    text = PLACED.replace("OTHER", "locon").replace("QKV", "lokr").replace("LINEAR1", "loha")
    file.write_text(text, encoding="utf-8")
    base = ["model.base=builtin:tiny-flux", *_BASE, "schedule.steps=4"]  # every module trained in some step
    plan = _converted(tmp_path, file.name, algo, base)
    assert (plan.adapter.kind, plan.adapter.module_dropout) == (algo, RATE) and plan.adapter.fused
    kinds = {"lokr", "loha", "lora", "ia3", "full"} - {algo}
    theirs, fused = _draws_as_lycoris(tmp_path, monkeypatch, file, algo, kinds, base, resume=False)
    assert {type(m).__name__ for m in theirs.values()} == {
        "FullModule",
        "IA3Module",
        "LokrModule",
        "LohaModule",
        "LoConModule",
    }
    assert fused == 3  # img qkv, txt qkv, linear1


def test_flux_dylora_entry_beside_a_full_network(tmp_path, monkeypatch):
    """A DyLoRA entry (txt_in) beside a full network's LoKr entry on Flux: lycoris-lora's create_network from
    the file builds a DyLoraModule there at the entry's dim and scale (its weights are not its state's keys:
    DyLoraModule saves and loads LoRA's lora_down / lora_up, which it never reads back), and
    create_network_from_weights rebuilds the export's LoCon module computing the plan's DyLoRA layer (every
    block, eval), the other modules theirs."""
    from dbspec.runtime.lycoris_export import lycoris_state
    from tests.unit.convert_kit import flux_lycoris, plan_of

    text = FLUX_FILE.split('[name_algo_map."single_blocks')[0].replace('["CLIPAttention"]', "[]")
    file = _file(tmp_path, text + '[name_algo_map.txt_in]\nalgo = "dylora"\ndim = 4\nalpha = 2\n')
    outcome = flux_lycoris(tmp_path, f'"algo=full" "preset={file.name}"')
    plan = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-flux", *_BASE])
    a = plan.adapter
    assert {(b.kind, b.rank, b.alpha) for b in a.blocks} == {("lokr", 4, 2.0), ("dylora", 4, 2.0)}
    unet = moved_components(plan).unet.eval()
    tensors = lycoris_state(unet=unet, text_encoders=[], family="flux", dtype="fp32")
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, [], _kohya_tree(layers), algo="full", preset=str(file)
    )
    theirs = {m.lora_name: m for m in made.unet_loras}
    dylora = theirs["lora_unet_txt_in"]
    assert (type(dylora).__name__, dylora.lora_dim, float(dylora.scale)) == ("DyLoraModule", 4, 0.5)
    assert type(theirs["lora_unet_double_blocks_0_img_attn_qkv"]).__name__ == "LokrModule"
    assert {type(m).__name__ for n, m in theirs.items() if "proj" in n} == {"FullModule"}
    tree = _kohya_tree(layers)
    loaded, _ = lycoris_kohya.create_network_from_weights(1.0, None, None, [], tree, tensors)
    loaded.apply_to([], tree, apply_text_encoder=False, apply_unet=True)
    classes = {m.lora_name: type(m).__name__ for m in loaded.unet_loras}
    assert classes["lora_unet_txt_in"] == "LoConModule" and set(classes) == set(theirs)
    _check_kohya_outputs(tree, layers, set(classes))


def test_chroma_ia3_network_with_entries_trains_and_loads_back_in_lycoris(tmp_path, monkeypatch):
    """A tiny Chroma run of an IA^3 network whose file gives LoKr (image q/k/v), LoHa (linear1 and the text
    q/k/v) and full (txt_in) entries (test_lycoris_mixed_chroma_full.py's file): its export loads strictly
    into lycoris-lora's create_network from the file on kohya's Chroma layers, each module of the file's
    class computing the trained layers' outputs, and its adapter folders load back as `dbspec sample` loads
    them."""
    from dbspec.convert.kohya.chroma_rows import chroma_model, chroma_parts
    from tests.runtime.test_lycoris_mixed_chroma_full import CHROMA_FILE
    from tests.unit.convert_kit import component_file, errors, images, kohya

    file = _file(tmp_path, CHROMA_FILE.replace("QKV", "lokr").replace("LINEAR1", "loha"))
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("Chroma1-HD.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(
        tmp_path,
        command="accelerate launch flux_train_network.py --pretrained_model_name_or_path "
        "Chroma1-HD.safetensors --model_type chroma --t5xxl t5xxl.safetensors --ae ae.safetensors "
        "--apply_t5_attn_mask --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        f'--network_dim=4 --network_alpha=1 --network_args "algo=ia3" "preset={file.name}" '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out "
        "--timestep_sampling sigmoid --model_prediction_type raw --guidance_scale 0.0",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    base = ["model.base=builtin:tiny-chroma", 'model.denoiser_file=""', *_BASE]
    planned, whole, tensors = _run(tmp_path, {"lokr", "loha", "full"}, base, resume=False)
    assert planned.model.family == "chroma" and planned.adapter.kind == "ia3"
    unet = whole.components.unet.eval()
    depth = len(unet.distilled_guidance_layer.layers)
    layers = _kohya_layers(unet, chroma_model(1, 1, depth), chroma_parts)
    expected = {
        "double_blocks.0.img_attn.qkv": "LokrModule",
        "txt_in": "FullModule",
        "single_blocks.0.linear1": "LohaModule",
        "distilled_guidance_layer.in_proj": "IA3Module",
        "double_blocks.0.txt_attn.qkv": "LohaModule",
        "double_blocks.0.img_attn.proj": "IA3Module",
        "double_blocks.0.txt_attn.proj": "IA3Module",
        "single_blocks.0.linear2": "IA3Module",
    }
    check_chroma_export(monkeypatch, "ia3", file, planned, whole, layers, tensors, expected)
