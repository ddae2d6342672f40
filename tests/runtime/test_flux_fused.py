"""Shared down-projections of fused layers (adapter.fused_projections, runtime/fused.py): kohya's LoRA on
Black Forest Labs' fused Linears (networks.lora_flux without split_qkv) trained on diffusers' split Flux.

A differential test builds the fused Linear itself (q, k, v weights stacked as the original model holds
them) with a LoRA computed by hand, x W^T + scale (x A^T) B^T, and checks that the tied peft parts give the
same outputs and the same gradients (A's: the sum over the parts). A tiny Flux run trains with the option,
keeps one tensor per fused layer (its EMA too), resumes bit-exact and exports kohya's layout (the shared down
once, the ups stacked), which diffusers' FluxPipeline.load_lora_weights loads back to the trained outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors import safe_open

from dbspec.families import family_spec
from dbspec.plan.model import FusedPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.execute import execute
from dbspec.runtime.fused import tie_fused_projections
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, make_plan, summary_text
from tests.runtime.test_flux_kohya import _predict

BASE = "builtin:tiny-flux"
# kohya's networks.lora_flux targets (the family registry's), single blocks' proj_out and no final layer
_TARGETS = ", ".join(f'"{t}"' for t in family_spec("flux").kohya_lora_targets)
KOHYA = (
    '[adapter]\nkind = "lora"\nrank = 4\nalpha = 2\nfused_projections = true\n'
    f"denoiser_targets = [{_TARGETS}]\n\n"
    '[[adapter.blocks]]\npattern = "^proj_out$"\nrank = 0\nalpha = 1\n'
)
EMA = "\n[ema]\nenabled = true\ndecay = 0.5\nwarmup = false\n"
# Black Forest Labs' Linears of each block, as kohya names its LoRA modules
_DOUBLE = [f"{s}_{n}" for s in ("img", "txt") for n in ("attn_qkv", "attn_proj", "mlp_0", "mlp_2", "mod_lin")]
_SINGLE = ["linear1", "linear2", "modulation_lin"]


def _double_block_lora(seed: int = 3):
    """The tiny Flux's first double block with LoRA (rank 4, alpha 2) on q, k, v, random up weights."""
    from dbspec.plan.model import AdapterPlan

    transformer = build_pipeline(BASE).transformer.float()
    block = transformer.transformer_blocks[0]
    adapter = AdapterPlan(kind="lora", rank=4, alpha=2.0)
    add_lora(block, adapter, ("attn.to_q", "attn.to_k", "attn.to_v"), seed=seed)
    torch.manual_seed(seed)
    for name in ("to_q", "to_k", "to_v"):
        torch.nn.init.normal_(getattr(block.attn, name).lora_B["default"].weight)
    return block


def test_tied_parts_are_the_fused_linears_lora_outputs_and_gradients():
    block = _double_block_lora()
    wrapper = torch.nn.Module()  # a ModuleList of blocks, as the transformer holds them
    wrapper.blocks = torch.nn.ModuleList([block])
    group = FusedPlan(name="img_attn_qkv", blocks="blocks", parts=("attn.to_q", "attn.to_k", "attn.to_v"))
    assert tie_fused_projections(wrapper, (group,)) == 1
    attn = block.attn
    shared = attn.to_q.lora_A["default"].weight
    assert attn.to_k.lora_A["default"].weight is shared and attn.to_v.lora_A["default"].weight is shared
    assert sum(1 for p in block.parameters() if p is shared) == 1  # listed once: optimizer, state, EMA

    # the fused Linear, by hand: W = [Wq; Wk; Wv], b = [bq; bk; bv]; LoRA down A (shared), up [Bq; Bk; Bv]
    parts = [attn.to_q, attn.to_k, attn.to_v]
    weight = torch.cat([p.base_layer.weight for p in parts]).detach()
    bias = torch.cat([p.base_layer.bias for p in parts]).detach()
    down = shared.detach().clone().requires_grad_(True)
    up = torch.cat([p.lora_B["default"].weight for p in parts]).detach().clone().requires_grad_(True)
    scale = 2.0 / 4
    x = torch.randn(2, 5, weight.shape[1], generator=torch.Generator().manual_seed(7))
    fused = x @ weight.T + bias + scale * (x @ down.T) @ up.T
    ours = torch.cat([p(x) for p in parts], dim=-1)
    torch.testing.assert_close(ours, fused, rtol=0, atol=1e-6)

    grad_out = torch.randn_like(fused, generator=torch.Generator().manual_seed(8))
    (fused * grad_out).sum().backward()
    (ours * grad_out).sum().backward()
    torch.testing.assert_close(shared.grad, down.grad, rtol=1e-5, atol=1e-5)
    ups = torch.cat([p.lora_B["default"].weight.grad for p in parts])
    torch.testing.assert_close(ups, up.grad, rtol=1e-5, atol=1e-5)
    # the shared gradient is the sum of what each part's own (untied) down would receive
    each = [scale * p.lora_B["default"].weight.T @ g.reshape(-1, g.shape[-1]).T @ x.reshape(-1, x.shape[-1])
            for p, g in zip(parts, grad_out.split([p.out_features for p in parts], dim=-1))]  # fmt: skip
    torch.testing.assert_close(shared.grad, sum(each), rtol=0, atol=1e-5)


