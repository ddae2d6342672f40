"""lycoris.kohya algo=ia3 / diag-oft / boft / glora with a LyCORIS preset file on kohya's Flux
(dbspec/convert/kohya/lycoris_flux.py, lycoris_flow_file.py): the file's layers are the whole-network
adapter's targets (kohya's fused Linears whole, fused_projections as the built-in presets set it), checked
against lycoris-lora 4.1.3's create_network reading the same file on kohya's Flux rebuilt on the meta device
(tests/runtime/test_lycoris_preset_file_flow.py): the same layers, each LyCORIS module of the plan's kind with
the plan's rank / block size; a tiny Flux run of a converted file trains, and so does one of a file whose
map entries give layers their own dims (CLIP's attention too). Their kinds of state (each whole-network
algo's layers on Flux's fused Linears and CLIP-L) resume bit-exact elsewhere: Diag-OFT, BOFT and GLoRA in
test_lycoris_flow_rebuilt_file.py's test_rebuilt_file_starts_where_lycoris_rebuilds_it_trains_and_resumes,
IA^3 (with GLoRA and Diag-OFT) in test_lycoris_mixed_flow_full.py's
test_lycoris_kinds_on_flux_fused_layers_train_resume_and_load_in_lycoris."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from dbspec.plan.boft import power2_factorization
from dbspec.plan.lokr import factorization
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_preset_file_flow import (
    PRESETS,
    _planned_names,
    _spec,
    models,  # noqa: F401  (the module-scoped fixture)
)

pytest.importorskip("lycoris.kohya")

# BOFT's blocks grow with the width: a few layers (the fused qkv and linear1, the attention outputs, the
# embedders) at a dim that splits FLUX.1's 9216, 21504 and 3072 rows (power2factorization)
BOFT_FILE = """\
unet_target_module = []
unet_target_name = ['double_blocks\\.[01]\\..*_attn\\..*', 'single_blocks\\.0\\.linear1', 'img_in', 'txt_in',
  'final_layer\\.linear']
