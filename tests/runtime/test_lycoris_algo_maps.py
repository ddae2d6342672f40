"""LyCORIS preset files whose `module_algo_map` / `name_algo_map` give some layers their own dim and alpha
(dbspec/convert/kohya/lycoris_maps.py), converted from a kohya command line, against lycoris-lora 4.1.3
reading the same file in its kohya network on the tiny SD 1.x U-Net and CLIP: every layer LyCORIS builds is
adapted by the converted plan's peft adapter in LyCORIS's kind, at its rank and scale (its
[[adapter.blocks]] / [[adapter.text_encoder_blocks]]), and a tiny run's kohya export holds LyCORIS's modules
in LyCORIS's shapes.

The converter resolves the file on kohya's full-size SD 1.x model; each file uses classes the tiny diffusers
model shares with kohya's (diffusers calls kohya's `CrossAttention` `Attention`, so no file maps it)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from dbspec.runtime.adapters import add_lora
from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris import _kohya_names, _lycoris_weight, _merged, loader  # noqa: F401 (a fixture)

lycoris_kohya = pytest.importorskip("lycoris.kohya")


PRESETS = {
    # LyCORIS's example.toml, one algorithm: the ResNets (their convolutions too) at a low dim, the
    # transformers' MLP at a higher one, CLIP's MLP at its own dim and alpha
    "classes": """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []

[module_algo_map]
  [module_algo_map.ResnetBlock2D]
    algo = "locon"
    dim = 2
    alpha = 1
  [module_algo_map.FeedForward]
    dim = 8
  [module_algo_map.CLIPMLP]
    algo = "lora"
    dim = 6
    alpha = 3
""",
    # names: a name_algo_map key (exact, then a regex) before the layer's class entry; nested classes inside
    # a target class (the first entry to reach a layer keeps it: Linear's inside BasicTransformerBlock);
    # LoKr's own factor on some entries (LoCon and LoHa never read it: ignored)
    "names": """\
enable_conv = true
unet_target_module = ["Transformer2DModel"]
unet_target_name = ["conv_in", 'down_blocks\\.1\\.resnets\\.0\\.conv[12]', "time_embedding.linear_1"]
text_encoder_target_module = []
text_encoder_target_name = ['text_model\\.encoder\\.layers\\.[01]\\.self_attn\\.[qk]_proj']

[module_algo_map.Linear]
dim = 6
alpha = 2
factor = 2
[module_algo_map.BasicTransformerBlock]
dim = 2
[name_algo_map.conv_in]
dim = 2
alpha = 2
[name_algo_map.'down_blocks\\.1\\.resnets\\.0\\.conv1']
dim = 8
[name_algo_map.'text_model\\.encoder\\.layers\\.0\\.']
dim = 2
alpha = 0.5
factor = 4
""",
    # entries' own module options (issue 12): rs_lora (the MLP at its own dim, CLIP's MLP at the network's),
    # use_scalar (the MLP), LoCon's Tucker form on the ResNets' k x k convolutions,
    # options that change nothing on their layers (Tucker on linears, bypass without dropouts, wd_on_out
    # without weight decomposition)
    "entry-opts": """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []

[module_algo_map.FeedForward]
dim = 8
rs_lora = true
use_scalar = true
[module_algo_map.CLIPMLP]
rs_lora = true
use_tucker = true
[module_algo_map.Transformer2DModel]
bypass_mode = true
wd_on_out = false
[module_algo_map.ResnetBlock2D]
use_tucker = true
""",
    # convolutions off: an entry's dim still adapts the ResNets' 3x3 convolutions (create_single_module)
    "no-conv": """\
enable_conv = false
unet_target_module = ["ResnetBlock2D"]
unet_target_name = ["conv_out", "time_embedding.linear_1"]
text_encoder_target_module = []
[module_algo_map.ResnetBlock2D]
dim = 2
""",
}
# a dim above 1024 (LoConModule, and LohaModule alike, train a pair that wide, wider than the tiny layers):
# the ResNets' linears and 3x3 convolutions at 1100
PRESETS["wide"] = PRESETS["no-conv"].replace("dim = 2", "dim = 1100\nalpha = 2")


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _lycoris(pipe, path: Path, monkeypatch, algo: str = "locon", conv_dim: str = "4", **args):
    kept_lycoris_presets(monkeypatch)
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)  # kohya's CLIP names its modules text_model.*
    return lycoris_kohya.create_network(
        1.0,
        4,
        1.0,
        None,
        named,
        copy.deepcopy(pipe.unet),
        algo=algo,
        conv_dim=conv_dim,
        preset=str(path),
        **args,
    )


def _theirs(made) -> dict[str, tuple[str, int, float]]:
    """Each LyCORIS module's class, dim and the scale its update is multiplied by."""
    return {
        m.lora_name: (type(m).__name__, m.lora_dim, round(float(m.scale), 12))  # rs_lora: alpha / sqrt(dim)
        for m in [*made.unet_loras, *made.text_encoder_loras]
    }


_ADAPTED: list = []  # the last (pipe, adapter, (unet, text)) _adapted built


def _adapted(pipe, adapter):
    """Copies of `pipe`'s U-Net and text encoder with `adapter`'s peft layers (each part adapted only where
    the adapter has targets there), built once for the last pipe and adapter asked for: _ours, _scaled_of and
    _lokr_shapes_of read the same layers, and peft's inject_adapter is most of a build's cost. Readers only:
    no caller changes the models."""
    if _ADAPTED and _ADAPTED[0][0] is pipe and _ADAPTED[0][1] is adapter:
        return _ADAPTED[0][2]
    unet, text = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    if adapter.denoiser_targets or adapter.conv_targets:
        add_lora(unet, adapter, adapter.denoiser_targets, seed=0, conv=True)
    if adapter.text_encoder_targets:
        add_lora(text, adapter, adapter.text_encoder_targets, seed=0, component="text_encoder")
    _ADAPTED[:] = [(pipe, adapter, (unet, text))]
    return unet, text


