"""A T-LoRA entry's own `use_data_init = false` in a LyCORIS preset file of a LoCon or LoHa network (was
DBS403): lycoris-lora 4.1.3's create_network builds those entries' TLoraModules with use_data_init=False,
each starting from the SVD of torch.normal(0, 1 / rank) drawn from torch's global generator after its
factors' own init. dbspec converts it to the tlora block's `data_init = false`, drawn as the run builds its
T-LoRA layers (their pass of their own beside the network's kind, runtime/mixed_kinds.py, under the run's
seed plus the kind's place). kohya builds every module of the network in one order from the same generator
(CLIP's first, then the U-Net's, LoConModule / LohaModule drawing their own init between the T-LoRA
modules), so the order of draws over the model is not kohya's, as on a T-LoRA network: each layer's draw is
TLoraModule's. No tiny run: the plan's U-Net and CLIP as runtime/prepare.py builds them."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.runtime.test_lycoris_tlora import _classes, _lycoris_classes, converted_network

tlora = pytest.importorskip("lycoris.modules.tlora")

# a LoCon / LoHa network: the ResNets its own kind, the transformers T-LoRA at 6 from a random start (the
# feed-forwards from its last singular triplets stay the network's entries' defaults: sig_type on another
# network stays DBS403), CLIP's attention T-LoRA at the network's dim from a random start
PRESET = """\
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention"]

[module_algo_map.Transformer2DModel]
algo = "tlora"
dim = 6
use_data_init = false

[module_algo_map.CLIPAttention]
algo = "tlora"
use_data_init = false
"""


@pytest.mark.parametrize("algo", ["locon", "loha"])
def test_tlora_entry_random_start_beside_locon_and_loha(tmp_path, monkeypatch, algo):
    """The converted plan's tlora blocks start at random (`data_init = false`) on exactly the layers
    lycoris-lora's create_network builds TLoraModules with use_data_init=False on, at their ranks and
    scales; each of the prepared U-Net's and CLIP's T-LoRA layers holds, trained and frozen, bit for bit the
    Q, P, λ TLoraModule(use_data_init=False) draws on that layer from the generator state the layer drew at
    (its random start, not its weight's SVD), and the generator ends alike; the network's own layers keep
    their kind."""
    from dbspec.runtime.lycoris_tlora import TloraLayer, random_start, svd_start
    from dbspec.runtime.prepare import _prepare
    from dbspec.runtime.tiny import build_pipeline

    pipe = build_pipeline("builtin:tiny-sd1")
    adapter, made, _, _, _ = converted_network(tmp_path, monkeypatch, PRESET, f'"algo={algo}"', pipe=pipe)
    blocks = [*adapter.blocks, *adapter.text_encoder_blocks]
    assert {(b.kind, b.data_init) for b in blocks} == {("tlora", False)}
    theirs = [*made.text_encoder_loras, *made.unet_loras]
    random = {m.lora_name for m in theirs if type(m).__name__ == "TLoraModule" and not m.use_data_init}
    assert random == {m.lora_name for m in theirs if type(m).__name__ == "TLoraModule"} and random
    from tests.unit.convert_kit import out_path, plan_at

    plan = plan_at(out_path(tmp_path), ["model.base=builtin:tiny-sd1"])
    unet, text = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    seed = plan.schedule.seed
    _prepare(unet, "unet", plan, torch.device("cpu"), plan.adapter.denoiser_targets, seed)
    _prepare(text, "text_encoder", plan, torch.device("cpu"), plan.adapter.text_encoder_targets, seed + 1)
    ours = {**_classes(unet, "lora_unet_"), **_classes(text, "lora_te_text_model_")}
    assert ours == _lycoris_classes(theirs)
    layers = {
        prefix + n.replace(".", "_"): m
        for prefix, model in (("lora_unet_", unet), ("lora_te_text_model_", text))
        for n, m in model.named_modules()
        if isinstance(m, TloraLayer)
    }
    assert sorted(layers) == sorted(random) and all(m.tlora_random for m in layers.values())
    for name, layer in layers.items():
        base = layer.get_base_layer()
        rank, alpha = layer.r["default"], layer.lora_alpha["default"]
        _, state = layer.tlora_rng
        torch.random.set_rng_state(state)
        lyco = tlora.TLoraModule(name, copy.deepcopy(base), 1.0, rank, alpha, use_data_init=False)
        after = torch.random.get_rng_state()
        torch.random.set_rng_state(state)
        svd = svd_start(base.weight, rank)
        for ours_part, theirs_part in [
            ("q", lyco.q_layer.weight),
            ("p", lyco.p_layer.weight),
            ("lambda", lyco.lambda_layer),
            ("base_q", lyco.base_q),
            ("base_p", lyco.base_p),
            ("base_lambda", lyco.base_lambda),
        ]:
            mine = getattr(layer, f"lora_tlora_{ours_part}")["default"]
            assert torch.equal(mine.detach().reshape(theirs_part.shape), theirs_part.detach()), (
                name,
                ours_part,
            )
        assert not torch.allclose(layer.lora_tlora_base_lambda["default"], svd[2]), name  # not the SVD start
        random_start(base.weight, rank)
        assert torch.equal(torch.random.get_rng_state(), after), name  # the same draws, no more
    _reloads_with_its_random_start(tmp_path, pipe, plan, unet)


def _reloads_with_its_random_start(tmp_path, pipe, plan, unet) -> None:
    """The U-Net's adapter folders (one per kind, runtime/weights.py save_peft_adapters; the LoCon kind's held
    the T-LoRA layers' `lora_tlora_*` keys too, and its reload raised on the ResNets' 3x3 convolutions) load
    back onto a fresh U-Net as `dbspec sample` loads them: each T-LoRA layer with its trained tensors and its
    random frozen start, and the U-Net computing the trained output."""
    from dbspec.runtime.lycoris_tlora import TloraLayer
    from dbspec.runtime.weights import load_peft_adapters, save_peft_adapters

    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # trained: every adapter tensor moved
        for param in (p for p in unet.parameters() if p.requires_grad):
            param.add_(torch.randn(param.shape, generator=g) * 0.05)
    save_peft_adapters(tmp_path / "saved", {"unet": unet}, "fp32")
    fresh = copy.deepcopy(pipe.unet)
    load_peft_adapters(tmp_path / "saved", {"unet": fresh}, blocks=plan.adapter)
    loaded = dict(fresh.named_modules())
    for name, layer in unet.named_modules():
        if isinstance(layer, TloraLayer):
            for part in ("base_q", "base_p", "base_lambda", "q", "p", "lambda"):
                mine = getattr(layer, f"lora_tlora_{part}")["default"]
                assert torch.equal(getattr(loaded[name], f"lora_tlora_{part}")["default"], mine), (name, part)
    config = pipe.unet.config
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, config.in_channels, 8, 8, generator=generator)
    context = torch.randn(1, 7, config.cross_attention_dim, generator=generator)
    unet.eval(), fresh.eval()
    with torch.no_grad():
        want = unet(sample, 500, context).sample
        assert not torch.allclose(pipe.unet(sample, 500, context).sample, want, atol=1e-4)
        torch.testing.assert_close(fresh(sample, 500, context).sample, want)