def _trained_run(tmp_path: Path, steps: int, **kw):
    extra = KOHYA + '\n[checkpoints]\nevery = 2\nexports = ["kohya_lora"]\n'
    return make_plan(tmp_path, base=BASE, steps=steps, extra=extra, **kw)


def test_tiny_flux_trains_fused_resumes_bit_exact_and_exports_kohyas_fused_layout(tmp_path):
    plan = _trained_run(tmp_path / "whole", 4)
    assert [(f.name, f.blocks, f.parts) for f in plan.adapter.fused] == [
        ("img_attn_qkv", "transformer_blocks", ("attn.to_q", "attn.to_k", "attn.to_v")),
        ("txt_attn_qkv", "transformer_blocks", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
        ("linear1", "single_transformer_blocks", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
    ]
    assert "fused linear1" in summary_text(plan)
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished"
    transformer = whole.components.unet
    for block in transformer.transformer_blocks:
        a = block.attn
        assert a.to_k.lora_A["default"].weight is a.to_q.lora_A["default"].weight
        assert a.add_v_proj.lora_A["default"].weight is a.add_q_proj.lora_A["default"].weight
    for block in transformer.single_transformer_blocks:
        assert block.proj_mlp.lora_A["default"].weight is block.attn.to_q.lora_A["default"].weight
    assert not hasattr(transformer.proj_out, "lora_A")  # kohya adapts no final layer

    # the split run also keeps an EMA (which never changes what trains: the same losses and weights)
    parts = make_plan(
        tmp_path / "parts", base=BASE, steps=4, extra=KOHYA + "\n[checkpoints]\nevery = 2\n" + EMA
    )
    first = execute(parts, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(parts, resume=True, keep_models=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    for block in second.components.unet.single_transformer_blocks:  # still one tensor after the resume
        assert block.attn.to_v.lora_A["default"].weight is block.attn.to_q.lora_A["default"].weight
    ours = dict(transformer.named_parameters())
    for name, p in second.components.unet.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, ours[name]), name
    _assert_ema_holds_the_shared_down_once(second)

    path = Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"
    with safe_open(str(path), "pt") as handle:
        get = handle.get_tensor
        down = get("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight")
        up = get("lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight")
        alpha = get("lora_unet_double_blocks_0_img_attn_qkv.alpha").item()
        single_down = get("lora_unet_single_blocks_0_linear1.lora_down.weight")
        single_up = get("lora_unet_single_blocks_0_linear1.lora_up.weight")
        assert not any(k.startswith("lora_unet_final_layer") for k in handle.keys())
        names = {k.split(".")[0] for k in handle.keys()}
    # every Linear of every block, and nothing else: kohya's networks.lora_flux set
    expected_names = {f"lora_unet_double_blocks_{i}_{n}" for i in range(len(transformer.transformer_blocks))
                      for n in _DOUBLE} | {f"lora_unet_single_blocks_{i}_{n}" for n in _SINGLE
                      for i in range(len(transformer.single_transformer_blocks))}  # fmt: skip
    assert names == expected_names
    base = {n.removesuffix('.base_layer') for n, m in transformer.named_modules()
            if type(m) is torch.nn.Linear and '.lora_' not in n}  # fmt: skip
    in_blocks = {n for n in base if n.startswith(("transformer_blocks.", "single_transformer_blocks."))}
    adapted = {n for n, m in transformer.named_modules() if isinstance(m, LoraLayer)}
    assert adapted == in_blocks
    a = transformer.transformer_blocks[0].attn
    assert down.shape[0] == 4 and alpha == 2.0  # rank r, alpha unchanged
    assert torch.equal(down, a.to_q.lora_A["default"].weight.detach().float())
    expected = torch.cat([getattr(a, f"to_{c}").lora_B["default"].weight.detach().float() for c in "qkv"])
    assert torch.equal(up, expected)
    single = transformer.single_transformer_blocks[0]
    linear1 = (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp)
    with torch.no_grad():  # the loaders' rule W += alpha / rows(down) * up @ down: each part's own update
        merged = torch.cat([m.scaling["default"] * m.lora_B["default"].weight @ m.lora_A["default"].weight
                            for m in linear1])  # fmt: skip
    torch.testing.assert_close(
        alpha / single_down.shape[0] * single_up @ single_down, merged, rtol=0, atol=1e-6
    )
    # the diffusers layout writes the shared down once per part
    from safetensors.torch import load_file

    diffusers = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    key = "transformer.single_transformer_blocks.0.{}.lora_A.weight"
    assert all(torch.equal(diffusers[key.format(p)], diffusers[key.format("attn.to_q")])
               for p in ("attn.to_k", "attn.to_v", "proj_mlp"))  # fmt: skip

    # diffusers' kohya-Flux loader: it splits linear1 at FLUX.1's widths only, so the tiny twin loads the
    # double blocks' fused layers (and the rest) from a file without the single blocks' linear1
    from safetensors.torch import save_file

    tensors = {k: v for k, v in load_file(str(path)).items() if "_linear1." not in k}
    loadable = tmp_path / "no-linear1.safetensors"
    save_file(tensors, str(loadable))
    pipe = build_pipeline(BASE)
    plain = _predict(pipe.transformer)
    pipe.load_lora_weights(str(loadable))
    for block in transformer.single_transformer_blocks:  # the trained model without linear1's LoRA
        for m in (block.attn.to_q, block.attn.to_k, block.attn.to_v, block.proj_mlp):
            m.scaling["default"] = 0.0
    trained = _predict(transformer)
    torch.testing.assert_close(_predict(pipe.transformer), trained, rtol=0, atol=1e-4)
    assert not torch.allclose(plain, trained, atol=1e-4)


def _assert_ema_holds_the_shared_down_once(result) -> None:
    """EMA holds the shared weight once (the trainable parameters list it once): its exported average repeats
    one value under every part, an average, not the trained weight. (Was
    test_ema_averages_the_shared_down_once, a 2-step run of its own; now the resumed EMA of
    test_tiny_flux_trains_fused_resumes_bit_exact_...'s split run.)"""
    from safetensors.torch import load_file

    ema = load_file(str(Path(result.final) / "ema" / "pytorch_lora_weights.safetensors"))
    key = "transformer.transformer_blocks.0.attn.{}.lora_A.weight"
    assert torch.equal(ema[key.format("to_k")], ema[key.format("to_q")])
    assert torch.equal(ema[key.format("to_v")], ema[key.format("to_q")])
    trained = result.components.unet.transformer_blocks[0].attn.to_q.lora_A["default"].weight
    assert not torch.equal(ema[key.format("to_q")], trained.detach().to(ema[key.format("to_q")].dtype))


@pytest.mark.slow
def test_fsdp_trains_the_shared_downs_as_one_process(tmp_path):
    """Two FSDP2 processes (a shard unit per block, so each block's tied parts stay in one unit) train the
    fused LoRA as one process with accumulation 2 does."""
    from tests.runtime.test_fsdp import _fsdp_spec
    from tests.runtime.test_processes import _launch, _weights

    def flux(spec: Path) -> Path:
        text = spec.read_text().replace('base = "builtin:tiny-sd1"', f'base = "{BASE}"')
        spec.write_text(text + "\n" + KOHYA)
        return spec

    done = _launch(flux(_fsdp_spec(tmp_path / "two")))
    assert done.returncode == 0, done.stderr[-4000:]
    two = _weights(tmp_path / "two" / "out")
    one_spec = flux(_fsdp_spec(tmp_path / "one", accumulation=2, fsdp=False, streams="micro_batch"))
    result = execute(compile_spec(one_spec))
    assert result.status == "finished"
    one = _weights(tmp_path / "one" / "out")
    key = "final/pytorch_lora_weights.safetensors:transformer.single_transformer_blocks.0.{}.lora_A.weight"
    assert torch.equal(two[key.format("proj_mlp")], two[key.format("attn.to_q")])  # still one tensor
    assert one.keys() == two.keys()
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-6, msg=name)