def _ours(pipe, adapter) -> dict[str, tuple[str, int, float]]:
    """Each peft layer the plan's adapter builds, as LyCORIS's class, its rank and its scale."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer

    from dbspec.runtime.dylora import DyloraLayer
    from dbspec.runtime.lycoris_glora import GloraLayer

    classes = (
        (DyloraLayer, "DyLoraModule"),  # LoraLayers too
        (GloraLayer, "GLoRAModule"),
        (LoraLayer, "LoConModule"),
        (LoHaLayer, "LohaModule"),
        (LoKrLayer, "LokrModule"),
    )
    unet, text = _adapted(pipe, adapter)
    out = {}
    for prefix, model in (("lora_unet_", unet), ("lora_te_text_model_", text)):
        for name, layer in model.named_modules():
            found = next((c for t, c in classes if isinstance(layer, t)), None)
            if found and "default" in layer.r:
                key = prefix + name.replace(".", "_")
                out[key] = (found, layer.r["default"], round(float(layer.scaling["default"]), 12))
    return out


def _converted_plan(
    tmp_path: Path,
    preset: str,
    algo: str = "locon",
    args: str = "",
    conv_dim: int = 4,
    text: str | None = None,
):
    """The kohya command line's converted plan on tiny SD 1.x, `--network_args` giving `algo`, `conv_dim`, the
    preset file `<preset>.toml` (its `text`, else PRESETS[preset]) and `args`: (the file's path, the plan)."""
    from tests.unit.convert_kit import SD15, errors, images, kohya, plan_of

    path = tmp_path / f"{preset}.toml"
    path.write_text(PRESETS[preset] if text is None else text, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=4 --network_alpha=1 "
        f'--network_args "algo={algo}" "conv_dim={conv_dim}" "preset={path.name}" {args} '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return path, plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"])


@pytest.mark.parametrize(
    "preset, algo",
    [
        *((p, "locon") for p in sorted(PRESETS)),
        ("names", "loha"),
        ("names", "lokr"),
        ("names", "dylora"),
        ("names", "glora"),
    ],
)
def test_maps_give_lycoris_ranks_and_scales(pipe, preset, algo, tmp_path, monkeypatch):
    """Every layer LyCORIS builds from the file is adapted, in LyCORIS's class, at its dim and with its scale
    (alpha / dim; LoKr's layers with both factors full at 1; DyLoRA's in blocks of its block_size; GLoRA's
    two pairs at the dim)."""
    args = {"block_size": "2"} if algo == "dylora" else {}  # the `names` dims are even
    path, plan = _converted_plan(tmp_path, preset, algo, " ".join(f'"{k}={v}"' for k, v in args.items()))
    made = _lycoris(pipe, path, monkeypatch, algo, **args)
    theirs = _theirs(made)
    ours = _ours(pipe, plan.adapter)
    assert theirs and len({v[1:] for v in theirs.values()}) > 1, "the file gives layers different ranks"
    assert sorted(set(ours) ^ set(theirs)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}
    if preset == "entry-opts":  # an entry's own use_scalar: a trained scalar on its layers only
        scaled = {m.lora_name for m in [*made.unet_loras, *made.text_encoder_loras] if _trains_scalar(m)}
        assert scaled and scaled == _scaled_of(pipe, plan.adapter)
    if algo == "dylora":  # every layer in blocks of block_size, as DyLoraModule's up_list / down_list
        assert plan.adapter.dylora_unit == 2
        assert {m.block_size for m in made.unet_loras + made.text_encoder_loras} == {2}
    if algo == "lokr":  # the entries' own factors: every layer's Kronecker factors in LyCORIS's shapes
        assert any(b.factor for b in [*plan.adapter.blocks, *plan.adapter.text_encoder_blocks])
        theirs, ours = _lokr_shapes(made), _lokr_shapes_of(pipe, plan)
        assert theirs and {k: v for k, v in ours.items() if theirs.get(k) != v} == {}


def _trains_scalar(lyco) -> bool:
    return isinstance(lyco.scalar, nn.Parameter)


def _scaled_of(pipe, adapter) -> set[str]:
    """The kohya names of the plan's adapted layers with a trained scalar (runtime/lycoris_switches.py)."""
    from dbspec.runtime.lycoris_switches import layer_scalar

    unet, text = _adapted(pipe, adapter)
    return {
        prefix + name.replace(".", "_")
        for prefix, model in (("lora_unet_", unet), ("lora_te_text_model_", text))
        for name, layer in model.named_modules()
        if layer_scalar(layer) is not None
    }


def test_conv_dim_zero_builds_the_entries_convolutions_in_tucker_form(pipe, tmp_path, monkeypatch):
    """conv_dim=0: LyCORIS's create_single_module still builds each k x k convolution a map entry gives a dim
    (no other; here conv_in at 2 and one ResNet's conv1 at 8), with the network's use_tucker: the plan adapts
    the same convolutions at the same ranks and scales, each with LoCon's Tucker core (issue 12)."""
    path, plan = _converted_plan(tmp_path, "names", "locon", '"use_tucker=True"', conv_dim=0)
    assert plan.adapter.tucker and plan.adapter.conv_rank
    made = _lycoris(pipe, path, monkeypatch, "locon", conv_dim="0", use_tucker="True")
    convs = {
        m.lora_name: m.tucker for m in made.unet_loras if m.isconv and m.org_module[0].kernel_size[0] > 1
    }
    assert convs and all(convs.values())
    theirs, ours = _theirs(made), _ours(pipe, plan.adapter)
    assert sorted(set(ours) ^ set(theirs)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}
    unet, _ = _adapted(pipe, plan.adapter)  # the layers _ours read
    mids = {
        "lora_unet_" + name.replace(".", "_")
        for name, layer in unet.named_modules()
        if "default" in getattr(layer, "lora_mid", {})
    }
    assert mids == set(convs)


LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def _lokr_shapes(made) -> dict[str, dict[str, tuple]]:
    """Each LyCORIS LokrModule's factor tensors' shapes."""
    return {
        m.lora_name: {p: tuple(getattr(m, p).shape) for p in LOKR_PARTS if getattr(m, p, None) is not None}
        for m in [*made.unet_loras, *made.text_encoder_loras]
    }


def _lokr_shapes_of(pipe, plan) -> dict[str, dict[str, tuple]]:
    """The same of each peft LoKr layer the plan's adapter builds."""
    from peft.tuners.lokr import LoKrLayer

    unet, text = _adapted(pipe, plan.adapter)
    out = {}
    for prefix, model in (("lora_unet_", unet), ("lora_te_text_model_", text)):
        for name, layer in model.named_modules():
            if isinstance(layer, LoKrLayer):
                parts = {p: getattr(layer, p) for p in LOKR_PARTS}
                out[prefix + name.replace(".", "_")] = {
                    p: tuple(v["default"].shape) for p, v in parts.items() if "default" in v
                }
    return out


def test_huge_lokr_dims_build_lycoris_full_factors(pipe, tmp_path, monkeypatch):
    """A map entry's LoKr dim of 100000 (LyCORIS's full-matrix idiom) converts to a block at that rank (LoKr's
    block bound): each layer LyCORIS builds at 100000 is full in both factors at scale 1, and so is the
    plan's, in the same shapes (issue 12)."""
    path, plan = _converted_plan(
        tmp_path, "huge-lokr", "lokr", text=PRESETS["no-conv"].replace("dim = 2", "dim = 100000")
    )
    assert [b.rank for b in plan.adapter.blocks] == [100000]
    made = _lycoris(pipe, path, monkeypatch, "lokr")
    theirs = {m.lora_name: m for m in made.unet_loras}
    huge = {k for k, m in theirs.items() if m.lora_dim == 100000}
    assert huge and all(theirs[k].use_w1 and theirs[k].use_w2 and theirs[k].scale == 1 for k in huge)
    ours = _ours(pipe, plan.adapter)
    assert sorted(set(ours) ^ set(theirs)) == []
    assert {k: ours[k][0::2] for k in huge} == {k: ("LokrModule", 1.0) for k in huge}
    rest = _theirs(made)
    assert {k: v for k, v in ours.items() if k not in huge and rest[k] != v} == {}
    from peft.tuners.lokr import LoKrLayer

    unet, _ = _adapted(pipe, plan.adapter)  # the layers _ours read
    for name, layer in unet.named_modules():
        key = "lora_unet_" + name.replace(".", "_")
        if key in huge:
            assert isinstance(layer, LoKrLayer) and set(layer.lokr_w1) == set(layer.lokr_w2) == {"default"}
            shapes = (layer.lokr_w1["default"].shape, layer.lokr_w2["default"].shape)
            assert shapes == (theirs[key].lokr_w1.shape, theirs[key].lokr_w2.shape), key


# Diag-OFT with conv_dim beside entries (issue 12): the ResNets' entry without a dim (its linears and 1x1
# shortcut at network_dim, its 3x3 convolutions at conv_dim), the MLP's with one, conv_in named with one; the
# samplers' convolutions and conv_out at conv_dim through no entry
PRESETS["oft-conv"] = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out"]
text_encoder_target_module = ["CLIPMLP"]
text_encoder_target_name = []

[module_algo_map.ResnetBlock2D]
constraint = 0.001
[module_algo_map.FeedForward]
dim = 8
[name_algo_map.conv_in]
dim = 8
"""


@pytest.mark.parametrize(("preset", "conv_dim"), [("names", 4), ("oft-conv", 2)])
def test_diag_oft_maps_give_lycoris_block_shapes(pipe, tmp_path, monkeypatch, preset, conv_dim):
    """algo=diag-oft: an entry's dim is its layers' block-size hint (blocks of the plan): every layer's
    `oft_blocks` in the shape lycoris-lora's DiagOFTModule gives it (LyCORIS's factorization of its width by
    its own hint), at the network's constraint (an entry's own). With a conv_dim other than network_dim
    (was DBS403 beside entries) an entry without a dim gives its k x k convolutions conv_dim, and the k x k
    convolutions no entry reaches take it too."""
    from dbspec.runtime.lycoris_oft import DiagOftLayer

    args = '"constraint=0.01"'
    path, plan = _converted_plan(tmp_path, preset, "diag-oft", args, conv_dim=conv_dim)
    made = _lycoris(pipe, path, monkeypatch, "diag-oft", conv_dim=str(conv_dim), constraint="0.01")
    theirs = {
        m.lora_name: (tuple(m.oft_blocks.shape), round(float(m.alpha), 6))
        for m in [*made.unet_loras, *made.text_encoder_loras]
    }
    assert len(set(theirs.values())) > 2, "the file gives layers different block sizes"
    unet, text, a = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder), plan.adapter
    add_lora(unet, a, a.denoiser_targets, seed=0, conv=True)
    add_lora(text, a, a.text_encoder_targets, seed=0, component="text_encoder")
    ours = {
        prefix + name.replace(".", "_"): (
            tuple(layer.lora_oft_blocks["default"].shape),
            layer.lora_alpha["default"],
        )
        for prefix, model in (("lora_unet_", unet), ("lora_te_text_model_", text))
        for name, layer in model.named_modules()
        if isinstance(layer, DiagOftLayer) and "default" in layer.lora_oft_blocks
    }
    assert ours == theirs


# Diag-OFT entries' own constraint and rescaled (issue 12): the MLP at its own constraint without the
# network's rescale, the ResNets at their own dim, CLIP's MLP at its own constraint (a string `rescaled`:
# true to DiagOFTModule's `if rescaled`, the network's), CLIP's attention at the network's constraint
OFT_OPTS = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = ["conv_in"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []

[module_algo_map.FeedForward]
constraint = 0.0001
rescaled = false
[module_algo_map.ResnetBlock2D]
dim = 8
[module_algo_map.CLIPMLP]
constraint = 0.001
rescaled = "false"
[module_algo_map.CLIPAttention]
constraint = 0.01
"""


