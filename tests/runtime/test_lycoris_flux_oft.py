"""LyCORIS's lycoris.kohya algo=diag-oft with flux_train_network.py (convert/kohya/lycoris_flow_oft.py): one
DiagOFTModule per fused Linear, whose blocks (LyCORIS's factorization of the stacked width) each part of
diffusers' split layer takes for its own rows (runtime/lycoris_oft.py fit_fused_oft). Checked against
lycoris-lora 4.1.3's own DiagOFTModule built on the stacked Linear: where the fused block size differs from a
part's own factorization, and on tiny-flux trained, resumed bit-exact and loaded from the kohya_lora
export. Its module_dropout and rank_dropout (was DBS403 / DBS577): one skip draw and one rotation mask per
fused module, shared by the parts (runtime/fused.py FusedSkip, runtime/lycoris_oft.py FusedRankDraw), equal
to lycoris-lora's module on the stacked Linear from the same generator state (outputs, gradients,
generator), and a tiny-flux run with both resumed bit-exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lycoris.modules.diag_oft import DiagOFTModule
from peft import inject_adapter_in_model
from torch import nn

from dbspec.plan.model import FusedPlan
from dbspec.runtime.lycoris_oft import DiagOftLayer, add_oft_rank_dropout, fit_fused_oft, oft_config
from dbspec.runtime.mixed_kinds import add_own_module_dropout
from tests.runtime.lycoris_flow_kit import (
    BASE,
    assert_lycoris_computes,
    kohya_export,
    stacked_linear,
    unet_only_spec,
)
from tests.runtime.runspec import whole_and_resumed

_PARTS = ("attn.to_q", "attn.to_k", "attn.to_v")


def _theirs(parts, blocks: torch.Tensor, bypass: bool = False, rescale=None, constraint=0.0) -> DiagOFTModule:
    """lycoris-lora's DiagOFTModule on the fused Linear (the parts' base weights stacked), its blocks (and
    row rescale) set; `constraint` its COFT constraint (one norm over all the fused layer's blocks)."""
    fused = stacked_linear(parts)
    size = blocks.shape[-1]
    module = DiagOFTModule(
        "fused",
        fused,
        1.0,
        lora_dim=size,
        bypass_mode=bypass,
        rescaled=rescale is not None,
        constraint=constraint,
    )
    assert module.block_size == size  # the stacked width's split is the blocks' own
    state = {"oft_blocks": blocks, "alpha": torch.tensor(float(constraint))}
    module.load_state_dict({**state, **({} if rescale is None else {"rescale": rescale})})
    module.apply_to()
    return module.eval()


class _Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.attn = nn.Module()
        for name in ("to_q", "to_k", "to_v"):
            setattr(self.attn, name, nn.Linear(8, width))


@pytest.mark.parametrize(
    ("bypass", "rescaled", "constraint"),
    [(False, False, 0.0), (True, False, 0.0), (False, True, 0.0), (False, False, 1e-3), (True, True, 1e-3)],
)
def test_parts_take_the_fused_block_size_and_compute_lycoris_module(bypass, rescaled, constraint):
    # 48-row parts at lora_dim 8: the stacked 144 rows split as blocks of 8 (8 x 18), a part's own 48 as
    # blocks of 6 (6 x 8): the parts must take the fused module's 8
    torch.manual_seed(0)
    model = nn.Module()
    model.transformer_blocks = nn.ModuleList([_Block(48)])
    config = oft_config(list(_PARTS), 8, constraint, rescaled, bypass=bypass)
    inject_adapter_in_model(config, model, adapter_name="default")
    parts = [model.transformer_blocks[0].get_submodule(p) for p in _PARTS]
    assert parts[0].lora_oft_blocks["default"].shape == (8, 6, 6)
    group = FusedPlan(name="img_attn_qkv", blocks="transformer_blocks", parts=_PARTS)
    assert fit_fused_oft(model, (group,), "default") == 3
    with torch.no_grad():
        for part in parts:
            assert part.lora_oft_blocks["default"].shape == (6, 8, 8)
            part.lora_oft_blocks["default"].normal_(0, 0.1)
            if rescaled:  # a row rescale per part: the fused module's rows, stacked
                part.lora_oft_rescale["default"].uniform_(0.5, 1.5)
    stacked = torch.cat([p.lora_oft_blocks["default"].detach() for p in parts])
    rescale = torch.cat([p.lora_oft_rescale["default"].detach() for p in parts]) if rescaled else None
    x = torch.randn(5, 8)
    with torch.no_grad():
        ours = torch.cat([p(x) for p in parts], dim=-1)
        module = _theirs(parts, stacked, bypass, rescale, constraint)
        theirs = module(x)
    if constraint:  # it binds: the fused blocks' norm exceeds constraint x 144 rows (scaled by that norm)
        q = stacked - stacked.transpose(1, 2)
        assert torch.norm(q) > module.constraint
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_fused_parts_draw_their_module_s_dropouts_as_lycoris_module():
    """module_dropout 0.5 and rank_dropout 0.3 on a fused q/k/v of 48-row parts (blocks of 8 over 144 rows):
    per training forward one skip draw and one (18, 8, 8) mask, as DiagOFTModule.forward / make_weight draw
    them, whichever part is called first; the gradients of every part's blocks and rescale equal."""
    torch.manual_seed(0)
    model = nn.Module()
    model.transformer_blocks = nn.ModuleList([_Block(48)])
    inject_adapter_in_model(oft_config(list(_PARTS), 8, 0.0, True), model, adapter_name="default")
    parts = [model.transformer_blocks[0].get_submodule(p) for p in _PARTS]
    group = FusedPlan(name="img_attn_qkv", blocks="transformer_blocks", parts=_PARTS)
    fit_fused_oft(model, (group,), "default")
    assert add_own_module_dropout(model, 0.5, (group,)) == 1  # one fused layer
    assert add_oft_rank_dropout(model, 0.3) == 3
    with torch.no_grad():
        for part in parts:
            part.lora_oft_blocks["default"].normal_(0, 0.1)
            part.lora_oft_rescale["default"].uniform_(0.5, 1.5)
    stacked = torch.cat([p.lora_oft_blocks["default"].detach() for p in parts])
    rescale = torch.cat([p.lora_oft_rescale["default"].detach() for p in parts])
    theirs = _theirs(parts, stacked.clone(), rescale=rescale.clone())
    theirs.module_dropout, theirs.rank_dropout = 0.5, 0.3
    theirs.rank_drop = nn.Dropout(0.3)  # as DiagOFTModule's constructor builds it for rank_dropout 0.3
    theirs.org_module[0].requires_grad_(False)
    model.train(), theirs.train()
    x = torch.randn(5, 8)
    plain = torch.cat([p.base_layer(x) for p in parts], dim=-1)
    kinds, trained = set(), 0
    for seed in range(10):
        order = parts if seed % 2 else parts[::-1]  # the first part called draws
        torch.manual_seed(seed)
        want = theirs(x)
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        got = {id(p): p(x) for p in order}
        mine = torch.cat([got[id(p)] for p in parts], dim=-1)
        assert torch.equal(after, torch.get_rng_state())  # one draw each per module and forward
        torch.testing.assert_close(mine, want, rtol=0, atol=1e-5)
        kinds.add(torch.equal(mine, plain))
        if want.requires_grad:
            want.square().sum().backward()
            mine.square().sum().backward()
            trained += 1
    assert kinds == {True, False} and trained
    blocks = torch.cat([p.lora_oft_blocks["default"].grad for p in parts])
    torch.testing.assert_close(blocks, theirs.oft_blocks.grad, rtol=1e-5, atol=1e-5)
    rescales = torch.cat([p.lora_oft_rescale["default"].grad for p in parts])
    torch.testing.assert_close(rescales.view(-1), theirs.rescale.grad.view(-1), rtol=1e-5, atol=1e-5)


def _spanning(widths=(16, 16, 16), lora_dim=8, **config) -> tuple[nn.Module, list]:
    """A fused q/k/v of parts `widths` rows (48 rows at lora_dim 8: blocks of 6, two of which span two
    parts), adapted and tied (fit_fused_oft)."""
    model = nn.Module()
    model.transformer_blocks = nn.ModuleList([_Block(16)])
    attn = model.transformer_blocks[0].attn
    for name, width in zip(("to_q", "to_k", "to_v"), widths):
        setattr(attn, name, nn.Linear(8, width))
    config = oft_config(list(_PARTS), lora_dim, config.pop("constraint", 0.0), **config)
    inject_adapter_in_model(config, model, adapter_name="default")
    group = FusedPlan(name="img_attn_qkv", blocks="transformer_blocks", parts=_PARTS)
    assert fit_fused_oft(model, (group,), "default") == 3
    return model, [model.transformer_blocks[0].get_submodule(p) for p in _PARTS]


@pytest.mark.parametrize(
    ("widths", "bypass", "rescaled", "constraint"),
    [
        ((16, 16, 16), False, False, 0.0),
        ((16, 16, 16), True, True, 1e-3),
        ((16, 16, 16), False, True, 1e-3),
        ((10, 7, 31), True, False, 0.0),  # blocks of 6 over 48 rows: one spans all three parts' rows
    ],
)
def test_parts_whose_blocks_span_share_them_and_compute_lycoris_module(widths, bypass, rescaled, constraint):
    """A block spanning two parts (was a ValueError): the parts share one Parameter of the stacked rows'
    blocks (runtime/fused_oft.py) and compute lycoris-lora's DiagOFTModule on the stacked Linear, in its
    default and bypass forwards, with a row rescale and a binding constraint; merged, the same."""
    torch.manual_seed(0)
    model, parts = _spanning(widths, bypass=bypass, rescaled=rescaled, constraint=constraint)
    shared = parts[0].lora_oft_blocks["default"]
    assert shared.shape == (8, 6, 6) and all(p.lora_oft_blocks["default"] is shared for p in parts)
    assert len([n for n, _ in model.named_parameters() if "oft_blocks" in n]) == 1
    with torch.no_grad():
        shared.normal_(0, 0.1)
        for part in parts:
            if rescaled:
                part.lora_oft_rescale["default"].uniform_(0.5, 1.5)
            part.base_layer.bias.normal_()
    rescale = torch.cat([p.lora_oft_rescale["default"].detach() for p in parts]) if rescaled else None
    x = torch.randn(5, 8)
    with torch.no_grad():
        ours = torch.cat([p(x) for p in parts], dim=-1)
        module = _theirs(parts, shared.detach().clone(), bypass, rescale, constraint)
        theirs = module(x)
        plain = torch.cat([p.base_layer(x) for p in parts], dim=-1)
    if constraint:
        q = shared - shared.transpose(1, 2)
        assert torch.norm(q) > module.constraint
    assert not torch.allclose(ours, plain, atol=1e-4)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    for part in parts:  # merged (each part's rows of the rotated stacked weight, the parts' unmerged), alike
        part.merge()
    with torch.no_grad():
        merged = torch.cat([p(x) for p in parts], dim=-1)
    torch.testing.assert_close(merged, theirs, rtol=0, atol=1e-5)
    for part in parts:
        part.unmerge()
    with torch.no_grad():
        torch.testing.assert_close(torch.cat([p.base_layer(x) for p in parts], dim=-1), plain)


def test_spanning_parts_draw_their_module_s_dropouts_as_lycoris_module():
    """module_dropout 0.5 and rank_dropout 0.3 on parts whose blocks span (blocks of 6 over 16-row parts):
    one skip draw and one (8, 6, 6) mask per training forward, as DiagOFTModule draws them; the shared
    blocks' gradient and the rescales' equal lycoris-lora's."""
    torch.manual_seed(0)
    model, parts = _spanning(rescaled=True)
    group = FusedPlan(name="img_attn_qkv", blocks="transformer_blocks", parts=_PARTS)
    assert add_own_module_dropout(model, 0.5, (group,)) == 1
    assert add_oft_rank_dropout(model, 0.3) == 3
    shared = parts[0].lora_oft_blocks["default"]
    with torch.no_grad():
        shared.normal_(0, 0.1)
        for part in parts:
            part.lora_oft_rescale["default"].uniform_(0.5, 1.5)
    rescale = torch.cat([p.lora_oft_rescale["default"].detach() for p in parts])
    theirs = _theirs(parts, shared.detach().clone(), rescale=rescale.clone())
    theirs.module_dropout, theirs.rank_dropout = 0.5, 0.3
    theirs.rank_drop = nn.Dropout(0.3)
    theirs.org_module[0].requires_grad_(False)
    model.train(), theirs.train()
    x = torch.randn(5, 8)
    plain = torch.cat([p.base_layer(x) for p in parts], dim=-1)
    kinds, trained = set(), 0
    for seed in range(10):
        order = parts if seed % 2 else parts[::-1]
        torch.manual_seed(seed)
        want = theirs(x)
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        got = {id(p): p(x) for p in order}
        mine = torch.cat([got[id(p)] for p in parts], dim=-1)
        assert torch.equal(after, torch.get_rng_state())
        torch.testing.assert_close(mine, want, rtol=0, atol=1e-5)
        kinds.add(torch.equal(mine, plain))
        if want.requires_grad:
            want.square().sum().backward()
            mine.square().sum().backward()
            trained += 1
    assert kinds == {True, False} and trained
    torch.testing.assert_close(shared.grad, theirs.oft_blocks.grad, rtol=1e-5, atol=1e-5)
    rescales = torch.cat([p.lora_oft_rescale["default"].grad for p in parts])
    torch.testing.assert_close(rescales.view(-1), theirs.rescale.grad.view(-1), rtol=1e-5, atol=1e-5)


def test_a_spanning_block_over_parts_left_unadapted_is_refused():
    model = nn.Module()
    model.transformer_blocks = nn.ModuleList([_Block(16)])  # 48 rows at lora_dim 8: blocks of 6
    inject_adapter_in_model(oft_config(list(_PARTS[:2]), 8, 0.0, False), model, adapter_name="default")
    group = FusedPlan(name="img_attn_qkv", blocks="transformer_blocks", parts=_PARTS)
    with pytest.raises(ValueError, match="blocks of 6 rows.*every part must be adapted"):
        fit_fused_oft(model, (group,), "default")


# what the converter writes for `--network_args algo=diag-oft preset=unet-only` (tiny-flux: one single block)
OFT = unet_only_spec('kind = "diag-oft"\nblock_size = 4\nfused_projections = true\n')


@pytest.mark.parametrize("constraint", [0.0, 5e-4])
def test_diag_oft_on_fused_layers_trains_resumes_bit_exact_and_lycoris_loads_the_export(tmp_path, constraint):
    """With a constraint (lycoris.kohya's `constraint=...`: one norm over each fused layer's blocks) too, at
    block_size 6: the q/k/v's 48 stacked rows split into blocks of 6, which span tiny-flux's 16-row parts
    (their parts share the blocks, runtime/fused_oft.py; was DBS403), linear1's 112 into blocks of 4.
    Without it, LyCORIS's max norm (was DBS577): one module per fused Linear, its parts' blocks held to the
    limit together."""
    size = 6 if constraint else 4
    extra = OFT.replace("block_size = 4\n", f"block_size = {size}\nconstraint = {constraint}\n")
    if not constraint:  # with the dropouts: one draw each per fused module, its parts sharing it
        extra = extra.replace(
            "block_size = 4\n",
            "block_size = 4\nmodule_dropout = 0.3\nrank_dropout = 0.2\nmax_norm = 0.01\n",
        )
        extra += "\n[logging]\nevery = 1\n"
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=4, extra=extra)
    assert plan.adapter.oft_constraint == constraint
    if not constraint:
        _held_to_the_limit(plan, whole, tmp_path / "whole" / "out")
    assert (plan.adapter.module_dropout, plan.adapter.rank_dropout) == (
        (0.0, 0.0) if constraint else (0.3, 0.2)
    )
    assert plan.adapter.kind == "diag-oft" and [f.name for f in plan.adapter.fused] == [
        "img_attn_qkv",
        "txt_attn_qkv",
        "linear1",
    ]
    transformer = whole.components.unet
    tensors, names = kohya_export(plan, whole)
    assert {"lora_unet_single_blocks_0_linear1", "lora_unet_double_blocks_0_img_attn_qkv"} <= names
    assert isinstance(transformer.transformer_blocks[0].attn.to_q, DiagOftLayer)
    attn = transformer.transformer_blocks[0].attn
    spanning = {id(p.lora_oft_blocks["default"]) for p in (attn.to_q, attn.to_k, attn.to_v)}
    assert len(spanning) == (1 if constraint else 3)  # blocks of 6 span the parts: one Parameter
    qkv = tensors["lora_unet_double_blocks_0_img_attn_qkv.oft_blocks"]
    assert qkv.shape == ((8, 6, 6) if constraint else (12, 4, 4))
    if not constraint:
        single = transformer.single_transformer_blocks[0]
        parts = [single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp]
        assert len({id(p.__dict__["oft_rank_draw"]) for p in parts}) == 1
        assert len({id(p.__dict__["dbspec_skip"]) for p in parts}) == 1

    def theirs(name: str, parts) -> DiagOFTModule:
        assert float(tensors[f"{name}.alpha"]) == pytest.approx(constraint)
        return _theirs(
            parts, tensors[f"{name}.oft_blocks"].float(), constraint=float(tensors[f"{name}.alpha"])
        )

    if constraint:  # it binds on the fused layers: their blocks' norm past constraint x the fused rows
        blocks = tensors["lora_unet_double_blocks_0_img_attn_qkv.oft_blocks"].float()
        rows = blocks.shape[0] * blocks.shape[1]
        assert torch.norm(blocks - blocks.transpose(1, 2)) > constraint * rows
    assert_lycoris_computes(transformer, theirs)
    if (
        constraint
    ):  # dbspec's own folder loads back as `dbspec sample` loads it: the spanning parts tied again
        _sample_load(plan, whole, transformer)


