"""LyCORIS preset files on SDXL (sdxl_train_network.py, `network_args preset=<file>.toml`) converted by
dbspec/convert/kohya/lycoris_file.py, against lycoris-lora 4.1.3's create_network reading the same file in its
kohya network on kohya's own full-size SDXL model: its U-Net (library/sdxl_original_unet.py: the original
layout's paths, `input_blocks` / `middle_block` / `output_blocks`, and kohya's classes, `CrossAttention`) and
the two CLIP encoders sdxl_train_network.py hands it as a list (`lora_te1_*`, `lora_te2_*`).

kohya's SDXL U-Net cannot be built in the test (sd-scripts is no dependency of dbspec), so its module tree is
a recorded fixture: tests/runtime/data/kohya_sdxl_unet_modules.json.gz, each `named_modules()` entry's path,
class name and layer kind, recorded from kohya's SdxlUNet2DConditionModel (commit 48d368fa) on the meta device
by tests/runtime/kohya_reference/make_sdxl_unet_modules.py. The test rebuilds that tree on the meta device
(modules of the recorded class names holding real nn.Linear / nn.Conv2d layers: all LyCORIS's walk reads) and
runs the real create_network on it; the CLIP encoders are transformers' own on the meta device, with the
`text_model.` level transformers 4.54.1 (kohya's pin) gives both. dbspec's planned targets are matched as peft
matches them on diffusers' full-size SDXL U-Net (meta device) and renamed to the original layout as dbspec's
kohya export names them (dbspec/unet_layout.py). A tiny SDXL run then exports exactly LyCORIS's names for the
layers the tiny model has (a prefix of the full layout)."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from dbspec.convert.kohya.lycoris_file import sdxl_unet
from dbspec.runtime.execute import execute
from dbspec.unet_layout import SDXL_UNET, rename, unet_table
from tests.runtime.runspec import compile_spec
from tests.runtime.shared import kept_lycoris_presets

lycoris_kohya = pytest.importorskip("lycoris.kohya")

FIXTURE = Path(__file__).parent / "data" / "kohya_sdxl_unet_modules.json.gz"

PRESETS = {
    # attention only: kohya's SDXL attention class, LyCORIS's full lists for the text encoders
    "attention": """\