def _oft_layers(made) -> dict[str, tuple]:
    """Each DiagOFTModule's oft_blocks shape, alpha, constraint (x out_dim), whether it trains a rescale."""
    return {
        m.lora_name: (
            tuple(m.oft_blocks.shape),
            round(float(m.alpha), 9),
            round(float(m.constraint), 9),
            "rescale" in dict(m.named_parameters()),
        )
        for m in [*made.unet_loras, *made.text_encoder_loras]
    }


def _oft_layers_of(unet, text) -> dict[str, tuple]:
    from dbspec.runtime.lycoris_oft import DiagOftLayer

    return {
        prefix + name.replace(".", "_"): (
            tuple(layer.lora_oft_blocks["default"].shape),
            round(float(layer.lora_alpha["default"]), 9),
            round(float(layer.constraint["default"]), 9),
            "default" in layer.lora_oft_rescale,
        )
        for prefix, model in (("lora_unet_", unet), ("lora_te_text_model_", text))
        for name, layer in model.named_modules()
        if isinstance(layer, DiagOftLayer) and "default" in layer.lora_oft_blocks
    }


@pytest.mark.parametrize("algo", ["diag-oft", "boft"])
def test_oft_entry_dims_constraint_and_rescaled_train_and_resume_as_lycoris(
    pipe, algo, tmp_path, monkeypatch
):
    """algo=diag-oft / boft with entries' own dim, `constraint` and `rescaled`: every layer's blocks (BOFT's
    butterfly stages at the entry's block size), alpha, constraint and row rescale as lycoris-lora's
    DiagOFTModule / ButterflyOFTModule builds them from the same file; a tiny run trains, the export holds
    LyCORIS's tensors in its shapes with its alphas, and the adapter folders load back, each layer as its
    block built it (issue 12). Not resumed: the entries change shapes and scalars, not the kinds of saved
    state, and Diag-OFT's blocks with their rescale resume bit-exact in test_lycoris_switches
    (test_diag_oft_trains_resumes_bit_exact_and_loads_back_in_lycoris), BOFT's in test_lycoris_boft."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from dbspec.runtime.weights import load_peft_adapters
    from tests.unit.convert_kit import out_path

    path, plan = _converted_plan(
        tmp_path, "oft-opts", algo, '"constraint=0.01" "rescaled=True"', text=OFT_OPTS
    )
    a = plan.adapter
    assert (a.oft_constraint, a.oft_rescaled) == (0.01, True) and a.oft_block_size == 4
    assert sorted(b.rank for b in a.blocks) == [4, 8]  # the MLP at the network's dim, the ResNets at 8
    assert sorted(b.rescaled for b in [*a.blocks, *a.text_encoder_blocks]) == ["adapter", "adapter", "off"]
    made = _lycoris(pipe, path, monkeypatch, algo, constraint="0.01", rescaled="True")
    theirs = _oft_layers(made)
    assert len({v[0] for v in theirs.values()}) > 2  # block shapes: the ResNets' at their own dim
    assert len({v[1] for v in theirs.values()}) == 3 and {v[3] for v in theirs.values()} == {True, False}
    unet, text = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    add_lora(unet, a, a.denoiser_targets, seed=0, conv=True)
    add_lora(text, a, a.text_encoder_targets, seed=0, component="text_encoder")
    assert _oft_layers_of(unet, text) == theirs
    spec = out_path(tmp_path)
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2"]
    whole = execute(compile_spec(spec, [*base, "output.dir=whole"]), keep_models=True)
    assert whole.status == "finished"
    (ours,) = Path(whole.final).glob("*.kohya.safetensors")
    ours = load_file(str(ours))
    saved = {
        f"{m.lora_name}.{k}": v
        for m in [*made.unet_loras, *made.text_encoder_loras]
        for k, v in m.state_dict().items()
    }
    assert {k: list(v.shape) for k, v in ours.items()} == {k: list(v.shape) for k, v in saved.items()}
    alphas = {k: round(float(v), 9) for k, v in ours.items() if k.endswith(".alpha")}
    assert alphas == {k: round(float(v), 9) for k, v in saved.items() if k.endswith(".alpha")}
    moved = [
        k for k, v in ours.items() if k.endswith(("oft_blocks", "rescale")) and not torch.equal(v, saved[k])
    ]
    assert any(k.endswith("rescale") for k in moved) and any(k.endswith("oft_blocks") for k in moved)
    fresh = build_pipeline("builtin:tiny-sd1")  # the run's adapter folders load back (`dbspec sample`)
    modules = {"unet": fresh.unet, "text_encoder": fresh.text_encoder}
    assert sorted(load_peft_adapters(Path(whole.final), modules)) == sorted(modules)
    assert _oft_layers_of(fresh.unet, fresh.text_encoder) == theirs
    for name, module in modules.items():
        state = load_file(str(Path(whole.final) / name / "adapter_model.safetensors"))
        loaded = get_peft_model_state_dict(module)
        assert state.keys() == loaded.keys() and all(torch.equal(state[k], loaded[k]) for k in state), name


# DyLoRA entries' own block_size (issue 12): the MLP at its own dim in blocks of 4, the ResNets (their 3x3
# convolutions too) and CLIP's attention in blocks of 1, conv_in in one block of 4, the rest in the network's
# blocks of 2
DYLORA_UNITS = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = ["conv_in"]
text_encoder_target_module = ["CLIPAttention"]
text_encoder_target_name = []

[module_algo_map.FeedForward]
dim = 8
block_size = 4
[module_algo_map.ResnetBlock2D]
block_size = 1
[name_algo_map.conv_in]
block_size = 4
[module_algo_map.CLIPAttention]
block_size = 1
"""


