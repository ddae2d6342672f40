"""A run of several kinds on Flux started from lycoris.kohya's file of that network (`--network_weights`
with a preset file of module_algo_map / name_algo_map entries; issue 12, was DBS356): runtime/mixed_init.py
loads each kohya module's tensors into its kind's layers, a fused Linear's (q/k/v, linear1) split into its
parts as that kind's single-kind start splits them (LoCon's one down shared and its up's rows, LoHa's /
LoKr's factors, full's diff rows, IA^3's scale rows, Diag-OFT's blocks). The file is a first tiny run's kohya
export; lycoris-lora 4.1.3's network built from the same preset file on kohya's Flux layers, that file
loaded into it (create_network, apply_to, load_state_dict as kohya's load_weights), gives every layer the
output of the second run's started parts stacked in kohya's rows; the LoKr network's second run trains
(the others' spec trains as the first run). The state of a run started from a file resumes bit-exact in
test_lycoris_flow_start_file.py's test_file_starts_where_lycoris_loads_it_trains_and_resumes (Flux's
fused layers, each kind alone) and test_lycoris_mixed_file.py's
test_mixed_preset_run_starts_from_its_file_as_lycoris (several kinds from one file, SD); these kinds on
Flux's fused layers in test_lycoris_mixed_flow_full."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model, mmdit, sd3_parts
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_mixed_flow_full import (
    _BASE,
    FLUX_FILE,
    _check_kohya_outputs,
    _kohya_layers,
    _kohya_tree,
    _run,
)
from tests.runtime.test_lycoris_preset_file_flow import _spec, _unwrapped
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip

lycoris_kohya = pytest.importorskip("lycoris.kohya")


def _converted(tmp_path: Path, preset: str, algo: str, overrides, flags: str = ""):
    from tests.unit.convert_kit import flux_lycoris, plan_of

    outcome = flux_lycoris(tmp_path, f'"algo={algo}" "preset={preset}"', flags)
    return plan_of(outcome, tmp_path, overrides)


@pytest.mark.parametrize(
    ("algo", "other", "qkv", "linear1"),
    [
        ("locon", "loha", "full", "ia3"),
        ("lokr", "locon", "diag-oft", "ia3"),
        ("locon", "lokr", "full", "glora"),
    ],
)
def test_mixed_flux_run_starts_from_its_lycoris_file(tmp_path, monkeypatch, algo, other, qkv, linear1):
    text = FLUX_FILE.replace("OTHER", other).replace("QKV", qkv).replace("LINEAR1", linear1)
    # the Diag-OFT entry's own constraint and row rescale (its block's alpha and `rescaled`, was DBS403)
    text = text.replace('algo = "diag-oft"', 'algo = "diag-oft"\nconstraint = 0.001\nrescaled = true')
    base = ["model.base=builtin:tiny-flux", *_BASE]
    kinds = {"full", "ia3", qkv, linear1, {"locon": "lora"}.get(other, other)}
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    for folder in (first_dir, second_dir):
        folder.mkdir()
        (folder / "mixed.toml").write_text(text, encoding="utf-8")
    _converted(first_dir, "mixed.toml", algo, base)
    _, first, _ = _run(first_dir, kinds, base, resume=False)  # the file alone
    export = next(Path(first.final).glob("*.kohya.safetensors"))
    shutil.copy(export, second_dir / "prev.safetensors")

    plan = _converted(second_dir, "mixed.toml", algo, base, "--network_weights=prev.safetensors")
    assert plan.adapter.init_weights and plan.adapter.fused
    assert {b.kind for b in plan.adapter.blocks} == kinds
    oft = [(b.alpha, b.rescaled) for b in plan.adapter.blocks if b.kind == "diag-oft"]
    assert oft == ([(0.001, "on")] if qkv == "diag-oft" else [])
    comps, count = _loaded(plan)
    from safetensors.torch import load_file

    tensors = load_file(str(second_dir / "prev.safetensors"))
    names = {k.split(".")[0] for k in tensors}
    assert count == len(names) == plan.adapter.init_layers

    # lycoris-lora's network from the same preset file on kohya's layers, the file loaded into it
    unet = comps.unet.eval()
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    tree = _kohya_tree(layers)
    clip = _kohya_clip(_unwrapped(comps.text_encoders[0]))
    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, [clip, nn.Module()], tree, algo=algo, preset=str(second_dir / "mixed.toml")
    )
    made.apply_to([clip, nn.Module()], tree, apply_text_encoder=True, apply_unet=True)
    result = made.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys and not result.missing_keys, result
    unet_names = {n for n in names if n.startswith("lora_unet_")}
    assert {m.lora_name for m in made.unet_loras} == unet_names
    made.eval()
    _check_kohya_outputs(tree, layers, unet_names)  # every trained layer started where the file puts it

    # the LoKr network's run (Diag-OFT's rescale beside full, LoCon and IA^3 parts) trains from the file (its
    # state resumes: see the module docstring); the other networks' spec trained above (the first run), their
    # start from the file is checked layer by layer: no second run
    if qkv != "diag-oft":
        return
    _, second, _ = _run(second_dir, kinds, base, resume=False)
    assert second.status == "finished" and len(second.losses) == 2


def _sd3_converted(tmp_path: Path, flags: str = "", args: str = ""):
    from tests.unit.convert_kit import component_file, errors, images, kohya, plan_of

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l", "clip_g", "t5xxl"):
        component_file(tmp_path / f"{name}.safetensors")
    outcome = kohya(
        tmp_path,
        command="accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
        "stabilityai/stable-diffusion-3.5-large --clip_l clip_l.safetensors --clip_g clip_g.safetensors "
        "--t5xxl t5xxl.safetensors --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        f'--network_dim=4 --network_alpha=1 --network_args "algo=lokr" "preset=mixed.toml" {args} '
        f"--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out {flags}",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd3", *_BASE])


def test_mixed_sd3_run_starts_from_its_lycoris_file(tmp_path, monkeypatch):
    """SD3: full on the x blocks' q/k/v, IA^3 on the context blocks' q/k/v and LoCon on the context blocks'
    modulation Linear (the last one's halves of rows held (shift, scale) by kohya: its `lora_up` halves
    swapped into diffusers' order) beside a LoKr network's layers."""
    from dbspec.runtime.sd3_kohya import swapped
    from tests.runtime.test_lycoris_mixed_flow_full import SD3_FILE

    text = SD3_FILE.replace(
        '[name_algo_map."joint_blocks.*.context_block.adaLN_modulation.1"]\nalgo = "full"',
        '[name_algo_map."joint_blocks.*.context_block.adaLN_modulation.1"]\nalgo = "locon"',
    )
    assert text != SD3_FILE
    base = ["model.base=builtin:tiny-sd3", *_BASE]
    kinds = {"full", "ia3", "lora"}
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    for folder in (first_dir, second_dir):
        folder.mkdir()
        (folder / "mixed.toml").write_text(text, encoding="utf-8")
    _sd3_converted(first_dir)
    _, first, _ = _run(first_dir, kinds, base, resume=False)
    shutil.copy(next(Path(first.final).glob("*.kohya.safetensors")), second_dir / "prev.safetensors")

    plan = _sd3_converted(second_dir, "--network_weights=prev.safetensors")
    assert plan.adapter.init_weights and plan.adapter.fused
    comps, count = _loaded(plan)
    from safetensors.torch import load_file

    tensors = load_file(str(second_dir / "prev.safetensors"))
    names = {k.split(".")[0] for k in tensors}
    assert "lora_unet_joint_blocks_1_context_block_adaLN_modulation_1.lora_up.weight" in tensors
    assert count == len(names) == plan.adapter.init_layers

    unet = comps.unet.eval()
    layers = _kohya_layers(unet, mmdit(2, ()), sd3_parts, swapped)
    assert layers["joint_blocks.1.context_block.adaLN_modulation.1"][1] is not None  # kohya's rows
    tree = _kohya_tree(layers)
    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, [nn.Module()] * 3, tree, algo="lokr", preset=str(second_dir / "mixed.toml")
    )
    made.apply_to([], tree, apply_text_encoder=False, apply_unet=True)
    result = made.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys and not result.missing_keys, result
    assert {m.lora_name for m in made.unet_loras} == names
    made.eval()
    _check_kohya_outputs(tree, layers, names)
    # its spec trained above (the first run); a run from a file trains in
    # test_mixed_flux_run_starts_from_its_lycoris_file's LoKr network (it resumes: the module docstring),
    # on SD3 in
    # test_mixed_sd3_dim_from_weights_file_with_another_kinds_patch_convolution[lokr]: no second run


@pytest.mark.parametrize(
    ("algo", "kinds", "fused"),
    [
        ("locon", {"dylora", "loha"}, {"single_blocks_0_linear1", "double_blocks_0_img_attn_qkv"}),
        ("dylora", {"lora", "lokr", "diag-oft", "full", "ia3"}, set()),
    ],
    ids=["locon-network", "dylora-network"],
)
def test_mixed_flux_run_beside_dylora_entries_takes_only_their_alphas(
    tmp_path, monkeypatch, algo, kinds, fused
):
    """A LoCon network whose preset file gives DyLoRA to the single blocks' linear1 (dim 4, alpha 2), the
    double blocks' image q/k/v (the network's) and CLIP-L's attention, LoHa to the text q/k/v (was DBS356);
    a DyLoRA network whose preset gives LoCon, LoKr, Diag-OFT, full and IA^3 entries (was DBS403):
    lycoris-lora 4.1.3's network from the same preset file on kohya's Flux layers, the first run's export
    loaded into it (load_state_dict(strict=False), as kohya's load_weights), takes each DyLoraModule's
    `alpha` alone (its weights are `up_list` / `down_list`, the file's `lora_down` / `lora_up` unexpected),
    one alpha per fused Linear, the other modules whole. The second run starts every layer alike: the others
    moved to the file's outputs (1e-5), the DyLoRA parts at their fresh init and the file's alphas; a file
    DyLoRA alpha other than its block's is refused when the run starts; the run trains."""
    from safetensors.torch import load_file, save_file

    from dbspec.runtime.dylora import DyloraLayer
    from dbspec.runtime.execute import execute
    from dbspec.runtime.init_weights import load_init_weights
    from tests.runtime.runspec import compile_spec
    from tests.runtime.test_lycoris_mixed_flow_dylora import DYLORA_NETWORK, _their_network
    from tests.runtime.test_lycoris_mixed_flow_dylora import FLUX_FILE as DYLORA_FILE
    from tests.unit.convert_kit import flux_lycoris, plan_of

    preset = (
        DYLORA_FILE.replace("OTHER", "loha")
        if algo == "locon"
        else DYLORA_NETWORK.replace("QKV", "diag-oft").replace("DIM", "4")
    )
    args = f'"algo={algo}" "block_size=2" "preset=mixed.toml"'
    base = ["model.base=builtin:tiny-flux", *_BASE]
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    for folder in (first_dir, second_dir):
        folder.mkdir()
        (folder / "mixed.toml").write_text(preset, encoding="utf-8")
    plan_of(flux_lycoris(first_dir, args), first_dir, base)
    first = execute(compile_spec(_spec(first_dir), [*base, "output.dir=whole"]))  # the file: its export
    shutil.copy(next(Path(first.final).glob("*.kohya.safetensors")), second_dir / "prev.safetensors")

    outcome = flux_lycoris(second_dir, args, "--network_weights=prev.safetensors")
    plan = plan_of(outcome, second_dir, base)
    assert plan.adapter.init_weights and plan.adapter.init_partial and plan.adapter.fused
    assert {b.kind for b in plan.adapter.blocks} - {"adapter"} == kinds
    comps, count = _loaded(plan)
    tensors = load_file(str(second_dir / "prev.safetensors"))
    names = {k.split(".")[0] for k in tensors}
    assert count == len(names) == plan.adapter.init_layers

    unet = comps.unet.eval()
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    tree = _kohya_tree(layers)
    clip = _kohya_clip(_unwrapped(comps.text_encoders[0]))
    theirs, made = _their_network(monkeypatch, algo, second_dir / "mixed.toml", [clip, nn.Module()], tree)
    dylora = {n for n, m in theirs.items() if type(m).__name__ == "DyLoraModule"}
    unet_dylora = {n for n in dylora if n.startswith("lora_unet_")}
    assert unet_dylora and any(n.startswith("lora_te1_") for n in dylora)
    result = made.load_state_dict(tensors, strict=False)
    assert {k.split(".")[0] for k in result.unexpected_keys} == dylora
    assert {k.split(".", 1)[1] for k in result.unexpected_keys} == {"lora_down.weight", "lora_up.weight"}
    assert {k.split(".")[0] for k in result.missing_keys} == dylora
    assert {k.split(".")[1] for k in result.missing_keys} == {"up_list", "down_list"}
    assert {n for n in names if n.startswith("lora_unet_")} == {
        n for n in theirs if n.startswith("lora_unet_")
    }
    made.eval()
    by_name = {"lora_unet_" + path.replace(".", "_"): parts for path, (parts, _) in layers.items()}
    assert {n for n in unet_dylora if len(by_name[n]) > 1} == {"lora_unet_" + n for n in fused}
    for name in sorted(dylora):  # the file's alpha in LyCORIS's buffer and on every part of ours
        alpha = float(tensors[f"{name}.alpha"])
        assert float(theirs[name].alpha) == alpha, name
        if name in unet_dylora:
            assert all(isinstance(p, DyloraLayer) for p in by_name[name]), name
            assert {float(p.lora_alpha["default"]) for p in by_name[name]} == {alpha}, name
    moved = {n for n in names if n.startswith("lora_unet_")} - dylora
    _check_kohya_outputs(tree, layers, moved)  # DyLoRA layers the base (fresh ups), the others the file's

    # the LoCon network's run trains from the file (DyLoRA entries beside other kinds on Flux resume in
    # test_lycoris_mixed_flow_dylora; a run from a file: the module docstring);
    # the DyLoRA network's spec trained above (the first run), its start checked layer by layer
    if algo == "locon":
        _, second, _ = _run(second_dir, kinds, base, resume=False)
        assert second.status == "finished"

    name = sorted(unet_dylora)[0]  # a DyLoRA alpha of its own: LyCORIS would train at it
    tensors[f"{name}.alpha"] = tensors[f"{name}.alpha"] * 3
    save_file(tensors, str(second_dir / "prev.safetensors"))
    with pytest.raises(ValueError, match=f"{name}.alpha"):  # on the models started above
        load_init_weights(plan, comps.unet, comps.text_encoders)


# a LoKr network with full, LoCon and LoHa entries on the denoiser only (no CLIP module)
FROM_WEIGHTS_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*", "img_in", "txt_in"]
text_encoder_target_module = []
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "full"
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "locon"
dim = 2
alpha = 1
[name_algo_map."single_blocks.*.linear1"]
algo = "loha"
[name_algo_map.txt_in]
algo = "full"
"""


@pytest.mark.parametrize(
    ("algo", "kinds", "classes"),
    [
        ("lokr", {"full", "lora", "loha"}, {"LokrModule", "FullModule", "LoConModule", "LohaModule"}),
        ("locon", {"full"}, {"FullModule", "LoConModule"}),
        (
            "lokr-oft",
            {"full", "diag-oft", "boft", "glora"},
            {"LokrModule", "FullModule", "DiagOFTModule", "ButterflyOFTModule", "GLoRAModule"},
        ),
    ],
)
def test_mixed_flux_dim_from_weights_file_with_full_modules_builds_as_lycoris(
    tmp_path, monkeypatch, algo, kinds, classes
):
    """lycoris.kohya --dim_from_weights on Flux with a file mixing LoKr, full (a fused q/k/v and txt_in),
    LoCon and LoHa modules (was DBS403): a LoKr adapter with blocks of kind full / lora / loha over the
    modules' diffusers parts, init_scale 2, started from the file; a LoCon network's file with full modules
    likewise, a LoRA adapter (LoCon at two ranks) with full blocks. Modules holding `dora_scale` (was
    DBS403; make_module_from_state_dict builds them with weight_decompose): the LoKr file's from a dora_wd
    network whose LoHa entry's weight_decompose is false (the adapter's dora, the fused LoCon q/k/v
    decomposed, the fused LoHa linear1 `dora = "off"`), the LoCon file's from a LoCon entry's own
    weight_decompose (its fused q/k/v's block `dora = "on"`, LoConModule's form), each fused Linear's (out, 1)
    `dora_scale` split over its parts' rows. lycoris-lora 4.1.3's create_network_from_weights on kohya's
    Flux layers, applied, the file loaded (train_network.py's load_weights: the FullModules at W + 2 diff),
    decomposes the same modules and gives every layer the converted run's started output (1e-5); the run
    trains, its export's `dora_scale` on the same modules."""
    from safetensors.torch import load_file, save_file

    from dbspec.runtime.execute import execute
    from dbspec.runtime.tiny import build_pipeline
    from tests.runtime.runspec import compile_spec
    from tests.unit.convert_kit import flux_lycoris, plan_of

    base = ["model.base=builtin:tiny-flux", *_BASE]
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    preset, wd = FROM_WEIGHTS_FILE, ""
    if algo == "locon":  # no LoHa entry: the LoCon modules lead; the LoCon entry's own weight_decompose
        preset = preset.replace('[name_algo_map."single_blocks.*.linear1"]\nalgo = "loha"\n', "")
        preset = preset.replace("dim = 2\nalpha = 1\n", "dim = 2\nalpha = 1\nweight_decompose = true\n")
        assert preset.count("weight_decompose") == 1 and "loha" not in preset
    if algo == "lokr":  # a dora_wd network: every LoKr and LoCon module decomposed, the LoHa entry not
        wd = ' "dora_wd=True"'
        preset = preset.replace(
            'linear1"]\nalgo = "loha"\n', 'linear1"]\nalgo = "loha"\nweight_decompose = false\n'
        )
        assert "weight_decompose = false" in preset
    if (
        algo == "lokr-oft"
    ):  # Diag-OFT (its own constraint and rescale), BOFT and GLoRA beside LoKr (was DBS403)
        algo = "lokr"
        for old, new in (
            (
                'img_attn.qkv"]\nalgo = "full"',
                # dim 6: blocks of 6 over the 48 stacked rows, spanning tiny-flux's 16-row q, k, v (the
                # parts share them: runtime/fused_oft.py; was DBS403)
                'img_attn.qkv"]\nalgo = "diag-oft"\ndim = 6\nconstraint = 0.001\nrescaled = true',
            ),
            ('algo = "locon"\ndim = 2', 'algo = "boft"\ndim = 36'),  # FLUX.1's 9216 rows: 256 blocks
            ('linear1"]\nalgo = "loha"', 'linear1"]\nalgo = "glora"'),
            # Flux's final layer full, CLIP-L's attention LoKr (the adapter's) and MLP full (was DBS403)
            ('"img_in", "txt_in"]', '"img_in", "txt_in", "final_layer.linear"]'),
            ("text_encoder_target_module = []", 'text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]'),
            (
                "[name_algo_map.txt_in]",
                '[name_algo_map."final_layer.linear"]\nalgo = "full"\n[name_algo_map.txt_in]',
            ),
        ):
            assert old in preset
            preset = preset.replace(old, new)
        preset += '[module_algo_map.CLIPMLP]\nalgo = "full"\n'
    for folder in (first_dir, second_dir):
        folder.mkdir()
        (folder / "mixed.toml").write_text(preset, encoding="utf-8")
    plan_of(flux_lycoris(first_dir, f'"algo={algo}" "preset=mixed.toml"{wd}'), first_dir, base)
    first = execute(compile_spec(_spec(first_dir), [*base, "output.dir=whole"]))  # the file: its export
    shutil.copy(next(Path(first.final).glob("*.kohya.safetensors")), second_dir / "prev.safetensors")
    tensors = load_file(str(second_dir / "prev.safetensors"))
    decomposed = {k.split(".")[0] for k in tensors if k.endswith(".dora_scale")}
    qkv, linear1 = "lora_unet_double_blocks_0_txt_attn_qkv", "lora_unet_single_blocks_0_linear1"
    if wd:  # the LoKr and LoCon modules, the LoHa not; else the LoCon entry's alone
        assert qkv in decomposed and "lora_unet_double_blocks_0_img_attn_proj" in decomposed
        assert linear1 not in decomposed and "lora_unet_double_blocks_0_img_attn_qkv" not in decomposed
    else:
        assert decomposed == ({qkv} if algo == "locon" else set())
    if decomposed:  # a fused q/k/v's magnitude per output row of kohya's stacked Linear
        assert tensors[f"{qkv}.dora_scale"].shape == (tensors[f"{qkv}.lora_up.weight"].shape[0], 1)
    t5 = build_pipeline("builtin:tiny-flux").text_encoder_2.float().eval()  # the run's base T5-XXL
    t5_names = {}
    if "GLoRAModule" in classes:  # T5-XXL modules of other kinds than the LoKr adapter's (was DBS403)
        t5_names = _t5_modules(t5, tensors)
        save_file(tensors, str(second_dir / "prev.safetensors"))
    names = {k.split(".")[0] for k in tensors}
    assert {k.rsplit(".", 1)[-1] for k in tensors} >= {"diff", "diff_b", "weight"}

    # the OFT / GLoRA variant with --scale_weight_norms: each module's own apply_max_norm (was DBS403); a
    # block's own dora beside max_norm stays refused (DBS583), so the others run without
    norms = "GLoRAModule" in classes
    outcome = flux_lycoris(
        second_dir,
        '"algo=lokr" "preset=mixed.toml"',
        "--dim_from_weights --network_weights=prev.safetensors"
        + (" --scale_weight_norms 1" if norms else ""),
    )
    plan = plan_of(outcome, second_dir, base)
    a = plan.adapter
    assert (a.max_norm, a.max_norm_form) == ((1.0, "lycoris") if norms else (0.0, "kohya"))
    own = {"locon": "lora"}.get(algo, algo)
    assert (a.kind, a.init_scale, a.init_partial) == (own, 2.0, True) and a.init_weights and a.fused
    assert {b.kind for b in a.blocks} - {"adapter"} == kinds
    # each LoRA / LoHa block's dora, the LoCon-led run's own LoRA blocks under the adapter's kind
    doras = {{"adapter": a.kind}.get(b.kind, b.kind): b.dora for b in a.blocks if b.rank}
    doras = {k: v for k, v in doras.items() if k in ("lora", "loha")}
    if wd:  # the adapter's dora; the LoCon block's the adapter's, the LoHa block's off
        assert (a.dora, doras) == (True, {"lora": "adapter", "loha": "off"})
    else:  # the LoCon entry's block's own (LoCon modules at its rank lead otherwise), else none
        assert (a.dora, doras) == (False, {"lora": "on"} if decomposed else {})
    assert a.dora_form == ("lycoris" if decomposed else "peft")
    oft = {(b.kind, b.alpha, b.rescaled) for b in a.blocks if b.kind in ("diag-oft", "boft")}
    constraint = float(torch.tensor(0.001, dtype=torch.float32))  # the file's float32 alpha, float()ed
    assert oft == ({("diag-oft", constraint, "on"), ("boft", 0.0, "adapter")} if "boft" in kinds else set())
    comps, count = _loaded(plan)
    assert count == len(names) == a.init_layers

    unet = comps.unet.eval()
    if "DiagOFTModule" in classes:  # blocks of 6 over q, k, v: one Parameter the parts share
        assert tensors["lora_unet_double_blocks_0_img_attn_qkv.oft_blocks"].shape == (8, 6, 6)
        attn = unet.transformer_blocks[0].attn
        assert len({id(p.lora_oft_blocks["default"]) for p in (attn.to_q, attn.to_k, attn.to_v)}) == 1
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    tree = _kohya_tree(layers)
    clip = build_pipeline("builtin:tiny-flux").text_encoder.float().eval()  # the run's base CLIP-L
    texts = [_kohya_clip(clip), copy.deepcopy(t5)]  # kohya's encoder list: CLIP-L, T5-XXL (lora_te2_)
    network, _ = lycoris_kohya.create_network_from_weights(1.0, None, None, texts, tree, tensors)
    network.apply_to(texts, tree, apply_text_encoder=True, apply_unet=True)
    assert {type(m).__name__ for m in network.unet_loras} == classes
    theirs = {m.lora_name for m in network.unet_loras if getattr(m, "wd", False)}
    assert theirs == {n for n in decomposed if n.startswith("lora_unet_")}
    result = network.load_state_dict(tensors, strict=False)  # train_network.py's load_weights
    assert not result.unexpected_keys, result
    unet_names = {n for n in names if n.startswith("lora_unet_")}
    assert {m.lora_name for m in network.unet_loras} == unet_names
    text_names = {m.lora_name: type(m).__name__ for m in network.text_encoder_loras}
    assert set(text_names) == names - unet_names
    oft = "GLoRAModule" in classes  # the variant with CLIP modules and the final layer
    assert bool(text_names) == oft == ("lora_unet_final_layer_linear" in names)
    if text_names:  # CLIP-L's attention LoKr (the adapter's), its MLP full; T5's LoCon, full, LoHa
        want = {"LokrModule", "FullModule", "LoConModule", "LohaModule", "DiagOFTModule", "GLoRAModule"}
        assert set(text_names.values()) == want and plan.train_text_encoder and a.t5_targets
        assert {n: text_names[n] for n in t5_names} == t5_names
    network.eval()
    _check_kohya_outputs(tree, layers, unet_names)  # every layer where LyCORIS's rebuilt network starts it
    if norms:
        _max_norm_as_lycoris(network, comps, a)
        _check_kohya_outputs(tree, layers, unet_names)  # after the step too
    ours = dict(comps.text_encoders[0].float().eval().named_modules())
    torch.manual_seed(0)
    for path, layer in clip.named_modules():  # every CLIP layer the file holds, where LyCORIS starts it
        if "lora_te1_" + f"text_model.{path}".replace(".", "_") in text_names:
            x = torch.randn(3, layer.in_features)
            with torch.no_grad():
                assert not torch.allclose(ours[path](x), ours[path].base_layer(x), atol=1e-6), path
                torch.testing.assert_close(ours[path](x), layer(x), rtol=0, atol=1e-5)
    ours = dict(comps.text_encoders[1].float().eval().named_modules())
    checked = set()
    for path, layer in texts[1].named_modules():  # T5's, each of its LyCORIS module's kind
        if "lora_te2_" + path.replace(".", "_") in t5_names:
            x = torch.randn(3, layer.in_features)
            with torch.no_grad():
                assert not torch.allclose(ours[path](x), ours[path].base_layer(x), atol=1e-6), path
                torch.testing.assert_close(ours[path](x), layer(x), rtol=0, atol=1e-5)
            checked.add("lora_te2_" + path.replace(".", "_"))
    assert checked == set(t5_names)

    # the LoKr networks' runs train (a run from a file resumes: see the module docstring), the dora_wd
    # one's export decomposing the file's modules; the LoCon network's spec trained above (the first run,
    # its LoCon entry's own dora exported on the fused q/k/v), its start from the file checked layer by
    # layer: no second run
    if algo == "locon":
        return
    _, second, exported = _run(second_dir, kinds, base, resume=False)
    assert second.status == "finished"
    assert {k.split(".")[0] for k in exported if k.endswith(".dora_scale")} == decomposed
    if "DiagOFTModule" in classes:  # `dbspec sample` loads the Diag-OFT kind back, its q, k, v tied again
        from dbspec.runtime.sample import SampleRequest, load_pipeline

        sampled = load_pipeline(SampleRequest(source=Path(second.output), settings=None)).transformer
        names = ("to_q", "to_k", "to_v")
        again, trained = sampled.float().transformer_blocks[0].attn, second.components.unet
        trained = trained.float().eval().transformer_blocks[0].attn
        assert len({id(getattr(again, n).lora_oft_blocks["default"]) for n in names}) == 1
        x = torch.randn(3, again.to_q.base_layer.in_features)
        with torch.no_grad():
            ours = torch.cat([getattr(trained, n)(x) for n in names], -1)
            loaded = torch.cat([getattr(again, n)(x) for n in names], -1)
        torch.testing.assert_close(loaded, ours, rtol=0, atol=1e-5)
    for name in t5_names:  # T5's modules trained from the file and exported in their kind's keys
        keys = {k.split(".", 1)[1] for k in exported if k.startswith(name + ".")}
        assert keys and not any(
            torch.equal(exported[f"{name}.{k}"], tensors[f"{name}.{k}"]) for k in keys - {"alpha"}
        )


def _max_norm_as_lycoris(network, comps, adapter) -> None:
    """--scale_weight_norms: lycoris.kohya's apply_max_norm_regularization over the network built from the
    file (its LoCon / LoHa / LoKr / Diag-OFT / BOFT modules scaled, the full and GLoRA ones skipped) and
    dbspec's over the started run's layers (a fused Linear one module) at a limit some exceed: the same
    count and norms, and every layer's output after (1e-5; the CLIP / T5 modules too, by their norms)."""
    from dbspec.runtime.max_norm import apply_max_norm, lycoris_norm_modules, lycoris_update

    modules = lycoris_norm_modules(comps.unet, comps.text_encoders, adapter.fused)
    with torch.no_grad():
        norms = sorted(float(lycoris_update(m).norm()) for m in modules)
    limit = norms[len(norms) // 2]
    ours = apply_max_norm(modules, limit)
    theirs = network.apply_max_norm_regularization(limit, "cpu")
    assert ours[0] == int(theirs[0]) and 0 < ours[0] < len(modules)
    torch.testing.assert_close(
        torch.tensor(ours[1:]), torch.tensor([float(theirs[1]), float(theirs[2])]), rtol=1e-6, atol=1e-7
    )


def _t5_modules(t5: nn.Module, tensors: dict) -> dict[str, str]:
    """LyCORIS's LoCon (block 0's q), full (its o), LoHa (block 1's wo), Diag-OFT (its q) and GLoRA (its o)
    modules on the tiny T5-XXL, their tensors drawn at random into `tensors` (kohya's lora_te2_ names); name
    -> LyCORIS class."""
    from lycoris.modules.diag_oft import DiagOFTModule
    from lycoris.modules.glora import GLoRAModule
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.locon import LoConModule

    torch.manual_seed(3)
    made = {}
    for path, cls in (
        ("encoder.block.0.layer.0.SelfAttention.q", LoConModule),
        ("encoder.block.0.layer.0.SelfAttention.o", None),
        ("encoder.block.1.layer.1.DenseReluDense.wo", LohaModule),
        ("encoder.block.1.layer.0.SelfAttention.q", DiagOFTModule),  # blocks of 2 (was DBS403)
        ("encoder.block.1.layer.0.SelfAttention.o", GLoRAModule),
    ):
        name, layer = "lora_te2_" + path.replace(".", "_"), t5.get_submodule(path)
        if cls is None:  # FullModule's file tensors: its diff (T5's Linears have no bias)
            tensors[f"{name}.diff"] = torch.randn_like(layer.weight) * 0.05
            made[name] = "FullModule"
            continue
        module = cls(name, copy.deepcopy(layer), 1.0, 2, 1.5)
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.2)
        tensors |= {f"{name}.{k}": v.detach().contiguous() for k, v in module.state_dict().items()}
        made[name] = cls.__name__
    return made


@pytest.mark.parametrize("kind", ["full", "glora", "lokr"])
def test_mixed_sd3_dim_from_weights_file_with_another_kinds_patch_convolution(tmp_path, monkeypatch, kind):
    """SD3's patch convolution (kohya's `x_embedder.proj`, diffusers' `pos_embed.proj`) as a full / GLoRA
    module beside LoKr, LoCon and full modules (was DBS403): the first run's export converted with
    --dim_from_weights is a lokr run with `conv_targets = ["pos_embed.proj"]` and a block of that kind
    there; lycoris-lora 4.1.3's create_network_from_weights on kohya's SD3 layers (the convolution among
    them), the file loaded (train_network.py's load_weights: FullModules at W + 2 diff), gives every layer
    and the convolution the converted run's started output (1e-5); the run trains.
    `lokr`: the network's LoKr on the convolution alone, full entries on the projections (was DBS403: no
    LoKr module of the denoiser's Linears): the adapter's own conv_targets, LyCORIS's split; its first run
    from the preset with the network's use_tucker (was DBS403, a spec's DBS578: the patch block's own
    `tucker`) exports the tensors of lycoris-lora's create_network from that preset with use_tucker (its
    `lokr_t2`), which the converted run rebuilds in Tucker form."""
    from safetensors.torch import load_file

    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import compile_spec
    from tests.runtime.test_lycoris_mixed_flow import _tree
    from tests.runtime.test_lycoris_mixed_flow_full import SD3_FILE
    from tests.unit.convert_kit import component_file, errors, images, kohya, plan_of

    text = SD3_FILE.replace('algo = "ia3"', 'algo = "locon"').replace(
        '"joint_blocks.*.context_block.adaLN_modulation.1"\n]',
        '"joint_blocks.*.context_block.adaLN_modulation.1", "x_embedder.proj"\n]',
    )
    if kind == "lokr":  # the network's LoKr on the patch convolution alone
        text += '[name_algo_map."joint_blocks.*.attn.proj"]\nalgo = "full"\n'
    else:
        text += f'[name_algo_map."x_embedder.proj"]\nalgo = "{kind}"\n'
    assert 'algo = "locon"' in text and "x_embedder.proj" in text
    base = ["model.base=builtin:tiny-sd3", *_BASE]
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    for folder in (first_dir, second_dir):
        folder.mkdir()
        (folder / "mixed.toml").write_text(text, encoding="utf-8")
    # the network's use_tucker: the patch LokrModule's (conv_dim 1: w2 below half tiny-sd3's 4 x 4 factor)
    tucker = '"use_tucker=True" "conv_dim=1" "decompose_both=True"' if kind == "lokr" else ""
    _sd3_converted(first_dir, args=tucker)
    first = execute(compile_spec(_spec(first_dir), [*base, "output.dir=whole"]))
    shutil.copy(next(Path(first.final).glob("*.kohya.safetensors")), second_dir / "prev.safetensors")
    tensors = load_file(str(second_dir / "prev.safetensors"))
    names = {k.split(".")[0] for k in tensors}
    assert "lora_unet_x_embedder_proj" in names

    images(second_dir / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l", "clip_g", "t5xxl"):
        component_file(second_dir / f"{name}.safetensors")
    outcome = kohya(
        second_dir,
        command="accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
        "stabilityai/stable-diffusion-3.5-large --clip_l clip_l.safetensors --clip_g clip_g.safetensors "
        "--t5xxl t5xxl.safetensors --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        "--network_dim=4 --network_alpha=1 --learning_rate=1e-2 --max_train_steps=2 "
        "--save_model_as=safetensors --output_dir=out --dim_from_weights --network_weights prev.safetensors",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    plan = plan_of(outcome, second_dir, base)
    a = plan.adapter
    assert (a.kind, a.init_scale, a.init_partial) == ("lokr", 2.0, True) and a.conv_targets == (
        "pos_embed.proj",
    )
    if kind == "lokr":  # the adapter's own convolution, its LoKr module the only one, in Tucker form: its
        # block's own `tucker` (beside other kinds)
        (patch,) = [b for b in a.blocks if re.search(b.pattern, "pos_embed.proj")]
        assert (patch.kind, patch.tucker, a.tucker, patch.conv_rank) == ("adapter", "on", False, 1)
        assert {k.split(".")[0] for k in tensors if ".lokr_" in k} == {"lora_unet_x_embedder_proj"}
    else:
        patch = next(b for b in a.blocks if re.search(b.pattern, "pos_embed.proj"))
        assert patch.kind == kind and not any(re.search(b.pattern, "pos_embed.proj") for b in a.blocks[1:])
    comps, count = _loaded(plan)
    assert count == len(names) == a.init_layers

    from dbspec.runtime.sd3_kohya import swapped

    unet = comps.unet.eval()
    layers = _kohya_layers(unet, mmdit(2, ()), sd3_parts, swapped)
    conv = unet.pos_embed.proj
    fused = {}
    for path, (parts, order) in layers.items():
        fused[path] = _kohya_tree({path: (parts, order)}).get_submodule(path)
    fused["x_embedder.proj"] = copy.deepcopy(conv.get_base_layer())
    tree = _tree(fused)
    if tucker:  # the first run's export holds what LyCORIS's network from the preset with use_tucker holds
        assert tensors["lora_unet_x_embedder_proj.lokr_t2"].dim() == 4
        network = kept_lycoris_presets(monkeypatch)
        theirs = copy.deepcopy(tree)
        made = lycoris_kohya.create_network(
            1.0,
            4,
            1.0,
            None,
            [nn.Module()] * 3,
            theirs,
            algo="lokr",
            preset=str(second_dir / "mixed.toml"),
            use_tucker="True",
            conv_dim="1",
            decompose_both="True",
        )
        made.apply_to([], theirs, apply_text_encoder=False, apply_unet=True)
        result = made.load_state_dict(tensors, strict=False)
        assert not result.unexpected_keys and not result.missing_keys, result
        assert {m.lora_name for m in made.unet_loras if getattr(m, "tucker", False)} == {
            "lora_unet_x_embedder_proj"
        }
    network, _ = lycoris_kohya.create_network_from_weights(1.0, None, None, [], tree, tensors)
    network.apply_to([], tree, apply_text_encoder=False, apply_unet=True)
    result = network.load_state_dict(tensors, strict=False)  # train_network.py's load_weights
    assert not result.unexpected_keys, result
    assert {m.lora_name for m in network.unet_loras} == names
    network.eval()
    _check_kohya_outputs(tree, layers, names)
    torch.manual_seed(0)
    x = torch.randn(2, conv.get_base_layer().in_channels, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(conv(x), conv.get_base_layer()(x), atol=1e-6)
        torch.testing.assert_close(tree.x_embedder.proj(x), conv(x), rtol=0, atol=1e-5)

    # the LoKr patch's run trains from the file (a run from a file resumes: see the module docstring); the
    # full / GLoRA patch's kinds trained on the patch in the first run above, their start from the file
    # checked layer by layer: no second run
    if kind == "lokr":
        _, second, _ = _run(second_dir, {"full"}, base, resume=False)
        assert second.status == "finished"