unet_target_module = ["CrossAttention"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention"]
""",
    # convolutions on: the ResNets, the down- and upsamplers and kohya's names for conv_in / conv_out
    "conv": """\
enable_conv = true
unet_target_module = ["ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["input_blocks.0.0", "out.2"]
text_encoder_target_module = []
""",
    # fnmatch and exclusions: ResNets and transformers outside the output blocks, no feed-forward, no 1x1
    # shortcut; CLIP's attention and MLP but out_proj
    "fnmatch": """\
use_fnmatch = true
enable_conv = true
unet_target_module = ["ResnetBlock2D", "Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
exclude_name = ["output_blocks.*", "*.ff.net.*", "*.out_proj", "*.skip_connection"]
""",
    # regular expressions on the original layout's paths: some blocks' layers, the time and label embeddings,
    # a 3x3 convolution; CLIP layers 10-19 and 30-31 (CLIP-L has 10 and 11 of them)
    "regex": """\
unet_target_module = []
unet_target_name = [
    'input_blocks\\.[45]\\.1\\..*attn2\\.to_[kv]$',
    'time_embed\\.0',
    'label_emb\\.0\\.2',
    'middle_block\\.0\\.in_layers\\.2',
    'output_blocks\\.5\\.2\\.conv',
]
text_encoder_target_module = []
text_encoder_target_name = ['text_model\\.encoder\\.layers\\.(1[0-9]|3[01])\\.self_attn\\.q_proj']
""",
    # an empty file: LyCORIS's defaults (the `full` lists; their TimestepEmbedding class, conv_in / conv_out
    # and time_embedding names match nothing in kohya's SDXL U-Net)
    "defaults": "",
    # OpenCLIP bigG's projection, which CLIP-L lacks, and the transformers
    "projection": """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = []
text_encoder_target_name = ["text_projection"]
""",
    # the encoders' own classes: CLIP-L's (CLIPTextModel) all, OpenCLIP bigG's (CLIPTextModelWithProjection)
    # none (adapter.text_encoder_2_targets empty: train.text_encoder_2 false)
    "first_encoder": """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = ["CLIPTextModel"]
""",
    # OpenCLIP bigG's attention and projection (its class, the MLPs excluded by path), none of CLIP-L's
    # (train.text_encoder false, the second training alone)
    "second_encoder": """\
unet_target_module = ["CrossAttention"]
unet_target_name = []
text_encoder_target_module = ["CLIPTextModelWithProjection"]
exclude_name = ['text_model\\.encoder\\.layers\\.\\d+\\.mlp\\..*']
""",
    # CLIP-L's every linear (its class), bigG's attention in layers 12-31 (by name; CLIP-L has 12 layers):
    # both encoders train, on other layers
    "both_differ": """\
unet_target_module = ["CrossAttention"]
unet_target_name = []
text_encoder_target_module = ["CLIPTextModel"]
text_encoder_target_name = ['text_model\\.encoder\\.layers\\.(1[2-9]|2\\d|3[01])\\.self_attn\\..*_proj']
""",
    # CLIP-L's every linear (its class), bigG's projection alone (by name; CLIP-L has none)
    "first_and_projection": """\
unet_target_module = ["CrossAttention"]
unet_target_name = []
text_encoder_target_module = ["CLIPTextModel"]
text_encoder_target_name = ["text_projection"]
""",
    # bigG alone (CLIP-L none: train.text_encoder false, the second training alone), no U-Net layer
    "second_only": """\
unet_target_module = []
unet_target_name = []
text_encoder_target_module = ["CLIPTextModelWithProjection"]
""",
    # the embeddings' whole nn.Sequential by name (each linear inside adapted); CLIP's MLPs but layer 3's
    "embeddings": """\
unet_target_module = []
unet_target_name = ["time_embed", "label_emb"]
text_encoder_target_module = ["CLIPMLP"]
exclude_name = ["text_model.encoder.layers.3.*"]
""",
}
BUILTINS = (
    "full",
    "full-lin",
    "attn-mlp",
    "attn-only",
    "unet-only",
    "unet-transformer-only",
    "unet-convblock-only",
)


def _recorded() -> list[tuple[str, str, str]]:
    with gzip.open(FIXTURE, "rt", encoding="utf-8") as handle:
        return [tuple(row) for row in json.load(handle)["modules"]]


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv1" if module.kernel_size == (1, 1) else "conv"
    return ""


def _rebuilt(rows) -> nn.Module:
    """kohya's SDXL U-Net tree from the recorded rows: modules of its class names, Linear / Conv2d layers."""
    classes: dict[str, type] = {}
    modules: dict[str, nn.Module] = {}
    with torch.device("meta"):
        for path, cls, kind in rows:
            if kind == "linear":
                module = nn.Linear(8, 8)
            elif kind:
                module = nn.Conv2d(8, 8, 1 if kind == "conv1" else 3)
            else:
                module = classes.setdefault(cls, type(cls, (nn.Module,), {}))()
            modules[path] = module
            if path:
                parent, _, name = path.rpartition(".")
                modules[parent].add_module(name, module)
    return modules[""]


def _kohya_clip(model: nn.Module) -> nn.Module:
    """transformers' CLIP with kohya's `text_model.` level (newer transformers drop it from CLIPTextModel)."""
    if any(name.startswith("text_model.") for name, _ in model.named_modules()):
        return model
    named = nn.Module()
    named.text_model = model
    return named


def _pinned_clip(model: nn.Module) -> nn.Module:
    """The tree of kohya's pinned transformers (4.54.1): the root CLIPTextModel / CLIPTextModelWithProjection,
    its `text_model` a CLIPTextTransformer (transformers 5 drops that level from CLIPTextModel and makes
    CLIPTextModelWithProjection's `text_model` a CLIPTextModel): the class names a preset's
    text_encoder_target_module matches. Classes are relabelled; the modules are transformers' own."""
    if not hasattr(model, "text_model"):  # transformers 5's CLIPTextModel: the transformer itself
        root = type("CLIPTextModel", (nn.Module,), {})()
        root.text_model = model
        model = root
    inner = model.text_model
    if type(inner).__name__ != "CLIPTextTransformer":
        inner.__class__ = type("CLIPTextTransformer", (type(inner),), {})
    return model


@pytest.fixture(scope="module")
def models():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        te1 = CLIPTextModel(CLIPTextConfig(num_hidden_layers=12, hidden_act="quick_gelu"))
        te2 = CLIPTextModelWithProjection(
            CLIPTextConfig(
                hidden_size=1280,
                intermediate_size=5120,
                num_hidden_layers=32,
                num_attention_heads=20,
                hidden_act="gelu",
                projection_dim=1280,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=128,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            block_out_channels=[320, 640, 1280],
            transformer_layers_per_block=[1, 2, 10],
            attention_head_dim=[5, 10, 20],
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
    return {"kohya_unet": _rebuilt(_recorded()), "te": [_pinned_clip(te1), _pinned_clip(te2)], "unet": unet}


def _lycoris_names(models, preset: str, monkeypatch, conv_dim: str = "4") -> set[str]:
    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, models["te"], models["kohya_unet"], algo="locon", conv_dim=conv_dim, preset=preset
    )
    # a text_encoder_target_module naming an encoder's own (root) class: LyCORIS's create_modules_ prefixes
    # its layers with `lora_te1_` + "_" (an empty path), lora_te1__text_model_...; dbspec's export names
    # them lora_te1_text_model_... (docs/converting.md)
    return {
        re.sub(r"^(lora_te\d?)__", r"\1_", m.lora_name) for m in [*made.unet_loras, *made.text_encoder_loras]
    }


def _matches(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)  # peft's suffix match


def _planned_names(models, adapter) -> set[str]:
    """The kohya names of the layers dbspec's targets adapt on the full-size SDXL (diffusers' U-Net)."""
    table = unet_table(SDXL_UNET)
    convs = adapter.conv_targets if adapter.conv_rank else ()
    names = set()
    for name, module in models["unet"].named_modules():
        kind = _kind(module)
        if (kind in ("linear", "conv1") and _matches(name, adapter.denoiser_targets)) or (
            kind == "conv" and _matches(name, convs)
        ):
            names.add("lora_unet_" + rename(name, table).replace(".", "_"))
    texts = (adapter.text_encoder_targets, adapter.text_encoder_2_targets)  # the plan's, resolved
    for prefix, model, targets in zip(("lora_te1", "lora_te2"), models["te"], texts):
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and _matches(name, targets):
                names.add(f"{prefix}_{name.replace('.', '_')}")
    return names


def _converted(tmp_path: Path, preset: str, overrides: list[str] | None = None, conv_dim: str = "4"):
    from tests.unit.convert_kit import SDXL, errors, images, kohya, plan_of

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=4 --network_alpha=1 "
        f'--network_args "algo=locon" "conv_dim={conv_dim}" "preset={preset}" --learning_rate=1e-2 '
        "--max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return plan_of(outcome, tmp_path, overrides)


def _file(tmp_path: Path, preset: str) -> Path:
    path = tmp_path / f"{preset}.toml"
    path.write_text(PRESETS[preset], encoding="utf-8")
    return path


def test_recorded_kohya_unet_is_the_converters_inventory(models):
    """The converter's torch-free SDXL U-Net (lycoris_file.sdxl_unet) is kohya's, entry for entry; the rebuilt
    tree has the recorded entries; dbspec/unet_layout.py maps every layer of diffusers' SDXL U-Net onto a
    layer of kohya's of the same kind."""
    rows = _recorded()
    assert sdxl_unet() == rows
    rebuilt = [(n, type(m).__name__, _kind(m)) for n, m in models["kohya_unet"].named_modules()]
    assert rebuilt == rows
    table = unet_table(SDXL_UNET)
    theirs = {p: k for p, _, k in rows if k}
    ours = {rename(n, table): _kind(m) for n, m in models["unet"].named_modules() if _kind(m)}
    assert ours == theirs


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_sdxl_preset_file_adapts_the_layers_lycoris_builds(models, preset, tmp_path, monkeypatch):
    """The converted plan's targets are the layers LyCORIS builds; for the files that set the encoders'
    targets apart, the plan's own lists and which encoders train (TEXT_TARGETS)."""
    path = _file(tmp_path, preset)
    plan = _converted(tmp_path, path.name)
    if preset in TEXT_TARGETS:
        _text_encoder_targets_in_the_plan(tmp_path, plan, preset)
    theirs = _lycoris_names(models, str(path), monkeypatch)
    ours = _planned_names(models, plan.adapter)
    assert theirs, "the preset builds modules on kohya's SDXL model"
    assert sorted(ours - theirs) == [] and sorted(theirs - ours) == []


def test_every_text_target_case_is_a_preset_file():
    assert set(TEXT_TARGETS) <= set(PRESETS)


@pytest.mark.parametrize("preset", BUILTINS)
def test_sdxl_builtin_preset_adapts_the_layers_lycoris_builds(models, preset, tmp_path, monkeypatch):
    """The built-in presets on kohya's SDXL model: no TimestepEmbedding class, no conv_in / conv_out name."""
    plan = _converted(tmp_path, preset)
    theirs = _lycoris_names(models, preset, monkeypatch)
    ours = _planned_names(models, plan.adapter)
    assert sorted(ours - theirs) == [] and sorted(theirs - ours) == []


def test_sdxl_conv_dim_zero_keeps_the_linear_and_1x1_layers_lycoris_builds(models, tmp_path, monkeypatch):
    """conv_dim=0 (create_single_module): the ResNets' Linears and 1x1 skip connections still build at
    network_dim, the k x k convolutions do not; the converted targets pick the same layers."""
    plan = _converted(tmp_path, "full", conv_dim="0")
    theirs = _lycoris_names(models, "full", monkeypatch, conv_dim="0")
    ours = _planned_names(models, plan.adapter)
    assert any(n.endswith("skip_connection") for n in theirs) and any("emb_layers" in n for n in theirs)
    assert not any(n.endswith(("in_layers_2", "out_layers_3", "op")) for n in theirs)
    assert sorted(ours - theirs) == [] and sorted(theirs - ours) == []


def test_sdxl_preset_file_run_exports_lycoris_module_names(models, tmp_path, monkeypatch):
    """A tiny SDXL run of the fnmatch file (full-path and suffix targets, both encoders): its kohya export
    holds LyCORIS's full-model modules that the tiny model has (its original-layout names are a prefix of the
    full layout's; CLIP layers 0-2)."""
    from dbspec.runtime.tiny import build_pipeline
    from tests.unit.convert_kit import out_path

    path = _file(tmp_path, "fnmatch")
    _converted(tmp_path, path.name, ["model.base=builtin:tiny-sdxl"])
    theirs = _lycoris_names(models, str(path), monkeypatch)
    tiny = build_pipeline("builtin:tiny-sdxl")
    table = unet_table(tiny.unet.config)
    present = {
        "lora_unet_" + rename(n, table).replace(".", "_") for n, m in tiny.unet.named_modules() if _kind(m)
    }
    for prefix, model in zip(("lora_te1", "lora_te2"), (tiny.text_encoder, tiny.text_encoder_2)):
        model = _kohya_clip(model)
        present |= {f"{prefix}_{n.replace('.', '_')}" for n, m in model.named_modules() if _kind(m)}
    done = execute(compile_spec(out_path(tmp_path), ["model.base=builtin:tiny-sdxl"]))
    assert done.status == "finished"
    (export,) = Path(done.final).glob("*.kohya.safetensors")
    with safe_open(str(export), "pt") as handle:
        modules = {key.split(".")[0] for key in handle.keys()}
    expected = theirs & present
    assert any(m.startswith("lora_te2") for m in expected) and any(
        m.startswith("lora_unet") for m in expected
    )
    assert modules == expected


ATTENTION = ["k_proj", "v_proj", "q_proj", "out_proj"]
CLIP_LINEARS = [*ATTENTION, "fc1", "fc2"]
# preset -> (text_encoder_targets, text_encoder_2_targets (None: no list of its own), (CLIP-L trains,
# bigG trains))
TEXT_TARGETS = {
    "first_encoder": (CLIP_LINEARS, [], (True, False)),
    "second_encoder": ([], [*ATTENTION, "text_projection"], (False, True)),
    "second_only": ([], [*CLIP_LINEARS, "text_projection"], (False, True)),
    "first_and_projection": (CLIP_LINEARS, ["text_projection"], (True, True)),
    "both_differ": (
        CLIP_LINEARS,
        [f"layers.{i}.self_attn.{n}" for i in range(12, 32) for n in ATTENTION],
        (True, True),
    ),
    "attention": (ATTENTION, None, (True, True)),  # one list fits both: no second
}


def _text_encoder_targets_in_the_plan(tmp_path, plan, preset) -> None:
    """The plan: each encoder's targets (text_encoder_2_targets its own where they differ) and which of the
    two trains (kohya builds no module in an encoder the file adapts nothing of)."""
    from tests.unit.convert_kit import out_path

    first, second, flags = TEXT_TARGETS[preset]
    text = out_path(tmp_path).read_text(encoding="utf-8")
    assert ("text_encoder_2_targets" in text) == (second is not None)
    assert list(plan.adapter.text_encoder_targets) == first
    assert list(plan.adapter.text_encoder_2_targets) == (first if second is None else second)
    trainable = {c.name: c.trainable for c in plan.precision.components}
    assert (trainable["text_encoder"] == "lora", trainable["text_encoder_2"] == "lora") == flags
    assert plan.train_denoiser == (preset != "second_only")


def _export_modules(final: str) -> set[str]:
    (export,) = Path(final).glob("*.kohya.safetensors")
    with safe_open(str(export), "pt") as handle:
        return {key.split(".")[0] for key in handle.keys()}


def test_sdxl_preset_file_own_second_encoder_targets_train(models, tmp_path, monkeypatch):
    """A tiny SDXL run of a file adapting CLIP-L's every linear and bigG's projection alone: each encoder
    gets its own layers (the export holds LyCORIS's modules the tiny model has, lora_te1_* and
    lora_te2_text_projection only). The same kinds of state (a preset file's LoCon layers on both encoders,
    the second's list its own) resume bit-exact in test_lycoris_unet_norms_sdxl.py's
    test_sdxl_each_encoders_own_norms_train_resume_and_load_in_lycoris."""
    from dbspec.runtime.tiny import build_pipeline
    from tests.unit.convert_kit import out_path

    path = _file(tmp_path, "first_and_projection")
    _converted(tmp_path, path.name, ["model.base=builtin:tiny-sdxl"])
    theirs = _lycoris_names(models, str(path), monkeypatch)
    tiny = build_pipeline("builtin:tiny-sdxl")
    table = unet_table(tiny.unet.config)
    present = {
        "lora_unet_" + rename(n, table).replace(".", "_") for n, m in tiny.unet.named_modules() if _kind(m)
    }
    for prefix, model in zip(("lora_te1", "lora_te2"), (tiny.text_encoder, tiny.text_encoder_2)):
        model = _kohya_clip(model)
        present |= {f"{prefix}_{n.replace('.', '_')}" for n, m in model.named_modules() if _kind(m)}
    whole = execute(compile_spec(out_path(tmp_path), ["model.base=builtin:tiny-sdxl", "output.dir=whole"]))
    assert whole.status == "finished" and whole.steps == 2
    modules = _export_modules(whole.final)
    assert modules == theirs & present
    assert {m for m in modules if m.startswith("lora_te2")} == {"lora_te2_text_projection"}
    assert len([m for m in modules if m.startswith("lora_te1")]) == 3 * 6  # tiny CLIP-L: 3 layers