def test_dylora_entry_block_sizes_train_as_lycoris(pipe, tmp_path, monkeypatch):
    """algo=dylora with entries' own `block_size`: every layer in LyCORIS's class, at its dim and scale, in
    blocks of the size lycoris-lora's DyLoraModule gives it from the same file (its up_list / down_list);
    a tiny run's export holds LyCORIS's saved tensors in their shapes (issue 12). Not resumed: a DyLoRA
    network's blocks at its entries' own block sizes (beside LoCon entries) and their draws resume bit-exact
    in test_lycoris_mixed_dylora's test_dylora_entries_train_resume_and_load_in_lycoris[dylora]."""
    from safetensors.torch import load_file

    from dbspec.runtime.dylora import DyloraLayer
    from tests.unit.convert_kit import out_path

    path, plan = _converted_plan(tmp_path, "dylora-units", "dylora", '"block_size=2"', text=DYLORA_UNITS)
    assert plan.adapter.dylora_unit == 2 and sorted(b.unit for b in plan.adapter.blocks) == [1, 4, 4]
    assert [b.unit for b in plan.adapter.text_encoder_blocks] == [1]
    made = _lycoris(pipe, path, monkeypatch, "dylora", block_size="2")
    modules = [*made.unet_loras, *made.text_encoder_loras]
    theirs = {m.lora_name: (*_theirs(made)[m.lora_name], m.block_size, len(m.up_list)) for m in modules}
    assert {v[3] for v in theirs.values()} == {1, 2, 4}
    unet, text, a = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder), plan.adapter
    add_lora(unet, a, a.denoiser_targets, seed=0, conv=True)
    add_lora(text, a, a.text_encoder_targets, seed=0, component="text_encoder")
    ours = {
        prefix + name.replace(".", "_"): (
            "DyLoraModule",
            layer.r["default"],
            round(float(layer.scaling["default"]), 12),
            layer.unit,
            layer.blocks("default"),
        )
        for prefix, model in (("lora_unet_", unet), ("lora_te_text_model_", text))
        for name, layer in model.named_modules()
        if isinstance(layer, DyloraLayer) and "default" in layer.r
    }
    assert ours == theirs
    spec = out_path(tmp_path)
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2"]
    whole = execute(compile_spec(spec, [*base, "output.dir=whole"]))
    assert whole.status == "finished"
    (done,) = Path(whole.final).glob("*.kohya.safetensors")
    done = load_file(str(done))
    # LyCORIS saves a convolution's lora_up 2-D (out, rank), dbspec kohya's 4-D (out, rank, 1, 1)
    saved = {f"{m.lora_name}.{k}": v for m in modules for k, v in m.custom_state_dict().items()}
    assert {k: list(v.shape[:2]) + [v.numel()] for k, v in done.items()} == {
        k: list(v.shape[:2]) + [v.numel()] for k, v in saved.items()
    }
    assert any(not torch.equal(v, saved[k]) for k, v in done.items() if "lora_up" in k), "it trained"


# extra network arguments of a variant: LoCon's Tucker form (lora_mid per k x k convolution), LyCORIS's
# weight decomposition (dora_scale per layer)
VARIANTS = {"tucker": "use_tucker", "dora": "dora_wd"}


