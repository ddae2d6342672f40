"""Preset-file entries' own module options on networks of another algorithm on tiny SD 1.x (issue 12; was
DBS403): on a DyLoRA and a GLoRA network a LoKr entry's own `factor`, `decompose_both`, `full_matrix`,
`unbalanced_factorization` and `rs_lora` and a LoCon / LoKr entry's own `use_scalar` (their blocks' fields,
spec DyloraBlock / GloraBlock, each kind built alone: runtime/mixed_kinds.py kind_adapter), and on a full
network a Diag-OFT / BOFT entry's own `constraint` and `rescaled` (spec ScaleBlock's alpha and `rescaled`);
on a DyLoRA and a GLoRA network a LoCon / LoHa / LoKr entry's own `use_tucker` and a Diag-OFT / BOFT entry's
own `rescaled` (their blocks' `tucker`, `rescaled`).
Checked against lycoris-lora 4.1.3's create_network from the same preset: every layer's class, dim, scale,
LoKr factor shapes, which layers train a scalar or a row rescale; the plan's layers (adapter weights
randomised, no training) export a file that lycoris-lora's network loads (strictly but DyLoRA's keys, which
DyLoraModule never loads), each entry layer then computing our layer's output on a fixed input. One tiny run
(the GLoRA network) trains and its export loads strictly into that network with the trained outputs."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.adapters import add_lora
from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_algo_maps import _converted_plan
from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_mixed_full import _classes, _lycoris_classes
from tests.runtime.test_lycoris_tlora_oft_dylora import _layers as _oft_dylora_layers
from tests.runtime.test_lycoris_tlora_oft_dylora import _modules as _oft_dylora_modules
from tests.runtime.test_lycoris_whole_main_own_opts import (
    OWN,
    _lokr_shapes,
    _same_outputs,
    _scaled,
    _their_lokr_shapes,
)

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# the transformers' feed-forwards a Diag-OFT with its own constraint and rescaled, their blocks' other layers
# (the attention) a BOFT rescaled, CLIP's MLPs a BOFT at its own dim 8 rescaled; the rest the network's
# FullModule
FULL_OFT = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]

[module_algo_map.FeedForward]
algo = "diag-oft"
dim = 4
constraint = 0.0001
rescaled = true
[module_algo_map.BasicTransformerBlock]
algo = "boft"
dim = 4
rescaled = true
[module_algo_map.CLIPMLP]
algo = "boft"
dim = 8
rescaled = true
"""

ARGS = {"dylora": {"block_size": "2"}, "glora": {}, "full": {}}


def _network(pipe, path: Path, monkeypatch, algo: str, args: dict | None = None):  # noqa: F811
    """lycoris-lora's create_network from the preset on copies of the tiny SD 1.x's U-Net and CLIP, with the
    network's `args` (else ARGS's): (network, its CLIP holder, its U-Net)."""
    kept_lycoris_presets(monkeypatch)
    named, unet = nn.Module(), copy.deepcopy(pipe.unet)
    named.text_model = copy.deepcopy(pipe.text_encoder)  # kohya's CLIP names its modules text_model.*
    made = lycoris_kohya.create_network(
        1.0,
        4,
        1.0,
        None,
        named,
        unet,
        algo=algo,
        conv_dim="4",
        preset=str(path),
        **(ARGS.get(algo, {}) if args is None else args),
    )
    return made, named, unet


def _built(pipe, a):  # noqa: F811
    """The plan's layers on copies of the U-Net and CLIP (adapters.add_lora, as the run builds them), their
    adapter weights randomised (seeded)."""
    unet, text = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    add_lora(unet, a, a.denoiser_targets, seed=0, conv=True)
    add_lora(text, a, a.text_encoder_targets, seed=0, component="text_encoder")
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for model in (unet, text):
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return unet.eval(), text.eval()


def _loaded(made, named, unet, tensors, strict: bool):
    """`tensors` (our export) loaded into lycoris-lora's applied network; the keys it does not take."""
    made.apply_to(named, unet, apply_text_encoder=True, apply_unet=True)
    result = made.load_state_dict(tensors, strict=strict)
    return {k.split(".")[0] for k in [*result.missing_keys, *result.unexpected_keys]}


