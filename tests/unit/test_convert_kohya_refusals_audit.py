"""The kohya / LyCORIS combinations docs/converting.md says `dbspec convert kohya` still refuses, pinned
(issue 12 audit): each REFUSED case is the smallest kohya command (and LyCORIS preset file) of one such
sentence, refused with the documented code by a message naming the key and what it holds; each CONVERTS case
one whose sentence said it stayed refused while later work lifted it (the sentence now says it converts and
which test checks it against lycoris-lora 4.1.3). A refusal lifted later fails its case here: move it to
CONVERTS and fix its sentence in docs/converting.md. The comments' line numbers are converting.md's at the
audit (after 719d694e; line 108 is the `network_module = lycoris.kohya` row)."""

from __future__ import annotations

from pathlib import Path

import pytest
from convert_kit import (
    FLUX_LYCORIS,
    SD15,
    codes,
    component_file,
    empty_hub_cache,  # noqa: F401
    errors,
    images,
    kohya,
    plan_of,
)  # noqa: F401

from dbspec.convert.common.run import Outcome

SD = (
    f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} --train_data_dir=x "
    "--resolution=64 --network_module=lycoris.kohya --network_dim=4 --network_alpha=1 --learning_rate=1e-2 "
    "--max_train_steps=2 --save_model_as=safetensors --output_dir=out "
)
SD3 = (
    "accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
    "stabilityai/stable-diffusion-3.5-large --clip_l sd3/clip_l.safetensors --clip_g sd3/clip_g.safetensors "
    "--t5xxl sd3/t5xxl_fp16.safetensors --train_data_dir x --resolution 512 --save_model_as safetensors "
    "--network_module lycoris.kohya --network_dim 8 --network_alpha 4 --learning_rate 1e-4 "
    "--max_train_steps 10 "
)
# the U-Net's transformers, the entry on their feed-forwards (no k x k convolution: T-LoRA's default names
# conv_in / conv_out would stop kohya, DBS402)
SD_PRESET = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = []
[module_algo_map.FeedForward]
algo = "{algo}"
{extra}
"""
FLUX_PRESET = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = [{clip}]
exclude_name = ["*.norm*"]
[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "{algo}"
{extra}
"""
# the ResNets' k x k convolutions an entry's own (the transformers the network's)
RESNET_PRESET = """\
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
text_encoder_target_module = []
[module_algo_map.ResnetBlock2D]
algo = "{algo}"
{extra}
[module_algo_map.FeedForward]
algo = "{other}"
"""
PLAN_BASE = {
    "sd": ["model.base=builtin:tiny-sd1"],
    "flux": ["model.base=builtin:tiny-flux", "model.text_encoder_files=[]", 'model.vae=""'],
    "sd3": [],  # the published model's facts
}


def _sd(algo: str, extra: str = "") -> str:
    return SD_PRESET.format(algo=algo, extra=extra)


def _resnet(algo: str, extra: str, other: str) -> str:
    return RESNET_PRESET.format(algo=algo, extra=extra, other=other)


def _flux(algo: str, extra: str = "", clip: str = "") -> str:
    return FLUX_PRESET.format(algo=algo, extra=extra, clip=clip)


def _torch_lora(path: Path) -> None:
    """A torch.save LoRA file (kohya's save_model_as pt) of one LoCon module on builtin:tiny-sd1's first
    attention's to_q (32 -> 32) at SD's dim 4 and alpha 1."""
    import torch

    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "lora_down.weight": torch.zeros(4, 32),
        "lora_up.weight": torch.zeros(32, 4),
        "alpha": torch.tensor(1.0),
    }
    torch.save({f"{name}.{k}": v for k, v in tensors.items()}, path)


def _convert(tmp: Path, family: str, args: str, preset: str | None = None, flags: str = "") -> Outcome:
    images(tmp / "x" / "10_ohwx", 2, (512, 512) if family == "sd3" else (64, 64))
    if preset is not None:
        (tmp / "p.toml").write_text(preset, encoding="utf-8")
        args += ' "preset=p.toml"'
    if family == "flux":
        for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
            component_file(tmp / name)
    if family == "sd3":
        for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
            component_file(tmp / "sd3" / name)
    if "prev/w.pt" in flags:  # the file CONVERTS network_weights_pt_file starts from
        _torch_lora(tmp / "prev" / "w.pt")
    base = {"sd": SD, "flux": FLUX_LYCORIS, "sd3": SD3}[family]
    return kohya(tmp, allow=True, command=f"{base}--network_args {args} {flags}")