# locon-entry, loha-entry: the `entry-opts` file (its dims; the `names` file's on LoKr and GLoRA). No plain
# `lokr` case: lokr-dora's run exports the same LoKr factors at the file's dims (its dora_scale beside them),
# and a LoKr network without dora_wd exports LyCORIS's shapes in
# test_lokr_entry_switches_build_train_and_resume_as_lycoris
@pytest.mark.parametrize("algo", ["locon-entry", "loha-entry", "locon-tucker", "lokr-dora", "glora"])
def test_maps_run_exports_lycoris_shapes(pipe, algo, tmp_path, monkeypatch):
    """A tiny run of the `names` file: its kohya export holds LyCORIS's modules, each tensor in the shape
    LyCORIS's module has (LoHa's and LoKr's factors at each layer's own dim) and each alpha LyCORIS's. With
    the `entry-opts` file (entries' own rs_lora, use_scalar and use_tucker: the ResNets' convolutions in
    Tucker form, the downsamplers' not) its adapter folders load back, lycoris-lora's network from the file
    loads the export to the trained weights (issue 12). Neither resumes: their kinds of saved state resume
    bit-exact in test_lycoris (LoCon / LoHa layers), test_lycoris_mixed_file (lokr-tucker-lora-loha: LoCon's
    lora_mid, LoHa's Tucker cores) and test_lycoris_switches (locon_scalar: a layer's trained scalar)."""
    from tests.unit.convert_kit import out_path

    algo, *variant = algo.split("-")
    entry = variant == ["entry"]
    extra = {VARIANTS[v]: "True" for v in variant if not entry}
    preset = "entry-opts" if entry else "names"
    path, plan = _converted_plan(tmp_path, preset, algo, " ".join(f'"{k}=True"' for k in extra))
    assert plan.adapter.kind == {"locon": "lora"}.get(algo, algo) and plan.adapter.blocks
    assert (plan.adapter.tucker, plan.adapter.dora) == ("tucker" in variant, "dora" in variant)
    made = _lycoris(pipe, path, monkeypatch, algo, **extra)
    theirs = {  # what LyCORIS saves (its modules join the network's state dict in apply_to)
        f"{m.lora_name}.{k}": v
        for m in [*made.unet_loras, *made.text_encoder_loras]
        for k, v in m.state_dict().items()
    }
    done = execute(compile_spec(out_path(tmp_path), ["model.base=builtin:tiny-sd1"]), keep_models=entry)
    assert done.status == "finished"
    (export,) = Path(done.final).glob("*.kohya.safetensors")
    with safe_open(str(export), "pt") as handle:
        ours = {key: handle.get_tensor(key) for key in handle.keys()}
    assert sorted(ours) == sorted(theirs)
    assert any(k.endswith("lora_mid.weight") for k in theirs) == (
        "tucker" in variant or algo == "locon" and entry
    )
    assert any(k.endswith("hada_t1") for k in theirs) == (algo == "loha" and entry)
    assert any(k.endswith("dora_scale") for k in theirs) == ("dora" in variant)
    assert {k: list(v.shape) for k, v in ours.items()} == {k: list(v.shape) for k, v in theirs.items()}
    # a LoKr layer whose two factors are both full trains at scale 1 whatever its alpha (both loaders apply
    # 1): LyCORIS saves its dim there, dbspec's export 1 (runtime/lycoris_export.py)
    full = {k.split(".")[0] for k in theirs if k.endswith("lokr_w1")} - {
        k.split(".")[0] for k in theirs if k.endswith(("lokr_w2_a", "lokr_w2_b"))
    }
    alphas = {k: float(v) for k, v in ours.items() if k.endswith(".alpha") and k.split(".")[0] not in full}
    assert alphas == {
        k: float(v) for k, v in theirs.items() if k.endswith(".alpha") and k.split(".")[0] not in full
    }
    assert len(set(alphas.values())) > 1  # layers at their own alphas
    moved = [k for k, v in ours.items() if not k.endswith(".alpha") and not torch.equal(v, theirs[k])]
    assert moved, "the run trained the adapters"
    if entry:  # lycoris-lora's network from the same file (kohya's for --network_weights) loads the export
        _resumes_and_loads_back(tmp_path, done, ours, resume=False)
        fresh = build_pipeline("builtin:tiny-sd1")
        named = nn.Module()
        named.text_model = fresh.text_encoder
        made.apply_to(named, fresh.unet, apply_text_encoder=True, apply_unet=True)
        made.load_state_dict(ours, strict=True)
        _loaded_weights_are_trained(made, done.components)


def _resumes_and_loads_back(tmp_path: Path, whole, export: dict, resume: bool = True) -> None:
    """Stopped after a step and resumed (`resume`), the run ends with `whole`'s export bit for bit; its
    adapter folders load back (`dbspec sample`), each layer as its block built it."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from dbspec.runtime.weights import load_peft_adapters
    from tests.unit.convert_kit import out_path

    if resume:
        split = compile_spec(out_path(tmp_path), ["model.base=builtin:tiny-sd1", "output.dir=parts"])
        first = execute(split, stop_after=1)
        resumed = execute(split, resume=True)
        assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
        (again,) = Path(resumed.final).glob("*.kohya.safetensors")
        again = load_file(str(again))
        assert again.keys() == export.keys() and all(torch.equal(again[k], export[k]) for k in export)
    fresh = build_pipeline("builtin:tiny-sd1")
    modules = {"unet": fresh.unet, "text_encoder": fresh.text_encoder}
    assert sorted(load_peft_adapters(Path(whole.final), modules)) == sorted(modules)
    for name, module in modules.items():
        state = load_file(str(Path(whole.final) / name / "adapter_model.safetensors"))
        loaded = get_peft_model_state_dict(module)
        assert state.keys() == loaded.keys() and all(torch.equal(state[k], loaded[k]) for k in state), name


def _loaded_weights_are_trained(made, trained) -> None:
    """Each module of lycoris-lora's network `made` (the export loaded) against the trained layer's merge."""
    merged = {"lora_unet": _merged(trained.unet), "lora_te": _merged(trained.text_encoders[0])}
    names = {
        **_kohya_names(trained.unet, "lora_unet"),
        **_kohya_names(trained.text_encoders[0], "lora_te", lambda n: f"text_model.{n}"),
    }
    for lyco in [*made.unet_loras, *made.text_encoder_loras]:
        prefix = "lora_unet" if lyco.lora_name.startswith("lora_unet") else "lora_te"
        torch.testing.assert_close(
            _lycoris_weight(lyco),
            merged[prefix][f"{names[lyco.lora_name]}.weight"],
            rtol=1e-4,
            atol=1e-4,
            msg=lyco.lora_name,
        )


SDXL_MAPS = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = ["input_blocks.0.0", "out.2", 'time_embed\\.0']
text_encoder_target_module = ["CLIPMLP"]
text_encoder_target_name = ['text_model\\.encoder\\.layers\\.1[01]\\.self_attn\\.q_proj']

[module_algo_map.ResnetBlock2D]
dim = 2
alpha = 1
[module_algo_map.CrossAttention]
dim = 8
[name_algo_map.'out\\.2']
dim = 6
[name_algo_map.'time_embed\\.0']
dim = 3
alpha = 3
[module_algo_map.CLIPMLP]
dim = 6
alpha = 2
[name_algo_map.'text_model\\.encoder\\.layers\\.10\\.']
dim = 2
"""


