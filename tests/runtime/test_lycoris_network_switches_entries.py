"""A network's `use_scalar`, `use_tucker` and `full_matrix` beside its preset file's entries of other
algorithms (issue 12; were DBS403, a spec's DBS578): create_single_module hands them to every module;
LoConModule, LohaModule and LokrModule read use_scalar and use_tucker (GLoRAModule use_scalar), LokrModule
full_matrix, the others neither, and an entry's own value replaces the network's. dbspec's adapter `scalar` /
`tucker` are every LoRA / LoHa / LoKr layer's in a run of several kinds (a block's own replacing them:
runtime/mixed_kinds.py kind_adapter settles each kind's blocks), a full / IA^3 / DyLoRA / T-LoRA network's
entries' blocks carry its use_scalar (GLoRA blocks' too), a LoKr entry's block its full_matrix. Checked
against lycoris-lora 4.1.3's create_network from the same file on tiny SD 1.x: every module's class, dim and
scale, which modules train a scalar (GLoRA's too), Tucker cores, LoKr factor shapes; the plan's layers
(weights randomised) export a file that loads strictly into LyCORIS's network, each module but DyLoRA's then
computing our layer's output; one tiny run of the LoCon network's case resumes bit-exact. On kohya's tiny
Flux Linears the same for use_scalar and full_matrix (test_lycoris_flow_mixed_rs_lora_boft's _alike)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import _converted_plan
from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_mixed_full import _classes, _lycoris_classes
from tests.runtime.test_lycoris_mixed_rs_lora import _same_outputs
from tests.runtime.test_lycoris_own_opts_networks import _built, _loaded, _network
from tests.runtime.test_lycoris_whole_main_own_opts import _lokr_shapes, _scaled, _their_lokr_shapes

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# the network's own: the transformers' attention and CLIP's attention; entries: LoHa on the ResNets (their
# 3x3 convolutions take the Tucker form), LoKr on the feed-forwards and CLIP's MLPs, a LoHa entry turning
# the network's scalar and Tucker form off on the down-samplers' 3x3 convolutions, full on conv_in, and
# (where `{glora}`) GLoRA on the time embedding
SWITCHES = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D"]
unet_target_name = ["conv_in", "time_embedding.linear_1"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []

[module_algo_map.ResnetBlock2D]
algo = "loha"
[module_algo_map.FeedForward]
algo = "lokr"
dim = 2
[module_algo_map.Downsample2D]
algo = "loha"
use_scalar = false
use_tucker = false
[name_algo_map.conv_in]
algo = "full"
[module_algo_map.CLIPMLP]
algo = "lokr"
dim = 2
{glora}"""
GLORA = '[name_algo_map."time_embedding.linear_1"]\nalgo = "glora"\n'

# id: (network algo, its network_args, whether the file has the GLoRA entry)
CASES = {
    "locon_scalar_tucker": ("locon", {"use_scalar": "True", "use_tucker": "True"}, True),
    "loha_scalar_tucker": ("loha", {"use_scalar": "True", "use_tucker": "True"}, True),
    "lokr_full_matrix_scalar_tucker": (
        "lokr",
        {"full_matrix": "True", "use_scalar": "True", "use_tucker": "True"},
        True,
    ),
    "full_scalar_full_matrix": ("full", {"use_scalar": "True", "full_matrix": "True"}, True),
    # a Diag-OFT network's entries: a LoHa adapter whose own layers are Diag-OFT blocks (oft_entries._HOSTS)
    "diag_oft_scalar_tucker_full_matrix": (
        "diag-oft",
        {"use_scalar": "True", "use_tucker": "True", "full_matrix": "True"},
        True,
    ),
}


def _glora_scaled(model: nn.Module, prefix: str = "lora_unet_") -> set[str]:
    """The kohya names of the model's GLoRA layers training a scalar (runtime/lycoris_glora.py)."""
    from dbspec.runtime.lycoris_glora import GloraLayer

    return {
        prefix + n.replace(".", "_")
        for n, m in model.named_modules()
        if isinstance(m, GloraLayer) and "default" in m.lora_glora_scalar
    }


