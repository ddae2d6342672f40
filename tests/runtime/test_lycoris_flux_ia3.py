"""LyCORIS's lycoris.kohya algo=ia3 with flux_train_network.py (convert/kohya/lycoris_flux.py `_ia3`): the
spec it converts to (kind = "ia3" on the full preset's Linears, the single blocks' proj_out by full path)
trains on tiny-flux, resumes bit-exact, and its kohya_lora export is what lycoris-lora's own IA3Module, built
on each fused Linear (the parts' base weights stacked, as kohya's Flux holds them) and loaded from the file,
computes: one scale per output row of the fused weight is the parts' rows, concatenated. In bypass_mode
(its module_dropout run) IA3Module scales the fused output, its bias included: each part its own rows."""

from __future__ import annotations

from lycoris.modules.ia3 import IA3Module

from tests.runtime.lycoris_flow_kit import (
    BASE,
    assert_lycoris_computes,
    kohya_export,
    stacked_linear,
    unet_only_spec,
)
from tests.runtime.runspec import whole_and_resumed

# what the converter writes for `--network_args algo=ia3 preset=unet-only` (tiny-flux: one single block)
IA3 = unet_only_spec('kind = "ia3"\n')


def _their_ia3(tensors, name: str, parts) -> IA3Module:
    """lycoris-lora's IA3Module on the fused Linear (kohya's Flux layer), loaded from the file."""
    module = IA3Module(name, stacked_linear(parts), 1.0)
    module.load_state_dict(
        {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
    )
    module.apply_to()
    return module.eval()


def test_ia3_on_fused_layers_trains_resumes_bit_exact_and_lycoris_loads_the_export(tmp_path):
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=4, extra=IA3)
    assert plan.adapter.kind == "ia3"
    transformer = whole.components.unet

    tensors, names = kohya_export(plan, whole)
    assert {"lora_unet_single_blocks_0_linear1", "lora_unet_double_blocks_0_img_attn_qkv"} <= names
    assert "lora_unet_single_blocks_0_linear2" in names and "lora_unet_double_blocks_0_img_mod_lin" in names
    assert_lycoris_computes(transformer, lambda name, parts: _their_ia3(tensors, name, parts))


# what the converter writes for `--network_args algo=ia3 preset=unet-only module_dropout=0.5
# bypass_mode=True`: IA3Module's one draw per module and training forward, diffusers' parts of a fused
# Linear sharing it, and its bypass forward (the fused output, bias included, scaled) (issue 12)
RATE = 0.5
DROPPED = unet_only_spec(f'kind = "ia3"\nmodule_dropout = {RATE}\nfused_projections = true\nbypass = true\n')


