"""lycoris.kohya algo=dylora with a preset file whose map entries give layers their own dim / alpha and a
--network_weights file (issue 12; was DBS403): each DyLoRA module is built at its entry's dim and alpha, then
load_weights copies the file's alpha into its buffer (its lora_down / lora_up load nowhere), so the layer
keeps its entry's rank and trains at the file's alpha (truncated where the entry's alpha is an integer). The
plan's blocks say so (dylora_preset_alphas.py); the run's layers against lycoris-lora 4.1.3's network:
tests/runtime/test_dylora_preset_alphas.py."""

from __future__ import annotations

import re

from convert_kit import codes, errors, fate, plan_of
from test_convert_kohya_lycoris_file_alpha import _convert, _locon, _write
from test_init_weights import Q, TE

# the U-Net's attention at dim 8 alpha 2 (an entry), CLIP's MLP at dim 4 (its alpha the network's); the rest
# at network_dim 16 / alpha 8
PRESET = """\
unet_target_module = ["Transformer2DModel"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
[module_algo_map.CrossAttention]
algo = "dylora"
dim = 8
alpha = 2
[module_algo_map.CLIPMLP]
algo = "dylora"
dim = 4
"""
FF = Q.replace("attn1_to_q", "ff_net_2")  # a layer at the network's dim
FC1 = "lora_te_text_model_encoder_layers_0_mlp_fc1"
UNBUILT = "lora_unet_conv_in"  # the preset builds no layer there: ignored


def _block(blocks, path: str):
    return next(b for b in blocks if re.search(b.pattern, path))


def test_entry_dims_with_the_files_alphas(tmp_path):
    modules = {
        Q: (_locon(320, 8), 3.0),  # the entry's dim 8, the file's alpha 3
        FF: (_locon(320, 16), 5.0),  # the network's dim 16, alpha 5
        TE: (_locon(768, 16), 8.0),  # the network's alpha already: nothing to write
        FC1: (_locon(768, 4), 1.0),  # CLIPMLP's entry: dim 4 at the file's alpha 1
        UNBUILT: (_locon(4, 8), 7.0),
    }
    _write(tmp_path / "prev.safetensors", modules)
    outcome = _convert(tmp_path, "dylora", PRESET)
    assert outcome.exit_code == 0 and not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "network_weights") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.init_weights) == ("dylora", 16, 8.0, "")
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert (_block(a.blocks, q).rank, _block(a.blocks, q).alpha) == (8, 3.0)
    k = q.replace("to_q", "to_k")
    assert (_block(a.blocks, k).rank, _block(a.blocks, k).alpha) == (8, 2.0)  # the entry's
    ff = q.replace("attn1.to_q", "ff.net.2")
    assert (_block(a.blocks, ff).rank, _block(a.blocks, ff).alpha) == (16, 5.0)
    fc1 = "text_encoder.text_model.encoder.layers.0.mlp.fc1"
    assert (_block(a.text_encoder_blocks, fc1).rank, _block(a.text_encoder_blocks, fc1).alpha) == (4, 1.0)
    fc2 = "text_encoder.text_model.encoder.layers.0.mlp.fc2"
    assert _block(a.text_encoder_blocks, fc2).alpha == 8.0  # CLIPMLP's entry: alpha unset, the network's
    q_proj = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    assert next((b for b in a.text_encoder_blocks if re.search(b.pattern, q_proj)), None) is None


def test_the_files_alphas_equal_to_the_entries_change_nothing(tmp_path):
    _write(tmp_path / "prev.safetensors", {Q: (_locon(320, 8), 2.0), FC1: (_locon(768, 4), 8.0)})
    outcome = _convert(tmp_path, "dylora", PRESET)
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "network_weights") == "inert"


def test_a_zero_alpha_builds_no_layer_or_with_module_dropout_one_scaled_by_zero(tmp_path):
    """A file alpha of 0 scales the layer by 0: not built, or with module_dropout (whose torch.rand(1) it
    still draws) built at its entry's dim with zero_scale."""
    _write(tmp_path / "prev.safetensors", {Q: (_locon(320, 8), 0.0)})
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    outcome = _convert(tmp_path, "dylora", PRESET)
    assert outcome.exit_code == 0, errors(outcome)
    assert _block(plan_of(outcome, tmp_path).adapter.blocks, q).rank == 0
    (tmp_path / "md").mkdir()
    _write(tmp_path / "md" / "prev.safetensors", {Q: (_locon(320, 8), 0.0)})
    outcome = _convert(tmp_path / "md", 'dylora" "module_dropout=0.1', PRESET)
    assert outcome.exit_code == 0, errors(outcome)
    block = _block(plan_of(outcome, tmp_path / "md").adapter.blocks, q)
    assert (block.rank, block.alpha, block.zero_scale) == (8, 0.0, True)


def test_an_integer_entry_alpha_truncates_the_files(tmp_path):
    """The attention entry's `alpha = 2` makes DyLoraModule's buffer int64 (torch.tensor of a Python int):
    the file's 3.75 loads as 3, its 0.5 as 0 (scaled by 0: no layer built)."""
    k = Q.replace("to_q", "to_k")
    _write(tmp_path / "prev.safetensors", {Q: (_locon(320, 8), 3.75), k: (_locon(320, 8), 0.5)})
    outcome = _convert(tmp_path, "dylora", PRESET)
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert (_block(a.blocks, q).rank, _block(a.blocks, q).alpha) == (8, 3.0)
    assert _block(a.blocks, q.replace("to_q", "to_k")).rank == 0