text_encoder_target_module = []
exclude_name = ['.*norm.*']
"""
# each file reaches Flux's final layer without the single blocks' linear2: the target
# `proj_out` with the single blocks' proj_out the file leaves out `exclude`d (a rank-0 block in the plan)
FINAL = 'unet_target_name = ["final_layer.linear"]\n'
FILES = {
    "ia3": (FINAL + PRESETS["no_singles"], 4),
    "diag-oft": (  # CLIP's attention too
        PRESETS["double_attention"]
        .split("[name_algo_map")[0]
        .replace('*_attn.*"]', '*_attn.*", "final_layer.linear"]'),
        4,
    ),
    "glora": (FINAL + PRESETS["no_singles"], 4),
    "boft": (BOFT_FILE, 42),
}
CLASSES = {
    "ia3": "IA3Module",
    "diag-oft": "DiagOFTModule",
    "boft": "ButterflyOFTModule",
    "glora": "GLoRAModule",
}


def _converted(tmp_path: Path, preset: str, algo: str, dim: int, overrides=None):
    from tests.unit.convert_kit import component_file, errors, images, kohya, plan_of

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(
        tmp_path,
        command="accelerate launch flux_train_network.py --pretrained_model_name_or_path "
        "black-forest-labs/FLUX.1-dev --clip_l clip_l.safetensors --t5xxl t5xxl.safetensors "
        "--ae ae.safetensors --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        f'--network_dim={dim} --network_alpha=1 --network_args "algo={algo}" "preset={preset}" '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out "
        "--model_prediction_type raw --guidance_scale 1.0",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return plan_of(outcome, tmp_path, overrides)


def _file(tmp_path: Path, algo: str) -> Path:
    path = tmp_path / "preset.toml"
    path.write_text(FILES[algo][0], encoding="utf-8")
    return path


@pytest.mark.parametrize("algo", sorted(FILES))
def test_file_layers_are_the_whole_network_algos_modules(models, algo, tmp_path, monkeypatch):  # noqa: F811
    path = _file(tmp_path, algo)
    dim = FILES[algo][1]
    plan = _converted(tmp_path, path.name, algo, dim)
    a = plan.adapter
    assert a.kind == algo and [b.rank for b in a.blocks] == [0]  # the single blocks' proj_out left out
    assert re.search(a.blocks[0].pattern, "single_transformer_blocks.1.proj_out")
    assert "proj_out" in a.denoiser_targets and not re.search(a.blocks[0].pattern, "proj_out")
    assert bool(a.fused) == (algo != "ia3")  # IA^3's per-row scales need no sharing across the parts
    made = _lycoris_network(models, str(path), monkeypatch, algo, dim)
    theirs = {m.lora_name for m in made}
    assert theirs
    assert sorted(_planned_names(models, a) ^ theirs) == []
    for module in made:
        assert type(module).__name__ == CLASSES[algo], module.lora_name
        out = module.org_module[0].weight.shape[0]
        if algo == "diag-oft":
            assert module.block_size == factorization(out, a.oft_block_size)[0], module.lora_name
        elif algo == "boft":
            b, m = power2_factorization(out, a.oft_block_size)
            assert (module.block_size, module.block_num) == (b, m), module.lora_name
        elif algo == "glora":
            assert module.lora_dim == a.rank and module.scale == a.alpha / a.rank, module.lora_name


def _wide_flux() -> nn.Module:
    """kohya's Flux rebuilt on the meta device (lycoris_flow_file.flux_model's rows) with FLUX.1's output
    widths (library/flux_models.py: 3072 wide, qkv 9216, linear1 21504, ...; the rest 8), so that LyCORIS's
    block sizes are the ones it builds on FLUX.1."""
    from dbspec.convert.kohya.lycoris_flow_file import flux_model

    widths = {"qkv": 9216, "linear1": 21504, "proj": 3072, "mlp.0": 12288, "mlp.2": 3072, "linear2": 3072}
    widths |= {"mod.lin": 18432, "modulation.lin": 9216, "img_in": 3072, "txt_in": 3072}
    classes: dict[str, type] = {}
    modules: dict[str, nn.Module] = {}
    with torch.device("meta"):
        for path, cls, kind in flux_model():
            if kind:
                out = next((w for end, w in widths.items() if path.endswith(end)), 8)
                module = nn.Linear(8, out)
            else:
                module = classes.setdefault(cls, type(cls, (nn.Module,), {}))()
            modules[path] = module
            if path:
                parent, _, name = path.rpartition(".")
                modules[parent].add_module(name, module)
    return modules[""]


def _lycoris_network(built, preset: str, monkeypatch, algo: str, dim: int) -> list:

    import lycoris.kohya as lycoris_kohya

    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0, dim, 1.0, None, built["te"], _wide_flux(), algo=algo, preset=preset
    )
    return [*made.unet_loras, *made.text_encoder_loras]


@pytest.mark.parametrize("algo", sorted(FILES))
def test_file_run_trains(algo, tmp_path):
    path = _file(tmp_path, algo)
    base = ["model.base=builtin:tiny-flux", "model.text_encoder_files=[]", 'model.vae=""', "schedule.steps=2"]
    base += ["model.t5_max_length=16"]
    _converted(tmp_path, path.name, algo, FILES[algo][1], overrides=base)
    whole = execute(compile_spec(_spec(tmp_path), [*base, "output.dir=whole"]), keep_models=True)
    assert whole.status == "finished" and whole.steps == 2
    trained = [
        p for n, p in whole.components.unet.named_parameters() if p.requires_grad and "base_layer" not in n
    ]
    assert trained and any(p.abs().sum() > 0 for p in trained)
    adapted = {
        n.split(".base_layer")[0] for n, _ in whole.components.unet.named_modules() if ".base_layer" in n
    }
    assert "proj_out" in adapted  # the final layer, not the single blocks' proj_out the file leaves out
    assert not any(re.fullmatch(r"single_transformer_blocks\.\d+\.proj_out", n) for n in adapted)


# map entries with their own dims over whole fused layers ([[adapter.blocks]]): GLoRA's rank / alpha and
# Diag-OFT's block size (one that splits tiny-flux's 16-row parts too) on the double blocks' image q/k/v and
# CLIP's attention; GLoRA's file reaches the final layer's Linear without the single blocks' linear2 (a
# rank-0 block for diffusers' single blocks' proj_out)
_CLIP_NAMES: list = []  # CLIP-L's Linears (the models fixture's), set by the test
ENTRY_FILES = {
    "glora": """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "final_layer.linear"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["single_blocks.*", "*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
dim = 8
alpha = 2

[module_algo_map.CLIPAttention]
dim = 2
alpha = 3
""",
    # BOFT: the entries' block sizes split FLUX.1's 9216-row qkv and CLIP's 768 rows (power2factorization)
    "boft": BOFT_FILE.replace(
        "text_encoder_target_module = []", 'text_encoder_target_module = ["CLIPAttention"]'
    )
    + """
[name_algo_map.'double_blocks\\.[01]\\.img_attn\\.qkv']
dim = 18

[module_algo_map.CLIPAttention]
dim = 6
""",
    "diag-oft": """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["single_blocks.*", "*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
dim = 2

[module_algo_map.CLIPAttention]
dim = 8
""",
}


def _entry_file(tmp_path: Path, algo: str) -> Path:
    path = tmp_path / "preset.toml"
    path.write_text(ENTRY_FILES[algo], encoding="utf-8")
    return path


def _planned(adapter, lora_name: str) -> tuple[int, float]:
    """The plan's (rank or block size, alpha) of the layer kohya's LyCORIS names `lora_name`: the compiler's
    reading of the first diffusers part (compiler/fused.py), a CLIP layer's first matching text block."""
    from dbspec.compiler.fused import _rank
    from dbspec.convert.kohya.lycoris_flow_file import flux_model

    if lora_name.startswith("lora_unet_"):
        path = next(p for p, _, k in flux_model() if k and "lora_unet_" + p.replace(".", "_") == lora_name)
        rank, alpha, _, _ = _rank(diffusers_parts(path)[0], adapter)
        return rank, alpha
    name = "text_encoder." + lora_name.removeprefix("lora_te1_")
    for block in adapter.text_encoder_blocks:
        layer = next(n for n, _ in _CLIP_NAMES if "text_encoder." + n.replace(".", "_") == name)
        if re.search(block.pattern, "text_encoder." + layer):
            return block.rank, block.alpha
    oft = adapter.kind in ("diag-oft", "boft")
    return (adapter.oft_block_size if oft else adapter.rank), adapter.alpha


@pytest.mark.parametrize("algo", sorted(ENTRY_FILES))
def test_file_entries_dims_are_blocks(models, algo, tmp_path, monkeypatch):  # noqa: F811
    global _CLIP_NAMES
    _CLIP_NAMES = [(n, m) for n, m in models["te"][0].named_modules() if isinstance(m, nn.Linear)]
    path = _entry_file(tmp_path, algo)
    dim = FILES[algo][1]  # the network's: BOFT's splits FLUX.1's widths
    plan = _converted(tmp_path, path.name, algo, dim)
    a = plan.adapter
    assert a.kind == algo and a.blocks and a.fused
    made = _lycoris_network(models, str(path), monkeypatch, algo, dim)
    assert sorted(_planned_names(models, a) ^ {m.lora_name for m in made}) == []
    own = set()
    for module in made:
        assert type(module).__name__ == CLASSES[algo], module.lora_name
        rank, alpha = _planned(a, module.lora_name)
        out = module.org_module[0].weight.shape[0]
        if algo == "diag-oft":
            assert module.block_size == factorization(out, rank)[0], module.lora_name
        elif algo == "boft":
            b, m = power2_factorization(out, rank)
            assert (module.block_size, module.block_num) == (b, m), module.lora_name
        else:
            assert (module.lora_dim, module.scale) == (rank, alpha / rank), module.lora_name
        own.add(rank)
    assert len(own) == 3  # the network's dim and both entries' own


@pytest.mark.parametrize("algo", sorted(ENTRY_FILES))
def test_file_entries_run_trains(algo, tmp_path):
    path = _entry_file(tmp_path, algo)
    dim = FILES[algo][1]
    base = ["model.base=builtin:tiny-flux", "model.text_encoder_files=[]", 'model.vae=""', "schedule.steps=2"]
    base += ["model.t5_max_length=16"]
    _converted(tmp_path, path.name, algo, dim, overrides=base)
    plan = compile_spec(_spec(tmp_path), [*base, "output.dir=whole"])
    assert plan.adapter.blocks and plan.adapter.text_encoder_blocks  # the entries' own dims
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished" and whole.steps == 2
    assert all(math.isfinite(loss) for loss in whole.losses)
    for which in (whole.components.unet, whole.components.text_encoders[0]):  # the denoiser, CLIP-L
        assert [n for n, p in which.named_parameters() if p.requires_grad]