def test_sdxl_maps_give_lycoris_ranks_and_scales(tmp_path, monkeypatch):
    """On SDXL the file's names and classes are kohya's own U-Net's (original layout, `CrossAttention`):
    lycoris-lora's network on kohya's full-size SDXL U-Net (the recorded module tree) and both CLIP encoders
    has, layer for layer, the rank and scale the converted plan's blocks give diffusers' U-Net and the two
    encoders (runtime/blocks.py's per-module patterns, read without building peft's layers)."""
    from peft import LoraConfig

    from dbspec.runtime.blocks import with_blocks
    from dbspec.unet_layout import SDXL_UNET, rename, unet_table
    from tests.runtime import test_lycoris_preset_file_sdxl as sdxl
    from tests.unit.convert_kit import SDXL, errors, images, kohya, plan_of

    models = sdxl.models.__wrapped__()
    (tmp_path / "maps.toml").write_text(SDXL_MAPS, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=4 --network_alpha=1 "
        '--network_args "algo=locon" "conv_dim=4" "preset=maps.toml" --learning_rate=1e-2 '
        "--max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    adapter = plan_of(outcome, tmp_path).adapter

    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0,
        4,
        1.0,
        None,
        models["te"],
        models["kohya_unet"],
        algo="locon",
        conv_dim="4",
        preset=str(tmp_path / "maps.toml"),
    )
    theirs = {m.lora_name: (m.lora_dim, float(m.scale)) for m in [*made.unet_loras, *made.text_encoder_loras]}

    def ranks(module, targets, component, prefix, name_of):
        config = LoraConfig(r=adapter.rank, lora_alpha=adapter.alpha, target_modules=list(targets))
        config = with_blocks(config, module, adapter, component)
        out = {}
        for pattern, rank in config.rank_pattern.items():
            path = pattern.replace("\\", "")
            out[f"{prefix}_{name_of(path).replace('.', '_')}"] = (rank, config.alpha_pattern[pattern] / rank)
        return out

    table = unet_table(SDXL_UNET)
    targets = [*adapter.denoiser_targets, *adapter.conv_targets]
    ours = ranks(models["unet"], targets, "", "lora_unet", lambda p: rename(p, table))
    for component, prefix, model in zip(
        ("text_encoder", "text_encoder_2"), ("lora_te1", "lora_te2"), models["te"]
    ):
        ours.update(ranks(model, adapter.text_encoder_targets, component, prefix, lambda p: p))
    assert len({v for v in theirs.values()}) > 3, "the file gives layers different ranks"
    assert sorted(set(ours) ^ set(theirs)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}


