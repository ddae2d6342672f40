"""lycoris.kohya algo=lokr / loha on kohya's fused Flux Linears with dora_wd, use_scalar, the dropouts and
--scale_weight_norms (convert/kohya/lycoris_flux.py): the parts share one scalar, the max norm takes the
whole fused update and scales the shared factors (LoKr) or the one scalar (LoHa) once, each part keeps its
rows' magnitudes; the run resumes bit-exact, its gradients are lycoris-lora's LokrModule's / LohaModule's on
the fused Linear holding the same values, and its kohya_lora export (the scalar folded in, the parts'
dora_scale rows stacked) loads back in lycoris-lora with the trained outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lycoris.modules.loha import LohaModule
from lycoris.modules.lokr import LokrModule
from safetensors.torch import load_file

from dbspec.runtime.lycoris_dora import dora_scale_of
from dbspec.runtime.lycoris_switches import layer_scalar
from dbspec.runtime.max_norm import apply_lycoris_max_norm, lycoris_norm_modules, lycoris_update
from tests.runtime.runspec import make_plan, whole_and_resumed
from tests.runtime.test_lycoris_flux import BASE, LOKR, _fused_linear

SWITCHES = {  # dora_wd with the dropouts (LoKr's rank_dropout is kohya's error on a GPU: module_dropout)
    "lokr": "dora = true\nscalar = true\nmax_norm = 1e-4\nmodule_dropout = 0.3\n",
    "loha": "dora = true\nscalar = true\nmax_norm = 1e-4\nrank_dropout = 0.3\nmodule_dropout = 0.3\n",
}
DROPS = {"lokr": {"module_dropout": 0.3}, "loha": {"rank_dropout": 0.3, "module_dropout": 0.3}}


# a block of its own for the single block's linear1 (a LyCORIS map entry's dim / alpha / factor): LoKr at
# rank 1 with factor 4 and decompose_both (w1 = w1_a @ w1_b, 4 x 4 of 112 x 16), LoHa at rank 3
BLOCK = '[[adapter.blocks]]\npattern = "^single_transformer_blocks\\\\.0\\\\.(attn\\\\.to_[qkv]|proj_mlp)$"\n'
BLOCKS = {
    "lokr": BLOCK + 'rank = 1\nalpha = 3\nfactor = 4\ndecompose_both = "on"\n',
    "loha": BLOCK + "rank = 3\nalpha = 1\n",
}


def _module(cls, tensors, name: str, parts, **kw):
    """lycoris-lora's module on the fused Linear, loaded from the file (its weight decomposition too)."""
    own = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
    rank = own["lokr_w2_a"].shape[1] if cls is LokrModule else own["hada_w1_b"].shape[0]
    fused = _fused_linear([p.base_layer for p in parts])
    wd = "dora_scale" in own
    module = cls(name, fused, 1.0, rank, own["alpha"].item(), weight_decompose=wd, **kw)
    module.load_state_dict(own)
    module.apply_to()
    return module.eval()


def _theirs(cls, parts, **switches):
    """lycoris-lora's module (use_scalar and `switches`) on the fused Linear with the parts' values."""
    fused = _fused_linear([p.base_layer for p in parts])
    wd = dora_scale_of(parts[0], "default") is not None
    theirs = cls("qkv", fused, 1.0, 2, 1.5, use_scalar=True, weight_decompose=wd, **switches)
    first = parts[0]
    with torch.no_grad():
        if cls is LokrModule:
            for key in ("lokr_w1", "lokr_w2_a", "lokr_w2_b"):
                getattr(theirs, key).copy_(getattr(first, key)["default"])
        else:
            for key in ("hada_w1_b", "hada_w2_b"):
                getattr(theirs, key).copy_(getattr(first, key)["default"])
            for key in ("hada_w1_a", "hada_w2_a"):
                getattr(theirs, key).copy_(torch.cat([getattr(p, key)["default"] for p in parts]))
        theirs.scalar.copy_(layer_scalar(first))
        if wd:
            theirs.dora_scale.copy_(torch.cat([dora_scale_of(p, "default") for p in parts]))
    theirs.apply_to()
    return theirs