def _their_bypassed(tensors, name: str, parts) -> IA3Module:
    """_their_ia3 in LyCORIS's bypass forward (kohya's bypass_mode network: IA3Module(bypass_mode=True))."""
    module = IA3Module(name, stacked_linear(parts), 1.0, bypass_mode=True)
    module.load_state_dict(
        {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
    )
    module.apply_to()
    return module.eval()


def test_ia3_module_dropout_and_bypass_on_fused_layers_match_lycoris_module(tmp_path):
    """A run with module_dropout in bypass_mode trains and resumes bit-exact (whole_and_resumed), trains
    under gradient checkpointing bit-equal to the run without (the draw kept until every part took it, so
    the recomputed forward draws alike), and its kohya export (`bypass_mode` in its network args), in
    lycoris-lora 4.1.3's IA3Module with bypass_mode on each stacked Linear, computes the trained parts'
    outputs, which the same module's default forward (the bias unscaled) does not. Each fused Linear's
    parts compute, in training, what IA3Module with that module_dropout computes on the stacked Linear from
    the same generator state, in its bypass and its default forward: equal outputs, both skipped and scaled
    forwards seen, the generator left where it leaves it (one draw per module, not per part); no draw
    outside training."""
    import json
    from pathlib import Path

    import torch
    from safetensors import safe_open

    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import make_plan

    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=3, extra=DROPPED)
    assert plan.adapter.module_dropout == RATE and len(plan.adapter.fused) == 3 and plan.adapter.bypass
    tensors, _ = kohya_export(plan, whole)
    with safe_open(str(Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"), "pt") as handle:
        assert json.loads(handle.metadata()["ss_network_args"])["bypass_mode"] == "True"
    transformer = whole.components.unet.eval()
    assert_lycoris_computes(transformer, lambda name, parts: _their_bypassed(tensors, name, parts))
    block = transformer.transformer_blocks[0]
    qkv = (block.attn.to_q, block.attn.to_k, block.attn.to_v)
    theirs = _their_bypassed(tensors, "lora_unet_double_blocks_0_img_attn_qkv", qkv)
    theirs.bypass_mode = False  # the default forward: the fused bias unscaled, another output
    x = torch.randn(3, qkv[0].base_layer.in_features)
    with torch.no_grad():
        assert not torch.allclose(theirs(x), torch.cat([p(x) for p in qkv], dim=-1), atol=1e-5)
    extra = DROPPED + "\n[precision]\ngradient_checkpointing = true\n"
    checkpointed = execute(
        make_plan(tmp_path / "checkpointed", base=BASE, steps=3, extra=extra), keep_models=True
    )
    assert checkpointed.components.unet.gradient_checkpointing and checkpointed.losses == whole.losses
    ours = dict(checkpointed.components.unet.float().named_parameters())
    trained = [(n, p) for n, p in whole.components.unet.named_parameters() if p.requires_grad]
    assert trained and all(torch.equal(p, ours[n]) for n, p in trained)

    block = whole.components.unet.transformer_blocks[0]
    single = whole.components.unet.single_transformer_blocks[0]
    torch.manual_seed(0)
    x = torch.randn(3, block.attn.to_q.base_layer.in_features)
    qkv = (block.attn.to_q, block.attn.to_k, block.attn.to_v)
    linear1 = (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp)
    # (the fused weight's row order, the order diffusers calls the parts in: proj_mlp first)
    cases = [("img_attn_qkv", qkv, qkv), ("linear1", linear1, (linear1[3], *linear1[:3]))]
    for (name, rows, order), bypass in [(c, b) for c in cases for b in (True, False)]:
        with torch.no_grad():  # scales of every row, whichever steps skipped a layer
            for p in rows:
                p.lora_ia3["default"].normal_(0, 0.1)
                p.ia3_bypass = bypass
        theirs = IA3Module(name, stacked_linear(rows), 1.0, module_dropout=RATE, bypass_mode=bypass)
        with torch.no_grad():
            theirs.weight.copy_(torch.cat([p.lora_ia3["default"] for p in rows]))
        theirs.apply_to()
        theirs.train()
        for p in rows:
            p.train()
        torch.manual_seed(7)
        with torch.no_grad():
            expected = [theirs(x) for _ in range(8)]
        after = torch.get_rng_state()
        torch.manual_seed(7)
        with torch.no_grad():
            got = []
            for _ in range(8):
                out = {id(p): p(x) for p in order}  # the first called draws, the others take it
                got.append(torch.cat([out[id(p)] for p in rows], dim=-1))
        assert torch.equal(after, torch.get_rng_state()), name
        plain = torch.cat([p.base_layer(x) for p in rows], dim=-1)
        skipped = [torch.equal(g, plain) for g in got]
        assert skipped == [torch.equal(e, plain) for e in expected] and 0 < sum(skipped) < 8, name
        for mine, want in zip(got, expected):
            torch.testing.assert_close(mine, want, rtol=0, atol=1e-5)
        for p in rows:
            p.eval()
        state = torch.get_rng_state()
        with torch.no_grad():
            rows[0](x)  # outside training: no draw
        assert torch.equal(state, torch.get_rng_state())