def _held_to_the_limit(plan, whole, out: Path) -> None:
    """The run's max norm: scaled modules logged, one norm module per kohya module of the export (a fused
    Linear's parts one), every module's blocks (a fused one's stacked) within the limit after the run."""
    import json

    from dbspec.runtime.max_norm import lycoris_norm_modules, lycoris_update

    assert (plan.adapter.max_norm, plan.adapter.max_norm_form) == (0.01, "lycoris")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scaled = [r["max_norm/keys_scaled"] for r in rows if "loss" in r]
    assert len(scaled) == 4 and scaled[-1] > 0
    modules = lycoris_norm_modules(whole.components.unet, [], plan.adapter.fused)
    assert len(modules) == len(kohya_export(plan, whole)[1])
    assert sum(len(m.parts) for m in modules) == 3 + 3 + 4  # q/k/v twice and linear1's four parts
    with torch.no_grad():
        norms = [float(lycoris_update(m).float().norm()) for m in modules]
    assert max(norms) <= 0.01 * (1 + 1e-5) and rows[-1]["max_norm/max_key_norm"] <= 0.01 * (1 + 1e-5)


def _sample_load(plan, whole, transformer) -> None:
    from dbspec.runtime.lycoris_oft import link_fused_oft
    from dbspec.runtime.tiny import build_pipeline
    from dbspec.runtime.weights import load_peft_adapters

    fresh = build_pipeline(BASE).transformer.float().eval()
    assert load_peft_adapters(Path(whole.final), {"unet": fresh}, bypass=plan.adapter.bypass) == ["unet"]
    link_fused_oft(fresh, plan.adapter.fused, "default")  # runtime/sample.py's
    attn, trained = fresh.transformer_blocks[0].attn, transformer.transformer_blocks[0].attn
    assert len({id(p.lora_oft_blocks["default"]) for p in (attn.to_q, attn.to_k, attn.to_v)}) == 1
    x = torch.randn(3, attn.to_q.base_layer.in_features)
    with torch.no_grad():
        for names in (("to_q", "to_k", "to_v"), ("add_q_proj", "add_k_proj", "add_v_proj")):
            loaded = torch.cat([getattr(attn, n)(x) for n in names], -1)
            ours = torch.cat([getattr(trained, n)(x) for n in names], -1)
            torch.testing.assert_close(loaded, ours, rtol=0, atol=1e-6)


