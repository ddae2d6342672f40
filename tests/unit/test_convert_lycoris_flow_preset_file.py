"""LyCORIS preset files with flux_train_network.py and sd3_train_network.py
(dbspec/convert/kohya/lycoris_flow_file.py): the file's walk over kohya's Flux / MMDiT (lycoris_file._walk on
lycoris_flow_file's rows) written as diffusers' targets, fused layers whole, a name_algo_map dim as
[[adapter.blocks]] (LoRA/LoCon, LoKr / LoHa: a block per whole fused layer), SD3's patch convolution as
conv_targets (a dim of its own: a block's conv_rank); T5-XXL layers as train.t5 (LoRA, LoKr, LoHa).
tests/runtime/test_lycoris_preset_file_flow.py checks the walks against lycoris-lora 4.1.3's
create_network."""

from __future__ import annotations

import re

import numpy as np
import pytest
from safetensors.numpy import save_file

from convert_kit import codes, component_file, errors, fate, images, kohya, messages, plan_of

FLUX = "black-forest-labs/FLUX.1-dev"
BASE = (
    f"accelerate launch --mixed_precision bf16 flux_train_network.py --pretrained_model_name_or_path {FLUX} "
    "--clip_l clip_l.safetensors --t5xxl t5xxl_fp16.safetensors --ae ae.safetensors --train_data_dir x "
    "--resolution 512 --cache_latents_to_disk --save_model_as safetensors --sdpa --seed 42 "
    "--mixed_precision bf16 --save_precision bf16 --network_module lycoris.kohya --network_dim 8 "
    "--network_alpha 4 --optimizer_type adamw --learning_rate 1e-4 --max_train_steps 100 "
    "--timestep_sampling shift --discrete_flow_shift 3.1582 --model_prediction_type raw --guidance_scale 1.0"
)
# the double blocks' attention (fnmatch names), single blocks excluded, the img stream's qkv at dim 16
DOUBLE_ATTENTION = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["single_blocks.*", "*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
dim = 16
alpha = 8
"""
# the `full` defaults but the single blocks (regular expression), no text encoder
NO_SINGLES = """\
exclude_name = ['single_blocks\\..*']
text_encoder_target_module = []
"""


def _flux(tmp_path, preset: str, extra: str = "", *, allow: bool = False):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    (tmp_path / "preset.toml").write_text(preset, encoding="utf-8")
    return kohya(tmp_path, allow=allow, command=f'{BASE} --network_args "preset=preset.toml" {extra}')


def _picked(paths: list[str], targets) -> list[str]:
    return [p for p in paths if any(p == t or p.endswith("." + t) for t in targets)]


@pytest.mark.parametrize("algo", ["ia3", "diag-oft", "boft"])
def test_a_final_layer_without_linear2_excludes_the_single_blocks(tmp_path, algo):
    """IA^3 / Diag-OFT / BOFT reaching the final layer without the single blocks' linear2 (was DBS403): the
    target proj_out with `exclude` for the single blocks' proj_out (their blocks have no rank 0), before a
    map entry's own block size."""
    preset = 'unet_target_module = []\nunet_target_name = ["final_layer.linear", "img_in"]\n'
    preset += 'text_encoder_target_module = []\n\n[name_algo_map."img_in"]\n'
    preset += f"dim = {6 if algo == 'boft' else 2}\n"  # BOFT: 3072 rows in 512 blocks of 6
    outcome = _flux(tmp_path, preset, f'"algo={algo}"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert set(_picked(["proj_out", "x_embedder"], a.denoiser_targets)) == {"proj_out", "x_embedder"}
    first = lambda path: next((b for b in a.blocks if re.search(b.pattern, path)), None)  # noqa: E731
    assert first("single_transformer_blocks.7.proj_out").rank == 0 and first("proj_out") is None
    own = first("x_embedder")  # IA^3 never reads an entry's dim (inert), the OFTs' block size
    assert own is None if algo == "ia3" else own.rank == (6 if algo == "boft" else 2)


@pytest.mark.parametrize("algo", ["diag-oft", "boft"])
@pytest.mark.parametrize("network", [True, False])
def test_own_algorithm_entries_bypass_mode_beside_the_excluded_single_blocks(tmp_path, algo, network):
    """A Diag-OFT / BOFT network's entries of its own algorithm with their own bypass_mode (was DBS403) on
    Flux's fused Linears: their blocks' `bypass` over every part (one module per fused qkv, its parts in its
    forward), settled on the block each came from although the plan puts the final layer's `exclude`
    (rank-0 blocks, the network's bypass) first: paired by position, the qkv block took the network's."""
    own = str(not network).lower()
    preset = "use_fnmatch = true\nunet_target_module = []\n"
    preset += 'unet_target_name = ["final_layer.linear", "img_in", "double_blocks.*.img_attn.qkv"]\n'
    preset += 'text_encoder_target_module = []\n\n[name_algo_map."img_in"]\n'
    preset += f"dim = {6 if algo == 'boft' else 2}\nbypass_mode = {own}\n"  # BOFT: 3072 rows in blocks of 6
    # BOFT's 9216 stacked rows split by 18 (512 blocks); Diag-OFT's at the network's dim
    preset += f'[name_algo_map."double_blocks.*.img_attn.qkv"]\nbypass_mode = {own}\n'
    preset += "dim = 18\n" if algo == "boft" else ""
    extra = f'"algo={algo}"' + (' "bypass_mode=True"' if network else "")
    outcome = _flux(tmp_path, preset, extra)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.bypass is network and a.fused
    first = lambda path: next((b for b in a.blocks if re.search(b.pattern, path)), None)  # noqa: E731
    excluded = first("single_transformer_blocks.7.proj_out")
    assert (excluded.rank, excluded.bypass) == (0, network)
    assert first("proj_out") is None
    assert (first("x_embedder").rank, first("x_embedder").bypass) == (6 if algo == "boft" else 2, not network)
    qkv = {first(f"transformer_blocks.3.attn.to_{p}") for p in "qkv"}
    assert [(b.rank, b.bypass) for b in qkv] == [(18 if algo == "boft" else 8, not network)]


def test_dylora_network_own_entries_bypass_mode_on_fused_layers(tmp_path):
    """An algo=dylora network's own entries with their own bypass_mode on Flux's fused qkv (was DBS403): the
    block's `bypass`; turned off it may hold several blocks (the default forward), turned on one only
    (DBS402, naming the entry)."""
    preset = "use_fnmatch = true\nunet_target_module = []\n"
    preset += 'unet_target_name = ["double_blocks.*_attn.*", "img_in"]\ntext_encoder_target_module = []\n'
    entry = '[name_algo_map."double_blocks.*.img_attn.qkv"]\nalgo = "dylora"\ndim = 16\nbypass_mode = OWN\n'
    for network, own, where in ((True, "false", "off"), (False, "true", "on")):
        text = preset + entry.replace("OWN", own).replace(
            "dim = 16", "dim = 8" if own == "true" else "dim = 16"
        )
        extra = '"algo=dylora" "block_size=8"' + (' "bypass_mode=True"' if network else "")
        outcome = _flux(tmp_path / where, text, extra)
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        a = plan_of(outcome, tmp_path / where).adapter
        assert (a.kind, a.bypass, a.dylora_unit, a.fused != ()) == ("dylora", network, 8, True)
        (block,) = a.blocks
        assert (block.kind, block.rank, block.bypass) == ("adapter", 16 if network else 8, not network)
        assert all(re.search(block.pattern, f"transformer_blocks.3.attn.to_{p}") for p in "qkv")
    several = _flux(
        tmp_path / "several", preset + entry.replace("OWN", "true"), '"algo=dylora" "block_size=8"'
    )
    assert "DBS402" in codes(several)
    assert "img_attn.qkv.bypass_mode" in messages(several, "DBS402")


def test_double_block_attention_by_name_with_a_dim(tmp_path):
    outcome = _flux(tmp_path, DOUBLE_ATTENTION, '"algo=locon"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.kind == "lora" and a.rank == 8 and a.alpha == 4
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv"]
    parts = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"]
    parts += ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"]
    double = [f"transformer_blocks.{i}.{p}" for i in range(19) for p in parts]
    single = [f"single_transformer_blocks.{i}.{p}" for i in range(38) for p in ("attn.to_q", "proj_out")]
    assert _picked([*double, *single, "proj_out"], a.denoiser_targets) == double
    assert sorted(a.text_encoder_targets) == ["k_proj", "out_proj", "q_proj", "v_proj"]
    (block,) = a.blocks
    assert (block.rank, block.alpha) == (16, 8.0)
    hit = [f"transformer_blocks.{i}.attn.to_{n}" for i in range(19) for n in "qkv"]
    hit.sort(key=double.index)
    assert all(re.search(block.pattern, p) for p in hit)
    # among the adapted layers (the blocks apply to them) the img stream's fused q/k/v alone
    assert [p for p in double if re.search(block.pattern, p)] == hit


def test_a_final_layer_dim_leaves_the_single_blocks_out(tmp_path):
    """A map entry's dim for final_layer.linear (diffusers' top-level proj_out, a suffix of every single
    block's proj_out): the single blocks' proj_out the file leaves out stay rank 0 (the first block that
    matches a layer decides, so the rank-0 block comes first), the final layer at its dim."""
    preset = 'unet_target_module = []\nunet_target_name = ["final_layer.linear", "img_in"]\n'
    preset += 'text_encoder_target_module = []\n\n[name_algo_map."final_layer.linear"]\ndim = 8\nalpha = 2\n'
    a = plan_of(_flux(tmp_path, preset, '"algo=locon"'), tmp_path).adapter
    first = lambda path: next(b for b in a.blocks if re.search(b.pattern, path))  # noqa: E731
    assert (first("proj_out").rank, first("proj_out").alpha) == (8, 2.0)
    assert first("single_transformer_blocks.7.proj_out").rank == 0
    assert _picked(["proj_out", "x_embedder", "single_transformer_blocks.0.proj_out"], a.denoiser_targets)[
        :2
    ] == [
        "proj_out",
        "x_embedder",
    ]


def test_full_defaults_but_the_single_blocks(tmp_path):
    """Keys the file leaves out keep LyCORIS's `full` lists: every double-block Linear, no embedder or final
    layer (MLPEmbedder, LastLayer are in no list), no CLIP module (the file empties its classes)."""
    outcome = _flux(tmp_path, NO_SINGLES, '"algo=lora"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    parts = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj"]
    parts += ["attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj"]
    parts += ["ff_context.net.2", "norm1.linear", "norm1_context.linear"]
    double = [f"transformer_blocks.{i}.{p}" for i in range(19) for p in parts]
    single = [f"single_transformer_blocks.{i}.{p}" for i in range(38) for p in ("attn.to_q", "proj_out")]
    top = ["proj_out", "norm_out.linear", "x_embedder", "context_embedder"]
    assert _picked([*double, *single, *top], a.denoiser_targets) == double
    assert list(a.text_encoder_targets) == [] and not a.blocks


# LoKr / LoHa map entries of their own: the img stream's qkv at dim 16 / alpha 8 (DOUBLE_ATTENTION), the txt
# stream's at dim 1 / alpha 1 with LoKr's factor 4 and decompose_both
LOKR_DIMS = (
    DOUBLE_ATTENTION
    + '\n[name_algo_map."double_blocks.*.txt_attn.qkv"]\ndim = 1\nalpha = 1\nfactor = 4\n'
    + "decompose_both = true\n"
)


def test_lokr_and_loha_dims_are_blocks_over_whole_fused_layers(tmp_path):
    outcome = _flux(tmp_path / "plain", NO_SINGLES, '"algo=lokr"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert plan_of(outcome, tmp_path / "plain").adapter.kind == "lokr"
    for algo in ("lokr", "loha"):
        outcome = _flux(tmp_path / algo, LOKR_DIMS, f'"algo={algo}"')
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        a = plan_of(outcome, tmp_path / algo).adapter
        assert (a.kind, a.rank, a.alpha, len(a.fused)) == (algo, 8, 4.0, 2)
        first = lambda p, a=a: next((b for b in a.blocks if re.search(b.pattern, p)), None)  # noqa: E731
        for i in (0, 18):
            img = {first(f"transformer_blocks.{i}.attn.to_{n}") for n in "qkv"}
            txt = {first(f"transformer_blocks.{i}.attn.add_{n}_proj") for n in "qkv"}
            assert len(img) == len(txt) == 1  # one block per fused layer: all its parts
            (img,), (txt,) = img, txt
            assert (img.rank, img.alpha, img.factor) == (16, 8.0, 0)
            assert first(f"transformer_blocks.{i}.attn.to_out.0") is None
            if algo == "lokr":  # LoHa's module reads no factor (an inert key)
                assert (txt.rank, txt.alpha, txt.factor, txt.decompose_both) == (1, 1.0, 4, "on")
            else:
                assert (txt.rank, txt.alpha, txt.factor) == (1, 1.0, 0)


# CLIP-L's and T5-XXL's attention, T5's blocks 12-23 excluded, its attention at a dim of its own
T5_FILE = """\
text_encoder_target_module = ["CLIPAttention", "T5Attention"]
exclude_name = ['single_blocks\\..*', 'encoder\\.block\\.(1[2-9]|2\\d)\\..*']

[module_algo_map.T5Attention]
dim = 4
alpha = 4
"""


def _te_block(a, path: str):
    return next((b for b in a.text_encoder_blocks if re.search(b.pattern, path)), None)


def test_t5_layers_train_as_t5_lora(tmp_path):
    """A file reaching T5-XXL: LyCORIS's LoConModules there train with CLIP-L's (one text group at
    text_encoder_lr's first value) while T5 encodes every step, train_t5xxl or not: `train.t5`, the file's T5
    Linears at their entry's dim, the others at rank 0; with text-encoder outputs cached T5 never runs and
    with network_train_unet_only apply_to drops them (DBS405)."""
    outcome = _flux(tmp_path, T5_FILE, '"algo=locon" --text_encoder_lr 5e-5 1e-5')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert {c.name for c in plan.precision.components if c.trainable == "lora"} == {
        "unet",
        "text_encoder",
        "text_encoder_2",
    }
    assert plan.optimizer.text_encoder_lr == 5e-5 and plan.optimizer.text_encoder_2_lr in (None, 5e-5)
    t5 = "text_encoder_2.encoder.block.{}.layer.{}"
    assert a.kohya_names == "lycoris"  # the export names T5's modules lora_te2_, as LyCORIS does
    assert (_te_block(a, t5.format(3, "0.SelfAttention.q")).rank, a.alpha) == (4, 4.0)
    assert _te_block(a, t5.format(3, "0.SelfAttention.q")).alpha == 4.0
    assert _te_block(a, t5.format(12, "0.SelfAttention.o")).rank == 0
    assert _te_block(a, t5.format(3, "1.DenseReluDense.wi_0")).rank == 0
    assert _te_block(a, "text_encoder.text_model.encoder.layers.3.self_attn.q_proj") is None
    for extra, why in (
        ("--cache_text_encoder_outputs", "text-encoder outputs are cached"),
        ("--network_train_unet_only", "apply_to drops them"),
    ):
        folder = tmp_path / extra.strip("-")
        outcome = _flux(folder, T5_FILE, f'"algo=locon" {extra}')
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        assert why in messages(outcome, "DBS405")
        assert "text_encoder_2" not in {
            c.name for c in plan_of(outcome, folder).precision.components if c.trainable == "lora"
        }


def test_lokr_and_loha_t5_layers_train_as_t5_lokr_and_loha(tmp_path):
    """LoKr / LoHa files reaching T5-XXL: LyCORIS's LokrModule / LohaModule there (lycoris.kohya's algo on
    every module it builds) are dbspec's T5 adapter of that kind (`train.t5`), the T5 map entry's dim, alpha
    and LoKr factor a text-encoder block, the T5 Linears the file leaves out at rank 0."""
    lokr = T5_FILE + "factor = 8\n"
    for algo, preset in (("lokr", lokr), ("loha", T5_FILE)):
        folder = tmp_path / algo
        outcome = _flux(folder, preset, f'"algo={algo}" "factor=16" --text_encoder_lr 5e-5')
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        plan = plan_of(outcome, folder)
        a = plan.adapter
        assert a.kind == algo and "text_encoder_2" in {
            c.name for c in plan.precision.components if c.trainable == "lora"
        }
        assert plan.optimizer.text_encoder_lr == 5e-5
        assert a.t5_targets == ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
        t5 = "text_encoder_2.encoder.block.{}.layer.{}"
        own = _te_block(a, t5.format(3, "0.SelfAttention.k"))
        assert (own.rank, own.alpha) == (4, 4.0) and own.factor == (8 if algo == "lokr" else 0)
        assert _te_block(a, t5.format(12, "0.SelfAttention.o")).rank == 0
        assert _te_block(a, t5.format(3, "1.DenseReluDense.wo")).rank == 0
        assert a.factor == (16 if algo == "lokr" else -1)


# CLIP-L's and T5-XXL's attention (no denoiser layer), T5's blocks 12-23 excluded
T5_ONLY = """\
unet_target_module = []
text_encoder_target_module = ["CLIPAttention", "T5Attention"]
exclude_name = ['encoder\\.block\\.(1[2-9]|2\\d)\\..*']
"""


@pytest.mark.parametrize("algo", ["glora", "dylora", "diag-oft", "boft", "ia3"])
def test_other_algos_t5_layers_train_as_t5_adapter_of_that_kind(tmp_path, algo):
    """GLoRA / DyLoRA / Diag-OFT / BOFT / IA^3 files reaching T5-XXL (was DBS403): LyCORIS's modules of the
    algo there train with CLIP-L's while T5 encodes, dbspec's T5 adapter of that kind (`train.t5`); the T5
    Linears the file leaves out: rank-0 text-encoder blocks for the rank-based kinds, `exclude` kept to the
    text encoders for the others (their blocks are block sizes or none)."""
    outcome = _flux(tmp_path, T5_ONLY, f'"algo={algo}" --text_encoder_lr 5e-5')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.kind == algo and a.t5_targets == ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
    assert "text_encoder_2" in {c.name for c in plan.precision.components if c.trainable == "lora"}
    # LyCORIS's one text group, CLIP-L's and T5's modules at text_encoder_lr's first value
    assert plan.optimizer.text_encoder_lr == 5e-5 and plan.optimizer.text_encoder_2_lr in (None, 5e-5)
    if algo == "dylora":
        assert a.dylora_form == "lycoris"
    t5 = "text_encoder_2.encoder.block.{}.layer.{}"
    kept = [t5.format(3, "0.SelfAttention.q"), t5.format(11, "0.SelfAttention.o")]
    left = [t5.format(12, "0.SelfAttention.o"), t5.format(3, "1.DenseReluDense.wi_0")]
    # the plan holds an `exclude` as leading rank-0 blocks (compiler/adapters.py _full_excluded)
    assert all(_te_block(a, p).rank == 0 for p in left)
    assert all(_te_block(a, p) is None or _te_block(a, p).rank for p in kept)
    # kept to the text encoders: no denoiser layer named like T5's (`o`, `wo`) loses its adapter
    assert not any(b.rank == 0 and re.search(b.pattern, "transformer_blocks.0.ff.net.2") for b in a.blocks)
    assert not any(b.rank == 0 and re.search(b.pattern, "proj_out") for b in a.blocks)
    if algo == "dylora":
        _dylora_t5_alphas(tmp_path)
        return
    # --network_weights with LyCORIS's T5 modules of the algo (load_weights into the preset's network; was
    # DBS403 in the docs): started from the file (runtime check: tests/runtime/test_lycoris_t5_kinds.py)
    tensors = {
        "glora": {
            "a1.weight": (4096, 8),
            "a2.weight": (8, 4096),
            "b1.weight": (4096, 8),
            "b2.weight": (8, 4096),
        },
        "diag-oft": {"oft_blocks": (512, 8, 8)},
        "boft": {"oft_blocks": (10, 512, 8, 8)},  # power2factorization(4096, 8): 512 blocks of 8
        "ia3": {"weight": (4096,), "on_input": ()},
    }[algo]
    name = "lora_te2_encoder_block_3_layer_0_SelfAttention_q"
    file = {f"{name}.{k}": np.zeros(s, np.float32) for k, s in tensors.items()}
    save_file({**file, f"{name}.alpha": np.array(4.0, np.float32)}, str(tmp_path / "prev.safetensors"))
    outcome = _flux(
        tmp_path, T5_ONLY, f'"algo={algo}" --text_encoder_lr 5e-5 --network_weights prev.safetensors'
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    started = plan_of(outcome, tmp_path)
    assert started.adapter.init_weights == str(tmp_path / "prev.safetensors") and started.adapter.init_partial
    assert started.adapter.t5_targets and started.adapter.kind == algo


def _dylora_t5_alphas(tmp_path):
    """--network_weights into a DyLoRA preset network reaching T5-XXL (was DBS403: the preset's rank-0 blocks
    for T5's left-out Linears read as map entries): DyLoraModule's weights (up_list / down_list) take none of
    the file's tensors, only each module's alpha, so a T5 module at another alpha than network_alpha (4) is
    a text-encoder block at the network's rank and the file's alpha, after the rank-0 block (no
    init_weights)."""
    name = "lora_te2_encoder_block_3_layer_0_SelfAttention_q"
    file = {f"{name}.lora_down.weight": np.zeros((8, 4096), np.float32)}
    file |= {f"{name}.lora_up.weight": np.zeros((4096, 8), np.float32), f"{name}.alpha": np.array(2.0)}
    save_file(file, str(tmp_path / "prev.safetensors"))
    outcome = _flux(
        tmp_path, T5_ONLY, '"algo=dylora" --text_encoder_lr 5e-5 --network_weights prev.safetensors'
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert not a.init_weights and (a.rank, a.alpha) == (8, 4.0)
    t5 = "text_encoder_2.encoder.block.{}.layer.{}"
    assert (
        _te_block(a, t5.format(3, "0.SelfAttention.q")).rank,
        _te_block(a, t5.format(3, "0.SelfAttention.q")).alpha,
    ) == (8, 2.0)
    assert _te_block(a, t5.format(3, "0.SelfAttention.k")) is None  # the network's alpha
    assert _te_block(a, t5.format(12, "0.SelfAttention.q")).rank == 0  # left out, first
    # a map entry's own dim (was DBS403): LyCORIS loads the file's alphas into the modules of their own
    # dims (tests/unit/test_convert_lycoris_flow_dylora_opts.py); this file's T5 module is built nowhere
    (tmp_path / "dims").mkdir()
    outcome = _flux(
        tmp_path / "dims", DOUBLE_ATTENTION, '"algo=dylora" --network_weights ../prev.safetensors'
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "network_weights") == "inert"


def test_a_file_matching_nothing_stops_kohya(tmp_path):
    preset = "unet_target_module = []\ntext_encoder_target_module = []\n"
    outcome = _flux(tmp_path, preset, '"algo=locon"', allow=True)
    assert "DBS402" in codes(outcome)


SD35 = "stabilityai/stable-diffusion-3.5-large"
# the x blocks' attention (classes AttentionLinears under x_block by fnmatch) and the patch convolution
SD3_X_ATTENTION = """\
use_fnmatch = true
unet_target_module = ["AttentionLinears", "PatchEmbed"]
unet_target_name = []
text_encoder_target_module = ["CLIPMLP"]
exclude_name = ["*.context_block.*"]
"""


def _sd3(tmp_path, preset: str, extra: str, *, allow: bool = False):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    (tmp_path / "preset.toml").write_text(preset, encoding="utf-8")
    return kohya(
        tmp_path,
        allow=allow,
        command=f"accelerate launch sd3_train_network.py --pretrained_model_name_or_path {SD35} "
        "--clip_l sd3/clip_l.safetensors --clip_g sd3/clip_g.safetensors --t5xxl sd3/t5xxl_fp16.safetensors "
        "--train_data_dir x --resolution 512 --save_model_as safetensors --sdpa --seed 42 "
        "--network_module lycoris.kohya --network_dim 8 --network_alpha 4 --learning_rate 1e-4 "
        f'--max_train_steps 100 --network_args "preset=preset.toml" {extra}',
    )


@pytest.mark.parametrize("algo", ["glora", "diag-oft"])
def test_sd3_other_algos_t5_layers_train_as_t5_adapter(tmp_path, algo):
    """On SD3 (T5-XXL LyCORIS's `lora_te3_`, dbspec's text_encoder_3) a GLoRA / Diag-OFT file reaching T5's
    gated MLP alone: train.t5 of that kind, T5's attention Linears left out (rank 0 / excluded)."""
    preset = (
        'unet_target_module = []\ntext_encoder_target_module = ["CLIPAttention", "T5DenseGatedActDense"]\n'
    )
    outcome = _sd3(tmp_path, preset, f'"algo={algo}"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.kind == algo and a.t5_targets == ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
    assert "text_encoder_3" in {c.name for c in plan.precision.components if c.trainable == "lora"}
    t5 = "text_encoder_3.encoder.block.5.layer.{}"
    assert _te_block(a, t5.format("0.SelfAttention.v")).rank == 0
    assert _te_block(a, t5.format("1.DenseReluDense.wi_1")) is None
    assert _te_block(a, "text_encoder.text_model.encoder.layers.0.self_attn.v_proj") is None


def test_sd3_x_attention_and_the_patch_convolution(tmp_path):
    outcome = _sd3(tmp_path, SD3_X_ATTENTION, '"algo=locon" "conv_dim=4"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "lora" and a.rank == 8 and (a.conv_rank, a.conv_alpha) == (4, 4.0)
    assert list(a.conv_targets) == ["pos_embed.proj"]
    parts = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn2.to_q", "attn2.to_out.0"]
    x = [f"transformer_blocks.{i}.{p}" for i in range(24) for p in parts]
    context = [f"transformer_blocks.{i}.attn.{p}" for i in range(24) for p in ("add_q_proj", "to_add_out")]
    assert _picked([*x, *context, "proj_out"], a.denoiser_targets) == x
    assert sorted(a.text_encoder_targets) == ["fc1", "fc2"] and not a.blocks
    # a dim of its own for the patch convolution: a block at that conv rank (LoConModule's dim / alpha there)
    dim = SD3_X_ATTENTION + "\n[module_algo_map.PatchEmbed]\ndim = 2\nalpha = 1\n"
    outcome = _sd3(tmp_path / "dim", dim, '"algo=locon" "conv_dim=4"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "dim").adapter
    assert (a.conv_rank, a.conv_alpha, a.conv_targets) == (4, 4.0, ("pos_embed.proj",))
    (block,) = a.blocks
    assert re.search(block.pattern, "pos_embed.proj") and (block.conv_rank, block.conv_alpha) == (2, 1.0)
    assert not any(re.search(block.pattern, p) for p in x)  # the attention keeps the network's rank


@pytest.mark.parametrize(
    ("entry", "size", "constraint"),
    [
        ("constraint = 0.001", 4, 0.001),  # no dim of its own: conv_dim on the 2x2 patch convolution
        ("dim = 2", 2, 0.0),
    ],
)
def test_sd3_diag_oft_conv_dim_with_an_entry_on_the_patch_convolution(tmp_path, entry, size, constraint):
    """algo=diag-oft, conv_dim 4 beside network_dim 8, a PatchEmbed entry reaching the patch convolution
    first (was DBS403): its block sizes it as create_single_module does (the entry's dim, else conv_dim),
    the conv_dim block after it, the attention at network_dim."""
    preset = SD3_X_ATTENTION + f"\n[module_algo_map.PatchEmbed]\n{entry}\n"
    outcome = _sd3(tmp_path, preset, '"algo=diag-oft" "conv_dim=4"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.oft_block_size, a.conv_targets) == ("diag-oft", 8, ("pos_embed.proj",))
    first = next(b for b in a.blocks if re.search(b.pattern, "pos_embed.proj"))
    assert (first.rank, first.alpha) == (size, constraint)
    assert not any(re.search(b.pattern, "transformer_blocks.0.attn.to_q") for b in a.blocks)


def test_sd3_t5_layers_train_as_t5_lora(tmp_path):
    """On SD3 LyCORIS names T5-XXL `lora_te3_` (the third encoder kohya hands it): its file layers are
    `train.t5` (text_encoder_3), at text_encoder_lr like both CLIP encoders."""
    outcome = _sd3(tmp_path, SD3_X_ATTENTION.replace('"CLIPMLP"', '"T5DenseGatedActDense"'), '"algo=locon"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    lora = {c.name for c in plan.precision.components if c.trainable == "lora"}
    assert "text_encoder_3" in lora and not {"text_encoder", "text_encoder_2"} & lora
    (block,) = plan.adapter.text_encoder_blocks  # T5's attention left out
    assert block.rank == 0 and re.search(
        block.pattern, "text_encoder_3.encoder.block.5.layer.0.SelfAttention.o"
    )
    assert not re.search(block.pattern, "text_encoder_3.encoder.block.5.layer.1.DenseReluDense.wo")


def test_sd3_lokr_on_the_patch_convolution(tmp_path):
    """A file reaching the patch convolution with algo=lokr: LokrModule on it at conv_dim / conv_alpha (peft's
    LoKr on pos_embed.proj)."""
    preset = "unet_target_module = ['PatchEmbed', 'SingleDiTBlock']\n"
    outcome = _sd3(tmp_path / "plain", preset, '"algo=lokr"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "plain").adapter
    assert (a.kind, a.conv_rank, a.conv_targets, a.tucker) == ("lokr", 8, ("pos_embed.proj",), False)


@pytest.mark.parametrize("algo", ["locon", "lokr", "loha"])
@pytest.mark.parametrize("where", ["network", "entry", "entry dim", "entry off"])
def test_sd3_tucker_form_on_a_files_patch_convolution(tmp_path, algo, where):
    """use_tucker on a file's PatchEmbed, the network's or its map entry's own (with a dim of its own: a
    block's conv_rank): the patch convolution is the only k x k convolution LyCORIS adapts on kohya's MMDiT,
    so the setting it gets is the adapter's tucker (LoConModule's `lora_mid`, LokrModule's `lokr_t2`,
    LohaModule's `hada_t1` / `hada_t2`; tests/runtime/test_lycoris_sd3_patch.py trains them, each equal to
    lycoris-lora's module with use_tucker), no block carrying its own."""
    preset = "unet_target_module = ['PatchEmbed', 'SingleDiTBlock']\n"
    extra = f'"algo={algo}"' + (' "use_tucker=True"' if where in ("network", "entry off") else "")
    entry = {"entry": "use_tucker = true\n", "entry dim": "use_tucker = true\ndim = 2\nalpha = 1\n"}
    entry["entry off"] = "use_tucker = false\ndim = 2\n"
    if where in entry:
        preset += "\n[module_algo_map.PatchEmbed]\n" + entry[where]
    outcome = _sd3(tmp_path, preset, extra)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.tucker == (where != "entry off") and a.conv_targets == ("pos_embed.proj",)
    assert all(b.tucker == "adapter" for b in a.blocks)
    if where.startswith("entry "):
        (block,) = [b for b in a.blocks if re.search(b.pattern, "pos_embed.proj")]
        assert block.conv_rank == 2
    if where == "entry off":  # the network's use_tucker shapes no layer
        assert "use_tucker off" in messages(outcome, "DBS405")


@pytest.mark.parametrize(
    ("network", "entry", "dim"),
    [("lokr", "loha", 2), ("locon", "lokr", 1), ("locon", "loha", 2), ("lokr", "locon", 2)],
)
def test_sd3_tucker_form_of_a_patch_entry_of_another_algo(tmp_path, network, entry, dim):
    """A PatchEmbed entry of another algo with its own use_tucker (was DBS403; a spec's DBS596): LyCORIS
    builds that one module (LohaModule, LokrModule, LoConModule) with use_tucker, so its block carries
    `tucker = "on"` and the adapter's stays off (runtime: tests/runtime/test_lycoris_sd3_mixed_tucker_file.py
    builds each such pairing as lycoris-lora does)."""
    preset = "unet_target_module = ['PatchEmbed', 'SingleDiTBlock']\n\n[module_algo_map.PatchEmbed]\n"
    preset += f"algo = '{entry}'\ndim = {dim}\nalpha = 1\nuse_tucker = true\n"
    outcome = _sd3(tmp_path, preset, f'"algo={network}"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.tucker, a.conv_targets) == (
        {"locon": "lora"}.get(network, network),
        False,
        ("pos_embed.proj",),
    )
    (block,) = [b for b in a.blocks if re.search(b.pattern, "pos_embed.proj")]
    assert (block.kind, block.tucker, block.conv_rank) == ({"locon": "lora"}.get(entry, entry), "on", dim)


@pytest.mark.parametrize(
    ("network", "entry", "want"),
    [
        ("lokr", "loha", ("loha", "on", 2)),  # the patch entry's LohaModule with the network's use_tucker
        ("locon", "lokr", ("lokr", "on", 2)),
        ("lokr", None, ("adapter", "on", 8)),  # the network's own LokrModule there: a block of its own
        ("locon", "full", ("full", "adapter", 1)),  # FullModule never reads it: DBS405
    ],
)
def test_sd3_network_tucker_form_beside_entries_of_other_algos(tmp_path, network, entry, want):
    """The network's use_tucker beside map entries of other algorithms (was DBS403, a spec's DBS578):
    LyCORIS hands it to every module and only LoConModule / LohaModule / LokrModule on a k x k convolution
    read it, on kohya's MMDiT the patch convolution alone, so the patch module's block carries `tucker =
    "on"` (a block of the adapter's kind at its conv values where the patch is the network's algo) and the
    adapter's stays off; a kind that never reads it leaves it shaping nothing (DBS405). The blocks are
    those of a patch entry's own use_tucker (tests/runtime/test_lycoris_sd3_mixed_tucker_file.py builds
    them as lycoris-lora does)."""
    preset = "unet_target_module = ['PatchEmbed', 'SingleDiTBlock']\n\n"
    if entry is None:  # the patch at the network's algo, the blocks' Linears full
        preset += "[module_algo_map.SingleDiTBlock]\nalgo = 'full'\n"
    else:
        preset += f"[module_algo_map.PatchEmbed]\nalgo = '{entry}'\ndim = 2\nalpha = 1\n"
    outcome = _sd3(tmp_path, preset, f'"algo={network}" "use_tucker=True"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    told = fate(outcome, "network_args use_tucker")
    assert told in ("ignored", "inert") if entry == "full" else told == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.tucker, a.conv_targets, a.conv_rank) == (False, ("pos_embed.proj",), 8)
    block = next(b for b in a.blocks if re.search(b.pattern, "pos_embed.proj"))
    assert (block.kind, block.tucker, block.conv_rank) == want
    assert all(b.tucker == "adapter" for b in a.blocks if b is not block)
    if entry == "full":
        assert "never reads it" in messages(outcome, "DBS405")
    # Flux has no k x k convolution: the network's use_tucker shapes nothing there
    flux = _flux(tmp_path / "flux", MIXED, f'"algo={network}" "use_tucker=True"')
    assert not {"DBS402", "DBS403"} & codes(flux), errors(flux)
    assert fate(flux, "network_args use_tucker") == "inert"


def test_text_encoder_entries_with_unet_only_are_ignored(tmp_path):
    """--network_train_unet_only: LycorisNetworkKohya.apply_to drops CLIP-L's modules, so an entry reaching
    only them (another algorithm, a dim) changes nothing (DBS405); trained, CLIP-L's MLPs are LoHa blocks
    (several kinds, tests/runtime/test_lycoris_mixed_flow.py)."""
    preset = NO_SINGLES.replace("text_encoder_target_module = []", 'text_encoder_target_module = ["CLIPMLP"]')
    preset += '\n[module_algo_map.CLIPMLP]\nalgo = "loha"\ndim = 2\n'
    outcome = _flux(tmp_path / "mixed", preset, '"algo=locon"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "mixed").adapter
    assert a.kind == "lora" and [(b.kind, b.rank) for b in a.text_encoder_blocks] == [("loha", 2)]
    outcome = _flux(tmp_path / "kept", preset, '"algo=locon" --network_train_unet_only')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert "apply_to drops" in messages(outcome, "DBS405")


# CLIP-L's MLPs at a dim of their own, its attention at the network's
CLIP_DIMS = """\
exclude_name = ['single_blocks\\..*']
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]

[module_algo_map.CLIPMLP]
dim = 2
alpha = 2
"""


def test_clip_dims_of_their_own_are_text_encoder_blocks(tmp_path):
    """A map entry's CLIP dim is [[adapter.text_encoder_blocks]] with LoCon (LoConModule on a CLIP Linear is
    kohya's LoRA), LoKr and LoHa (LokrModule / LohaModule at the entry's dim and alpha)."""
    outcome = _flux(tmp_path, CLIP_DIMS, '"algo=locon"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter

    def te_rank(path):
        block = next((b for b in a.text_encoder_blocks if re.search(b.pattern, path)), None)
        return (a.rank, a.alpha) if block is None else (block.rank, block.alpha)

    assert te_rank("text_encoder.text_model.encoder.layers.3.mlp.fc2") == (2, 2.0)
    assert te_rank("text_encoder.text_model.encoder.layers.3.self_attn.q_proj") == (8, 4.0)
    for algo in ("lokr", "loha"):
        outcome = _flux(tmp_path / algo, CLIP_DIMS, f'"algo={algo}"')
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        a = plan_of(outcome, tmp_path / algo).adapter
        assert a.kind == algo and te_rank("text_encoder.text_model.encoder.layers.3.mlp.fc2") == (2, 2.0)
        assert te_rank("text_encoder.text_model.encoder.layers.3.self_attn.q_proj") == (8, 4.0)


@pytest.mark.parametrize("algo", ["lokr", "loha"])
def test_sd3_lokr_and_loha_outside_the_joint_blocks(tmp_path, algo):
    """LoKr / LoHa on the embedders and the final layer, plain Linears (LokrModule / LohaModule: peft's LoKr /
    LoHa on the diffusers layer; its kohya_lora export under kohya's names, the final adaLN rows swapped,
    loaded by lycoris-lora with the trained outputs in a scratch run)."""
    preset = (
        "unet_target_module = []\ntext_encoder_target_module = []\nunet_target_name = ['y_embedder\\..*', "
        "'context_embedder', 'final_layer\\..*']\n"
    )
    outcome = _sd3(tmp_path, preset, f'"algo={algo}"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == algo and a.rank == 8 and a.alpha == 4.0
    embedders = ["time_text_embed.text_embedder.linear_1", "time_text_embed.text_embedder.linear_2"]
    outside = [*embedders, "context_embedder", "norm_out.linear", "proj_out"]
    inside = [f"transformer_blocks.{i}.attn.to_q" for i in range(3)] + ["transformer_blocks.0.ff.net.2"]
    inside += ["time_text_embed.timestep_embedder.linear_1", "pos_embed.proj"]
    assert _picked([*outside, *inside], a.denoiser_targets) == outside and not a.conv_targets


def test_flux_lokr_entry_rs_lora_is_a_block_rank_stabilized(tmp_path):
    """A LoKr entry's own rs_lora on FLUX.1's fused qkv: its block's alpha x sqrt(dim) and rank_stabilized
    (runtime/fused_lokr.py scales a fused layer with both factors full by its block's); a LoHa's or LoCon's
    entry's own rank_dropout_scale there: its block's, the fused layer's one draw rescaled (issue 12)."""
    text = DOUBLE_ATTENTION + "rs_lora = true\nfull_matrix = true\n"
    outcome = _flux(tmp_path / "rs", text, '"algo=lokr"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "rs").adapter
    assert (
        a.lokr_rank_stabilized,
        [(b.rank, b.alpha, b.full_matrix, b.rank_stabilized) for b in a.blocks],
    ) == (
        False,
        [(16, 8.0 * 4, "on", "on")],
    )
    text = DOUBLE_ATTENTION + "rank_dropout_scale = true\n"
    for algo in ("loha", "locon"):
        outcome = _flux(tmp_path / algo, text, f'"algo={algo}" "rank_dropout=0.1"')
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        a = plan_of(outcome, tmp_path / algo).adapter
        assert (a.rank_dropout, [(b.rank, b.rank_dropout_scale) for b in a.blocks]) == (0.1, [(16, "on")])


@pytest.mark.parametrize("algo", ["lokr", "loha", "locon"])
def test_flux_entry_use_scalar_is_a_block_scalar_over_whole_fused_layers(tmp_path, algo):
    """An entry's own use_scalar on FLUX.1's fused qkv (LokrModule's / LohaModule's / LoConModule's truth
    test): its block's `scalar`, one trained scalar per fused layer, the parts' tied (runtime/fused.py), as
    the entry names whole kohya Linears (issue 12; was DBS403)."""
    text = DOUBLE_ATTENTION + "use_scalar = true\n"
    outcome = _flux(tmp_path, text, f'"algo={algo}"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.scalar) == ({"locon": "lora"}.get(algo, algo), False)
    assert [(b.rank, b.scalar) for b in a.blocks] == [(16, "on")]


# LyCORIS's LoKr on the double blocks' image q/k/v, LoHa on the single blocks' linear1, LoCon elsewhere
# (tests/runtime/test_lycoris_mixed_flow.py checks the modules against lycoris-lora and trains it)
MIXED = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = []
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "lokr"
dim = 8
[name_algo_map."single_blocks.*.linear1"]
algo = "loha"
dim = 2
alpha = 1
"""


def test_entries_of_other_algorithms_are_blocks_of_their_kind(tmp_path):
    """Flux: map entries giving fused layers LoKr / LoHa on a LoCon network are blocks of that kind covering
    every part of each fused layer (by block index: no deeper model's fused layer is split between kinds,
    compiler/fused.py DBS507), fused_projections one LyCORIS module per fused Linear; with use_tucker (which
    the kinds do not build alike) DBS403."""
    outcome = _flux(tmp_path / "mixed", MIXED, '"algo=locon"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "mixed").adapter
    assert a.kind == "lora" and a.fused
    lokr, loha = a.blocks
    assert (lokr.kind, lokr.rank, lokr.alpha, loha.kind, loha.rank, loha.alpha) == (
        "lokr",
        8,
        4.0,
        "loha",
        2,
        1.0,
    )
    for i in (0, 18, 19):  # 19: beyond FLUX.1's double blocks
        parts = [f"transformer_blocks.{i}.attn.to_{p}" for p in "qkv"]
        assert {bool(re.search(lokr.pattern, p)) for p in parts} == {i < 19}
    for i in (0, 37, 38):
        parts = [
            f"single_transformer_blocks.{i}.{p}" for p in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
        ]
        assert {bool(re.search(loha.pattern, p)) for p in parts} == {i < 38}
    assert not any(re.search(b.pattern, "transformer_blocks.0.attn.add_q_proj") for b in a.blocks)
    # the network's use_tucker shapes no Linear (was DBS403: test_sd3_network_tucker_form_beside_entries...);
    # use_scalar is the adapter's, every LoCon / LoHa / LoKr fused Linear's (was DBS403, a spec's DBS578;
    # tests/runtime/test_lycoris_network_switches_entries.py)
    tucker = _flux(tmp_path / "tucker", MIXED, '"algo=locon" "use_tucker=True"')
    assert not {"DBS402", "DBS403"} & codes(tucker) and fate(tucker, "network_args use_tucker") == "inert"
    scalar = _flux(tmp_path / "scalar", MIXED, '"algo=locon" "use_scalar=True"')
    assert not {"DBS402", "DBS403"} & codes(scalar), errors(scalar)
    assert plan_of(scalar, tmp_path / "scalar").adapter.scalar
    # a boft entry: one ButterflyOFTModule per fused Linear (tests/runtime/test_lycoris_flux_boft.py), its
    # dim LyCORIS's lora_dim (the block size: power2factorization of the stacked rows)
    boft = MIXED.replace('algo = "lokr"\ndim = 8', 'algo = "boft"\ndim = 32')
    outcome = _flux(tmp_path / "boft", boft, '"algo=locon"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "boft").adapter
    assert a.fused and [(b.kind, b.rank) for b in a.blocks][0] == ("boft", 32)
    # dim 8: FLUX.1's 9216-row qkv (2^10 x 9) needs an even block of 18: ButterflyOFTModule raises
    boft = MIXED.replace('algo = "lokr"', 'algo = "boft"')
    outcome = _flux(tmp_path / "boft8", boft, '"algo=locon"', allow=True)
    assert "9216 rows on FLUX.1" in messages(outcome, "DBS402") and "18 or more" in messages(
        outcome, "DBS402"
    )
    # module_dropout: each LyCORIS module draws once for all its fused parts (runtime/mixed_kinds.py
    # add_module_dropout; tests/runtime/test_lycoris_mixed_flow_dropout.py), was DBS403
    drop = _flux(tmp_path / "drop", MIXED, '"algo=locon" "module_dropout=0.1"')
    assert not {"DBS402", "DBS403"} & codes(drop), errors(drop)
    assert plan_of(drop, tmp_path / "drop").adapter.module_dropout == 0.1
    # beside a boft entry too (was DBS403 / a spec's DBS578): ButterflyOFTModule's one draw its parts share
    boft = MIXED.replace('algo = "lokr"\ndim = 8', 'algo = "boft"\ndim = 32')
    drop = _flux(tmp_path / "boftdrop", boft, '"algo=locon" "module_dropout=0.1"')
    assert not {"DBS402", "DBS403", "DBS578"} & codes(drop), errors(drop)
    planned = plan_of(drop, tmp_path / "boftdrop").adapter
    assert planned.module_dropout == 0.1 and "boft" in {b.kind for b in planned.blocks}


# LyCORIS's full algo on the double blocks' image q/k/v and txt_in, IA^3 on the single blocks' linear1 and
# img_in, LoCon elsewhere (tests/runtime/test_lycoris_mixed_flow_full.py checks the modules against
# lycoris-lora and trains it)
@pytest.mark.parametrize("algo", ["dylora", "glora"])
def test_rank_dropout_beside_entries_that_draw_it(tmp_path, algo):
    """A DyLoRA / GLoRA network's rank_dropout (outside bypass_mode its own modules never read it) with
    LoKr / LoHa entries, whose modules LyCORIS hands it too and which draw it (was DBS405): the LoKr
    entries' LokrModules draw its mask on the CPU, which stops kohya on a GPU: DBS402 with SD's message
    (network.lokr_entries_rank_dropout; was DBS403, issue 12)."""
    outcome = _flux(tmp_path, MIXED, f'"algo={algo}" "rank_dropout=0.25"', allow=True)
    said = messages(outcome, "DBS402")
    assert "LoKr entries' LokrModules draw the network's rank-dropout mask on the CPU" in said, errors(
        outcome
    )
    assert not {"DBS403", "DBS405"} & codes(outcome), errors(outcome)


MIXED_FULL = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*", "img_in", "txt_in"]
text_encoder_target_module = []
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "full"
dim = 64
[name_algo_map."single_blocks.*.linear1"]
algo = "ia3"
alpha = 8
[name_algo_map.img_in]
algo = "ia3"
[name_algo_map.txt_in]
algo = "full"
"""


@pytest.mark.parametrize("algo", ["locon", "lokr", "loha"])
def test_full_and_ia3_entries_on_fused_layers_are_blocks_of_their_kind(tmp_path, algo):
    """Flux: full / IA^3 entries are blocks of that kind at rank 1 (FullModule and IA3Module never read dim
    or alpha) covering every part of each fused layer (LyCORIS's one module on the fused Linear: a copy of
    each part's rows, a scale per each part's output row), fused_projections on, beside the network's kind
    (issue 12; was DBS403)."""
    outcome = _flux(tmp_path, MIXED_FULL, f'"algo={algo}"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == {"locon": "lora"}.get(algo, algo) and [f.name for f in a.fused] == [
        "img_attn_qkv",
        "txt_attn_qkv",
        "linear1",
    ]
    assert sorted((b.kind, b.rank, b.alpha) for b in a.blocks) == [
        ("full", 1, 1.0),
        ("full", 1, 1.0),
        ("ia3", 1, 1.0),
        ("ia3", 1, 1.0),
    ]
    full = [b for b in a.blocks if b.kind == "full"]
    ia3 = [b for b in a.blocks if b.kind == "ia3"]
    for i in (0, 18, 19):  # 19: beyond FLUX.1's double blocks
        parts = [f"transformer_blocks.{i}.attn.to_{p}" for p in "qkv"]
        assert {any(re.search(b.pattern, p) for b in full) for p in parts} == {i < 19}
        assert not any(re.search(b.pattern, f"transformer_blocks.{i}.attn.add_q_proj") for b in a.blocks)
    for i in (0, 37, 38):
        parts = [
            f"single_transformer_blocks.{i}.{p}" for p in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
        ]
        assert {any(re.search(b.pattern, p) for b in ia3) for p in parts} == {i < 38}
    assert any(re.search(b.pattern, "x_embedder") for b in ia3)
    assert any(re.search(b.pattern, "context_embedder") for b in full)
    assert not any(re.search(b.pattern, "single_transformer_blocks.0.proj_out") for b in a.blocks)


def test_diag_oft_and_glora_entries_on_fused_layers_are_blocks_of_their_kind(tmp_path):
    """Flux: Diag-OFT / GLoRA entries beside a LoCon network are blocks of that kind at the entry's dim (the
    Diag-OFT's block-size hint, its alpha the network's constraint 0; both GLoRA pairs at the dim) covering
    every part of each fused layer: LyCORIS's one module on the fused Linear (runtime/prepare.py fits the
    Diag-OFT parts' blocks to the stacked rows' split and ties the GLoRA parts' a1 / a2 / b2)."""
    text = MIXED_FULL.replace('algo = "full"\ndim = 64', 'algo = "diag-oft"\ndim = 8')
    text = text.replace('algo = "ia3"\nalpha = 8', 'algo = "glora"\ndim = 2\nalpha = 1')
    outcome = _flux(tmp_path, text, '"algo=locon"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    found = {b.kind: (b.rank, b.alpha) for b in a.blocks}
    assert (found["diag-oft"], found["glora"]) == ((8, 0.0), (2, 1.0))
    oft = next(b for b in a.blocks if b.kind == "diag-oft")
    glora = next(b for b in a.blocks if b.kind == "glora")
    assert all(re.search(oft.pattern, f"transformer_blocks.18.attn.to_{p}") for p in "qkv")
    parts = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
    assert all(re.search(glora.pattern, f"single_transformer_blocks.37.{p}") for p in parts)


def test_full_and_ia3_entries_refused_where_kohya_differs(tmp_path):
    """An IA^3 entry's own train_on_input (one scale per input column, which the fused layer's parts share)
    converts now (was DBS403): its block's `on_input` (tests/runtime/test_lycoris_ia3_entry_sides.py). Network
    options the kinds do not build alike stay DBS403; an fp8 base stops kohya (DBS402: --fp8_base
    casts Flux as it loads it, and FullModule.apply_to adds that float8 weight into its copy,
    lycoris_fp8.full_on_fp8). The network's use_scalar (was DBS403) is the adapter's: its LoKr layers',
    FullModule / IA3Module never reading it."""
    text = MIXED_FULL.replace('algo = "ia3"\nalpha = 8', 'algo = "ia3"\ntrain_on_input = true')
    outcome = _flux(tmp_path / "input", text, '"algo=locon"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "input").adapter
    assert sorted(b.on_input for b in a.blocks if b.kind == "ia3") == [False, True] and a.fused
    outcome = _flux(tmp_path / "scalar", MIXED_FULL, '"algo=lokr" "use_scalar=True"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert plan_of(outcome, tmp_path / "scalar").adapter.scalar
    outcome = _flux(
        tmp_path / "fp8", MIXED_FULL, '"algo=locon" --fp8_base --mixed_precision bf16', allow=True
    )
    assert "algo = 'full'" in messages(outcome, "DBS402") and "full.py line 112" in messages(
        outcome, "DBS402"
    )


def test_chroma_entries_of_other_algorithms_are_blocks_of_their_kind(tmp_path):
    """Chroma (--model_type chroma, Flux's fused Linears): the same file on a LoHa network is a LoKr block
    covering every part of each double block's image q/k/v and the network's LoHa elsewhere, the single
    blocks' entry a block of the network's kind at its own dim; full / IA^3 / Diag-OFT / GLoRA entries are
    blocks of their kind over whole fused layers, as on Flux (tests/runtime/test_lycoris_mixed_chroma_full.py
    trains them and loads the export into lycoris-lora)."""
    for where in (tmp_path, tmp_path / "full", tmp_path / "oft"):
        images(where / "x" / "10_ohwx", 2, (64, 64))
        for name in ("Chroma1-HD.safetensors", "t5xxl.safetensors", "ae.safetensors"):
            component_file(where / name)
    command = (
        "accelerate launch flux_train_network.py --pretrained_model_name_or_path Chroma1-HD.safetensors "
        "--model_type chroma --t5xxl t5xxl.safetensors --ae ae.safetensors --apply_t5_attn_mask "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=4 "
        '--network_alpha=1 --network_args "algo=loha" "preset=preset.toml" --learning_rate=1e-2 '
        "--max_train_steps=2 --save_model_as=safetensors --output_dir=out --guidance_scale 0.0"
    )
    (tmp_path / "preset.toml").write_text(MIXED, encoding="utf-8")
    outcome = kohya(tmp_path, command=command)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert plan.model.family == "chroma" and a.kind == "loha" and a.fused
    lokr, loha = a.blocks
    assert [(b.kind, b.rank, b.alpha) for b in a.blocks] == [("lokr", 8, 1.0), ("adapter", 2, 1.0)]
    for i in (0, 18, 19):
        parts = [f"transformer_blocks.{i}.attn.to_{p}" for p in "qkv"]
        assert {bool(re.search(lokr.pattern, p)) for p in parts} == {i < 19}
    for i in (0, 37, 38):
        parts = [
            f"single_transformer_blocks.{i}.{p}" for p in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
        ]
        assert {bool(re.search(loha.pattern, p)) for p in parts} == {i < 38}
    for where, qkv, linear1 in (("full", "full", "ia3"), ("oft", "diag-oft", "glora")):
        text = MIXED.replace('algo = "lokr"', f'algo = "{qkv}"').replace(
            'algo = "loha"', f'algo = "{linear1}"'
        )
        (tmp_path / where / "preset.toml").write_text(text, encoding="utf-8")
        outcome = kohya(tmp_path / where, command=command)
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        plan = plan_of(outcome, tmp_path / where)
        a = plan.adapter
        assert plan.model.family == "chroma" and a.kind == "loha" and a.fused
        assert sorted(b.kind for b in a.blocks) == sorted((qkv, linear1))
        by_kind = {b.kind: b for b in a.blocks}
        for i in (0, 18, 19):
            parts = [f"transformer_blocks.{i}.attn.to_{p}" for p in "qkv"]
            assert {bool(re.search(by_kind[qkv].pattern, p)) for p in parts} == {i < 19}
        for i in (0, 37, 38):
            parts = [
                f"single_transformer_blocks.{i}.{p}"
                for p in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
            ]
            assert {bool(re.search(by_kind[linear1].pattern, p)) for p in parts} == {i < 38}


def test_sd3_entries_of_other_algorithms_are_blocks_of_their_kind(tmp_path):
    """SD3: a LoHa entry on the x blocks' attention q/k/v of a LoKr network is a LoHa block covering every
    part of each fused qkv."""
    preset = SD3_X_ATTENTION_MIXED
    outcome = _sd3(tmp_path, preset, '"algo=lokr"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "lokr" and a.fused and [(b.kind, b.rank) for b in a.blocks] == [("loha", 2)]
    for i in (0, 37):
        parts = [f"transformer_blocks.{i}.attn.to_{p}" for p in "qkv"]
        assert {bool(re.search(a.blocks[0].pattern, p)) for p in parts} == {True}
    assert not re.search(a.blocks[0].pattern, "transformer_blocks.0.attn.to_out.0")


SD3_X_ATTENTION_MIXED = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["joint_blocks.*.x_block.attn.*"]
text_encoder_target_module = []
exclude_name = ["*.ln_*"]

[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "loha"
dim = 2
"""


@pytest.mark.parametrize("algo", ["locon", "lokr", "loha"])
def test_flux_entry_weight_decompose_on_whole_fused_layers(tmp_path, algo):
    """An entry's own weight_decompose on FLUX.1's fused qkv: the block's `dora` (LyCORIS's form, each fused
    layer decomposed whole, per output row: runtime/lycoris_dora.py on its parts, each its rows; a fused
    LoKr / LoHa's parts share one module, runtime/fused_lokr.py / fused_loha.py), per input column with the
    network's wd_on_output=False or the entry's own wd_on_out = false (issue 12)."""
    text = DOUBLE_ATTENTION + "weight_decompose = true\n"
    outcome = _flux(tmp_path, text, f'"algo={algo}"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    kind = "lora" if algo == "locon" else algo
    assert (a.kind, a.dora, a.dora_form, a.dora_axis) == (kind, False, "lycoris", "output")
    assert [(b.rank, b.dora) for b in a.blocks] == [(16, "on")]
    # the network's wd_on_output=False: the entry's fused layers per input column, the parts sharing one
    # (1, in) magnitude (was DBS403; tests/runtime/test_lycoris_flux_locon_columns.py against lycoris-lora)
    outcome = _flux(tmp_path / "input", text, f'"algo={algo}" "wd_on_output=False"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "input").adapter
    assert (a.kind, a.dora, a.dora_form, a.dora_axis) == (kind, False, "lycoris", "input")
    assert [(b.rank, b.dora) for b in a.blocks] == [(16, "on")]
    assert fate(outcome, "network_args wd_on_output") == "mapped"
    # the entry's own wd_on_out (was DBS403, a spec's DBS583): its block's `dora_axis`, the same tied (1, in)
    # magnitude per fused layer (tests/runtime/test_lycoris_flux_block_columns.py against lycoris-lora)
    outcome = _flux(tmp_path / "own", text + "wd_on_out = false\n", f'"algo={algo}"')
    assert not {"DBS402", "DBS403", "DBS583"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "own").adapter
    assert (a.kind, a.dora, a.dora_form, a.dora_axis) == (kind, False, "lycoris", "output")
    assert [(b.rank, b.dora, b.dora_axis) for b in a.blocks] == [(16, "on", "input")]


def test_sd3_train_norm_reaching_t5_norms_offsets_clip_only(tmp_path):
    """SD3 (sd3_train_network.py): a file reaching both CLIP encoders' layers and T5-XXL's blocks offsets the
    CLIP LayerNorms; LyCORIS's NormModules on T5's T5LayerNorms are "not supported" (no parameter), so T5's
    norms stay as they are while its Linears train (train.t5)."""
    preset = (
        'unet_target_module = ["SelfAttention"]\nunet_target_name = []\n'
        'text_encoder_target_module = ["CLIPEncoderLayer", "T5Block"]\n'
    )
    outcome = _sd3(tmp_path, preset, '"train_norm=True"')
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.text_encoder_norms == ("layer_norm1", "layer_norm2") and plan.adapter.t5_targets
    assert not errors(outcome) and "DBS403" not in codes(outcome)
    assert "T5LayerNorm(s)" in outcome.conversion.reports["network_args train_norm"].note


def test_flux_entry_use_scalar_with_network_weights_starts_from_the_file(tmp_path):
    """An entry's own use_scalar with --network_weights: LyCORIS's load hook sets those modules' scalar to 1
    (the file's lora_up holds it folded), as dbspec's run sets every layer's after loading the file
    (runtime/init_weights.py, a block's scalar too; was DBS403, a spec's DBS579)."""
    import numpy as np
    from safetensors.numpy import save_file

    name = "lora_unet_double_blocks_0_img_attn_qkv"
    tensors = {
        f"{name}.lora_down.weight": np.zeros((16, 3072), np.float16),
        f"{name}.lora_up.weight": np.zeros((9216, 16), np.float16),
        f"{name}.alpha": np.array(8.0, np.float32),
    }
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    text = DOUBLE_ATTENTION + "use_scalar = true\n"
    outcome = _flux(tmp_path, text, '"algo=locon" --network_weights prev.safetensors')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert not a.scalar and [(b.rank, b.scalar) for b in a.blocks] == [(16, "on")]
    assert a.init_weights == str(tmp_path / "prev.safetensors") and a.init_partial and a.init_layers == 1


# DyLoRA on the single blocks' linear1 (its own dim, alpha and block size) and on the double blocks' image
# q/k/v (the network's dim and alpha, block_size from network_args), LoHa on the text stream's q/k/v and
# DyLoRA on CLIP-L's MLPs; the network's kind elsewhere (tests/runtime/test_lycoris_mixed_flow_dylora.py
# checks the modules against lycoris-lora and trains it)
MIXED_DYLORA = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
exclude_name = ["*.norm*"]

[name_algo_map."single_blocks.*.linear1"]
algo = "dylora"
dim = 16
alpha = 8
block_size = 4
[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "dylora"
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "loha"
dim = 4
[module_algo_map.CLIPMLP]
algo = "dylora"
dim = 6
block_size = 3
"""


@pytest.mark.parametrize("algo", ["locon", "lokr", "loha"])
def test_flux_dylora_entries_are_dylora_blocks_over_whole_fused_layers(tmp_path, algo):
    """Flux: DyLoRA entries beside a LoCon / LoKr / LoHa network are blocks of kind "dylora" covering every
    part of each fused layer (one DyLoraModule, one draw per fused Linear), at the entry's dim and alpha and
    in blocks of its block_size, else of the network's (block_size=2, which only DyLoRA reads: mapped into
    their `unit`); fused_projections."""
    outcome = _flux(tmp_path, MIXED_DYLORA, f'"algo={algo}" "block_size=2"')
    assert not {"DBS402", "DBS403", "DBS405"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == {"locon": "lora"}.get(algo, algo) and a.fused
    by_rank = {b.rank: b for b in a.blocks if b.kind == "dylora"}
    assert {(b.rank, b.alpha, b.unit) for b in by_rank.values()} == {(16, 8.0, 4), (8, 4.0, 2)}
    linear1, qkv = by_rank[16], by_rank[8]
    for i in (0, 37, 38):
        parts = [
            f"single_transformer_blocks.{i}.{p}" for p in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
        ]
        assert {bool(re.search(linear1.pattern, p)) for p in parts} == {i < 38}
    for i in (0, 18, 19):
        parts = [f"transformer_blocks.{i}.attn.to_{p}" for p in "qkv"]
        assert {bool(re.search(qkv.pattern, p)) for p in parts} == {i < 19}
    assert not any(re.search(b.pattern, "transformer_blocks.0.attn.to_out.0") for b in (linear1, qkv))
    assert [b.kind for b in a.blocks if b.kind not in ("dylora", "adapter")] == (
        ["loha"] if algo != "loha" else []
    )
    (text,) = [b for b in a.text_encoder_blocks if b.kind == "dylora"]
    assert (text.rank, text.alpha, text.unit) == (6, 4.0, 3)
    odd = MIXED_DYLORA.replace("dim = 16\nalpha = 8\nblock_size = 4", "dim = 6\nalpha = 8\nblock_size = 4")
    bad = _flux(tmp_path / "odd", odd, f'"algo={algo}"', allow=True)
    assert "lora_dim % block_size" in messages(bad, "DBS402")  # DyLoraModule asserts


def test_flux_block_size_without_dylora_layers_is_ignored(tmp_path):
    """block_size on a LoCon network whose file gives no layer DyLoRA: only DyLoraModule reads it (DBS405)."""
    plain = MIXED_DYLORA.replace('algo = "dylora"', 'algo = "locon"')
    outcome = _flux(tmp_path, plain, '"algo=locon" "block_size=2"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert "block_size" in messages(outcome, "DBS405")
    assert not any(b.unit for b in plan_of(outcome, tmp_path).adapter.blocks)


def test_sd3_dylora_entries_are_dylora_blocks_over_whole_fused_layers(tmp_path):
    """SD3: a DyLoRA entry on the x blocks' attention q/k/v of a LoKr network is a DyLoRA block at the
    entry's dim in blocks of its block_size, covering every part of each fused qkv; the projections the
    network's LoKr."""
    preset = SD3_X_ATTENTION_MIXED.replace(
        'algo = "loha"\ndim = 2', 'algo = "dylora"\ndim = 6\nblock_size = 2'
    )
    outcome = _sd3(tmp_path, preset, '"algo=lokr"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "lokr" and a.fused
    assert [(b.kind, b.rank, b.alpha, b.unit) for b in a.blocks] == [("dylora", 6, 4.0, 2)]
    for i in (0, 37):
        parts = [f"transformer_blocks.{i}.attn.to_{p}" for p in "qkv"]
        assert {bool(re.search(a.blocks[0].pattern, p)) for p in parts} == {True}
    assert not re.search(a.blocks[0].pattern, "transformer_blocks.0.attn.to_out.0")


def test_chroma_dylora_entries_are_dylora_blocks(tmp_path):
    """Chroma (Flux's fused Linears): DyLoRA entries as on Flux, blocks of kind "dylora" over whole fused
    layers at their own dim, alpha and block size."""
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("Chroma1-HD.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    (tmp_path / "preset.toml").write_text(MIXED_DYLORA, encoding="utf-8")
    command = (
        "accelerate launch flux_train_network.py --pretrained_model_name_or_path Chroma1-HD.safetensors "
        "--model_type chroma --t5xxl t5xxl.safetensors --ae ae.safetensors --apply_t5_attn_mask "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=4 "
        '--network_alpha=1 --network_args "algo=locon" "preset=preset.toml" --learning_rate=1e-2 '
        "--max_train_steps=2 --save_model_as=safetensors --output_dir=out --guidance_scale 0.0"
    )
    outcome = kohya(tmp_path, command=command)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert plan.model.family == "chroma" and a.kind == "lora" and a.fused
    dylora = sorted((b.rank, b.alpha, b.unit) for b in a.blocks if b.kind == "dylora")
    assert dylora == [(4, 1.0, 4), (16, 8.0, 4)]
    # a DyLoRA network with the file's LoHa entry: a LoHa block beside the DyLoRA adapter, its DyLoRA
    # entries' own dims blocks of the adapter's kind
    outcome = kohya(tmp_path, command=command.replace("algo=locon", "algo=dylora"))
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dylora_unit) == ("dylora", 4) and a.fused
    assert sorted((b.kind, b.rank, b.unit) for b in a.blocks) == [("adapter", 16, 0), ("loha", 4, 0)]


# a DyLoRA network (block_size 2) with entries of other algorithms: LoCon on the text stream's q/k/v, LoKr on
# the single blocks' linear1, full on img_in, IA^3 on txt_in, Diag-OFT / GLoRA (GLORA) on the double blocks'
# image q/k/v; a DyLoRA entry of its own dim, alpha and block size on CLIP-L's MLPs; DyLoRA elsewhere
DYLORA_NETWORK = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*", "img_in", "txt_in"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "locon"
dim = 4
alpha = 2
[name_algo_map."single_blocks.*.linear1"]
algo = "lokr"
[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "QKV"
[name_algo_map.img_in]
algo = "full"
[name_algo_map.txt_in]
algo = "ia3"
[module_algo_map.CLIPMLP]
algo = "dylora"
dim = 6
alpha = 3
block_size = 3
"""


@pytest.mark.parametrize("qkv", ["diag-oft", "glora"])
def test_flux_dylora_network_with_entries_of_other_algorithms(tmp_path, qkv):
    """Flux: algo=dylora with a preset file: the DyLoRA adapter (block_size its unit) on the file's layers,
    fused_projections (one module per fused Linear), the entries of other algorithms blocks of their kind over
    whole fused layers, a DyLoRA entry's own dim, alpha and block size a block of the adapter's kind."""
    outcome = _flux(tmp_path, DYLORA_NETWORK.replace("QKV", qkv), '"algo=dylora" "block_size=2"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.dylora_unit, a.dylora_form) == ("dylora", 8, 4.0, 2, "lycoris")
    assert a.fused
    kinds = {b.kind: b for b in a.blocks if b.kind != "adapter"}
    assert set(kinds) == {"lora", "lokr", qkv, "full", "ia3"}
    assert (kinds["lora"].rank, kinds["lora"].alpha) == (4, 2.0)
    for i in (0, 37, 38):
        parts = [
            f"single_transformer_blocks.{i}.{p}" for p in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
        ]
        assert {bool(re.search(kinds["lokr"].pattern, p)) for p in parts} == {i < 38}
    for i in (0, 18, 19):
        parts = [f"transformer_blocks.{i}.attn.to_{p}" for p in "qkv"]
        assert {bool(re.search(kinds[qkv].pattern, p)) for p in parts} == {i < 19}
        parts = [f"transformer_blocks.{i}.attn.add_{p}_proj" for p in "qkv"]
        assert {bool(re.search(kinds["lora"].pattern, p)) for p in parts} == {i < 19}
    (text,) = a.text_encoder_blocks
    assert (text.kind, text.rank, text.alpha, text.unit) == ("adapter", 6, 3.0, 3)


def test_flux_glora_network_with_entries_of_other_algorithms(tmp_path):
    """Flux: algo=glora with a preset file giving layers other algorithms (was DBS403, DBS578): the GLoRA
    adapter with fused_projections, the entries blocks of their kind over whole fused layers
    (tests/runtime/test_lycoris_mixed_flow_glora.py checks them against lycoris-lora's network); the
    network's bypass_mode beside LoCon, LoKr, LoHa, IA^3 and Diag-OFT entries (was DBS403) the adapter's
    `bypass`, which every block takes (tests/runtime/test_lycoris_glora_bypass_oft_entries.py and the GLoRA
    bypass tests beside the other kinds)."""
    file = DYLORA_NETWORK.replace("QKV", "diag-oft").replace(
        '"dylora"\ndim = 6\nalpha = 3\nblock_size = 3', '"loha"\ndim = 6\nalpha = 3'
    )
    outcome = _flux(tmp_path, file, '"algo=glora"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha) == ("glora", 8, 4.0) and a.fused
    kinds = {b.kind: b for b in a.blocks if b.kind != "adapter"}
    assert set(kinds) == {"lora", "lokr", "diag-oft", "full", "ia3"}
    for i in (0, 37):
        parts = [
            f"single_transformer_blocks.{i}.{p}" for p in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
        ]
        assert all(re.search(kinds["lokr"].pattern, p) for p in parts)
    assert {(b.kind, b.rank, b.alpha) for b in a.text_encoder_blocks} == {("loha", 6, 3.0)}
    outcome = _flux(
        tmp_path / "bypass", file.replace('algo = "full"', 'algo = "lokr"'), '"algo=glora" "bypass_mode=True"'
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "bypass").adapter
    assert a.bypass and {b.kind: b.bypass for b in a.blocks if b.kind == "diag-oft"} == {"diag-oft": True}


def test_flux_dylora_network_file_refusals(tmp_path):
    """algo=dylora with a preset file: an entry's dim its block size does not divide stops kohya (DBS402);
    LoRA+ raises LyCORIS's LoCon entries' lora_up only, not DyLoRA's up blocks (converts, was DBS403:
    tests/runtime/test_lycoris_dylora_loraplus.py); bypass_mode beside a full entry DBS402 (FullModule
    raises), beside a DyLoRA entry of several blocks DBS402 (its bypass forward fails), else the DyLoRA
    adapter's `bypass` (was DBS403 / DBS578: tests/runtime/test_lycoris_mixed_flow_bypass.py); train_norm on
    CLIP's LayerNorms converts (was DBS403)."""
    odd = DYLORA_NETWORK.replace("QKV", "glora").replace("dim = 6\nalpha = 3\nblock_size = 3", "dim = 5")
    outcome = _flux(tmp_path / "odd", odd, '"algo=dylora" "block_size=2"', allow=True)
    assert "lora_dim % block_size" in messages(outcome, "DBS402")
    file = DYLORA_NETWORK.replace("QKV", "glora")
    outcome = _flux(tmp_path / "plus", file, '"algo=dylora" "loraplus_lr_ratio=4"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)  # was DBS403: the LoCon blocks' ups
    assert plan_of(outcome, tmp_path / "plus").optimizer.loraplus_denoiser_ratio == 4
    outcome = _flux(tmp_path / "bypass", file, '"algo=dylora" "block_size=8" "bypass_mode=True"', allow=True)
    assert "FullModule raises" in messages(outcome, "DBS402")  # its full entry: LyCORIS raises on bypass_mode
    no_full = file.replace('[name_algo_map.img_in]\nalgo = "full"\n', "")
    outcome = _flux(
        tmp_path / "bypass2", no_full, '"algo=dylora" "block_size=8" "bypass_mode=True"', allow=True
    )  # CLIP's MLPs' DyLoRA entry of two blocks of 3: its bypass forward fails in training
    assert "fails unless the last block is drawn" in messages(outcome, "DBS402")
    one = no_full.replace("dim = 6\nalpha = 3\nblock_size = 3", "dim = 8")
    outcome = _flux(tmp_path / "bypass3", one, '"algo=dylora" "block_size=8" "bypass_mode=True"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)  # was DBS403 (DBS578)
    a = plan_of(outcome, tmp_path / "bypass3").adapter
    assert a.kind == "dylora" and a.bypass and all(b.bypass for b in a.blocks if b.kind == "glora")
    norms = file.replace('["CLIPAttention", "CLIPMLP"]', '["CLIPEncoderLayer"]')  # CLIP's LayerNorms too
    outcome = _flux(tmp_path / "norm", norms, '"algo=dylora" "block_size=2" "train_norm=True"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)  # was DBS403: the offsets beside DyLoRA
    assert plan_of(outcome, tmp_path / "norm").adapter.text_encoder_norms == ("layer_norm1", "layer_norm2")


def test_sd3_dylora_network_with_entries_of_other_algorithms(tmp_path):
    """SD3: algo=dylora with a preset file giving the x blocks' q/k/v LoKr: a LoKr block over whole fused
    qkv beside the DyLoRA adapter on the rest of the x attention."""
    preset = SD3_X_ATTENTION_MIXED.replace('algo = "loha"', 'algo = "lokr"')
    outcome = _sd3(tmp_path, preset, '"algo=dylora" "block_size=4"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.dylora_unit) == ("dylora", 8, 4) and a.fused
    assert [(b.kind, b.rank) for b in a.blocks] == [("lokr", 2)]
    for i in (0, 37):
        parts = [f"transformer_blocks.{i}.attn.to_{p}" for p in "qkv"]
        assert {bool(re.search(a.blocks[0].pattern, p)) for p in parts} == {True}


@pytest.mark.parametrize("algo", ["ia3", "diag-oft", "boft", "glora"])
def test_whole_network_algos_take_a_files_layers(tmp_path, algo):
    """algo=ia3 / diag-oft / boft / glora with a preset file: the file's layers are the adapter's targets
    (fused q/k/v whole: fused_projections but for IA^3's per-row scales), its CLIP attention the text
    targets; tests/runtime/test_lycoris_flow_file_whole_algos.py checks them against create_network. A map
    entry's own dim is a block over whole fused layers (GLoRA's rank / alpha, Diag-OFT's / BOFT's block
    size), inert on IA^3 (DBS405); another algorithm's converts (blocks of its kind; on a Diag-OFT / BOFT
    network the entries' network)."""
    plain = DOUBLE_ATTENTION.split("[name_algo_map")[0]
    dim = "--network_dim 18" if algo == "boft" else ""  # FLUX.1's 9216-row qkv: an even block of 18
    outcome = _flux(tmp_path / "plain", plain, f'"algo={algo}" {dim}')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "plain").adapter
    assert a.kind == algo and not a.blocks
    assert [f.name for f in a.fused] == ([] if algo == "ia3" else ["img_attn_qkv", "txt_attn_qkv"])
    parts = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"]
    parts += ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"]
    double = [f"transformer_blocks.{i}.{p}" for i in range(19) for p in parts]
    single = [f"single_transformer_blocks.{i}.{p}" for i in range(38) for p in ("attn.to_q", "proj_out")]
    assert _picked([*double, *single, "proj_out"], a.denoiser_targets) == double
    assert sorted(a.text_encoder_targets) == ["k_proj", "out_proj", "q_proj", "v_proj"]
    own = DOUBLE_ATTENTION.replace("dim = 16", "dim = 36")  # 36: BOFT splits the 9216 rows by it too
    entry = _flux(
        tmp_path / "entry", own if algo == "boft" else DOUBLE_ATTENTION, f'"algo={algo}" {dim}', allow=True
    )
    assert not {"DBS402", "DBS403"} & codes(entry), errors(entry)
    e = plan_of(entry, tmp_path / "entry").adapter
    qkv = [f"transformer_blocks.{i}.attn.to_{p}" for i in (0, 18) for p in "qkv"]
    if algo == "ia3":  # IA3Module never reads an entry's dim / alpha
        assert not e.blocks and "IA3Module takes them and never reads them" in messages(entry, "DBS405")
    else:  # the entry's dim (Diag-OFT: its block size) and alpha over the whole fused q/k/v
        size = 36 if algo == "boft" else 16
        assert [(b.rank, b.alpha) for b in e.blocks] == [(size, 8.0 if algo == "glora" else 0.0)]
        assert all(re.search(e.blocks[0].pattern, p) for p in qkv)
        assert not re.search(e.blocks[0].pattern, "transformer_blocks.0.attn.add_q_proj")
    other = _flux(tmp_path / "other", MIXED, f'"algo={algo}" {dim}', allow=True)
    # a GLoRA / IA^3 network's entries of other algorithms: blocks of their kind (was DBS403); a BOFT /
    # Diag-OFT network's LoHa / LoKr entries: their network, its own layers boft / diag-oft blocks (was
    # DBS403; Diag-OFT's: tests/runtime/test_lycoris_flow_oft_network_entries.py)
    assert not {"DBS402", "DBS403"} & codes(other), errors(other)
    if algo in ("boft", "diag-oft"):
        o = plan_of(other, tmp_path / "other").adapter
        assert o.kind == "loha" and {b.kind for b in o.blocks} >= {algo, "lokr"}
        off = _flux(tmp_path / "off", MIXED, f'"algo={algo}" "rescaled=False" {dim}', allow=True)
        assert not {"DBS402", "DBS403"} & codes(off), errors(off)
        assert "rescaled" not in messages(off, "DBS405")  # the OFT blocks' own, off (not "unread")
    # train_norm reaching CLIP's LayerNorms (CLIPEncoderLayer; was DBS403): dbspec's offsets beside these
    # (tests/runtime/test_lycoris_clip_norms.py); a rank_dropout beside Diag-OFT (its rotations' mask too)
    # and IA^3 (for the offsets alone): rank_dropout; beside BOFT and GLoRA outside bypass_mode, which never
    # read it, the offsets' alone: norm_rank_dropout (was DBS403; issue 12)
    norms = plain.replace('["CLIPAttention"]', '["CLIPEncoderLayer"]')
    norm = _flux(tmp_path / "norm", norms, f'"algo={algo}" "train_norm=True" {dim}')
    assert not {"DBS402", "DBS403"} & codes(norm), errors(norm)
    a = plan_of(norm, tmp_path / "norm").adapter
    assert a.kind == algo and sorted(a.text_encoder_norms) == ["layer_norm1", "layer_norm2"]
    drop = _flux(
        tmp_path / "drop", norms, f'"algo={algo}" "train_norm=True" "rank_dropout=0.1" {dim}', allow=True
    )
    assert not {"DBS402", "DBS403"} & codes(drop), errors(drop)
    a = plan_of(drop, tmp_path / "drop").adapter
    carried = algo in ("diag-oft", "ia3")
    assert (a.rank_dropout, a.norm_rank_dropout) == (0.1 if carried else 0.0, 0.1)
    assert sorted(a.text_encoder_norms) == ["layer_norm1", "layer_norm2"]


@pytest.mark.parametrize("algo", ["ia3", "diag-oft", "boft", "glora"])
def test_whole_network_algos_final_layer_without_linear2(tmp_path, algo):
    """A file reaching Flux's final layer Linear (diffusers' top-level proj_out) without the single blocks'
    linear2: GLoRA takes the rank-0 block for the single blocks' proj_out (as LoCon files do); IA^3, Diag-OFT
    and BOFT (was DBS403: their blocks have no rank 0) `exclude` them, a rank-0 block in the plan."""
    plain = DOUBLE_ATTENTION.split("[name_algo_map")[0]
    final = plain.replace('["double_blocks.*_attn.*"]', '["double_blocks.*_attn.*", "final_layer.linear"]')
    dim = "--network_dim 18" if algo == "boft" else ""
    outcome = _flux(tmp_path, final, f'"algo={algo}" {dim}')
    if algo != "glora":
        assert "exclude = ['^single_transformer_blocks" in outcome.text
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert "proj_out" in a.denoiser_targets
    singles = [f"single_transformer_blocks.{i}.proj_out" for i in (0, 37)]
    assert [b.rank for b in a.blocks] == [0] and all(re.search(a.blocks[0].pattern, p) for p in singles)
    assert not re.search(a.blocks[0].pattern, "proj_out")


def test_boft_file_checks_the_widths_of_its_own_layers(tmp_path):
    """algo=boft with a file: the FLUX.1 widths checked are those of the layers the file reaches (the
    attention's 9216 / 3072 rows split by 18), not the built-in `full` preset's (linear1's 21504 rows need
    42); a file reaching linear1 at dim 18 stops kohya (DBS402)."""
    plain = DOUBLE_ATTENTION.split("[name_algo_map")[0]
    outcome = _flux(tmp_path / "attn", plain, '"algo=boft" --network_dim 18')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert plan_of(outcome, tmp_path / "attn").adapter.oft_block_size == 18
    singles = plain.replace('"single_blocks.*", ', "").replace('"double_blocks.*_attn.*"', '"*.linear1"')
    stopped = _flux(tmp_path / "linear1", singles, '"algo=boft" --network_dim 18', allow=True)
    assert "21504 rows on FLUX.1" in messages(stopped, "DBS402")


@pytest.mark.parametrize("algo", ["glora", "diag-oft", "boft"])
def test_sd3_whole_network_algos_entries_are_blocks_over_whole_qkv(tmp_path, algo):
    """SD3: algo=glora / diag-oft / boft with a file giving the x blocks' q/k/v their own dim: a block of
    the adapter's kind over every part of each fused qkv (GLoRA: rank and alpha; Diag-OFT / BOFT: block
    size), the rest of the x attention at the network's."""
    own = SD3_X_ATTENTION_MIXED.replace('algo = "loha"\ndim = 2', "dim = 4\nalpha = 2")
    outcome = _sd3(tmp_path, own, f'"algo={algo}"')
    assert not {"DBS402", "DBS403", "DBS577"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == algo and a.fused and [b.rank for b in a.blocks] == [4]
    if algo == "glora":
        assert a.blocks[0].alpha == 2.0 and a.rank == 8
    else:
        assert a.oft_block_size == 8
    for i in (0, 37):
        parts = [f"transformer_blocks.{i}.attn.to_{p}" for p in "qkv"]
        assert {bool(re.search(a.blocks[0].pattern, p)) for p in parts} == {True}
        assert not re.search(a.blocks[0].pattern, f"transformer_blocks.{i}.attn.to_out.0")


FLUX_BYPASS = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear1"]
text_encoder_target_module = []
text_encoder_target_name = []

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "OFT"
[name_algo_map."single_blocks.*.linear1"]
algo = "ia3"
"""


@pytest.mark.parametrize("network", ["locon", "lokr"])
def test_flux_bypass_mode_beside_diag_oft_and_ia3_entries(tmp_path, network):
    """A LoCon / LoKr network's bypass_mode beside Diag-OFT, IA^3, BOFT and DyLoRA entries on kohya's fused
    Linears: their modules' bypass forward (the stacked output rotated / scaled, bias included; DyLoRA's
    update unscaled), each part its own rows: the adapter's `bypass` (was DBS403 / DBS578;
    tests/runtime/test_lycoris_mixed_flow_bypass.py against lycoris-lora 4.1.3); a DyLoRA entry of several
    blocks is DBS402 (DyLoraModule's bypass forward fails in training), as is a dropout beside the Diag-OFT
    entry (DiagOFTModule's bypass forward multiplies its rotations by an output-shaped mask: RuntimeError)."""
    args = f'"algo={network}" "bypass_mode=True"'
    outcome = _flux(tmp_path / "oft", FLUX_BYPASS.replace("OFT", "diag-oft"), args)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "network_args bypass_mode") == "mapped"
    a = plan_of(outcome, tmp_path / "oft").adapter
    assert a.bypass and a.fused and {b.kind for b in a.blocks} >= {"diag-oft", "ia3"}
    (tmp_path / "off").mkdir()
    outcome = _flux(tmp_path / "off", FLUX_BYPASS.replace("OFT", "diag-oft"), f'"algo={network}"')
    assert not plan_of(outcome, tmp_path / "off").adapter.bypass
    dylora = FLUX_BYPASS.replace('algo = "OFT"', 'algo = "dylora"\ndim = 4\nblock_size = 4')
    dylora = dylora.replace('algo = "ia3"', 'algo = "boft"\ndim = 42')
    outcome = _flux(tmp_path / "dylora", dylora, args)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "dylora").adapter
    assert a.bypass and {b.kind for b in a.blocks} >= {"dylora", "boft"}
    several = dylora.replace("block_size = 4", "block_size = 2")
    outcome = _flux(tmp_path / "several", several, args, allow=True)
    assert "DBS402" in codes(outcome) and "bypass_mode" in messages(outcome, "DBS402")
    drop = f'{args} "dropout=0.1"'
    outcome = _flux(tmp_path / "drop", FLUX_BYPASS.replace("OFT", "diag-oft"), drop, allow=True)
    # the Diag-OFT entry's DiagOFTModule raises in its bypass forward's dropout: DBS402 (was DBS403)
    assert "DBS402" in codes(outcome) and "RuntimeError" in messages(outcome, "DBS402")


def test_flux_entries_own_bypass_mode_become_the_blocks_bypass(tmp_path):
    """A Diag-OFT / IA^3 / DyLoRA / BOFT entry's own bypass_mode other than the network's on kohya's fused
    Linears (create_single_module hands it over the network's): the block's `bypass` "on" / "off", over every
    part of each fused Linear (was DBS403 / a spec's DBS582; tests/runtime/test_lycoris_mixed_flow_bypass.py
    against lycoris-lora 4.1.3); the adapter's `bypass` only where some such block takes the network's; a
    DyLoRA network's in bypass_mode too (one block per layer: its own layers' and its entries')."""
    oft = FLUX_BYPASS.replace('algo = "OFT"', 'algo = "diag-oft"\nbypass_mode = false')
    outcome = _flux(tmp_path / "oft", oft, '"algo=locon" "bypass_mode=True"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "oft").adapter
    assert a.bypass and a.fused
    assert sorted((b.kind, b.bypass) for b in a.blocks) == [("diag-oft", False), ("ia3", True)]
    qkv = next(b for b in a.blocks if b.kind == "diag-oft")
    parts = [f"transformer_blocks.{i}.attn.to_{p}" for i in (0, 18) for p in "qkv"]
    assert all(re.search(qkv.pattern, p) for p in parts)
    (tmp_path / "on").mkdir()  # without the network's: a DyLoRA (one block) and a BOFT entry turn it on
    on = FLUX_BYPASS.replace('algo = "OFT"', 'algo = "dylora"\ndim = 4\nblock_size = 4\nbypass_mode = true')
    on = on.replace('algo = "ia3"', 'algo = "boft"\ndim = 42\nbypass_mode = true')
    outcome = _flux(tmp_path / "on", on, '"algo=locon"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "on").adapter
    assert not a.bypass
    assert sorted((b.kind, b.bypass) for b in a.blocks) == [("boft", True), ("dylora", True)]
    (tmp_path / "none").mkdir()  # every such entry turns the network's off: no layer takes it (inert)
    none = oft.replace('algo = "ia3"', 'algo = "ia3"\nbypass_mode = false')
    outcome = _flux(tmp_path / "none", none, '"algo=locon" "bypass_mode=True"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "network_args bypass_mode") == "inert"
    a = plan_of(outcome, tmp_path / "none").adapter
    assert not a.bypass and sorted((b.kind, b.bypass) for b in a.blocks) == [
        ("diag-oft", False),
        ("ia3", False),
    ]
    (tmp_path / "dylora").mkdir()  # a DyLoRA network of one block per layer in bypass_mode (was DBS403)
    outcome = _flux(tmp_path / "dylora", oft, '"algo=dylora" "block_size=8" "bypass_mode=True"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "dylora").adapter
    assert (a.kind, a.bypass, a.rank, a.dylora_unit) == ("dylora", True, 8, 8)
    assert sorted((b.kind, b.bypass) for b in a.blocks) == [("diag-oft", False), ("ia3", True)]


@pytest.mark.parametrize("algo", ["locon", "lokr", "loha"])
def test_t5_layers_at_text_rate_0_are_idle(tmp_path, algo):
    """A file reaching T5-XXL at text_encoder_lr 0 (issue 12; was a DBS405 dropping T5's modules):
    LycorisNetworkKohya's prepare_optimizer_params leaves its one text group out ("NO LR skipping!"), while
    flux_train_network.py encodes with CLIP-L and T5 under grad each step (no output cache, train_t5xxl or
    not) and clips network.get_trainable_params(): CLIP-L idle (train.text_encoder_idle) and T5-XXL idle
    (train.t5_idle) with the file's T5 layers at their entry's dim, the others at rank 0, never train.t5.
    Under --max_grad_norm 0 nothing reads their gradients and the fresh modules leave both outputs the
    base's: both frozen, the same run."""
    preset = T5_FILE + ("factor = 8\n" if algo == "lokr" else "")
    outcome = _flux(tmp_path, preset, f'"algo={algo}" --text_encoder_lr 0')
    assert not {"DBS402", "DBS403", "DBS404", "DBS405"} & codes(outcome), errors(outcome)
    values = outcome.conversion.values
    assert values[("train", "t5_idle")][0] == "kohya" and ("train", "t5") not in values
    plan = plan_of(outcome, tmp_path)
    assert plan.idle_text_encoders == ("text_encoder", "text_encoder_2") and not plan.train_text_encoder
    a = plan.adapter
    assert a.kind == ("lora" if algo == "locon" else algo)
    assert a.t5_targets == ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
    t5 = "text_encoder_2.encoder.block.{}.layer.{}"
    assert _te_block(a, t5.format(3, "0.SelfAttention.q")).rank == 4
    assert _te_block(a, t5.format(12, "0.SelfAttention.o")).rank == 0
    assert _te_block(a, t5.format(3, "1.DenseReluDense.wi_0")).rank == 0
    assert not plan.cache.text_embeddings and plan.optimizer.max_grad_norm == 1.0
    # no --gradient_checkpointing: kohya puts every encoder in eval mode, where dbspec's default ("trained")
    # would put the idle T5 in train mode (its dropout on)
    assert plan.text_encoder_mode == "eval"
    free = _flux(tmp_path / "free", preset, f'"algo={algo}" --text_encoder_lr 0 --max_grad_norm 0')
    assert not {"DBS402", "DBS403", "DBS404"} & codes(free), errors(free)
    assert plan_of(free, tmp_path / "free").idle_text_encoders == ()


def test_sd3_t5_layers_at_text_rate_0_are_idle(tmp_path):
    """SD3 (sd3_train_network.py, LyCORIS's one text group at text_encoder_lr's first value): a file reaching
    CLIP-L's, CLIP-G's and T5-XXL's attention at rate 0 leaves all three idle; with --gradient_checkpointing
    kohya puts every encoder in train mode (T5's dropout on), as dbspec's "trained" puts the idle T5."""
    preset = 'text_encoder_target_module = ["CLIPAttention", "T5Attention"]\n'
    outcome = _sd3(tmp_path, preset, '"algo=locon" --text_encoder_lr 0 --gradient_checkpointing')
    assert not {"DBS402", "DBS403", "DBS404", "DBS405"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.idle_text_encoders == ("text_encoder", "text_encoder_2", "text_encoder_3")
    assert plan.adapter.t5_targets and not plan.train_text_encoder and plan.text_encoder_mode == "trained"
    assert outcome.conversion.values[("train", "t5_idle")][0] == "kohya"


# T5-XXL's attention alone: no CLIP module, so train.text_encoder is false while train.t5 trains
T5_ALONE = """\
text_encoder_target_module = ["T5Attention"]
exclude_name = ['single_blocks\\\\..*', 'encoder\\\\.block\\\\.(1[2-9]|2\\\\d)\\\\..*']
"""


def test_t5_layers_alone_train_at_text_encoder_lr(tmp_path):
    """A file reaching T5-XXL and no CLIP layer: LyCORIS's text group holds T5's modules alone, at
    text_encoder_lr (prepare_optimizer_params), not the U-Net's learning_rate (the converter wrote no
    text-encoder rate when CLIP did not train)."""
    outcome = _flux(tmp_path, T5_ALONE, '"algo=locon" --text_encoder_lr 5e-5')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    trained = {c.name for c in plan.precision.components if c.trainable == "lora"}
    assert trained == {"unet", "text_encoder_2"}
    assert plan.optimizer.lr == 1e-4 and plan.optimizer.text_encoder_lr == 5e-5
    assert plan.optimizer.text_encoder_2_lr in (None, 5e-5)