# LoKr entries switching LokrModule's options against the network's (network_args decompose_both=True): the
# ResNets' k x k convolutions in Tucker form without decompose_both, the MLP's factors both full, conv_in
# full by a truthy string, CLIP's MLP without decompose_both, its attention with (the network's); the MLP
# and CLIP's attention at their own factor; the ResNets and CLIP's attention with the output split swapped
# (unbalanced_factorization), the ResNets' entry also with options that change nothing there (bypass_mode
# without dropouts, wd_on_out without weight decomposition); the MLP with LyCORIS's trained scalar (issue 12)
LOKR_SWITCHES = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = ["conv_in"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []

[module_algo_map.ResnetBlock2D]
dim = 1
use_tucker = true
decompose_both = false
unbalanced_factorization = true
bypass_mode = true
wd_on_out = false
[module_algo_map.FeedForward]
dim = 4
full_matrix = true
factor = 2
use_scalar = true
rs_lora = true
[module_algo_map.CLIPMLP]
dim = 1
decompose_both = false
[module_algo_map.CLIPAttention]
dim = 2
factor = 4
unbalanced_factorization = "false"
rs_lora = true
[name_algo_map.conv_in]
dim = 1
full_matrix = "yes"
"""


def test_lokr_entry_switches_build_train_and_resume_as_lycoris(pipe, tmp_path, monkeypatch):
    """Map entries' own decompose_both / full_matrix / use_tucker / unbalanced_factorization and factor: every
    LoKr layer in LyCORIS's class, dim, scale and factor shapes; a tiny run exports LyCORIS's tensors in its
    shapes, its adapter folders load back (`dbspec sample`), each layer as its block built it, and
    lycoris-lora's network built from the same file loads the export to the trained weights (issue 12). Not
    resumed: its kinds of saved state resume bit-exact elsewhere, LoKr's factors in test_lycoris (lokr), their
    Tucker cores in test_lycoris_mixed_file (lokr-tucker-lora-loha), a layer's trained scalar in
    test_lycoris_switches (locon_scalar)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from dbspec.runtime.weights import load_peft_adapters
    from tests.unit.convert_kit import out_path

    path, plan = _converted_plan(tmp_path, "switches", "lokr", '"decompose_both=True"', text=LOKR_SWITCHES)
    blocks = [*plan.adapter.blocks, *plan.adapter.text_encoder_blocks]
    assert {(b.decompose_both, b.full_matrix, b.tucker) for b in blocks} == {
        ("off", "adapter", "on"),
        ("off", "on", "adapter"),
        ("off", "adapter", "adapter"),
        ("adapter", "adapter", "adapter"),  # CLIP's attention: its dim and factor only
    }
    assert sorted(b.factor for b in blocks) == [0, 0, 0, 2, 4]
    # a truthy string is on, as LokrModule tests it
    assert sorted(b.unbalanced_factorization for b in blocks) == ["adapter"] * 3 + ["on"] * 2
    assert [b.scalar for b in blocks].count("on") == 1
    # rs_lora: the MLP's full factors at sqrt(4), CLIP's low-rank attention at alpha / sqrt(2)
    assert sorted(b.rank_stabilized for b in blocks) == ["adapter"] * 3 + ["on"] * 2
    made = _lycoris(pipe, path, monkeypatch, "lokr", decompose_both="True")
    assert {k: v for k, v in _ours(pipe, plan.adapter).items() if _theirs(made)[k] != v} == {}
    scaled = {m.lora_name for m in [*made.unet_loras, *made.text_encoder_loras] if _trains_scalar(m)}
    assert scaled and scaled == _scaled_of(pipe, plan.adapter)
    theirs, ours = _lokr_shapes(made), _lokr_shapes_of(pipe, plan)
    assert sorted(ours) == sorted(theirs) and {k: v for k, v in ours.items() if theirs[k] != v} == {}
    parts = {p for shapes in theirs.values() for p in shapes}
    assert {"lokr_t2", "lokr_w1_a", "lokr_w2_a"} <= parts  # Tucker cores, decomposed and low-rank factors
    spec = out_path(tmp_path)
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2"]
    whole = execute(compile_spec(spec, [*base, "output.dir=whole"]), keep_models=True)
    assert whole.status == "finished"
    (a,) = Path(whole.final).glob("*.kohya.safetensors")
    a = load_file(str(a))
    saved = {
        f"{m.lora_name}.{k}": v
        for m in [*made.unet_loras, *made.text_encoder_loras]
        for k, v in m.state_dict().items()
    }
    assert {k: list(v.shape) for k, v in a.items()} == {k: list(v.shape) for k, v in saved.items()}
    fresh = build_pipeline("builtin:tiny-sd1")  # the run's adapter folders load back (`dbspec sample`)
    modules = {"unet": fresh.unet, "text_encoder": fresh.text_encoder}
    loaded = load_peft_adapters(Path(whole.final), modules, lokr_unit_scale=True, blocks=plan.adapter)
    assert sorted(loaded) == sorted(modules)
    # each layer at its trained scale (the MLP blocks' rs_lora full factors at sqrt(4))
    assert _built(fresh.unet, "u") == _built(whole.components.unet, "u")
    assert _built(fresh.text_encoder, "t") == _built(whole.components.text_encoders[0], "t")
    for name, module in modules.items():
        state = load_file(str(Path(whole.final) / name / "adapter_model.safetensors"))
        loaded = get_peft_model_state_dict(module)
        assert state.keys() == loaded.keys() and all(torch.equal(state[k], loaded[k]) for k in state), name
    # lycoris-lora's network from the same file (as kohya builds it to load --network_weights) takes the
    # export: each module's weight is the trained layer's merged weight
    named = nn.Module()
    named.text_model = fresh.text_encoder
    made.apply_to(named, fresh.unet, apply_text_encoder=True, apply_unet=True)  # the network built above
    made.load_state_dict(a, strict=True)
    for m in made.unet_loras:  # the export holds a full layer's rs_lora sqrt(dim) in lokr_w1 (loaders: 1)
        if m.use_w1 and m.use_w2 and m.rs_lora:
            m.scale = 1.0
    _loaded_weights_are_trained(made, whole.components)


# LoKr on the attention and CLIP, LoCon on the ResNets and conv_in, LoHa on the transformers' MLPs: several
# algorithms in one run (runtime/mixed_kinds.py; issue 12)
MIXED = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []

[module_algo_map.ResnetBlock2D]
algo = "locon"
dim = 4
alpha = 2
[module_algo_map.FeedForward]
algo = "loha"
dim = 2
[name_algo_map.conv_in]
algo = "lora"
[module_algo_map.CLIPMLP]
algo = "loha"
dim = 2
"""
# the LoCon ResNets' and LoHa MLPs' own weight_decompose (U-Net and CLIP), beside conv_in's LoRA without
# (issue 12; was DBS583): each kind's layers decomposed in its own pass (runtime/mixed_kinds.py)
MIXED_DORA = MIXED.replace("alpha = 2\n", "alpha = 2\nweight_decompose = true\n").replace(
    'algo = "loha"\ndim = 2\n', 'algo = "loha"\ndim = 2\nweight_decompose = "yes"\n'
)
# on the LoKr network with dora_wd (was DBS578 / DBS403) every LoKr, LoCon and LoHa layer decomposed, but the
# transformers' LoHa MLPs (their entry's weight_decompose false)
MIXED_WD = MIXED.replace('[module_algo_map.FeedForward]\nalgo = "loha"\ndim = 2\n', "") + (
    '[module_algo_map.FeedForward]\nalgo = "loha"\ndim = 2\nweight_decompose = false\n'
)
# on the GLoRA network DyLoRA on the transformers' other Linears too, in blocks of 2 (a GLoRA block of kind
# "dylora" takes the entry's block_size as its `unit`; was DBS403 "unknown key unit"); with dora_wd (was
# DBS403: the GLoRA adapter has no dora) the LoCon and LoHa layers decomposed, the GLoRA and DyLoRA ones not
MIXED_GLORA = MIXED + '[module_algo_map.Transformer2DModel]\nalgo = "dylora"\ndim = 4\nblock_size = 2\n'


@pytest.mark.parametrize("algo", ["lokr", "glora"])
def test_mixed_algorithms_train_resume_and_load_in_lycoris(pipe, tmp_path, monkeypatch, loader, algo):  # noqa: F811
    """A preset giving U-Net and CLIP layers other algorithms, on a LoKr network and on a GLoRA one (was
    DBS403: GLoRA blocks of other kinds), both with dora_wd (on the GLoRA network its LoCon / LoHa blocks'
    `dora`; was DBS403): the text encoder's adapter and the trained U-Net have every layer
    LyCORIS builds in its class, dim and scale (the run trains the U-Net only, to keep it cheap); the LoKr
    network's 2-step run stopped after one step and resumed gives the same losses and files bit for bit;
    its one kohya export, each layer in its kind's keys, loads in lycoris-lora's create_network_from_weights
    and computes the trained U-Net's output (1e-4); its adapter folders (`<unet>/<kind>/` beside the
    network's kind's) load back as `dbspec sample` loads them."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors.torch import load_file

    from dbspec.runtime.adapters import adapters_disabled
    from dbspec.runtime.dylora import DyloraLayer
    from dbspec.runtime.weights import load_peft_adapters
    from tests.runtime.test_lycoris import _unet_output
    from tests.unit.convert_kit import out_path

    preset = MIXED_WD if algo == "lokr" else MIXED_GLORA
    args = '"dora_wd=True"'
    path, plan = _converted_plan(tmp_path, "mixed", algo, args, text=preset)
    a = plan.adapter
    dylora = {"dylora"} if algo == "glora" else set()
    assert a.kind == algo and {b.kind for b in a.blocks} == {"lora", "loha", *dylora}
    assert [b.unit for b in a.blocks if b.kind == "dylora"] == ([2] if dylora else [])
    assert {b.kind for b in a.text_encoder_blocks} == {"loha"}
    doras = {(b.kind, b.dora) for b in [*a.blocks, *a.text_encoder_blocks]}
    assert a.dora == (algo == "lokr")  # the network's dora_wd, the LoHa MLPs' own off
    assert doras == ({("lora", "adapter"), ("loha", "off"), ("loha", "adapter")} if a.dora else doras)
    if algo == "glora":  # no dora of the adapter's: its LoCon / LoHa blocks' own, never GLoRA's or DyLoRA's
        assert doras == {("lora", "on"), ("loha", "on"), ("dylora", "adapter")} and a.dora_form == "lycoris"
    own = {"lokr": "LokrModule", "glora": "GLoRAModule"}[algo]
    made = _lycoris(pipe, path, monkeypatch, algo, dora_wd="True")
    theirs = {k: v for k, v in _theirs(made).items() if k.startswith("lora_unet_")}
    assert {v[0] for v in theirs.values()} == {
        own,
        "LoConModule",
        "LohaModule",
        *("DyLoraModule" for _ in dylora),
    }
    units = {m.block_size for m in made.unet_loras if type(m).__name__ == "DyLoraModule"}
    assert units == ({2} if dylora else set())  # lycoris-lora's DyLoraModule in blocks of the entry's 2
    text = copy.deepcopy(pipe.text_encoder)
    add_lora(text, a, a.text_encoder_targets, seed=0, component="text_encoder")
    theirs_text = {k: v for k, v in _theirs(made).items() if k.startswith("lora_te_")}
    assert {v[0] for v in theirs_text.values()} == {own, "LohaModule"}
    assert _built(text, "lora_te_text_model_") == theirs_text
    decomposed = _decomposed_of(made)  # weight_decompose: the same layers, each dora_scale in LyCORIS's shape
    assert decomposed
    assert _decomposed_by(text, "lora_te_text_model_") == {
        k: v for k, v in decomposed.items() if k.startswith("lora_te_")
    }
    spec = out_path(tmp_path)
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2", "train.text_encoder=false"]
    whole = execute(compile_spec(spec, [*base, "output.dir=whole"]), keep_models=True)
    assert whole.status == "finished"
    files = sorted(str(p.relative_to(whole.final)) for p in Path(whole.final).rglob("*.safetensors"))
    assert {"unet/lora/adapter_model.safetensors", "unet/loha/adapter_model.safetensors"} < set(files)
    if algo == "lokr":  # the GLoRA network's kinds resume in test_lycoris_mixed_flow_full (GLoRA) and
        # test_lycoris_mixed_dylora's test_dylora_entries_train_resume_and_load_in_lycoris (DyLoRA blocks)
        split = compile_spec(spec, [*base, "output.dir=parts"])
        first = execute(split, stop_after=1)
        resumed = execute(split, resume=True)
        assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
        for name in files:
            a, b = load_file(str(Path(whole.final) / name)), load_file(str(Path(resumed.final) / name))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    trained = whole.components.unet.eval()
    ours = _built(trained, "lora_unet_")
    assert sorted(ours) == sorted(theirs) and {k: v for k, v in ours.items() if theirs[k] != v} == {}
    unet_doras = {k: v for k, v in decomposed.items() if k.startswith("lora_unet_")}
    assert _decomposed_by(trained, "lora_unet_") == unet_doras
    kinds = {theirs[k][0] for k in unet_doras}  # the decomposed layers' kinds, and the others'
    rest = {v[0] for k, v in theirs.items() if k not in unet_doras}
    if algo == "lokr":
        assert kinds == {"LoConModule", "LokrModule"} and rest == {"LohaModule"}
    else:  # GLoRAModule and DyLoraModule take weight_decompose and never read it
        assert kinds == {"LoConModule", "LohaModule"} and rest == {"GLoRAModule", "DyLoraModule"}
    # the export's dora_scale as LyCORIS saves it; each module of the preset's network with it loaded
    # computes the trained layer's output (1e-5)
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    saved = load_file(str(export))
    assert {k.rsplit(".", 1)[0] for k in saved if k.endswith(".dora_scale")} == set(unet_doras)
    _layers_match_lycoris(made, saved, trained)
    fresh = copy.deepcopy(pipe.unet)
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)
    loaded, weights = loader(
        1.0, str(export), None, named, fresh, for_inference=True
    )  # every module: the file's
    assert {type(m).__name__ for m in loaded.unet_loras} == {own, "LoConModule", "LohaModule"}
    assert len(loaded.unet_loras) == sum(isinstance(m, BaseTunerLayer) for m in trained.modules())
    loaded.apply_to(named, fresh, apply_text_encoder=False, apply_unet=True)
    loaded.load_state_dict(weights, strict=False)
    output = _unet_output(trained)
    torch.testing.assert_close(_unet_output(fresh), output, rtol=1e-4, atol=1e-4)
    base_output = _unet_output(pipe.unet)
    assert not torch.allclose(base_output, output, atol=1e-3)  # training moved it
    with adapters_disabled(trained):  # every kind's layers off: the base model (prior's base prediction)
        torch.testing.assert_close(_unet_output(trained), base_output, rtol=1e-6, atol=1e-6)
    again = copy.deepcopy(pipe.unet)
    assert load_peft_adapters(Path(whole.final), {"unet": again}, lokr_unit_scale=True) == ["unet"]
    torch.testing.assert_close(_unet_output(again.eval()), output, rtol=1e-5, atol=1e-5)
    if algo == "glora":  # kohya's --network_weights of that export starts a GLoRA network of several kinds
        (tmp_path / "again").mkdir()
        shutil.copy(export, tmp_path / "prev.safetensors")
        _, started = _converted_plan(
            tmp_path / "again", "mixed", algo, f"{args} --network_weights=../prev.safetensors", text=preset
        )
        assert started.adapter.init_weights
        tiny = ["optimizer.lr=1e-12", "schedule.steps=1", "output.dir=again"]  # a step that moves nothing
        run = execute(compile_spec(out_path(tmp_path / "again"), [*base, *tiny]), keep_models=True)
        # LyCORIS's DyLoraModule.load_state_dict is a no-op and its parameters (up_list / down_list) are not
        # the file's keys: kohya's load_weights leaves its layers fresh (up 0), the others start trained
        expected = copy.deepcopy(trained)
        fresh_dylora = [m for m in expected.modules() if isinstance(m, DyloraLayer)]
        assert len(fresh_dylora) == sum(v[0] == "DyLoraModule" for v in theirs.values())
        for layer in fresh_dylora:
            for up in layer.lora_dylora_up["default"]:
                up.data.zero_()
        reference = _unet_output(expected)
        torch.testing.assert_close(_unet_output(run.components.unet.eval()), reference, rtol=1e-6, atol=1e-6)