@pytest.mark.parametrize("spanning", [False, True])
def test_max_norm_scales_the_fused_module_s_blocks_as_lycoris_module(spanning):
    """lycoris.kohya's apply_max_norm_regularization with one DiagOFTModule per fused Linear (was DBS577 /
    DBS403): one module, the norm of every part's blocks stacked in row order (or of the Parameter the
    parts share where blocks span them), each part's blocks times the one ratio; equal to the bit to
    lycoris-lora's DiagOFTModule.apply_max_norm on the stacked blocks, the forward after it too."""
    from dbspec.runtime.max_norm import apply_lycoris_max_norm, lycoris_norm_modules

    torch.manual_seed(2)
    if spanning:  # blocks of 6 over 16-row parts: one Parameter shared
        model, parts = _spanning(rescaled=True, constraint=1e-3)
    else:  # blocks of 8 over 48-row parts: each part its own
        model = nn.Module()
        model.transformer_blocks = nn.ModuleList([_Block(48)])
        inject_adapter_in_model(oft_config(list(_PARTS), 8, 1e-3, True), model, adapter_name="default")
        parts = [model.transformer_blocks[0].get_submodule(p) for p in _PARTS]
        group = FusedPlan(name="img_attn_qkv", blocks="transformer_blocks", parts=_PARTS)
        fit_fused_oft(model, (group,), "default")
    with torch.no_grad():
        for part in parts:
            part.lora_oft_blocks["default"].normal_(0, 0.5)
            part.lora_oft_rescale["default"].uniform_(0.5, 1.5)
    blocks = list({id(p.lora_oft_blocks["default"]): p.lora_oft_blocks["default"] for p in parts}.values())
    assert len(blocks) == (1 if spanning else 3)
    stacked = torch.cat([b.detach() for b in blocks])
    rescale = torch.cat([p.lora_oft_rescale["default"].detach() for p in parts])
    theirs = _theirs(parts, stacked.clone(), rescale=rescale, constraint=1e-3)
    modules = lycoris_norm_modules(model, [])
    assert [m.name for m in modules] == ["transformer_blocks.0.attn.to_q"]  # one module, at its first part
    limit = float(stacked.norm()) / 3
    ours = apply_lycoris_max_norm(modules, limit)
    with torch.no_grad():
        scaled, norm = theirs.apply_max_norm(limit)
    assert bool(scaled) and ours[0] == 1 and ours[1] == ours[2] == float(norm)
    assert torch.equal(torch.cat([b.detach() for b in blocks]), theirs.oft_blocks.detach())
    x = torch.randn(5, 8)
    with torch.no_grad():
        mine = torch.cat([p(x) for p in parts], dim=-1)
        torch.testing.assert_close(mine, theirs(x), rtol=0, atol=1e-5)
    assert apply_lycoris_max_norm(modules, limit * 2) == (0, 0.0, 0.0)  # within the limit: nothing scaled