# id: (family, network_args, preset file, flags, code, what the refusal's path and message name);
# the comment: the sentence's place in docs/converting.md
REFUSED = {
    # line 274 (a GLoRA network's bypass_mode beside entries): with the network's dora_wd (or an entry's own
    # weight_decompose) beside LoCon (and IA^3) entries kohya trains a file that does not compute what it
    # trained: LoConModule's bypass forward never decomposes, so dora_scale gets no gradient, yet it is saved
    # and its loaders decompose with it (DBS402 as for an IA^3 or LoCon network's pair; was DBS403, a spec's
    # DBS578), while the IA^3 entries' alone convert (tests/runtime/test_lycoris_glora_bypass_ia3_entries.py)
    "glora_network_bypass_dora_wd_beside_locon_and_ia3": (
        "sd",
        '"algo=glora" "bypass_mode=True" "dora_wd=True"',
        _resnet("locon", "", "ia3"),
        "",
        "DBS402",
        [
            "network_args preset",
            "on an algo=glora network with bypass_mode and weight decomposition",
            "dora_scale",
        ],
    ),
    "glora_network_bypass_entry_weight_decompose": (
        "sd",
        '"algo=glora" "bypass_mode=True"',
        _resnet("locon", "weight_decompose = true", "ia3"),
        "",
        "DBS402",
        [
            "network_args preset",
            "on an algo=glora network with bypass_mode and weight decomposition",
            "dora_scale",
        ],
    ),
    # line 1262 (Flux mixed kinds in bypass_mode): "a dropout with bypass_mode stays DBS403"; a Diag-OFT
    # entry there stops kohya: DiagOFTModule's bypass forward multiplies its rotations by an output-shaped
    # dropout mask (RuntimeError, tests/runtime/test_lycoris_oft_entry_bypass_dropout.py): DBS402, was
    # DBS403 (on SD alike)
    "flux_diag_oft_entry_bypass_dropout": (
        "flux",
        '"algo=locon" "bypass_mode=True" "dropout=0.1"',
        _flux("diag-oft"),
        "",
        "DBS402",
        ["network_args preset", "algo = 'diag-oft' in bypass_mode", "dropout = 0.1", "RuntimeError"],
    ),
    "diag_oft_entry_bypass_dropout": (
        "sd",
        '"algo=locon" "bypass_mode=True" "dropout=0.1"',
        _sd("diag-oft"),
        "",
        "DBS402",
        ["network_args preset", "algo = 'diag-oft' in bypass_mode", "dropout = 0.1", "RuntimeError"],
    ),
    # line 108 (T-LoRA): the network's rank_dropout "beside LoKr entries and in bypass_mode it stays DBS403";
    # beside LoKr entries kohya stops (their LokrModules' CPU mask, as on a LoCon network): DBS402, was DBS403
    "tlora_rank_dropout_beside_lokr": (
        "sd",
        '"algo=tlora" "rank_dropout=0.1"',
        _sd("lokr"),
        "",
        "DBS402",
        [
            "network_args preset",
            "algo = 'lokr' on an algo=tlora network with network_args rank_dropout",
            "#291",
        ],
    ),
    # line 108: entries with the component quantised (--fp8_base) beside a network in LyCORIS's default
    # forward: its LoConModules (and DiagOFTModule's default forward) compute with the float8 weight and stop
    # kohya (lycoris_fp8.py, tests/unit/test_convert_kohya_lycoris_fp8.py); full entries beside a network in
    # bypass_mode convert (CONVERTS full_entry_fp8_base_bypass_network)
    "full_entry_fp8_base": (
        "sd",
        '"algo=locon"',
        _sd("full"),
        "--fp8_base --mixed_precision bf16",
        "DBS402",
        ["network_args preset", "algo = 'lora' without bypass_mode", "locon.py line 338"],
    ),
    "flux_diag_oft_entry_fp8_base": (
        "flux",
        '"algo=locon"',
        _flux("diag-oft"),
        "--fp8_base --mixed_precision bf16",
        "DBS402",
        ["network_args preset", "name_algo_map.double_blocks.*.img_attn.qkv", "diag_oft.py", "Float8_e4m3fn"],
    ),
    # line 108 (map entries): a LoRA/LoCon / LoHa entry's dim above [[adapter.blocks]]' bound for pairs
    # (100000; tests/golden/check/range_block_rank): LoConModule builds lora_down (200000, in) and lora_up
    # (out, 200000) on every layer, no clamp to its width (lycoris/modules/locon.py, the Linear branch), and
    # no smaller pair trains alike (on SD 1.5's 16 transformers' MLPs 35e9 parameters: no GPU holds the run)
    "locon_entry_dim_above_the_blocks_bound": (
        "sd",
        '"algo=locon"',
        _sd("locon", "dim = 200000"),
        "",
        "DBS403",
        ["network_args preset", "dim = 200000, above [[adapter.blocks]]' 100000"],
    ),
    # lines 541 / 1063: LoKr entries with rank_dropout stop kohya (LokrModule's CPU mask)
    "lokr_entries_rank_dropout": (
        "sd",
        '"algo=locon" "rank_dropout=0.1"',
        _sd("lokr"),
        "",
        "DBS402",
        ["network_args rank_dropout", "LyCORIS issue #291"],
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_still_refused(tmp_path, case):
    family, args, preset, flags, code, named = REFUSED[case]
    outcome = _convert(tmp_path, family, args, preset, flags)
    assert code in codes(outcome), errors(outcome)
    said = [f"{d.path}: {d.message}" for d in outcome.diagnostics if d.code == code]
    assert any(all(part in text for part in named) for text in said), said


def test_bypass_mode_alone_beside_those_entries_converts(tmp_path):
    """The refusals above name the dropout beside bypass_mode: without it the same networks convert (IA^3
    entries take the adapter's bypass; a LoKr network's LoCon entries in bypass_mode)."""
    for name, algo, entry in (("ia3", "locon", "ia3"), ("lokr", "lokr", "locon")):
        (tmp_path / name).mkdir()
        outcome = _convert(tmp_path / name, "sd", f'"algo={algo}" "bypass_mode=True"', _sd(entry))
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)


# --network_weights files here that stop kohya (tests/unit/test_convert_kohya_network_weights_audit.py has
# the conversions): id: (prev/w.safetensors' bytes, flags, code, what the refusal's path and message name)
REFUSED_FILES = {
    # safetensors' load_file raises on it (load_weights; create_network_from_weights)
    "network_weights_not_safetensors": (
        b"<html>404</html>",
        "",
        "DBS402",
        ["network_weights", "is no safetensors file", "load_file"],
    ),
    "dim_from_weights_not_safetensors": (
        b"<html>404</html>",
        "--dim_from_weights",
        "DBS402",
        ["network_weights", "is no safetensors file", "load_file"],
    ),
    # LyCORIS's create_network_from_weights builds no module (LyCORIS's own wrapper's `lycoris_` names): the
    # optimizer gets an empty parameter list (was DBS403 "not in kohya's LoRA layout")
    "lycoris_dim_from_weights_no_module": (
        "lycoris_down_blocks_0_attentions_0_proj_in",
        "--dim_from_weights",
        "DBS402",
        ["dim_from_weights", "builds modules from", "empty parameter list"],
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_FILES))
def test_network_weights_file_still_refused(tmp_path, case):
    import numpy as np
    from safetensors.numpy import save_file

    held, flags, code, named = REFUSED_FILES[case]
    (tmp_path / "prev").mkdir()
    if isinstance(held, bytes):
        (tmp_path / "prev" / "w.safetensors").write_bytes(held)
    else:  # one LoRA module under that name
        tensors = {"lora_down.weight": np.zeros((4, 320), np.float32), "lora_up.weight": np.zeros((320, 4))}
        save_file(
            {f"{held}.{k}": v.astype(np.float32) for k, v in tensors.items()},
            str(tmp_path / "prev/w.safetensors"),
        )
    outcome = _convert(tmp_path, "sd", '"algo=locon"', None, f"--network_weights prev/w.safetensors {flags}")
    assert code in codes(outcome), errors(outcome)
    said = [f"{d.path}: {d.message}" for d in outcome.diagnostics if d.code == code]
    assert any(all(part in text for part in named) for text in said), said


# id: (family, network_args, preset file, flags, adapter values and a "block"'s), each a sentence that
# said it was refused
CONVERTS = {
    # line 109 (T-LoRA): a T-LoRA entry's own sig_type on a DyLoRA network's Flux / SD3 / Chroma fused Linears
    # (was DBS403, a spec's DBS622, "unchecked beside the fused DyLoRA layers"): fit_fused_tlora after
    # tie_fused_dylora (tests/runtime/test_lycoris_tlora_entry_flux_hosts.py against lycoris-lora 4.1.3's
    # TLoraModules on kohya's stacked Linears of tiny Flux, SD3 and Chroma; use_data_init = false too)
    "flux_tlora_entry_sig_type_on_dylora": (
        "flux",
        '"algo=dylora"',
        _flux("tlora", 'sig_type = "last"'),
        "",
        {"kind": "dylora", "block": {"kind": "tlora", "sig_type": "last"}},
    ),
    # line 109 (T-LoRA): a Diag-OFT / BOFT network's T-LoRA entries (their own sig_type too; was DBS403, "no
    # T-LoRA entries on those networks"): converted as a T-LoRA network whose own layers are Diag-OFT / BOFT
    # blocks (oft_entries.oft_network_host), as for LoCon / LoHa / LoKr entries; the network's constraint and
    # rescaled their blocks' alpha and `rescaled` (tests/runtime/test_lycoris_oft_network_tlora_entries.py,
    # on SD and Flux's fused Linears against lycoris-lora 4.1.3's create_network(algo=diag-oft / boft))
    **{
        f"tlora_entry_sig_type_on_{algo.replace('-', '_')}": (
            "sd",
            f'"algo={algo}" "constraint=0.0001"',
            _sd("tlora", 'sig_type = "last"'),
            "",
            {"kind": "tlora", "block": {"kind": algo, "alpha": 1e-4}},
        )
        for algo in ("diag-oft", "boft")
    },
    # --network_weights (the `--network_weights` paragraph of the lycoris.kohya row): a `.pt` file, which
    # kohya torch.loads (was DBS403: dbspec started an adapter from a .safetensors file only); read without
    # torch (compiler/pickle_weights.py, tests/unit/test_pickle_weights.py) and loaded by the run with
    # torch.load(weights_only=True) (tests/runtime/test_init_weights.py)
    "network_weights_pt_file": (
        "sd",
        '"algo=locon"',
        None,
        "--network_weights prev/w.pt",
        {"kind": "lora", "init_partial": True, "init_layers": 1},
    ),
    # line 108: full entries with the component quantised (--fp8_base) on SD, the network's LoCon layers in
    # bypass_mode (their default forward stops kohya on float8 weights: REFUSED full_entry_fp8_base) and the
    # entries' own bypass_mode false (FullModule's one forward): kohya casts after apply_to took their
    # weights into FullModule's copies, so the cast backend leaves those layers float
    # (tests/runtime/test_lycoris_full_fp8_base.py)
    "full_entry_fp8_base_bypass_network": (
        "sd",
        '"algo=locon" "bypass_mode=True"',
        _sd("full", "bypass_mode = false"),
        "--fp8_base --mixed_precision bf16",
        {"kind": "lora", "block": {"kind": "full"}},
    ),
    # line 108: IA^3 / Diag-OFT / BOFT entries in bypass_mode (the network's) with --fp8_base on SD: their
    # bypass forward reads the layer's output, which the cast base computes as kohya's float8 layer under
    # autocast (was DBS403, a spec's DBS522; tests/runtime/test_lycoris_bypass_fp8_base.py)
    **{
        f"{kind.replace('-', '_')}_entry_fp8_base_bypass_network": (
            "sd",
            '"algo=locon" "bypass_mode=True"',
            _sd(kind),
            "--fp8_base --mixed_precision bf16",
            {"kind": "lora", "bypass": True, "block": {"kind": kind, "bypass": True}},
        )
        for kind in ("ia3", "diag-oft", "boft")
    },
    # line 150 (fp8_base): an algo=ia3 / diag-oft / boft network in bypass_mode with --fp8_base (same test)
    **{
        f"{kind.replace('-', '_')}_network_fp8_base_bypass": (
            "sd",
            f'"algo={kind}" "bypass_mode=True"',
            None,
            "--fp8_base --mixed_precision bf16",
            {"kind": kind, "bypass": True},
        )
        for kind in ("ia3", "diag-oft", "boft")
    },
    # line 454: an IA^3 network's entries with their own bypass_mode: an ia3 adapter's own block's `bypass`
    # (tests/runtime/test_lycoris_ia3_own_bypass_entries.py)
    "ia3_network_entry_own_bypass": (
        "sd",
        '"algo=ia3"',
        _sd("ia3", "bypass_mode = true"),
        "",
        {"kind": "ia3", "bypass": False, "block": {"kind": "adapter", "bypass": True, "rank": 1}},
    ),
    # line 454: on Flux / SD3 / Chroma (was DBS403, unchecked on fused Linears): the same block over every
    # part (tests/runtime/test_lycoris_flux_ia3_own_bypass.py)
    "flux_ia3_network_entry_own_bypass": (
        "flux",
        '"algo=ia3"',
        _flux("ia3", "bypass_mode = true"),
        "",
        {"kind": "ia3", "bypass": False, "block": {"kind": "adapter", "bypass": True, "rank": 1}},
    ),
    # line 108 (algo=full): "on Flux / SD3 they stay DBS403"; tests/runtime/test_lycoris_flux_full_dropout.py
    "flux_full_module_dropout": (
        "flux",
        '"algo=full" "module_dropout=0.1"',
        None,
        "",
        {"module_dropout": 0.1},
    ),
    "flux_full_rank_dropout": ("flux", '"algo=full" "rank_dropout=0.1"', None, "", {"rank_dropout": 0.1}),
    "sd3_full_module_dropout": ("sd3", '"algo=full" "module_dropout=0.1"', None, "", {"module_dropout": 0.1}),
    "sd3_full_rank_dropout": ("sd3", '"algo=full" "rank_dropout=0.1"', None, "", {"rank_dropout": 0.1}),
    # line 108: "a boft entry beside another network on Flux / SD3 stays DBS403" (dim 18 splits FLUX.1's
    # 9216 q/k/v rows; tests/runtime/test_lycoris_mixed_flow_bypass.py trains such an entry)
    "flux_boft_entry_on_locon": ("flux", '"algo=locon"', _flux("boft", "dim = 18"), "", {"kind": "lora"}),
    "flux_boft_entry_on_lokr": ("flux", '"algo=lokr"', _flux("boft", "dim = 18"), "", {"kind": "lokr"}),
    # line 108: "a dylora entry beside another network stays DBS403"
    # (tests/runtime/test_lycoris_mixed_dylora.py, test_lycoris_mixed_flow_dylora.py)
    "dylora_entry_on_locon": ("sd", '"algo=locon"', _sd("dylora"), "", {"kind": "lora"}),
    "flux_dylora_entry_on_locon": ("flux", '"algo=locon"', _flux("dylora"), "", {"kind": "lora"}),
    # line 108 (DyLoRA networks' entries): "a network module_dropout or bypass_mode ... with them: DBS403"
    "dylora_network_module_dropout_beside_locon": (
        "sd",
        '"algo=dylora" "module_dropout=0.1"',
        _sd("locon"),
        "",
        {"kind": "dylora", "module_dropout": 0.1},
    ),
    "dylora_network_bypass_beside_locon": (
        "sd",
        '"algo=dylora" "bypass_mode=True"',
        _sd("locon"),
        "",
        {"kind": "dylora", "bypass": True},
    ),
    # line 108 (train_norm): "a BOFT / DyLoRA / GLoRA network's rank_dropout is DBS403 with or without
    # train_norm" beside entries of other algorithms (the BOFT network's entries stay refused, above)
    "glora_rank_dropout_beside_locon": (
        "sd",
        '"algo=glora" "rank_dropout=0.1"',
        _sd("locon"),
        "",
        {"kind": "glora", "rank_dropout": 0.1},
    ),
    "dylora_rank_dropout_beside_locon": (
        "sd",
        '"algo=dylora" "rank_dropout=0.1"',
        _sd("locon"),
        "",
        {"kind": "dylora", "rank_dropout": 0.1},
    ),
    "glora_train_norm_rank_dropout_beside_locon": (
        "sd",
        '"algo=glora" "train_norm=True" "rank_dropout=0.1"',
        _sd("locon"),
        "",
        {"kind": "glora", "rank_dropout": 0.1},
    ),
    # line 549: "on Flux / SD3 / Chroma still DBS403"; line 991: "unless the file's entries of other
    # algorithms draw it too: DBS403" (train_norm reaching CLIP-L's LayerNorms)
    "flux_dylora_train_norm_rank_dropout_beside_loha": (
        "flux",
        '"algo=dylora" "train_norm=True" "rank_dropout=0.1"',
        _flux("loha", clip='"CLIPEncoderLayer"'),
        "",
        {"kind": "dylora", "rank_dropout": 0.1, "norm_rank_dropout": 0.1},
    ),
    "flux_glora_train_norm_rank_dropout_beside_loha": (
        "flux",
        '"algo=glora" "train_norm=True" "rank_dropout=0.1"',
        _flux("loha", clip='"CLIPEncoderLayer"'),
        "",
        {"kind": "glora", "rank_dropout": 0.1, "norm_rank_dropout": 0.1},
    ),
    # line 108 (LoCon rank_dropout with dora_wd): "on Flux / SD3's fused layers not yet, DBS403"
    "flux_dora_wd_rank_dropout": (
        "flux",
        '"algo=locon" "dora_wd=True" "rank_dropout=0.1"',
        None,
        "",
        {"dora": True, "rank_dropout": 0.1},
    ),
    "flux_entry_weight_decompose_module_dropout": (
        "flux",
        '"algo=locon" "module_dropout=0.1"',
        _flux("locon", "weight_decompose = true"),
        "",
        {"module_dropout": 0.1},
    ),
    # line 108 (map entries): a LoKr entry's own rs_lora "in a network of several algorithms: DBS403" on a
    # LoCon network (tests/unit/test_convert_kohya_mixed_own_opts.py, test_lycoris_own_opts_networks.py)
    "lokr_entry_rs_lora_on_locon_network_beside_loha": (
        "sd",
        '"algo=locon"',
        _resnet("lokr", "rs_lora = true", "loha"),
        "",
        {"kind": "lora", "block": {"kind": "lokr", "rank_stabilized": "on", "alpha": 2.0}},
    ),
    # line 108 (map entries): an entry's own use_tucker "with ... --scale_weight_norms ...: DBS403"
    # (tests/runtime/test_lycoris_block_dora_max_norm.py)
    "entry_use_tucker_with_scale_weight_norms": (
        "sd",
        '"algo=locon"',
        _resnet("locon", "use_tucker = true", "locon"),
        "--scale_weight_norms=1",
        {"max_norm": 1.0, "block": {"tucker": "on"}},
    ),
    # line 1100 (Flux / SD3 max norm): "with LoCon's rank_dropout (drawn inside the norm): DBS403"
    # (tests/runtime/test_lycoris_swapped_rows_dropout.py)
    "flux_max_norm_with_rank_dropout": (
        "flux",
        '"algo=locon" "rank_dropout=0.1"',
        None,
        "--scale_weight_norms=1",
        {"max_norm": 1.0, "rank_dropout": 0.1, "max_norm_form": "lycoris"},
    ),
    "sd3_max_norm_with_rank_dropout": (
        "sd3",
        '"algo=locon" "rank_dropout=0.1"',
        None,
        "--scale_weight_norms=1",
        {"max_norm": 1.0, "rank_dropout": 0.1, "max_norm_form": "lycoris"},
    ),
    # line 1405: full / IA^3 / GLoRA networks' max norm "beside preset-file entries of an algo whose modules
    # scale: DBS403" (tests/runtime/test_lycoris_whole_main_mixed_flow.py)
    "flux_full_network_max_norm_beside_locon": (
        "flux",
        '"algo=full"',
        _flux("locon"),
        "--scale_weight_norms=1",
        {"kind": "full", "max_norm": 1.0},
    ),
    "flux_glora_network_max_norm_beside_loha": (
        "flux",
        '"algo=glora"',
        _flux("loha"),
        "--scale_weight_norms=1",
        {"kind": "glora", "max_norm": 1.0},
    ),
    # line 612: a LoHa network's own decomposed entries "not with the other dropouts: DBS403"
    # (tests/runtime/test_lycoris_loha_locon_rank_dropout.py)
    "loha_network_decomposed_entries_module_dropout": (
        "sd",
        '"algo=loha" "module_dropout=0.1"',
        _sd("loha", "weight_decompose = true"),
        "",
        {"kind": "loha", "module_dropout": 0.1, "block": {"dora": "on"}},
    ),
    # line 108 (T-LoRA): "as does an entry's own use_data_init = false" on a T-LoRA network
    "tlora_entry_use_data_init_on_tlora": (
        "sd",
        '"algo=tlora"',
        _sd("tlora", "use_data_init = false"),
        "",
        {},
    ),
    # line 428: IA^3 entries in bypass_mode with the network's dropout (IA3Module reads neither dropout; the
    # other entries' layers take the adapter's output_dropout);
    # tests/runtime/test_lycoris_ia3_entries_bypass_dropout.py
    "ia3_entries_bypass_dropout": (
        "sd",
        '"algo=locon" "bypass_mode=True" "dropout=0.1"',
        _sd("ia3"),
        "",
        {"kind": "lora", "output_dropout": 0.1, "bypass": True, "block": {"kind": "ia3", "bypass": True}},
    ),
    "ia3_entries_bypass_network_dropout": (
        "sd",
        '"algo=locon" "bypass_mode=True"',
        _sd("ia3"),
        "--network_dropout=0.1",
        {"kind": "lora", "output_dropout": 0.1, "bypass": True, "block": {"kind": "ia3", "bypass": True}},
    ),
    # line 274 (a GLoRA network's entries of other algorithms): "its bypass_mode there: DBS403" (on SD and
    # Flux); tests/runtime/test_lycoris_glora_bypass_entries.py
    "glora_network_bypass_beside_locon": (
        "sd",
        '"algo=glora" "bypass_mode=True"',
        _sd("locon"),
        "",
        {"kind": "glora", "bypass": True, "block": {"kind": "lora", "bypass": True}},
    ),
    "flux_glora_network_bypass_beside_locon": (
        "flux",
        '"algo=glora" "bypass_mode=True"',
        _flux("locon"),
        "",
        {"kind": "glora", "bypass": True, "block": {"kind": "lora"}},
    ),
    # line 108 (mixed full / IA^3): an IA^3 entry's own train_on_input, its block's on_input
    # (tests/runtime/test_lycoris_ia3_entry_sides.py)
    "ia3_entry_train_on_input": (
        "sd",
        '"algo=locon"',
        _sd("ia3", "train_on_input = true"),
        "",
        {"kind": "lora", "block": {"kind": "ia3", "on_input": True}},
    ),
    # line 1191 (Flux): the same on a fused Linear, its parts sharing one scale over their input
    "flux_ia3_entry_train_on_input": (
        "flux",
        '"algo=locon"',
        _flux("ia3", "train_on_input = true"),
        "",
        {"kind": "lora", "block": {"kind": "ia3", "on_input": True}},
    ),
    # line 108 (mixed full / IA^3): an IA^3 entry's own train_on_input on an IA^3 network (its own block's
    # on_input) and on DyLoRA / GLoRA / full / T-LoRA networks (their block of kind ia3's), SD 1.x/2.x and
    # SDXL
    # (tests/runtime/test_lycoris_ia3_entry_sides_networks.py)
    "ia3_network_entry_train_on_input": (
        "sd",
        '"algo=ia3"',
        _sd("ia3", "train_on_input = true"),
        "",
        {"kind": "ia3", "input_targets": (), "block": {"kind": "adapter", "on_input": True}},
    ),
    **{
        f"{algo}_network_ia3_entry_train_on_input": (
            "sd",
            f'"algo={algo}"',
            _sd("ia3", "train_on_input = true"),
            "",
            {"kind": algo, "block": {"kind": "ia3", "on_input": True}},
        )
        for algo in ("dylora", "glora", "full", "tlora")
    },
    # on Flux / SD3 / Chroma too, a fused Linear's parts sharing one input-side scale (an IA^3 network's with
    # fused_projections, which its own blocks' on_input needs there: DBS618)
    "flux_ia3_network_entry_train_on_input": (
        "flux",
        '"algo=ia3"',
        _flux("ia3", "train_on_input = true"),
        "",
        {"kind": "ia3", "block": {"kind": "adapter", "on_input": True}},
    ),
    **{
        f"flux_{algo}_network_ia3_entry_train_on_input": (
            "flux",
            f'"algo={algo}"',
            _flux("ia3", "train_on_input = true"),
            "",
            {"kind": algo, "block": {"kind": "ia3", "on_input": True}},
        )
        for algo in ("dylora", "glora", "full", "tlora")
    },
    # line 1447: the network's own train_on_input is never read (DBS405: create_network hands
    # LycorisNetworkKohya a fixed argument list): every IA3Module on its output side
    "ia3_network_train_on_input": (
        "sd",
        '"algo=ia3" "train_on_input=True"',
        None,
        "",
        {"kind": "ia3", "input_targets": ()},
    ),
    # line 108 (T-LoRA): an entry's own use_data_init = false on a LoCon network;
    # tests/runtime/test_lycoris_tlora_entry_random.py
    "tlora_entry_use_data_init_on_locon": (
        "sd",
        '"algo=locon"',
        _sd("tlora", "use_data_init = false"),
        "",
        {"kind": "lora", "block": {"kind": "tlora", "data_init": False}},
    ),
    # line 428, IA^3 entries in bypass_mode: "the rank_dropout still does" (without a dropout); LoConModule's
    # bypass rank mask with no Dropout after it (tests/runtime/test_lycoris_bypass_rank_dropout_alone.py)
    "ia3_entries_bypass_rank_dropout": (
        "sd",
        '"algo=locon" "bypass_mode=True" "rank_dropout=0.1"',
        _sd("ia3"),
        "",
        {
            "kind": "lora",
            "rank_dropout": 0.1,
            "rank_dropout_form": "lycoris_bypass",
            "output_dropout": 0.0,
            "bypass": True,
            "block": {"kind": "ia3", "bypass": True},
        },
    ),
    # line 460: a LoKr network's rank_dropout in bypass_mode beside LoCon entries, no dropout: the LoKr layers
    # draw none, the LoCon entries their bypass rank mask (same test file)
    "lokr_network_bypass_rank_dropout_beside_locon": (
        "sd",
        '"algo=lokr" "bypass_mode=True" "rank_dropout=0.1"',
        _sd("locon"),
        "",
        {"kind": "lokr", "rank_dropout": 0.1, "rank_dropout_form": "lycoris_bypass", "output_dropout": 0.0},
    ),
    # line 460: "a LoHa network's rank_dropout in bypass_mode without dropout beside LoCon entries stays
    # DBS403": the loha adapter's rank_dropout_form "lycoris_bypass", its LoCon entries drawing their bypass
    # rank mask, its LoHa layers their row mask (tests/runtime/test_lycoris_loha_bypass_rank_dropout_alone.py)
    "loha_network_bypass_rank_dropout_beside_locon": (
        "sd",
        '"algo=loha" "bypass_mode=True" "rank_dropout=0.1"',
        _sd("locon"),
        "",
        {
            "kind": "loha",
            "rank_dropout": 0.1,
            "rank_dropout_form": "lycoris_bypass",
            "output_dropout": 0.0,
            "block": {"kind": "lora"},
        },
    ),
    # line 108 (T-LoRA): Diag-OFT entries on a T-LoRA network "with a network option those modules read and
    # TLoraModule does not, an option of their own, or --scale_weight_norms" (tests/runtime/
    # test_lycoris_tlora_mixed_opts.py): the network's dropout outside bypass_mode, which neither module reads
    # (dropped, DBS405); an entry's own bypass_mode, its block's `bypass`; LyCORIS's max norm of each module
    "tlora_diag_oft_entry_network_dropout": (
        "sd",
        '"algo=tlora" "dropout=0.1"',
        _sd("diag-oft"),
        "",
        {
            "kind": "tlora",
            "bypass": False,
            "bypass_dropout": 0.0,
            "block": {"kind": "diag-oft", "bypass": False},
        },
    ),
    "tlora_diag_oft_entry_own_bypass": (
        "sd",
        '"algo=tlora"',
        _sd("diag-oft", "bypass_mode = true"),
        "",
        {"kind": "tlora", "bypass": False, "block": {"kind": "diag-oft", "bypass": True}},
    ),
    "tlora_diag_oft_entry_scale_weight_norms": (
        "sd",
        '"algo=tlora"',
        _sd("diag-oft"),
        "--scale_weight_norms=1",
        {"kind": "tlora", "max_norm": 1.0, "max_norm_form": "lycoris", "block": {"kind": "diag-oft"}},
    ),
    # line 108 (T-LoRA): the network's rank_dropout beside LoCon entries "in bypass_mode it stays DBS403": the
    # adapter's bypass (its LoCon blocks' too) and rank_dropout in LoConModule's bypass form, TLoraModule
    # reading none (tests/runtime/test_lycoris_tlora_mixed_opts.py)
    "tlora_bypass_rank_dropout_beside_locon": (
        "sd",
        '"algo=tlora" "bypass_mode=True" "rank_dropout=0.1"',
        _sd("locon"),
        "",
        {
            "kind": "tlora",
            "bypass": True,
            "rank_dropout": 0.1,
            "rank_dropout_form": "lycoris_bypass",
            "bypass_dropout": 0.0,
            "block": {"kind": "lora", "bypass": True},
        },
    ),
    # line 109: a T-LoRA entry's own bypass_mode "beside the network's dropout ... DBS403 (a spec's DBS605)":
    # the adapter's bypass dropout, applied by the layers in the bypass forward alone (same test)
    "tlora_entry_own_bypass_network_dropout": (
        "sd",
        '"algo=tlora" "dropout=0.1"',
        _sd("tlora", "bypass_mode = true"),
        "",
        {
            "kind": "tlora",
            "bypass": False,
            "bypass_dropout": 0.1,
            "block": {"kind": "adapter", "bypass": True},
        },
    ),
    # line 108 / 109 (T-LoRA) on Flux's fused Linears (were DBS403 there, the SD lifts above): a T-LoRA
    # entry's own bypass_mode beside the network's dropout (one mask per fused TLoraModule), the max norm
    # beside Diag-OFT entries (one norm per fused module), the network's bypass_mode (and rank_dropout) beside
    # LoCon entries (one rank mask per fused LoConModule); tests/runtime/test_lycoris_flow_tlora_mixed_opts.py
    "flux_tlora_entry_own_bypass_network_dropout": (
        "flux",
        '"algo=tlora" "dropout=0.1"',
        _flux("tlora", "bypass_mode = true"),
        "",
        {
            "kind": "tlora",
            "bypass": False,
            "bypass_dropout": 0.1,
            "block": {"kind": "adapter", "bypass": True},
        },
    ),
    "flux_tlora_diag_oft_entry_scale_weight_norms": (
        "flux",
        '"algo=tlora"',
        _flux("diag-oft"),
        "--scale_weight_norms=1",
        {"kind": "tlora", "max_norm": 1.0, "max_norm_form": "lycoris", "block": {"kind": "diag-oft"}},
    ),
    "flux_tlora_bypass_rank_dropout_beside_locon": (
        "flux",
        '"algo=tlora" "bypass_mode=True" "rank_dropout=0.1"',
        _flux("locon"),
        "",
        {
            "kind": "tlora",
            "bypass": True,
            "rank_dropout": 0.1,
            "rank_dropout_form": "lycoris_bypass",
            "block": {"kind": "lora", "bypass": True},
        },
    ),
    # and Diag-OFT / BOFT entries on Flux beside a T-LoRA network (same test): the network's dropout outside
    # bypass_mode, read by none (DBS405); an entry's own bypass_mode, its block's `bypass`
    "flux_tlora_diag_oft_entry_network_dropout": (
        "flux",
        '"algo=tlora" "dropout=0.1"',
        _flux("diag-oft"),
        "",
        {"kind": "tlora", "bypass_dropout": 0.0, "block": {"kind": "diag-oft", "bypass": False}},
    ),
    "flux_tlora_boft_entry_own_bypass": (
        "flux",
        '"algo=tlora" "dropout=0.1"',
        _flux("boft", "bypass_mode = true").replace(
            '"double_blocks.*_attn.*", "single_blocks.*.linear*"', '"double_blocks.*_attn.qkv"'
        ),
        "--network_dim=18",
        {"kind": "tlora", "bypass": False, "bypass_dropout": 0.0, "block": {"kind": "boft", "bypass": True}},
    ),
    # line 109 (Diag-OFT map entries): "a negative one ... is DBS403": the constraint LyCORIS applies, 0
    # (tests/runtime/test_lycoris_entry_signs.py)
    "diag_oft_entry_negative_constraint": (
        "sd",
        '"algo=diag-oft"',
        _sd("diag-oft", "constraint = -0.1"),
        "",
        {"kind": "diag-oft", "block": {"alpha": 0.0}},
    ),
    # line 109 (GLoRA): "a negative alpha ... on another algorithm's entry (DBS581 in a spec) ... stays
    # DBS403": a GLoRA entry's own on a LoCon network, its glora block's alpha
    # (tests/runtime/test_lycoris_entry_signs.py)
    "glora_entry_negative_alpha_on_locon": (
        "sd",
        '"algo=locon"',
        _sd("glora", "alpha = -2"),
        "",
        {"kind": "lora", "alpha": 1.0, "block": {"kind": "glora", "alpha": -2.0}},
    ),
    # line 109: a LoCon / LoHa / LoKr entry's own negative alpha (DBS581 in a spec before): LoConModule,
    # LohaModule and LokrModule keep its sign (scale alpha / dim), its block's alpha; a CLIP entry's its
    # text-encoder block's; on Flux's fused Linears alike (tests/runtime/test_lycoris_entry_signs_locon.py)
    "locon_entry_negative_alpha": (
        "sd",
        '"algo=locon"',
        _sd("locon", "alpha = -2"),
        "",
        {"kind": "lora", "alpha": 1.0, "block": {"kind": "adapter", "alpha": -2.0}},
    ),
    "loha_entry_negative_alpha_on_locon": (
        "sd",
        '"algo=locon"',
        _sd("loha", "alpha = -2"),
        "",
        {"kind": "lora", "alpha": 1.0, "block": {"kind": "loha", "alpha": -2.0}},
    ),
    "lokr_entry_negative_alpha_on_lokr": (
        "sd",
        '"algo=lokr"',
        _sd("lokr", "alpha = -2"),
        "",
        {"kind": "lokr", "alpha": 1.0, "block": {"kind": "adapter", "alpha": -2.0}},
    ),
    "clip_locon_entry_negative_alpha": (
        "sd",
        '"algo=locon"',
        _sd("locon", "alpha = -2")
        .replace("text_encoder_target_module = []", 'text_encoder_target_module = ["CLIPAttention"]')
        .replace("FeedForward", "CLIPAttention"),
        "",
        {"kind": "lora", "alpha": 1.0},
    ),
    "flux_loha_entry_negative_alpha_on_locon": (
        "flux",
        '"algo=locon"',
        _flux("loha", "alpha = -2"),
        "",
        {"kind": "lora", "alpha": 1.0, "block": {"kind": "loha", "alpha": -2.0}},
    ),
    # line 108: a negative network_alpha / conv_alpha on a LoCon / LoHa / LoKr network (was DBS403: the
    # adapter's alpha above 0): LoConModule, LohaModule and LokrModule keep the sign, the adapter's alphas
    # (tests/runtime/test_lycoris_entry_signs_locon.py)
    "locon_negative_network_alpha": (
        "sd",
        '"algo=locon" "preset=attn-mlp"',
        None,
        "--network_alpha=-1",
        {"kind": "lora", "alpha": -1.0},
    ),
    "loha_negative_network_alpha": (
        "sd",
        '"algo=loha" "preset=attn-mlp"',
        None,
        "--network_alpha=-1",
        {"kind": "loha", "alpha": -1.0},
    ),
    "lokr_negative_network_alpha": (
        "sd",
        '"algo=lokr" "preset=attn-mlp"',
        None,
        "--network_alpha=-1",
        {"kind": "lokr", "alpha": -1.0},
    ),
    "locon_negative_conv_alpha": (
        "sd",
        '"algo=locon" "conv_dim=4" "conv_alpha=-1"',
        None,
        "",
        {"kind": "lora", "conv_rank": 4, "conv_alpha": -1.0},
    ),
    "flux_locon_negative_network_alpha": (
        "flux",
        '"algo=locon"',
        None,
        "--network_alpha=-1",
        {"kind": "lora", "alpha": -1.0},
    ),
    # line 108 / 109: a DyLoRA entry's own negative alpha (DBS581 in a spec before) and a DyLoRA network's
    # negative network_alpha / conv_alpha (was DBS403): DyLoraModule keeps the sign (get_weight's alpha /
    # (b + 1)), its block's / the adapter's alphas (tests/runtime/test_lycoris_entry_signs_dylora.py)
    "dylora_entry_negative_alpha_on_locon": (
        "sd",
        '"algo=locon"',
        _sd("dylora", "alpha = -2"),
        "",
        {"kind": "lora", "alpha": 1.0, "block": {"kind": "dylora", "alpha": -2.0}},
    ),
    "dylora_entry_negative_alpha_on_dylora": (
        "sd",
        '"algo=dylora"',
        _sd("dylora", "alpha = -2"),
        "",
        {"kind": "dylora", "alpha": 1.0, "block": {"kind": "adapter", "alpha": -2.0}},
    ),
    "dylora_negative_network_alpha": (
        "sd",
        '"algo=dylora" "preset=attn-mlp"',
        None,
        "--network_alpha=-1",
        {"kind": "dylora", "alpha": -1.0},
    ),
    "dylora_negative_conv_alpha": (
        "sd",
        '"algo=dylora" "conv_dim=4" "conv_alpha=-1"',
        None,
        "",
        {"kind": "dylora", "conv_rank": 4, "conv_alpha": -1.0},
    ),
    # line 109 (T-LoRA): "an entry's `sig_type` on another algo's network stays DBS403": its tlora block's
    # sig_type beside LoCon / LoHa on SD (tests/runtime/test_lycoris_entry_signs.py)
    "tlora_entry_sig_type_on_locon": (
        "sd",
        '"algo=locon"',
        _sd("tlora", 'sig_type = "last"'),
        "",
        {"kind": "lora", "block": {"kind": "tlora", "sig_type": "last"}},
    ),
    # line 109 (T-LoRA): a T-LoRA entry's own sig_type / use_data_init on a LoKr network, and beside LoCon /
    # LoHa / LoKr on Flux / SD3 / Chroma's fused Linears (one start per fused Linear), were DBS403 (a spec's
    # DBS622): its tlora block's (tests/runtime/test_lycoris_tlora_entry_starts.py)
    "tlora_entry_sig_type_on_lokr": (
        "sd",
        '"algo=lokr"',
        _sd("tlora", 'sig_type = "last"'),
        "",
        {"kind": "lokr", "block": {"kind": "tlora", "sig_type": "last"}},
    ),
    "tlora_entry_random_start_on_lokr": (
        "sd",
        '"algo=lokr"',
        _sd("tlora", "use_data_init = false"),
        "",
        {"kind": "lokr", "block": {"kind": "tlora", "data_init": False}},
    ),
    # line 109 (T-LoRA): on SD an entry's own sig_type / use_data_init on a full or IA^3 network, its
    # sig_type on a GLoRA network, were DBS403 (a spec's DBS622): its tlora block's, built by the same T-LoRA
    # pass (tests/runtime/test_lycoris_tlora_entry_hosts.py)
    "tlora_entry_sig_type_on_glora": (
        "sd",
        '"algo=glora"',
        _sd("tlora", 'sig_type = "last"'),
        "",
        {"kind": "glora", "block": {"kind": "tlora", "sig_type": "last"}},
    ),
    "tlora_entry_random_start_on_glora": (
        "sd",
        '"algo=glora"',
        _sd("tlora", "use_data_init = false"),
        "",
        {"kind": "glora", "block": {"kind": "tlora", "data_init": False}},
    ),
    "tlora_entry_sig_type_on_full": (
        "sd",
        '"algo=full"',
        _sd("tlora", 'sig_type = "middle"'),
        "",
        {"kind": "full", "block": {"kind": "tlora", "sig_type": "middle"}},
    ),
    "tlora_entry_random_start_on_full": (
        "sd",
        '"algo=full"',
        _sd("tlora", "use_data_init = false"),
        "",
        {"kind": "full", "block": {"kind": "tlora", "data_init": False}},
    ),
    "tlora_entry_sig_type_on_ia3": (
        "sd",
        '"algo=ia3"',
        _sd("tlora", 'sig_type = "last"'),
        "",
        {"kind": "ia3", "block": {"kind": "tlora", "sig_type": "last"}},
    ),
    "tlora_entry_random_start_on_ia3": (
        "sd",
        '"algo=ia3"',
        _sd("tlora", "use_data_init = false"),
        "",
        {"kind": "ia3", "block": {"kind": "tlora", "data_init": False}},
    ),
    "tlora_entry_sig_type_on_dylora": (
        "sd",
        '"algo=dylora"',
        _sd("tlora", 'sig_type = "last"'),
        "",
        {"kind": "dylora", "block": {"kind": "tlora", "sig_type": "last"}},
    ),
    "tlora_entry_random_start_on_dylora": (
        "sd",
        '"algo=dylora"',
        _sd("tlora", "use_data_init = false"),
        "",
        {"kind": "dylora", "block": {"kind": "tlora", "data_init": False}},
    ),
    "flux_tlora_entry_sig_type_on_glora": (
        "flux",
        '"algo=glora"',
        _flux("tlora", 'sig_type = "last"'),
        "",
        {"kind": "glora", "block": {"kind": "tlora", "sig_type": "last"}},
    ),
    "flux_tlora_entry_random_start_on_full": (
        "flux",
        '"algo=full"',
        _flux("tlora", "use_data_init = false"),
        "",
        {"kind": "full", "block": {"kind": "tlora", "data_init": False}},
    ),
    "flux_tlora_entry_sig_type_on_ia3": (
        "flux",
        '"algo=ia3"',
        _flux("tlora", 'sig_type = "middle"'),
        "",
        {"kind": "ia3", "block": {"kind": "tlora", "sig_type": "middle"}},
    ),
    "flux_tlora_entry_sig_type_on_locon": (
        "flux",
        '"algo=locon"',
        _flux("tlora", 'sig_type = "middle"'),
        "",
        {"kind": "lora", "block": {"kind": "tlora", "sig_type": "middle"}},
    ),
    "flux_tlora_entry_random_start_on_locon": (
        "flux",
        '"algo=locon"',
        _flux("tlora", "use_data_init = false"),
        "",
        {"kind": "lora", "block": {"kind": "tlora", "data_init": False}},
    ),
    "flux_tlora_entry_sig_type_on_lokr": (
        "flux",
        '"algo=lokr"',
        _flux("tlora", 'sig_type = "last"'),
        "",
        {"kind": "lokr", "block": {"kind": "tlora", "sig_type": "last"}},
    ),
    "flux_tlora_entry_random_start_on_loha": (
        "flux",
        '"algo=loha"',
        _flux("tlora", "use_data_init = false"),
        "",
        {"kind": "loha", "block": {"kind": "tlora", "data_init": False}},
    ),
    # line 108 (T-LoRA): a negative alpha, "DBS403 as the network's": TLoraModule keeps the sign, the
    # adapter's alpha (tests/runtime/test_lycoris_entry_signs.py)
    "tlora_negative_network_alpha": (
        "sd",
        '"algo=tlora" "preset=attn-mlp"',
        None,
        "--network_alpha=-1",
        {"kind": "tlora", "alpha": -1.0},
    ),
    # line 108 (train_norm sentence): a BOFT network's entries of other algorithms on SD, converted as the
    # entries' network with the BOFT layers as boft entries
    # (tests/runtime/test_lycoris_boft_network_entries.py)
    "boft_network_locon_entries": (
        "sd",
        '"algo=boft"',
        _sd("locon"),
        "",
        {"kind": "lora", "block": {"kind": "boft", "rank": 4, "alpha": 0.0}},
    ),
    # line 108 (train_norm sentence): a Diag-OFT network's entries of other algorithms on SD, converted as the
    # entries' network with the Diag-OFT layers as diag-oft entries, the network's constraint (here by its
    # deprecated name) their blocks' alpha (tests/runtime/test_lycoris_diag_oft_network_entries.py)
    "diag_oft_network_locon_entries": (
        "sd",
        '"algo=diag-oft" "constrain=0.1"',
        _sd("locon"),
        "",
        {"kind": "lora", "block": {"kind": "diag-oft", "rank": 4, "alpha": 0.1}},
    ),
    "diag_oft_network_loha_entries": (
        "sd",
        '"algo=diag-oft"',
        _sd("loha"),
        "",
        {"kind": "loha", "block": {"kind": "diag-oft", "rank": 4, "alpha": 0.0}},
    ),
    # on Flux / SD3 / Chroma too (was DBS403 there; dim 18 splits FLUX.1's 9216 q/k/v rows)
    # (tests/runtime/test_lycoris_flow_mixed_rs_lora_boft.py)
    "flux_boft_network_locon_entries": (
        "flux",
        '"algo=boft"',
        _flux("locon").replace(
            '"double_blocks.*_attn.*", "single_blocks.*.linear*"', '"double_blocks.*_attn.qkv"'
        ),
        "--network_dim=18",
        {"kind": "lora", "rank": 18, "block": {"kind": "boft", "rank": 18, "alpha": 0.0}},
    ),
    # line 110: a Diag-OFT / BOFT network's full, IA^3 and GLoRA entries (was DBS403 "several algorithms"),
    # converted as that kind's network with the OFT layers its blocks (tests/runtime/
    # test_lycoris_oft_network_whole_entries.py); its DyLoRA entries stay DBS403 (unchecked)
    **{
        f"{algo.replace('-', '_')}_network_{entry}_entries": (
            "sd",
            f'"algo={algo}" "constraint=0.0001"',
            _sd(entry),
            "",
            {"kind": entry, "block": {"kind": algo, "rank": 4, "alpha": 0.0001}},
        )
        for algo, entry in (("diag-oft", "full"), ("boft", "ia3"), ("diag-oft", "glora"))
    },
    # line 1592 (Flux whole-layer algos with a preset file): a Diag-OFT network's entries of other algorithms
    # on Flux / SD3 / Chroma too (was DBS403 there), as a BOFT network's
    # (tests/runtime/test_lycoris_flow_oft_network_entries.py)
    "flux_diag_oft_network_locon_entries": (
        "flux",
        '"algo=diag-oft"',
        _flux("locon"),
        "",
        {"kind": "lora", "block": {"kind": "diag-oft", "rank": 4, "alpha": 0.0}},
    ),
    # line 304: a GLoRA network's bypass_mode beside Diag-OFT / BOFT entries (was DBS403, a spec's DBS578),
    # their blocks in the adapter's bypass (tests/runtime/test_lycoris_glora_bypass_oft_entries.py)
    **{
        f"glora_network_bypass_beside_{oft.replace('-', '_')}": (
            "sd",
            '"algo=glora" "bypass_mode=True" "rank_dropout=0.1"',
            _sd(oft),
            "",
            {"kind": "glora", "bypass": True, "block": {"kind": oft, "bypass": True}},
        )
        for oft in ("diag-oft", "boft")
    },
    # line 110 (mixed kinds): a LoCon / LoHa network's factor / decompose_both / unbalanced_factorization
    # beside LoKr entries (was DBS403): their blocks'
    # (tests/runtime/test_lycoris_network_lokr_args_entries.py)
    "locon_network_factor_beside_lokr_entries": (
        "sd",
        '"algo=locon" "factor=4" "decompose_both=True"',
        _sd("lokr"),
        "",
        {"kind": "lora", "block": {"kind": "lokr", "factor": 4, "decompose_both": "on"}},
    ),
    "flux_loha_network_unbalanced_beside_lokr_entries": (
        "flux",
        '"algo=loha" "unbalanced_factorization=True"',
        _flux("lokr"),
        "",
        {"kind": "loha", "block": {"kind": "lokr", "unbalanced_factorization": "on"}},
    ),
    # line 274: a GLoRA network's bypass_mode with its dropout beside LoCon entries, GLoRA's bypass dropout
    # and the LoCon layers' bypass Dropout (tests/runtime/test_lycoris_glora_bypass_dropout_entries.py)
    "glora_network_bypass_dropout_beside_locon": (
        "sd",
        '"algo=glora" "bypass_mode=True" "dropout=0.1"',
        _sd("locon"),
        "",
        {
            "kind": "glora",
            "bypass": True,
            "bypass_dropout": 0.1,
            "output_dropout": 0.1,
            "block": {"kind": "lora", "bypass": True},
        },
    ),
    "flux_glora_network_bypass_dropout_beside_locon": (
        "flux",
        '"algo=glora" "bypass_mode=True" "dropout=0.1"',
        _flux("locon"),
        "",
        {
            "kind": "glora",
            "bypass": True,
            "bypass_dropout": 0.1,
            "output_dropout": 0.1,
            "block": {"kind": "lora"},
        },
    ),
    # line 274: a GLoRA network's bypass_mode with its rank_dropout beside LoCon / LoHa / LoKr entries (was
    # DBS403): each LyCORIS class's own bypass mask, the GLoRA layers' kept below the rate, the blocks' in
    # rank_dropout_form "lycoris_bypass" (LoCon's ranks kept above it, LoHa's rows, LoKr's none: its bypass
    # forward never reads it, so issue #291's CPU mask is not reached); on SD and Flux
    # (tests/runtime/test_lycoris_glora_bypass_rank_dropout_entries.py)
    **{
        f"{family_}glora_network_bypass_rank_dropout_beside_{entry}": (
            family,
            '"algo=glora" "bypass_mode=True" "rank_dropout=0.1"',
            (_sd if family == "sd" else _flux)(entry),
            "",
            {
                "kind": "glora",
                "bypass": True,
                "rank_dropout": 0.1,
                "rank_dropout_form": "lycoris_bypass",
                "block": {"kind": {"locon": "lora"}.get(entry, entry)},
            },
        )
        for family, family_ in (("sd", ""), ("flux", "flux_"))
        for entry in ("locon", "loha", "lokr")
    },
    # line 274: a GLoRA network's bypass_mode beside IA^3 entries (was DBS403, a spec's DBS578), with and
    # without its dropout / rank_dropout / module_dropout and an entry's own train_on_input: IA3Module's
    # bypass forward (the output scaled, bias included; the input with train_on_input), which reads neither
    # dropout nor rank_dropout; on SD and Flux (tests/runtime/test_lycoris_glora_bypass_ia3_entries.py)
    **{
        f"{family_}glora_network_bypass{name}_beside_ia3{side}": (
            family,
            f'"algo=glora" "bypass_mode=True"{args}',
            (_sd if family == "sd" else _flux)("ia3", "train_on_input = true" if side else ""),
            "",
            {
                "kind": "glora",
                "bypass": True,
                "bypass_dropout": 0.1 if "dropout=" in args.replace("rank_dropout", "") else 0.0,
                "output_dropout": 0.0,
                "block": {"kind": "ia3", "bypass": True, "on_input": bool(side)},
            },
        )
        for family, family_ in (("sd", ""), ("flux", "flux_"))
        for name, args in (
            ("", ""),
            ("_dropouts", ' "dropout=0.1" "rank_dropout=0.1" "module_dropout=0.1"'),
        )
        for side in ("", "_on_input")
    },
    # the same with the feed-forwards' IA^3 entry's own bypass_mode = false (its block's `bypass` off), and
    # with the network's dora_wd beside IA^3 entries alone (GLoRAModule and IA3Module never read it: DBS405)
    "glora_network_bypass_beside_ia3_entry_own_bypass_off": (
        "sd",
        '"algo=glora" "bypass_mode=True" "dropout=0.1"',
        _sd("ia3", "bypass_mode = false"),
        "",
        {"kind": "glora", "bypass": True, "bypass_dropout": 0.1, "block": {"kind": "ia3", "bypass": False}},
    ),
    **{
        f"{family_}glora_network_bypass_dora_wd_beside_ia3": (
            family,
            '"algo=glora" "bypass_mode=True" "dora_wd=True"',
            (_sd if family == "sd" else _flux)("ia3"),
            "",
            {"kind": "glora", "bypass": True, "dora": False, "block": {"kind": "ia3", "bypass": True}},
        )
        for family, family_ in (("sd", ""), ("flux", "flux_"))
    },
    # line 110 (Diag-OFT blocks): the network's constraint beside Diag-OFT / BOFT entries, their blocks' alpha
    # (tests/runtime/test_lycoris_network_constraint_oft_entries.py)
    "network_constraint_beside_diag_oft": (
        "sd",
        '"algo=locon" "constraint=0.1"',
        _sd("diag-oft"),
        "",
        {"kind": "lora", "block": {"kind": "diag-oft", "alpha": 0.1}},
    ),
    "flux_glora_network_constraint_beside_diag_oft": (
        "flux",
        '"algo=glora" "constraint=0.1"',
        _flux("diag-oft"),
        "",
        {"kind": "glora", "block": {"kind": "diag-oft", "alpha": 0.1}},
    ),
    # line 110 (Diag-OFT blocks): the network's rescaled beside Diag-OFT / BOFT entries, their blocks'
    # `rescaled` (was DBS403; tests/runtime/test_lycoris_network_rescaled_oft_entries.py,
    # test_lycoris_flow_oft_network_entries.py)
    "network_rescaled_beside_diag_oft": (
        "sd",
        '"algo=locon" "rescaled=True"',
        _sd("diag-oft"),
        "",
        {"kind": "lora", "block": {"kind": "diag-oft", "rescaled": "on"}},
    ),
    "flux_network_rescaled_beside_boft": (
        "flux",
        '"algo=locon" "rescaled=True"',
        _flux("boft", "dim = 18"),
        "",
        {"kind": "lora", "block": {"kind": "boft", "rescaled": "on"}},
    ),
    # line 108 (map entries): rs_lora in a network of several algorithms, a LoKr entry's own rs_lora on a LoKr
    # network beside them (tests/runtime/test_lycoris_mixed_rs_lora.py)
    "rs_lora_beside_loha": (
        "sd",
        '"algo=locon" "rs_lora=True"',
        _sd("loha"),
        "",
        {"kind": "lora", "alpha": 2.0, "block": {"kind": "loha", "alpha": 2.0}},
    ),
    "lokr_entry_rs_lora_on_lokr_network_beside_loha": (
        "sd",
        '"algo=lokr"',
        _resnet("lokr", "rs_lora = true", "loha"),
        "",
        {"kind": "lokr", "lokr_rank_stabilized": False, "block": {"rank_stabilized": "on", "alpha": 2.0}},
    ),
    # on Flux / SD3 / Chroma's fused Linears too (was DBS403 there;
    # tests/runtime/test_lycoris_flow_mixed_rs_lora_boft.py)
    "flux_rs_lora_beside_loha": (
        "flux",
        '"algo=locon" "rs_lora=True"',
        _flux("loha"),
        "",
        {"kind": "lora", "alpha": 2.0, "block": {"kind": "loha", "alpha": 2.0}},
    ),
    "flux_lokr_entry_rs_lora_on_lokr_network_beside_loha": (
        "flux",
        '"algo=lokr"',
        _flux("lokr", "rs_lora = true").replace(
            "[name_algo_map", '[name_algo_map."single_blocks.*.linear1"]\nalgo = "loha"\n[name_algo_map', 1
        ),
        "",
        {"kind": "lokr", "lokr_rank_stabilized": False, "block": {"rank_stabilized": "on", "alpha": 2.0}},
    ),
    # line 108: an entry's own use_scalar with --scale_weight_norms
    # (tests/runtime/test_lycoris_block_scalar_max_norm.py)
    "entry_use_scalar_with_scale_weight_norms": (
        "sd",
        '"algo=locon"',
        _sd("locon", "use_scalar = true"),
        "--scale_weight_norms=1",
        {"max_norm": 1.0, "max_norm_form": "lycoris", "scalar": False, "block": {"scalar": "on"}},
    ),
    # line 108 (map entries): an entry's own use_tucker with the dropouts
    # (tests/runtime/test_lycoris_block_tucker_dropout.py)
    "entry_use_tucker_with_module_dropout": (
        "sd",
        '"algo=locon" "module_dropout=0.1"',
        _resnet("locon", "use_tucker = true", "locon"),
        "",
        {"module_dropout": 0.1, "tucker": False, "block": {"tucker": "on"}},
    ),
    "entry_use_tucker_with_rank_dropout": (
        "sd",
        '"algo=loha" "rank_dropout=0.1"',
        _resnet("loha", "use_tucker = true", "loha"),
        "",
        {"kind": "loha", "rank_dropout": 0.1, "tucker": False, "block": {"tucker": "on"}},
    ),
    # line 108: a LoKr entry's dim above 100000 with rs_lora (LyCORIS's full-matrix `dim = 10^13`): its block
    # keeps the dim, whose sqrt LokrModule scales each full layer by (a LoKr block's rank goes past 100000;
    # tests/runtime/test_lycoris_lokr_huge_rs_lora.py)
    "lokr_entry_huge_dim_rs_lora": (
        "sd",
        '"algo=lokr" "rs_lora=True"',
        _sd("lokr", "dim = 10000000000000"),
        "",
        {"kind": "lokr", "lokr_rank_stabilized": True, "block": {"rank": 10**13}},
    ),
    # line 108 (rs_lora beside entries): a T-LoRA network's rs_lora "beside them stays DBS403" (and a DyLoRA /
    # GLoRA / full / IA^3 network's): their LoCon / LoHa / LoKr / GLoRA entries' blocks' alpha x sqrt(dim), a
    # LoKr block's rank_stabilized (tests/runtime/test_lycoris_mixed_rs_lora.py and others)
    "tlora_network_rs_lora_beside_lokr": (
        "sd",
        '"algo=tlora" "rs_lora=True"',
        _sd("lokr", "dim = 8\nalpha = 2"),
        "",
        {"kind": "tlora", "block": {"kind": "lokr", "rank_stabilized": "on"}},
    ),
    # line 108 (T-LoRA): its rank_dropout / dropout "in bypass_mode stays DBS403" beside entries but LoCon's:
    # the adapter's bypass, dropout and rank_dropout beside LoCon / LoHa / LoKr / IA^3 / Diag-OFT / BOFT
    # entries too (tests/runtime/test_lycoris_tlora_bypass_entries.py)
    "tlora_network_bypass_dropouts_beside_loha": (
        "sd",
        '"algo=tlora" "bypass_mode=True" "dropout=0.1" "rank_dropout=0.1"',
        _sd("loha"),
        "",
        {"kind": "tlora", "bypass": True, "output_dropout": 0.1, "rank_dropout_form": "lycoris_bypass"},
    ),
}


@pytest.mark.parametrize("case", list(CONVERTS))
def test_now_converts(tmp_path, case):
    family, args, preset, flags, expected = CONVERTS[case]
    outcome = _convert(tmp_path, family, args, preset, flags)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    adapter = plan_of(outcome, tmp_path, PLAN_BASE[family]).adapter
    expected = dict(expected)
    block = expected.pop("block", {})  # one of the adapter's blocks holds these
    assert {key: getattr(adapter, key) for key in expected} == expected
    assert not block or any({key: getattr(b, key) for key in block} == block for b in adapter.blocks), (
        adapter.blocks
    )
    if preset is not None and "algo = " in preset:  # the entry's kind is a block of the plan
        entry = preset.split('algo = "')[1].split('"')[0]
        kind = {"locon": "lora"}.get(entry, entry)
        assert kind == adapter.kind or kind in {b.kind for b in adapter.blocks}, adapter.blocks