def _decomposed_of(made) -> dict[str, list[int]]:
    """{LyCORIS module name: its dora_scale's shape} of lycoris-lora's modules with weight_decompose."""
    mods = [*made.unet_loras, *made.text_encoder_loras]
    return {m.lora_name: list(m.dora_scale.shape) for m in mods if getattr(m, "wd", False)}


def _decomposed_by(model, prefix: str) -> dict[str, list[int]]:
    """{kohya name: dora_scale's shape} of `model`'s layers with LyCORIS's weight decomposition."""
    from dbspec.runtime.lycoris_dora import dora_scale_of

    out = {}
    for name, layer in model.named_modules():
        scale = dora_scale_of(layer, "default")
        if scale is not None:
            out[prefix + name.replace(".", "_")] = list(scale.shape)
    return out


def _layers_match_lycoris(made, saved: dict, trained) -> None:
    """lycoris-lora's U-Net modules `made` (from the preset, on the base U-Net) with `saved` (a run's U-Net
    export) loaded strictly each give the output of `trained`'s layer on the same random input (1e-5)."""
    # lycoris-lora's DyLoraModule keeps its own up_list / down_list and loads nothing (a no-op)
    unet = [m for m in made.unet_loras if type(m).__name__ != "DyLoraModule"]
    state = {f"{m.lora_name}.{k}" for m in unet for k in m.state_dict()}
    assert sorted(state) == sorted(k for k in saved if k.split(".")[0] in {m.lora_name for m in unet})
    layers = {"lora_unet_" + n.replace(".", "_"): layer for n, layer in trained.named_modules()}
    gen = torch.Generator().manual_seed(0)
    for module in unet:
        prefix = module.lora_name + "."
        module.load_state_dict({k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)})
        org = module.org_module[0]
        shape = (2, org.in_features) if isinstance(org, nn.Linear) else (1, org.in_channels, 8, 8)
        x = torch.randn(shape, generator=gen)
        with torch.no_grad():
            got, want = module.eval()(x), layers[module.lora_name](x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=module.lora_name)


def _built(model, prefix: str) -> dict[str, tuple[str, int, float]]:
    """Each peft layer of `model` as LyCORIS's class, its rank and its scale (what _ours builds)."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer

    from dbspec.runtime.dylora import DyloraLayer
    from dbspec.runtime.lycoris_glora import GloraLayer

    classes = (
        (DyloraLayer, "DyLoraModule"),  # LoraLayers too
        (GloraLayer, "GLoRAModule"),
        (LoraLayer, "LoConModule"),
        (LoHaLayer, "LohaModule"),
        (LoKrLayer, "LokrModule"),
    )
    out = {}
    for name, layer in model.named_modules():
        found = next((c for t, c in classes if isinstance(layer, t)), None)
        if found and "default" in layer.r:
            out[prefix + name.replace(".", "_")] = (
                found,
                layer.r["default"],
                float(layer.scaling["default"]),
            )
    return out
