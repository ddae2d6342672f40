"""Why kohya's text-encoder LoRA at text_encoder_lr 0 converts only without a clip (issue 12;
dbspec/convert/kohya/idle_text.py clipped_idle_text): lycoris-lora 4.1.3's kohya network on the tiny SD 1.x
U-Net and CLIP, stepped as train_network.py steps it (apply_to with the text encoder, its group at rate 0 left
out by prepare_optimizer_params, `clip_grad_norm_(network.get_trainable_params(), max_grad_norm)`,
`optimizer.zero_grad(set_to_none=True)`). The fresh text modules leave CLIP's output the base's, yet their
lora_up gradients are not 0, never cleared, and count in the clip: with max_grad_norm the U-Net's modules end
elsewhere than with the text encoder's dropped (--network_train_unet_only, what train.text_encoder = false
trains); with max_grad_norm 0 they end bit for bit the same."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.runtime.tiny import build_pipeline
from tests.runtime.test_lycoris_algo_maps import NETWORK_ATTRS

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# the U-Net's attention and CLIP's attention/MLP Linears (diffusers calls kohya's CrossAttention Attention)
PRESET = """\
enable_conv = false
unet_target_module = ["Attention"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
"""


def _run(pipe, with_text: bool, max_grad_norm: float, start: dict | None = None, steps: int = 2):
    text, unet = copy.deepcopy(pipe.text_encoder), copy.deepcopy(pipe.unet)
    named = nn.Module()
    named.text_model = text  # kohya's CLIP names its modules text_model.*
    network = lycoris_kohya.create_network(1.0, 4, 1.0, None, named, unet, algo="locon", preset=pipe.preset)
    network.apply_to(named, unet, with_text, True)
    if start is not None:  # the same U-Net modules to start from in both runs
        network.load_state_dict(start, strict=False)
    params, _ = network.prepare_optimizer_params(0.0, 1e-3, 1e-3)  # text_encoder_lr 0: "NO LR skipping!"
    network.prepare_grad_etc()
    text.requires_grad_(False)
    unet.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    vocab = pipe.text_encoder.config.vocab_size
    base = pipe.text_encoder
    seen = []
    for _ in range(steps):
        ids = torch.randint(0, vocab, (2, 8), generator=generator)
        latents = torch.randn(2, unet.config.in_channels, 16, 16, generator=generator)
        target = torch.randn(latents.shape, generator=generator)
        states = text(ids)[0]
        if with_text:  # fresh modules (lora_up 0): CLIP's output is the base's
            assert torch.equal(states, base(ids)[0])
        out = unet(latents, torch.tensor([500, 500]), encoder_hidden_states=states).sample
        loss = torch.nn.functional.mse_loss(out, target) * 100
        loss.backward()
        if max_grad_norm:
            seen.append(float(torch.nn.utils.clip_grad_norm_(network.get_trainable_params(), max_grad_norm)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    held = [m for m in network.text_encoder_loras]
    if with_text:  # out of the optimizer: never stepped, their gradients kept (and added up)
        assert all(not m.lora_up.weight.detach().any() for m in held)
        assert all(m.lora_up.weight.grad is not None for m in held)
        assert sum(float(m.lora_up.weight.grad.norm()) for m in held) > 0
    return {k: v.detach().clone() for k, v in network.state_dict().items() if k.startswith("lora_unet")}, seen


def test_fresh_text_modules_at_rate_0_change_the_clip_not_the_unclipped_run(tmp_path, monkeypatch):
    network = lycoris_kohya.LycorisNetworkKohya
    for attr in NETWORK_ATTRS:  # apply_preset sets the class's attributes: restored after the test
        monkeypatch.setattr(network, attr, copy.copy(getattr(network, attr)))
    pipe = build_pipeline("builtin:tiny-sd1")
    (tmp_path / "preset.toml").write_text(PRESET)
    pipe.preset = str(tmp_path / "preset.toml")
    start, _ = _run(pipe, False, 0.0, steps=1)  # U-Net modules with a trained (non-zero) lora_up
    limit = 1e-6  # small enough for the tiny model's gradients
    with_text, norms = _run(pipe, True, limit, start)
    without, norms_without = _run(pipe, False, limit, start)
    assert all(n > limit for n in norms + norms_without)  # the clip engages in both runs
    assert norms != norms_without  # the text modules' gradients are in kohya's norm
    assert any(not torch.equal(with_text[k], without[k]) for k in without)
    # max_grad_norm 0: nothing reads those gradients, train.text_encoder = false is the same run
    with_text, _ = _run(pipe, True, 0.0, start)
    without, _ = _run(pipe, False, 0.0, start)
    assert all(torch.equal(with_text[k], without[k]) for k in without)