@pytest.mark.parametrize("algo", ["dylora", "glora"])
def test_lokr_and_locon_entries_own_options_on_dylora_and_glora(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """Every layer's class, dim and scale (DyLoRA's in blocks of 2), the LoKr entries' own factor shapes
    (the MLPs' factor 4, the time embedding's low-rank small factor and swapped split, conv_out's two full
    factors at rs_lora's sqrt(4), CLIP's factor 2), the layers training a scalar (the entries' own
    use_scalar) as lycoris-lora's; the export loads into its network and each entry layer computes ours."""
    path, plan = _converted_plan(
        tmp_path, "own", algo, " ".join(f'"{k}={v}"' for k, v in ARGS[algo].items()), text=OWN
    )
    a = plan.adapter
    assert a.kind == algo
    assert {(b.kind, b.factor, b.scalar) for b in a.blocks if b.kind == "lokr"} >= {("lokr", 4, "on")}
    made, named, their_unet = _network(pipe, path, monkeypatch, algo)
    unet, text = _built(pipe, a)
    theirs = _lycoris_classes(made)
    own = {"dylora": "DyLoraModule", "glora": "GLoRAModule"}[algo]
    assert {v[0] for v in theirs.values()} == {own, "LokrModule", "LoConModule"}
    ours = {**_classes(unet, "lora_unet_"), **_classes(text, "lora_te_text_model_")}
    if algo == "dylora":  # _classes knows no DyLoRA layer: its dim and scale, the blocks of 2 below
        dylora = {**_oft_dylora_layers(unet, "lora_unet_"), **_oft_dylora_layers(text, "lora_te_text_model_")}
        ours.update({k: (v[0], v[1], round(v[3], 12)) for k, v in dylora.items()})
        assert (
            {v[2] for v in dylora.values()}
            == {2}
            == {m.block_size for m in made.unet_loras if type(m).__name__ == own}
        )
    assert ours == theirs
    assert theirs["lora_unet_conv_out"] == ("LokrModule", 4, 2.0)  # rs_lora on full factors: sqrt(dim)
    assert {
        **_lokr_shapes(unet, "lora_unet_"),
        **_lokr_shapes(text, "lora_te_text_model_"),
    } == _their_lokr_shapes(made)
    scaled = {
        m.lora_name
        for m in [*made.unet_loras, *made.text_encoder_loras]
        if isinstance(getattr(m, "scalar", None), nn.Parameter)
    }
    assert scaled and any(k.startswith("lora_te_") for k in scaled)
    assert {*_scaled(unet, "lora_unet_"), *_scaled(text, "lora_te_text_model_")} == scaled

    tensors = lycoris_state(unet=unet, text_encoders=[text], family=plan.model.family, dtype="fp32")
    skipped = _loaded(made, named, their_unet, tensors, strict=algo != "dylora")
    assert skipped == {k for k, v in theirs.items() if v[0] == "DyLoraModule"}  # DyLoraModule loads none
    full = [m for m in made.unet_loras if type(m).__name__ == "LokrModule" and m.use_w1 and m.use_w2]
    assert [m.lora_name for m in full] == ["lora_unet_conv_out"]
    full[0].scale = 1.0  # the file loaders' scale: the export holds rs_lora's sqrt(dim) in lokr_w1
    g = torch.Generator().manual_seed(3)
    checked = _same_outputs(made.unet_loras, their_unet, unet, g)
    assert {"lora_unet_conv_out", "lora_unet_time_embedding_linear_1"} <= checked and len(checked) > 20
    texts = _same_outputs(made.text_encoder_loras, named.text_model, text, g)
    assert len(texts) == 6 and all("mlp" in name for name in texts)


def test_oft_entries_own_constraint_and_rescaled_on_a_full_network(pipe, tmp_path, monkeypatch):  # noqa: F811
    """Diag-OFT / BOFT entries' own constraint and rescaled on a full network: every OFT layer's blocks,
    alpha, constraint and row rescale as lycoris-lora's modules (the FullModules' classes alike); the export
    loads strictly into its network and each OFT layer computes ours (its rescale included)."""
    path, plan = _converted_plan(tmp_path, "oft", "full", text=FULL_OFT)
    a = plan.adapter
    assert {(b.kind, b.alpha, b.rescaled) for b in a.blocks} == {
        ("diag-oft", 1e-4, "on"),
        ("boft", 0.0, "on"),
    }
    assert [(b.kind, b.rescaled) for b in a.text_encoder_blocks] == [("boft", "on")]
    made, named, their_unet = _network(pipe, path, monkeypatch, "full")
    unet, text = _built(pipe, a)
    kept = [m for m in [*made.unet_loras, *made.text_encoder_loras] if type(m).__name__ != "FullModule"]
    oft = _oft_dylora_modules(SimpleNamespace(unet_loras=kept, text_encoder_loras=[]))
    ours = {**_oft_dylora_layers(unet, "lora_unet_"), **_oft_dylora_layers(text, "lora_te_text_model_")}
    assert {v[0] for v in oft.values()} == {"DiagOFTModule", "ButterflyOFTModule"}
    assert all(v[4] for v in oft.values())  # every one rescaled
    assert min(v[3] for v in oft.values() if v[0] == "DiagOFTModule") > 0.0  # constraint x out_dim
    assert ours == oft
    full = {m.lora_name for m in [*made.unet_loras, *made.text_encoder_loras] if m not in kept}
    assert full and full == {k for k, v in _classes(unet, "lora_unet_").items() if v[0] == "FullModule"} | {
        k for k, v in _classes(text, "lora_te_text_model_").items() if v[0] == "FullModule"
    }

    tensors = lycoris_state(unet=unet, text_encoders=[text], family=plan.model.family, dtype="fp32")
    assert _loaded(made, named, their_unet, tensors, strict=True) == set()
    modules = {**dict(unet.named_modules()), **{f"te.{k}": v for k, v in text.named_modules()}}
    paths = {id(m): p for p, m in their_unet.named_modules()}
    paths.update({id(m): f"te.{p}" for p, m in named.text_model.named_modules()})
    g = torch.Generator().manual_seed(3)
    checked = 0
    for m in [*made.unet_loras, *made.text_encoder_loras]:
        if type(m).__name__ == "FullModule":
            continue
        layer = modules[paths[id(m.org_module[0])]]
        base = layer.get_base_layer()
        x = torch.randn(2, base.in_features, generator=g)
        with torch.no_grad():
            assert not torch.allclose(layer(x), base(x), atol=1e-5)
            torch.testing.assert_close(m(x), layer(x), rtol=1e-4, atol=1e-5, msg=m.lora_name)
        checked += 1
    assert checked == len(oft)


@pytest.mark.parametrize("algo", ["dylora", "glora"])
def test_flux_entries_own_options_on_dylora_and_glora(tmp_path, monkeypatch, algo):
    """On kohya's tiny Flux Linears alike (the LoKr pass's fused path, runtime/fused_lokr.py, whichever the
    network's algorithm): test_lycoris_whole_main_own_opts' check of a full / IA^3 network's on a DyLoRA and
    a GLoRA network: the export loads strictly (on the DyLoRA network but the DyLoRA layers' keys, which
    DyLoraModule never loads: those layers left out of the output check), each module's class, the same
    modules training a scalar, each kohya layer computing the fused parts' output."""
    from tests.runtime import test_lycoris_mixed_flow_full as flow
    from tests.runtime.test_lycoris_whole_main_own_opts import (
        test_flux_entries_own_options_build_as_lycoris as check,
    )

    if algo == "dylora":
        outputs, dylora = flow._check_kohya_outputs, set()

        def loaded(monkeypatch, algo, file, text_encoders, tree, tensors, **args):
            made = lycoris_kohya.create_network(
                1.0, 4, 1.0, None, text_encoders, tree, algo=algo, preset=str(file), **args
            )
            made.apply_to(text_encoders, tree, apply_text_encoder=True, apply_unet=True)
            result = made.load_state_dict(tensors, strict=False)
            modules = {m.lora_name: m for m in [*made.unet_loras, *made.text_encoder_loras]}
            dylora.update(n for n, m in modules.items() if type(m).__name__ == "DyLoraModule")
            skipped = {k.split(".")[0] for k in [*result.missing_keys, *result.unexpected_keys]}
            assert dylora and skipped == dylora  # the others' keys all loaded
            return modules

        def compared(tree, layers, names):
            kept = {p: v for p, v in layers.items() if "lora_unet_" + p.replace(".", "_") not in dylora}
            assert len(kept) < len(layers)
            outputs(tree, kept, names - dylora)

        monkeypatch.setattr(flow, "_lycoris_network", loaded)
        monkeypatch.setattr(flow, "_check_kohya_outputs", compared)
        kept_lycoris_presets(monkeypatch)
    check(tmp_path, monkeypatch, algo)


def test_glora_network_entries_own_options_train_and_load_in_lycoris(pipe, tmp_path, monkeypatch):  # noqa: F811
    """The one tiny run: the GLoRA network with the LoKr / LoCon entries' own options trains; its kohya
    export loads strictly into lycoris-lora's create_network from the same preset (U-Net and CLIP), each
    entry layer then computing the trained layer's output, and the U-Net the trained U-Net's."""
    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import compile_spec
    from tests.runtime.test_lycoris import _unet_output
    from tests.unit.convert_kit import out_path

    path, plan = _converted_plan(tmp_path, "own", "glora", text=OWN)
    run = execute(
        compile_spec(out_path(tmp_path), ["model.base=builtin:tiny-sd1", "schedule.steps=2"]),
        keep_models=True,
    )
    assert run.status == "finished"
    trained, text = run.components.unet.eval(), run.components.text_encoders[0].eval()
    (export,) = Path(run.final).glob("*.kohya.safetensors")
    made, named, their_unet = _network(pipe, path, monkeypatch, "glora")
    assert _loaded(made, named, their_unet, load_file(str(export)), strict=True) == set()
    scalars = {m.lora_name: float(m.scalar) for m in made.unet_loras if isinstance(m.scalar, nn.Parameter)}
    assert scalars and any(v != 0.0 for v in scalars.values())  # the entries' own scalars trained
    full = [m for m in made.unet_loras if type(m).__name__ == "LokrModule" and m.use_w1 and m.use_w2]
    full[0].scale = 1.0  # the file loaders' scale: the export holds rs_lora's sqrt(dim) in lokr_w1
    g = torch.Generator().manual_seed(3)
    checked = _same_outputs(made.unet_loras, their_unet, trained, g)
    assert {"lora_unet_conv_out", "lora_unet_time_embedding_linear_1"} <= checked and len(checked) > 20
    assert len(_same_outputs(made.text_encoder_loras, named.text_model, text, g)) == 6
    output = _unet_output(trained)
    torch.testing.assert_close(_unet_output(their_unet), output, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_unet_output(pipe.unet), output, atol=1e-3)  # training moved it


# Flux: the double blocks' image q/k/v a Diag-OFT with its own constraint and rescaled, their text q/k/v a
# BOFT rescaled (dim 18: 9216 rows split as 18 x 2^9 on FLUX.1), CLIP-L's MLPs a BOFT rescaled; the rest
# the network's FullModule / IA3Module
FLUX_OFT = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = ["CLIPMLP"]
[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "diag-oft"
dim = 4
constraint = 0.001
rescaled = true
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "boft"
dim = 18
rescaled = true
[module_algo_map.CLIPMLP]
algo = "boft"
dim = 8
rescaled = true
"""


@pytest.mark.parametrize("algo", ["full", "ia3", "glora"])
def test_flux_oft_entries_own_rescaled_build_as_lycoris(tmp_path, monkeypatch, algo):
    """On kohya's tiny Flux Linears (the plan's model, adapter weights randomised, no training; a full, IA^3
    or GLoRA network, whose blocks carry the entries' own rescaled, DyLoRA's checked on Chroma's same fused
    Linears, test_lycoris_own_opts_sd3_chroma.py): the fused
    q/k/v's Diag-OFT / BOFT entries' own rescaled (each fused Linear one module, its parts their rows of the
    rescale) export what lycoris-lora 4.1.3's create_network from the same file loads strictly, every OFT
    module holding a `rescale`, each kohya layer computing the plan's fused parts' output."""
    from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.prepare import configure_models
    from tests.runtime.test_lycoris_mixed_flow_full import (
        _BASE,
        _check_kohya_outputs,
        _kohya_layers,
        _kohya_tree,
        _lycoris_network,
    )
    from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
    from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip
    from tests.unit.convert_kit import flux_lycoris, plan_of

    file = tmp_path / "oft.toml"
    file.write_text(FLUX_OFT, encoding="utf-8")
    plan = plan_of(
        flux_lycoris(tmp_path, f'"algo={algo}" "preset={file.name}"', ""),
        tmp_path,
        ["model.base=builtin:tiny-flux", *_BASE],
    )
    a = plan.adapter
    assert a.kind == algo and a.fused
    assert {(b.kind, b.alpha, b.rescaled) for b in a.blocks if b.kind != "adapter"} == {
        ("diag-oft", 0.001, "on"),
        ("boft", 0.0, "on"),
    }
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for model in (comps.unet, comps.text_encoders[0]):
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    unet = comps.unet.eval()
    tensors = lycoris_state(unet=unet, text_encoders=comps.text_encoders, family="flux", dtype="fp32")
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    tree = _kohya_tree(layers)
    clip = _kohya_clip(_unwrapped(comps.text_encoders[0]))
    theirs = _lycoris_network(monkeypatch, algo, file, [clip, nn.Module()], tree, tensors)
    oft = {n: m for n, m in theirs.items() if type(m).__name__ in ("DiagOFTModule", "ButterflyOFTModule")}
    assert {type(m).__name__ for n, m in oft.items() if n.startswith("lora_te1_")} == {"ButterflyOFTModule"}
    assert type(oft["lora_unet_double_blocks_0_img_attn_qkv"]).__name__ == "DiagOFTModule"
    assert type(oft["lora_unet_double_blocks_0_txt_attn_qkv"]).__name__ == "ButterflyOFTModule"
    assert all(isinstance(getattr(m, "rescale", None), nn.Parameter) for m in oft.values())
    _check_kohya_outputs(tree, layers, {n for n in theirs if n.startswith("lora_unet_")})


# the ResNets a LoCon, the downsamplers a LoHa, the upsamplers a LoKr, each with its own use_tucker (their 3x3
# convolutions in the Tucker form); the feed-forwards a Diag-OFT with its own constraint and rescaled, CLIP's
# MLPs a BOFT rescaled; the rest the network's DyLoRA / GLoRA
TUCKER_OFT = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]

[module_algo_map.ResnetBlock2D]
algo = "locon"
dim = 4
alpha = 2
use_tucker = true
[module_algo_map.Downsample2D]
algo = "loha"
dim = 2
use_tucker = true
[module_algo_map.Upsample2D]
algo = "lokr"
dim = 2
use_tucker = true
[module_algo_map.FeedForward]
algo = "diag-oft"
dim = 4
constraint = 0.0001
rescaled = true
[module_algo_map.CLIPMLP]
algo = "boft"
dim = 8
rescaled = true
"""

_TUCKER = {"LoConModule": "lora_mid", "LohaModule": "hada_t1", "LokrModule": "lokr_t2"}


@pytest.mark.parametrize("algo", ["dylora", "glora"])
def test_entries_own_tucker_and_oft_rescaled_on_dylora_and_glora(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """A LoCon / LoHa / LoKr entry's own use_tucker and a Diag-OFT / BOFT entry's own rescaled on a DyLoRA and
    a GLoRA network (was DBS403: spec DyloraBlock / GloraBlock `tucker`, `rescaled`): the same 3x3
    convolutions in the Tucker form (LoCon's lora_mid, LoHa's hada_t1 / hada_t2, LoKr's lokr_t2), every
    OFT layer's blocks, constraint and rescale as lycoris-lora 4.1.3's create_network from the same preset;
    the export loads into its network (strictly but DyLoRA's keys, which DyLoraModule never loads) and each
    module but DyLoRA's computes our layer's output on a fixed input."""
    path, plan = _converted_plan(
        tmp_path, "tucker", algo, " ".join(f'"{k}={v}"' for k, v in ARGS[algo].items()), text=TUCKER_OFT
    )
    a = plan.adapter
    assert {(b.kind, b.tucker) for b in a.blocks if b.kind in ("lora", "loha", "lokr")} == {
        ("lora", "on"),
        ("loha", "on"),
        ("lokr", "on"),
    }
    assert {(b.kind, b.alpha, b.rescaled) for b in a.blocks if b.kind == "diag-oft"} == {
        ("diag-oft", 1e-4, "on")
    }
    assert [(b.kind, b.rescaled) for b in a.text_encoder_blocks] == [("boft", "on")]
    made, named, their_unet = _network(pipe, path, monkeypatch, algo)
    unet, text = _built(pipe, a)
    loras = [*made.unet_loras, *made.text_encoder_loras]
    tucker, ours = tucker_names(loras, unet, text)
    assert {type(m).__name__ for m in loras if m.lora_name in tucker} == set(_TUCKER)
    assert ours == tucker
    kept = [m for m in loras if type(m).__name__ in ("DiagOFTModule", "ButterflyOFTModule")]
    oft = _oft_dylora_modules(SimpleNamespace(unet_loras=kept, text_encoder_loras=[]))
    assert {v[0] for v in oft.values()} == {"DiagOFTModule", "ButterflyOFTModule"} and all(
        v[4] for v in oft.values()
    )
    layers = {**_oft_dylora_layers(unet, "lora_unet_"), **_oft_dylora_layers(text, "lora_te_text_model_")}
    assert {k: v for k, v in layers.items() if k in oft} == oft

    tensors = lycoris_state(unet=unet, text_encoders=[text], family=plan.model.family, dtype="fp32")
    skipped = _loaded(made, named, their_unet, tensors, strict=algo != "dylora")
    assert skipped == {m.lora_name for m in loras if type(m).__name__ == "DyLoraModule"}
    g = torch.Generator().manual_seed(3)
    checked = set()
    for m, layer, base, x in paired_layers(loras, unet, text, their_unet, named, g):
        with torch.no_grad():
            assert not torch.allclose(layer(x), base(x), atol=1e-5), m.lora_name
            torch.testing.assert_close(m(x), layer(x), rtol=1e-4, atol=1e-5, msg=m.lora_name)
        checked.add(m.lora_name)
    assert tucker <= checked and set(oft) <= checked


def tucker_names(loras, unet, text) -> tuple[set[str], set[str]]:
    """The kohya names of LyCORIS's modules holding a Tucker core, and of our layers training one."""
    theirs = {
        m.lora_name
        for m in loras
        if any(k.split(".")[0] == _TUCKER.get(type(m).__name__) for k in m.state_dict())
    }
    ours = {
        prefix + name.replace(".", "_")
        for prefix, model in (("lora_unet_", unet), ("lora_te_text_model_", text))
        for name, layer in model.named_modules()
        if _has_tucker(layer)
    }
    return theirs, ours


def paired_layers(loras, unet, text, their_unet, named, g: torch.Generator):
    """Each LyCORIS module but DyLoRA's (their U-Net `their_unet`, CLIP `named`) with our layer on the same
    base, its base layer and an input drawn from `g` (a convolution's 1 x C x 8 x 8, a Linear's 2 x in)."""
    modules = {**dict(unet.named_modules()), **{f"te.{k}": v for k, v in text.named_modules()}}
    paths = {id(m): p for p, m in their_unet.named_modules()}
    paths.update({id(m): f"te.{p}" for p, m in named.text_model.named_modules()})
    for m in loras:
        if type(m).__name__ == "DyLoraModule":
            continue
        layer = modules[paths[id(m.org_module[0])]]
        base = layer.get_base_layer()
        if isinstance(base, nn.Conv2d):
            x = torch.randn(1, base.in_channels, 8, 8, generator=g)
        else:
            x = torch.randn(2, base.in_features, generator=g)
        yield m, layer, base, x


def _has_tucker(layer: nn.Module) -> bool:
    """Our layer trains a Tucker core (LoCon's lora_mid, LoHa's hada_t1, LoKr's lokr_t2)."""
    for key in ("lora_mid", "hada_t1", "lokr_t2"):
        found = getattr(layer, key, None)
        if isinstance(found, nn.ParameterDict | nn.ModuleDict) and "default" in found:
            return True
    return False