@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_dora_scalar_and_max_norm_on_fused_lokr_and_loha_are_lycoris(tmp_path, kind):
    cls = LokrModule if kind == "lokr" else LohaModule
    extra = LOKR.replace('kind = "lokr"', f'kind = "{kind}"')
    extra = extra.replace("fused_projections = true\n", "fused_projections = true\n" + SWITCHES[kind])
    extra += BLOCKS[kind] + '\n[checkpoints]\nevery = 2\nexports = ["kohya_lora"]\n\n[logging]\nevery = 1\n'
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=3, extra=extra)
    transformer = whole.components.unet
    attn, single = transformer.transformer_blocks[0].attn, transformer.single_transformer_blocks[0]
    qkv = (attn.to_q, attn.to_k, attn.to_v)
    linear1 = (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp)
    assert all(layer_scalar(p) is layer_scalar(qkv[0]) for p in qkv)  # one scalar per fused layer
    assert layer_scalar(qkv[0]).item() != 0.0  # trained from 0
    rows = [json.loads(r) for r in next((tmp_path / "whole").rglob("metrics.jsonl")).read_text().splitlines()]
    scaled = [r["max_norm/keys_scaled"] for r in rows if "loss" in r]
    assert 0 < scaled[0] <= 13  # some skipped (module dropout)
    modules = lycoris_norm_modules(transformer, [], plan.adapter.fused)
    assert len(modules) == 13 and sum(len(m.parts) for m in modules) == 3 + 3 + 4
    if kind == "lokr":  # every module's whole update held to the limit (without its scalar)
        with torch.no_grad():
            assert max(float(lycoris_update(m).norm()) for m in modules) == pytest.approx(1e-4, rel=1e-4)

    tensors = load_file(str(Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    own = "lora_unet_single_blocks_0_linear1"  # the block's layer: its rank, alpha and factor
    assert tensors[f"{own}.dora_scale"].shape == (112, 1)  # the parts' rows
    if kind == "lokr":
        assert tensors[f"{own}.lokr_w1_a"].shape == (4, 1) and tensors[f"{own}.lokr_w2_a"].shape == (28, 1)
    else:
        assert tensors[f"{own}.hada_w1_b"].shape == (3, 16)
    assert tensors[f"{own}.alpha"].item() == (3.0 if kind == "lokr" else 1.0)
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.alpha"].item() == 1.5
    x = torch.randn(3, 16)
    for name, parts, kw in (
        ("lora_unet_double_blocks_0_img_attn_qkv", qkv, {}),
        (own, linear1, {"factor": 4, "decompose_both": True} if kind == "lokr" else {}),
    ):
        with torch.no_grad():
            trained = torch.cat([p(x) for p in parts], dim=-1)
            plain = torch.cat([p.base_layer(x) for p in parts], dim=-1)
            assert not torch.allclose(trained, plain, atol=1e-6), name
            theirs = _module(cls, tensors, name, parts, **kw)(x)
            torch.testing.assert_close(theirs, trained, rtol=0, atol=1e-5)

    # the run's peft folder loads back with the block's split (sample, merge): the same outputs
    from dbspec.runtime.tiny import build_pipeline
    from dbspec.runtime.weights import load_peft_adapters

    fresh = build_pipeline(BASE).transformer.float().eval()
    assert load_peft_adapters(Path(whole.final), {"unet": fresh}, fused_lokr=plan.adapter) == ["unet"]
    again = fresh.single_transformer_blocks[0]
    with torch.no_grad():
        loaded = torch.cat(
            [p(x) for p in (again.attn.to_q, again.attn.to_k, again.attn.to_v, again.proj_mlp)], -1
        )
        torch.testing.assert_close(loaded, torch.cat([p(x) for p in linear1], -1), rtol=0, atol=1e-6)

    # the gradients: lycoris-lora's module (use_scalar, dora_wd) on the fused Linear, same values
    theirs = _theirs(cls, qkv)
    target = torch.randn(3, 48)
    transformer.zero_grad()
    torch.nn.functional.mse_loss(torch.cat([p(x) for p in qkv], dim=-1), target).backward()
    torch.nn.functional.mse_loss(theirs(x), target).backward()
    torch.testing.assert_close(layer_scalar(qkv[0]).grad, theirs.scalar.grad, rtol=1e-4, atol=1e-8)
    magnitudes = torch.cat([dora_scale_of(p, "default").grad for p in qkv])
    torch.testing.assert_close(magnitudes, theirs.dora_scale.grad)
    if kind == "lokr":
        torch.testing.assert_close(qkv[0].lokr_w1["default"].grad, theirs.lokr_w1.grad)
    else:
        torch.testing.assert_close(qkv[0].hada_w1_b["default"].grad, theirs.hada_w1_b.grad)
        rows_grad = torch.cat([p.hada_w2_a["default"].grad for p in qkv])
        torch.testing.assert_close(rows_grad, theirs.hada_w2_a.grad)
    # the dropouts while training, with dora_wd: the module's draws (torch.rand(1) < module_dropout, then
    # LoHa's one row mask over the fused update, which it decomposes), the parts of a fused layer sharing
    # them; the outputs and the gradients of a drawn forward
    theirs = _theirs(cls, qkv, **DROPS[kind]).train()
    transformer.train()
    skipped = 0
    for seed in range(6):
        transformer.zero_grad()
        theirs.zero_grad()
        torch.manual_seed(seed)
        ours = torch.cat([p(x) for p in qkv], dim=-1)
        torch.manual_seed(seed)
        expected = theirs(x)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
        if torch.equal(expected, theirs.org_forward(x)):
            skipped += 1
            continue
        torch.nn.functional.mse_loss(ours, target).backward()
        torch.nn.functional.mse_loss(expected, target).backward()
        magnitudes = torch.cat([dora_scale_of(p, "default").grad for p in qkv])
        torch.testing.assert_close(magnitudes, theirs.dora_scale.grad)
    assert 0 < skipped < 6
    if kind == "lokr":
        return
    # the max norm while training: LohaModule's apply_max_norm (its norm with one fresh row mask)
    (module,) = [m for m in modules if m.layer is qkv[0]]
    torch.manual_seed(7)
    assert apply_lycoris_max_norm([module], 1e-5)[0] == 1
    torch.manual_seed(7)
    theirs.apply_max_norm(1e-5)
    torch.testing.assert_close(layer_scalar(qkv[0]).detach(), theirs.scalar.detach())


@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_bypass_dropout_on_fused_lokr_and_loha_is_lycoris(tmp_path, kind):
    """lycoris.kohya bypass_mode with a dropout (output_dropout): LokrModule's / LohaModule's bypass forward
    drops the fused update x scalar (torch's Dropout) after module_dropout's draw and LoHa's row mask; the
    parts of a fused layer share one draw over its output. The LoHa run (its draws LoKr's and the row mask)
    resumes bit-exact; the training outputs and gradients are lycoris-lora's module in bypass_mode on the
    fused Linear from the same seed (LoKr's on its built, untrained layers, their factors set at random)."""
    cls = LokrModule if kind == "lokr" else LohaModule
    drops = {**DROPS[kind], "dropout": 0.4}
    fields = "scalar = true\n" + "".join(f"{k} = {v}\n" for k, v in DROPS[kind].items())
    extra = LOKR.replace('kind = "lokr"', f'kind = "{kind}"')
    extra = extra.replace(
        "fused_projections = true\n", f"fused_projections = true\n{fields}output_dropout = 0.4\n"
    )
    if kind == "loha":
        plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=3, extra=extra)
        transformer = whole.components.unet
    else:  # built, not trained: the factors and the scalar set at random
        from dbspec.runtime.families import family_runtime
        from dbspec.runtime.prepare import configure_models

        plan = make_plan(tmp_path / "run", base=BASE, steps=1, extra=extra)
        comps = family_runtime(plan.model.family).load(plan)
        configure_models(plan, comps, torch.device("cpu"))
        transformer = comps.unet.float()
        first = transformer.transformer_blocks[0].attn.to_q
        with torch.no_grad():
            for key in ("lokr_w1", "lokr_w2_a", "lokr_w2_b"):
                torch.nn.init.normal_(getattr(first, key)["default"], std=0.3)
            layer_scalar(first).fill_(0.7)
    assert plan.adapter.output_dropout == 0.4
    attn = transformer.transformer_blocks[0].attn
    transformer.train()
    # the fused qkv (one draw for its parts); LoHa also a Linear of its own (attn.to_out.0: its own draw)
    layers = [(attn.to_q, attn.to_k, attn.to_v)] + ([(attn.to_out[0],)] if kind == "loha" else [])
    for parts in layers:
        _assert_bypass_draws(cls, parts, drops)


def _assert_bypass_draws(cls, parts, drops) -> None:
    """Training forwards from 6 seeds: the parts' outputs and gradients are lycoris-lora's module's in
    bypass_mode with `drops` on their stacked Linear; some forwards skip the update."""
    theirs = _theirs(cls, parts, bypass_mode=True, **drops).train()
    width = theirs.shape[0]
    x, target = torch.randn(2, 5, 16), torch.randn(2, 5, width)  # batch, tokens, width
    shared = "lokr_w1" if cls is LokrModule else "hada_w1_b"
    skipped = 0
    for seed in range(6):
        for p in parts:
            p.zero_grad()
        theirs.zero_grad()
        torch.manual_seed(seed)
        ours = torch.cat([p(x) for p in parts], dim=-1)
        torch.manual_seed(seed)
        expected = theirs(x)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
        if torch.equal(expected, theirs.org_forward(x)):
            skipped += 1
            continue
        torch.nn.functional.mse_loss(ours, target).backward()
        torch.nn.functional.mse_loss(expected, target).backward()
        grad = getattr(parts[0], shared)["default"].grad
        torch.testing.assert_close(grad, getattr(theirs, shared).grad, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(layer_scalar(parts[0]).grad, theirs.scalar.grad, rtol=1e-4, atol=1e-7)
    assert 0 < skipped < 6


@pytest.mark.parametrize("own", [False, True])
def test_rank_stabilized_full_lokr_on_fused_layers_is_lycoris_rs_lora(tmp_path, own):
    """rs_lora with both Kronecker factors full (full_matrix): each fused layer at sqrt(rank), not 1, as
    lycoris-lora's LokrModule (rs_lora=True) on the fused Linear holding the same factors; `own`: the
    blocks' own rank_stabilized (a LyCORIS preset map entry's rs_lora), the adapter's off."""
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.prepare import configure_models
    from tests.runtime.test_lycoris_flux import _factor_layers

    extra = LOKR.replace("fused_projections = true\n", "fused_projections = true\nfull_matrix = true\n")
    if own:
        extra += '[[adapter.blocks]]\npattern = "."\nrank = 2\nalpha = 1.5\nrank_stabilized = "on"\n'
    else:
        extra = extra.replace("alpha = 1.5\n", "alpha = 1.5\nrank_stabilized = true\n")
    plan = make_plan(tmp_path / "run", base=BASE, steps=1, extra=extra)
    assert plan.adapter.lokr_rank_stabilized != own and plan.adapter.full_matrix
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    transformer = comps.unet.float().eval()
    torch.manual_seed(5)
    x = torch.randn(3, 16)
    for name, parts in _factor_layers(transformer).items():
        first = parts[0]
        assert first.scaling["default"] == pytest.approx(2**0.5)  # rank 2: sqrt(2)
        with torch.no_grad():
            for key in ("lokr_w1", "lokr_w2"):
                torch.nn.init.normal_(getattr(first, key)["default"], std=0.3)  # shared by the parts
        fused = _fused_linear([p.base_layer for p in parts])
        theirs = LokrModule(name, fused, 1.0, 2, 1.5, full_matrix=True, rs_lora=True)
        assert theirs.scale == pytest.approx(2**0.5)
        with torch.no_grad():
            for key in ("lokr_w1", "lokr_w2"):
                getattr(theirs, key).copy_(getattr(first, key)["default"])
            theirs.apply_to()
            ours = torch.cat([p(x[:, : p.base_layer.in_features]) for p in parts], dim=-1)
            torch.testing.assert_close(theirs.eval()(x), ours, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cls", [LokrModule, LohaModule])
def test_lycoris_bypass_on_a_fused_linear_is_the_rebuilt_forward(cls):
    """lycoris-lora 4.1.3's LokrModule / LohaModule with bypass_mode on a fused Linear (48 rows: Flux's qkv
    shape in the tiny model), training with module_dropout (LoHa: rank_dropout too; LoKr's bypass never
    draws its rank mask) and use_scalar, from the same seed: the rebuilt-weight forward's outputs, which
    dbspec trains (the tests above), so the converter leaves bypass_mode inert."""
    torch.manual_seed(0)
    fused = torch.nn.Linear(16, 48)
    drops = {"module_dropout": 0.3, "rank_dropout": 0.3 if cls is LohaModule else 0.0}
    built = []
    for bypass in (False, True):
        layer = torch.nn.Linear(16, 48)
        layer.load_state_dict(fused.state_dict())
        module = cls("qkv", layer, 1.0, 2, 1.5, use_scalar=True, bypass_mode=bypass, **drops)
        built.append(module)
    with torch.no_grad():
        for key, param in built[0].named_parameters():
            param.copy_(torch.randn(param.shape) * 0.3 + (0.5 if param.dim() == 0 else 0.0))
            built[1].get_parameter(key).copy_(param)
    for module in built:
        module.apply_to()
        module.train()
    x = torch.randn(3, 16)
    skipped = 0
    for seed in range(6):
        outs = []
        for module in built:
            torch.manual_seed(seed)
            with torch.no_grad():
                outs.append(module(x))
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
        skipped += int(torch.equal(outs[0], fused(x)))
    assert 0 < skipped < 6


# a LyCORIS map entry's own use_scalar on the first double block's img qkv (issue 12): its block's scalar
OWN_SCALAR = (
    '[[adapter.blocks]]\npattern = "^transformer_blocks\\\\.0\\\\.attn\\\\.to_[qkv]$"\n'
    'rank = 2\nalpha = 1.5\nscalar = "on"\n'
)


@pytest.mark.parametrize("kind", ["lokr", "loha", "lora"])
def test_block_scalar_on_a_fused_layer_is_lycoris_use_scalar(tmp_path, kind):
    """A block's own scalar (a preset map entry's use_scalar) over a whole fused qkv, the adapter's off: its
    parts share one trained scalar, the other fused layers have none; the run resumes bit-exact, and the
    fused layer's outputs and its scalar's gradient are lycoris-lora's LokrModule / LohaModule / LoConModule
    with use_scalar on the fused Linear holding the same values (issue 12)."""
    from lycoris.modules.locon import LoConModule

    extra = LOKR.replace('kind = "lokr"', f'kind = "{kind}"') + OWN_SCALAR
    extra += '\n[checkpoints]\nexports = ["kohya_lora"]\n'
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=3, extra=extra)
    assert not plan.adapter.scalar and [b.scalar for b in plan.adapter.blocks] == ["on"]
    transformer = whole.components.unet.float().eval()
    attn = transformer.transformer_blocks[0].attn
    qkv, context = (attn.to_q, attn.to_k, attn.to_v), (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
    assert all(layer_scalar(p) is layer_scalar(qkv[0]) for p in qkv)  # one scalar per fused layer
    assert layer_scalar(qkv[0]).item() != 0.0  # trained from 0
    assert all(layer_scalar(p) is None for p in context)  # the network's: none
    fused = _fused_linear([p.base_layer for p in qkv])
    if kind == "lora":
        theirs = LoConModule("qkv", fused, 1.0, 2, 1.5, use_scalar=True)
        with torch.no_grad():
            theirs.lora_down.weight.copy_(qkv[0].lora_A["default"].weight)
            theirs.lora_up.weight.copy_(torch.cat([p.lora_B["default"].weight for p in qkv]))
            theirs.scalar.copy_(layer_scalar(qkv[0]))
        theirs.apply_to()
    else:
        theirs = _theirs(LokrModule if kind == "lokr" else LohaModule, qkv)
    x, target = torch.randn(3, 16), torch.randn(3, 48)
    ours = torch.cat([p(x) for p in qkv], dim=-1)
    expected = theirs.eval()(x)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    transformer.zero_grad()
    torch.nn.functional.mse_loss(ours, target).backward()
    torch.nn.functional.mse_loss(expected, target).backward()
    torch.testing.assert_close(layer_scalar(qkv[0]).grad, theirs.scalar.grad, rtol=1e-4, atol=1e-8)
    # the export (the scalar folded in) loads in lycoris-lora's module with the trained outputs
    from tests.runtime.test_lycoris_flux import _fused_locon

    tensors = load_file(str(Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    name = "lora_unet_double_blocks_0_img_attn_qkv"
    loaded = (
        _fused_locon(tensors, name, qkv) if kind == "lora" else _module(theirs.__class__, tensors, name, qkv)
    )
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ours.detach(), rtol=0, atol=1e-5)


OWN_DORA = (
    '[[adapter.blocks]]\npattern = "^transformer_blocks\\\\.0\\\\.attn\\\\.to_[qkv]$"\n'
    'rank = 2\nalpha = 1.5\ndora = "on"\n'
)


def _decomposed(cls, parts):
    """lycoris-lora's LokrModule / LohaModule with weight_decompose on the fused Linear, the parts' values."""
    fused = _fused_linear([p.base_layer for p in parts])
    theirs = cls("qkv", fused, 1.0, 2, 1.5, weight_decompose=True)
    first = parts[0]
    with torch.no_grad():
        if cls is LokrModule:
            for key in ("lokr_w1", "lokr_w2_a", "lokr_w2_b"):
                getattr(theirs, key).copy_(getattr(first, key)["default"])
        else:
            for key in ("hada_w1_b", "hada_w2_b"):
                getattr(theirs, key).copy_(getattr(first, key)["default"])
            for key in ("hada_w1_a", "hada_w2_a"):
                getattr(theirs, key).copy_(torch.cat([getattr(p, key)["default"] for p in parts]))
        theirs.dora_scale.copy_(torch.cat([dora_scale_of(p, "default") for p in parts]))
    theirs.apply_to()
    return theirs


@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_block_dora_on_a_fused_lokr_or_loha_layer_is_lycoris_weight_decompose(tmp_path, kind):
    """A block's own weight decomposition (a preset map entry's weight_decompose) over a whole fused qkv of a
    fused LoKr / LoHa, the adapter's off: each part keeps its rows' magnitudes, starting at the fused base
    weight's row norms as LyCORIS's module does, the other fused layers have none; the run resumes bit-exact;
    the fused layer's outputs and magnitude gradients are lycoris-lora's LokrModule / LohaModule with
    weight_decompose on the fused Linear holding the same values, and the export carries `dora_scale` on
    that module only, which lycoris-lora loads with the trained outputs (issue 12)."""
    cls = LokrModule if kind == "lokr" else LohaModule
    extra = LOKR.replace('kind = "lokr"', f'kind = "{kind}"') + OWN_DORA
    extra += '\n[checkpoints]\nexports = ["kohya_lora"]\n'
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=3, extra=extra)
    assert not plan.adapter.dora and [b.dora for b in plan.adapter.blocks] == ["on"]
    transformer = whole.components.unet.float().eval()
    attn = transformer.transformer_blocks[0].attn
    qkv, context = (attn.to_q, attn.to_k, attn.to_v), (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
    assert all(dora_scale_of(p, "default") is not None for p in qkv)
    assert all(dora_scale_of(p, "default") is None for p in context)  # the network's: none
    # the run's magnitudes moved off LyCORIS's start, the fused base weight's row norms
    start = _fused_linear([p.base_layer for p in qkv]).weight.norm(dim=1, keepdim=True)
    scales = torch.cat([dora_scale_of(p, "default") for p in qkv]).detach()
    assert scales.shape == start.shape and not torch.allclose(scales, start, atol=1e-7)
    theirs = _decomposed(cls, qkv)
    x, target = torch.randn(3, 16), torch.randn(3, 48)
    ours = torch.cat([p(x) for p in qkv], dim=-1)
    expected = theirs.eval()(x)
    assert not torch.allclose(ours, torch.cat([p.base_layer(x) for p in qkv], -1), atol=1e-6)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    transformer.zero_grad()
    torch.nn.functional.mse_loss(ours, target).backward()
    torch.nn.functional.mse_loss(expected, target).backward()
    magnitudes = torch.cat([dora_scale_of(p, "default").grad for p in qkv])
    torch.testing.assert_close(magnitudes, theirs.dora_scale.grad)
    # the export: dora_scale on the block's fused layer only, lycoris-lora's module loading it as trained
    tensors = load_file(str(Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    name = "lora_unet_double_blocks_0_img_attn_qkv"
    assert {k.split(".")[0] for k in tensors if k.endswith(".dora_scale")} == {name}
    assert tensors[f"{name}.dora_scale"].shape == (48, 1)
    with torch.no_grad():
        torch.testing.assert_close(_module(cls, tensors, name, qkv)(x), ours.detach(), rtol=0, atol=1e-5)
        other = "lora_unet_double_blocks_0_txt_attn_qkv"
        trained = torch.cat([p(x) for p in context], dim=-1)
        torch.testing.assert_close(_module(cls, tensors, other, context)(x), trained, rtol=0, atol=1e-5)
    # the run's peft folder loads back (sample, merge): the block's layers decomposed, the same outputs
    from dbspec.runtime.tiny import build_pipeline
    from dbspec.runtime.weights import load_peft_adapters

    fresh = build_pipeline(BASE).transformer.float().eval()
    assert load_peft_adapters(Path(whole.final), {"unet": fresh}, fused_lokr=plan.adapter) == ["unet"]
    again = fresh.transformer_blocks[0].attn
    assert (
        dora_scale_of(again.to_q, "default") is not None
        and dora_scale_of(again.add_q_proj, "default") is None
    )
    with torch.no_grad():
        loaded = torch.cat([p(x) for p in (again.to_q, again.to_k, again.to_v)], -1)
        torch.testing.assert_close(loaded, ours.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_fused_dora_per_input_column_is_lycoris_wd_on_out_false(tmp_path, kind):
    """dora_wd with wd_on_output=False on a fused LoKr / LoHa (issue 12; was DBS575 / DBS403): the parts
    share one (1, in) magnitude starting at the fused base weight's column norms, and each part's
    decomposition takes the column norms of every part's merged weight; the run resumes bit-exact; the fused
    qkv's outputs and the magnitude's and factors' gradients are lycoris-lora's LokrModule / LohaModule with
    weight_decompose and wd_on_out=False on the fused Linear holding the same values; the export's
    (1, in) dora_scale loads in that module with the trained outputs, and the peft folder loads back."""
    cls = LokrModule if kind == "lokr" else LohaModule
    extra = LOKR.replace('kind = "lokr"', f'kind = "{kind}"')
    extra = extra.replace(
        "fused_projections = true\n",
        'fused_projections = true\ndora = true\ndora_axis = "input"\nscalar = true\n',
    )
    extra += '\n[checkpoints]\nexports = ["kohya_lora"]\n'
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=3, extra=extra)
    assert plan.adapter.dora and plan.adapter.dora_axis == "input"
    transformer = whole.components.unet.float().eval()
    attn = transformer.transformer_blocks[0].attn
    qkv = (attn.to_q, attn.to_k, attn.to_v)
    scale = dora_scale_of(qkv[0], "default")
    assert all(dora_scale_of(p, "default") is scale for p in qkv) and scale.shape == (1, 16)
    fused = _fused_linear([p.base_layer for p in qkv])
    start = fused.weight.norm(dim=0, keepdim=True)  # LyCORIS's start: the fused weight's column norms
    assert not torch.allclose(scale.detach(), start, atol=1e-7)  # trained
    theirs = cls("qkv", fused, 1.0, 2, 1.5, weight_decompose=True, wd_on_out=False, use_scalar=True)
    with torch.no_grad():
        if cls is LokrModule:
            for key in ("lokr_w1", "lokr_w2_a", "lokr_w2_b"):
                getattr(theirs, key).copy_(getattr(qkv[0], key)["default"])
        else:
            for key in ("hada_w1_b", "hada_w2_b"):
                getattr(theirs, key).copy_(getattr(qkv[0], key)["default"])
            for key in ("hada_w1_a", "hada_w2_a"):
                getattr(theirs, key).copy_(torch.cat([getattr(p, key)["default"] for p in qkv]))
        theirs.scalar.copy_(layer_scalar(qkv[0]))  # use_scalar: one per fused layer, trained from 0
        assert theirs.dora_scale.shape == scale.shape
        theirs.dora_scale.copy_(scale)
    theirs.apply_to()
    x, target = torch.randn(3, 16), torch.randn(3, 48)
    ours = torch.cat([p(x) for p in qkv], dim=-1)
    expected = theirs.eval()(x)
    assert not torch.allclose(ours, torch.cat([p.base_layer(x) for p in qkv], -1), atol=1e-6)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    # one part's rows alone, decomposed by its own rows' norms, would differ: the norm spans every part
    alone = qkv[1].get_base_layer().weight + qkv[1]._update("default")
    own_norm = alone * (scale / (alone.norm(dim=0, keepdim=True) + torch.finfo(alone.dtype).eps))
    assert not torch.allclose(torch.nn.functional.linear(x, own_norm), ours[:, 16:32], atol=1e-4)
    transformer.zero_grad()
    torch.nn.functional.mse_loss(ours, target).backward()
    torch.nn.functional.mse_loss(expected, target).backward()
    torch.testing.assert_close(scale.grad, theirs.dora_scale.grad, rtol=1e-4, atol=1e-7)
    if kind == "lokr":
        torch.testing.assert_close(qkv[0].lokr_w1["default"].grad, theirs.lokr_w1.grad, rtol=1e-4, atol=1e-7)
    else:
        rows_grad = torch.cat([p.hada_w2_a["default"].grad for p in qkv])
        torch.testing.assert_close(rows_grad, theirs.hada_w2_a.grad, rtol=1e-4, atol=1e-7)
    tensors = load_file(str(Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    name = "lora_unet_double_blocks_0_img_attn_qkv"
    assert tensors[f"{name}.dora_scale"].shape == (1, 16)
    with torch.no_grad():
        own = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
        rank = own["lokr_w2_a"].shape[1] if cls is LokrModule else own["hada_w1_b"].shape[0]
        module = cls(
            name,
            _fused_linear([p.base_layer for p in qkv]),
            1.0,
            rank,
            own["alpha"].item(),
            weight_decompose=True,
            wd_on_out=False,
        )
        module.load_state_dict(own)
        module.apply_to()
        torch.testing.assert_close(module.eval()(x), ours.detach(), rtol=0, atol=1e-5)
    from dbspec.runtime.tiny import build_pipeline
    from dbspec.runtime.weights import load_peft_adapters

    fresh = build_pipeline(BASE).transformer.float().eval()
    assert load_peft_adapters(Path(whole.final), {"unet": fresh}, fused_lokr=plan.adapter) == ["unet"]
    again = fresh.transformer_blocks[0].attn
    parts = (again.to_q, again.to_k, again.to_v)
    assert all(dora_scale_of(p, "default") is dora_scale_of(parts[0], "default") for p in parts)
    with torch.no_grad():
        loaded = torch.cat([p(x) for p in parts], -1)
        torch.testing.assert_close(loaded, ours.detach(), rtol=0, atol=1e-6)