def _tucker(made) -> set[str]:
    """LyCORIS's modules built in their Tucker form."""
    return {m.lora_name for m in [*made.unet_loras, *made.text_encoder_loras] if getattr(m, "tucker", False)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_network_switches_reach_other_algorithms_entries_as_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    algo, args, glora = CASES[case]
    given = " ".join(f'"{k}={v}"' for k, v in args.items())
    text = SWITCHES.format(glora=GLORA if glora else "")
    path, plan = _converted_plan(tmp_path, "switches", algo, given, text=text)
    a = plan.adapter
    assert a.kind == {"locon": "lora", "diag-oft": "loha"}.get(algo, algo)
    assert len({b.kind for b in a.blocks} - {a.kind}) >= 2
    made, named, their_unet = _network(pipe, path, monkeypatch, algo, args)
    unet, text_encoder = _built(pipe, a)
    theirs = _lycoris_classes(made)
    assert {v[0] for v in theirs.values()} >= {"LohaModule", "LokrModule", "FullModule"}
    assert {**_classes(unet, "lora_unet_"), **_classes(text_encoder, "lora_te_text_model_")} == theirs
    scaled = {
        m.lora_name
        for m in [*made.unet_loras, *made.text_encoder_loras]
        if isinstance(getattr(m, "scalar", None), nn.Parameter) and type(m).__name__ != "GLoRAModule"
    }
    # every LoCon / LoHa / LoKr module but the down-samplers' (their entry's own use_scalar = false)
    assert scaled and not any("downsamplers" in k for k in scaled)
    assert {*_scaled(unet, "lora_unet_"), *_scaled(text_encoder, "lora_te_text_model_")} == scaled
    # the GLoRA entry's: GLoRAModule reads the network's use_scalar too (on a full network its block's)
    glora_scaled = {
        m.lora_name
        for m in made.unet_loras
        if type(m).__name__ == "GLoRAModule" and isinstance(m.scalar, nn.Parameter)
    }
    assert glora_scaled == ({"lora_unet_time_embedding_linear_1"} if glora else set())
    assert _glora_scaled(unet) == glora_scaled
    if "use_tucker" in args:  # the ResNets' 3x3 convolutions (LoHa), not the down-samplers'
        tucker = _tucker(made)
        assert tucker and all("resnets" in k for k in tucker)
    assert {
        **_lokr_shapes(unet, "lora_unet_"),
        **_lokr_shapes(text_encoder, "lora_te_text_model_"),
    } == _their_lokr_shapes(made)
    if "full_matrix" in args:  # every LoKr module's both factors full
        lokr = [m for m in [*made.unet_loras, *made.text_encoder_loras] if type(m).__name__ == "LokrModule"]
        assert lokr and all(m.use_w1 and m.use_w2 for m in lokr)

    tensors = lycoris_state(unet=unet, text_encoders=[text_encoder], family=plan.model.family, dtype="fp32")
    assert _loaded(made, named, their_unet, tensors, strict=True) == set()
    checked = _same_outputs(made, named, their_unet, unet, text_encoder)
    assert len(checked) > 20 and any(k.startswith("lora_te_") for k in checked)


def test_locon_network_switches_beside_entries_train_and_resume(tmp_path):
    """The LoCon network's use_scalar and use_tucker beside LoHa / LoKr / full / GLoRA entries train 2 steps
    (the scalars move off 0); stopped after one and resumed, the losses and files are bit-identical."""
    from pathlib import Path

    from safetensors.torch import load_file

    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import compile_spec
    from tests.unit.convert_kit import out_path

    algo, args, _ = CASES["locon_scalar_tucker"]
    given = " ".join(f'"{k}={v}"' for k, v in args.items())
    _converted_plan(tmp_path, "switches", algo, given, text=SWITCHES.format(glora=GLORA))
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2", "optimizer.lr=1e-2"]
    whole = execute(compile_spec(out_path(tmp_path), [*base, "output.dir=whole"]), keep_models=True)
    scalars = [p for n, p in whole.components.unet.named_parameters() if "scalar" in n]
    assert scalars and all(float(p) != 0.0 for p in scalars)
    split = compile_spec(out_path(tmp_path), [*base, "output.dir=parts"])
    first = execute(split, stop_after=1)
    resumed = execute(split, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    files = sorted(str(p.relative_to(whole.final)) for p in Path(whole.final).rglob("*.safetensors"))
    assert {"unet/loha/adapter_model.safetensors", "unet/lokr/adapter_model.safetensors"} <= set(files)
    for name in files:
        x, y = load_file(str(Path(whole.final) / name)), load_file(str(Path(resumed.final) / name))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


# id: (network algo, its network_args, the single blocks' linear1 entry's algo)
FLUX_CASES = {
    "lokr_scalar_full_matrix": ("lokr", {"use_scalar": "True", "full_matrix": "True"}, "loha"),
    "locon_scalar_full_matrix": ("locon", {"use_scalar": "True", "full_matrix": "True"}, "lokr"),
    "full_scalar_full_matrix": ("full", {"use_scalar": "True", "full_matrix": "True"}, "lokr"),
    # a T-LoRA network's: its entries' blocks' (spec TloraBlock), the LoKr one's at the network's factor
    "tlora_scalar_factor": ("tlora", {"use_scalar": "True", "factor": "4"}, "lokr"),
}


def _tlora(model: nn.Module) -> set[str]:
    """The T-LoRA layers' names as _classes gives them (a LoRA layer of its own kind, which has no scalar)."""
    from dbspec.runtime.lycoris_tlora import TloraLayer

    return {n.replace(".", "_") for n, m in model.named_modules() if isinstance(m, TloraLayer)}


@pytest.mark.parametrize("case", sorted(FLUX_CASES))
def test_flux_network_switches_reach_fused_entries_as_lycoris(tmp_path, monkeypatch, case):
    """On Flux's fused Linears (LoCon entries on the double blocks' q/k/v and CLIP's attention, a LoHa /
    LoKr entry on the single blocks' linear1), with module_dropout: each kohya module (one per fused Linear)
    trains a scalar where LyCORIS's does and has both LoKr factors full, its outputs, input gradients and
    generator state those of the plan's parts (test_lycoris_flow_mixed_rs_lora_boft's _alike)."""
    from tests.runtime.test_lycoris_flow_mixed_rs_lora_boft import BOFT_FILE, _alike

    algo, args, linear1 = FLUX_CASES[case]
    text = BOFT_FILE.replace('algo = "loha"', f'algo = "{linear1}"')
    ours: list = []
    args = {**args, "module_dropout": "0.3"}
    _, made, _ = _alike(tmp_path, monkeypatch, algo, text, args, grads=False, keep=ours)
    kinds = {type(m).__name__ for m in made.values()}
    assert {"LoConModule", {"loha": "LohaModule", "lokr": "LokrModule"}[linear1]} <= kinds
    readers = ("LoConModule", "LohaModule", "LokrModule")
    scaled = {k for k, m in made.items() if isinstance(getattr(m, "scalar", None), nn.Parameter)}
    assert scaled == {k for k, m in made.items() if type(m).__name__ in readers}
    # ours: every LoRA / LoHa / LoKr part of those fused Linears, and CLIP's LoCon layers
    built = [{k for k, v in _classes(model, "").items() if v[0] in readers} - _tlora(model) for model in ours]
    assert all(built[:2]) and [_scaled(model, "") for model in ours] == built  # the T5: none
    lokr = [m for m in made.values() if type(m).__name__ == "LokrModule"]
    assert lokr and all(m.use_w1 and m.use_w2 for m in lokr) == ("full_matrix" in args)


def test_glora_entry_own_scalar_beside_a_locon_network_is_lycoris(pipe, tmp_path, monkeypatch):  # noqa: F811
    """A GLoRA entry's own use_scalar on a LoCon network without one (was DBS403): its block's `scalar`, the
    GLoRA layer training a scalar as lycoris-lora's GLoRAModule, no LoCon / LoHa / LoKr layer one; the export
    loads strictly, each module computing ours."""
    text = SWITCHES.format(glora=GLORA + "use_scalar = true\n")
    path, plan = _converted_plan(tmp_path, "switches", "locon", "", text=text)
    a = plan.adapter
    assert not a.scalar and [b.scalar for b in a.blocks if b.kind == "glora"] == ["on"]
    made, named, their_unet = _network(pipe, path, monkeypatch, "locon", {})
    unet, text_encoder = _built(pipe, a)
    theirs = {
        m.lora_name
        for m in made.unet_loras
        if type(m).__name__ == "GLoRAModule" and isinstance(m.scalar, nn.Parameter)
    }
    assert theirs == {"lora_unet_time_embedding_linear_1"} == _glora_scaled(unet)
    assert not _scaled(unet, "lora_unet_") and not _scaled(text_encoder, "lora_te_text_model_")
    tensors = lycoris_state(unet=unet, text_encoders=[text_encoder], family=plan.model.family, dtype="fp32")
    assert _loaded(made, named, their_unet, tensors, strict=True) == set()
    assert "lora_unet_time_embedding_linear_1" in _same_outputs(made, named, their_unet, unet, text_encoder)


# id: (network algo, its network_args, the time embedding's GLoRA entry's own use_scalar, CLIP MLP's)
GLORA_OWN = {
    # a GLoRA network's own layers without a scalar, its GLoRA entries' with one of their own, and the
    # reverse (was DBS403: one scalar per GLoRA adapter)
    "glora_entries_on": ("glora", {}, "true", "true"),
    "glora_scalar_entries_off": ("glora", {"use_scalar": "True"}, "false", ""),
    # two GLoRA entries settling it differently beside a LoCon network (was DBS403, a spec's DBS578)
    "locon_entries_differ": ("locon", {}, "true", ""),
}


@pytest.mark.parametrize("case", sorted(GLORA_OWN))
def test_glora_layers_take_their_entrys_own_scalar_as_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    """GLoRA entries' own use_scalar beside GLoRA layers of another setting (a GLoRA network's own, or
    another GLoRA entry's): each GLoRA layer its block's `scalar` (runtime/lycoris_glora.py per layer), the
    layers training a scalar exactly lycoris-lora's GLoRAModules with one; the export loads strictly, each
    module computing ours."""
    algo, args, time_own, clip_own = GLORA_OWN[case]
    given = " ".join(f'"{k}={v}"' for k, v in args.items())
    own = f"use_scalar = {time_own}\n"
    second = '[name_algo_map."time_embedding.linear_2"]\nalgo = "glora"\n'
    text = SWITCHES.format(glora=GLORA + own + second).replace(
        '"time_embedding.linear_1"]', '"time_embedding.linear_1", "time_embedding.linear_2"]', 1
    )
    if clip_own:  # CLIP's MLPs GLoRA entries of their own use_scalar
        text = text.replace('[module_algo_map.CLIPMLP]\nalgo = "lokr"\ndim = 2\n', "")
        text += f'[module_algo_map.CLIPMLP]\nalgo = "glora"\nuse_scalar = {clip_own}\n'
    path, plan = _converted_plan(tmp_path, "switches", algo, given, text=text)
    a = plan.adapter
    made, named, their_unet = _network(pipe, path, monkeypatch, algo, args)
    unet, text_encoder = _built(pipe, a)
    theirs = {
        m.lora_name
        for m in [*made.unet_loras, *made.text_encoder_loras]
        if type(m).__name__ == "GLoRAModule" and isinstance(m.scalar, nn.Parameter)
    }
    glora = {
        m.lora_name for m in [*made.unet_loras, *made.text_encoder_loras] if type(m).__name__ == "GLoRAModule"
    }
    assert theirs and glora - theirs  # both settings
    assert theirs == _glora_scaled(unet) | _glora_scaled(text_encoder, "lora_te_text_model_")
    tensors = lycoris_state(unet=unet, text_encoders=[text_encoder], family=plan.model.family, dtype="fp32")
    assert _loaded(made, named, their_unet, tensors, strict=True) == set()
    assert glora <= _same_outputs(made, named, their_unet, unet, text_encoder)


def test_glora_entries_own_scalar_train_resume_and_reload(tmp_path):
    """A GLoRA network whose GLoRA entries train a scalar of their own (GLORA_OWN's first case) trains 2
    steps (those scalars move off 0, the network's own layers have none); stopped after one and resumed, the
    losses and files are bit-identical; `dbspec sample`'s reload of the adapter folders (runtime/weights.py:
    each layer's scalar as its saved state holds one) gives the trained U-Net's output."""
    from dbspec.runtime.execute import execute
    from dbspec.runtime.lycoris_glora import GloraLayer
    from tests.runtime.runspec import compile_spec
    from tests.runtime.shared import reloads_as_trained, resumes_bit_exact
    from tests.unit.convert_kit import out_path

    text = SWITCHES.format(glora=GLORA + "use_scalar = true\n")
    _converted_plan(tmp_path, "switches", "glora", "", text=text)
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2", "optimizer.lr=1e-2"]
    plan = compile_spec(out_path(tmp_path), [*base, "output.dir=whole"])
    whole = execute(plan, keep_models=True)
    layers = {n: m for n, m in whole.components.unet.named_modules() if isinstance(m, GloraLayer)}
    scaled = {n for n, m in layers.items() if "default" in m.lora_glora_scalar}
    assert scaled == {"time_embedding.linear_1"} and len(layers) > 1
    assert float(layers["time_embedding.linear_1"].lora_glora_scalar["default"]) != 0.0
    resumes_bit_exact(out_path(tmp_path), base, whole)
    again = reloads_as_trained(plan, whole)
    reloaded = {n for n, m in again.named_modules() if isinstance(m, GloraLayer) and m.lora_glora_scalar}
    assert reloaded == scaled


@pytest.mark.parametrize("algo", ["glora", "locon"])
def test_flux_glora_entries_own_scalar_as_lycoris(tmp_path, monkeypatch, algo):
    """On Flux's fused Linears: GLoRA entries on the double blocks' q/k/v with a use_scalar of their own
    beside GLoRA layers without one (a GLoRA network's own, or CLIP's attention's GLoRA entry on a LoCon
    network): each fused GLoRAModule trains a scalar where lycoris-lora's does (one per fused Linear, its
    parts sharing it), outputs, input gradients and generator state those of the plan's parts
    (test_lycoris_flow_mixed_rs_lora_boft's _alike)."""
    from tests.runtime.test_lycoris_flow_mixed_rs_lora_boft import BOFT_FILE, _alike

    text = BOFT_FILE.replace('algo = "locon"\ndim = 4', 'algo = "glora"\nuse_scalar = true\ndim = 4')
    text = text.replace('CLIPAttention]\nalgo = "locon"', 'CLIPAttention]\nalgo = "glora"')
    ours: list = []
    _, made, _ = _alike(tmp_path, monkeypatch, algo, text, {"module_dropout": "0.3"}, grads=False, keep=ours)
    glora = {k for k, m in made.items() if type(m).__name__ == "GLoRAModule"}
    scaled = {k for k in glora if isinstance(made[k].scalar, nn.Parameter)}
    assert scaled == {k for k in glora if "_attn_qkv" in k} and glora - scaled
    from dbspec.runtime.lycoris_glora import GloraLayer

    parts = [m for n, m in ours[0].named_modules() if isinstance(m, GloraLayer) and m.lora_glora_scalar]
    assert parts and all("default" in m.lora_glora_scalar for m in parts)
    assert len({id(m.lora_glora_scalar["default"]) for m in parts}) == len(scaled)  # one per fused Linear
