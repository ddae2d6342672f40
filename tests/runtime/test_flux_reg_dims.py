"""kohya's Flux `network_reg_dims` / `network_reg_lrs` (dbspec/convert/kohya/reg_dims.py) on tiny Flux: the
converter's [[adapter.blocks]] build each layer's LoRA at the rank the first matching regex over its kohya
name gives, put its parameters in an optimizer group at the regex's absolute rate (LoRA+'s up matrices at
rate x ratio, as kohya's prepare_optimizer_params_with_multiple_te_lrs), and the run trains; a regex at rate
0 holds its modules (lr_scale 0): built, out of the optimizer, in the clip list, at their init after the run
and in the export. The regexes reach CLIP-L's modules alike ([[adapter.text_encoder_blocks]]: the text
encoder's group split by block, `text_encoder_lr<rate>`). Under a clip tight enough to scale every step, a run
stopped after its first step and resumed ends with the uninterrupted run's losses and weights bit for bit, its
held modules (CLIP-L's and the denoiser's) still at their init: the held gradients that add up uncleared come
back with the checkpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from dbspec.convert.kohya.reg_dims import flux_reg_blocks
from dbspec.convert.kohya.targets import KOHYA_TEXT_TARGETS
from dbspec.families import family_spec
from dbspec.plan.io import plan_to_json
from dbspec.runtime.device import make_accelerator
from dbspec.runtime.execute import execute
from dbspec.runtime.exports import clip_path
from dbspec.runtime.setup import setup
from tests.runtime.runspec import compile_spec, write_spec

DIMS = r"single_blocks_0_=2,img_attn=6, txt_mlp=0,layers_1_self_attn=3"
# txt_attn at rate 0: kohya builds those modules and leaves their group out of the optimizer (issue 12); the
# regexes reach CLIP-L's modules (lora_te1_...) too: layer 0's attention at its own rate, layer 1's MLP held
LRS = r"double_blocks_0_img=3e-3,linear2=5e-4,txt_attn=0,layers_0_self_attn=2e-4,layers_1_mlp=0"
LR, TE_LR, RATIO = 1e-3, 5e-4, 4.0
# with train_t5xxl=True the regexes reach T5-XXL's modules (lora_te3_...): block 0's attention at its own
# rate, block 1's MLP held, the rest of T5 held where T5's text_encoder_lr is 0
LRS_T5 = LRS + r",block_0_layer_0=3e-4,block_1_layer_1=0"
# a clip that scales every step, so the held modules' uncleared gradients weigh on every update
RUN = [f"optimizer.lr={LR}", f"optimizer.text_encoder_lr={TE_LR}", "optimizer.max_grad_norm=0.01"]
# diffusers child -> kohya's name for it inside a double / single block
DOUBLE = {"attn.to_q": "img_attn_qkv", "attn.to_k": "img_attn_qkv", "attn.to_v": "img_attn_qkv"}
DOUBLE |= {
    "attn.to_out.0": "img_attn_proj",
    "attn.add_q_proj": "txt_attn_qkv",
    "attn.add_k_proj": "txt_attn_qkv",
}
DOUBLE |= {
    "attn.add_v_proj": "txt_attn_qkv",
    "attn.to_add_out": "txt_attn_proj",
    "ff.net.0.proj": "img_mlp_0",
}
DOUBLE |= {"ff.net.2": "img_mlp_2", "ff_context.net.0.proj": "txt_mlp_0", "ff_context.net.2": "txt_mlp_2"}
DOUBLE |= {"norm1.linear": "img_mod_lin", "norm1_context.linear": "txt_mod_lin"}
SINGLE = {"attn.to_q": "linear1", "attn.to_k": "linear1", "attn.to_v": "linear1", "proj_mlp": "linear1"}
SINGLE |= {"proj_out": "linear2", "norm.linear": "modulation_lin"}


def _kohya_name(path: str) -> str | None:
    m = re.fullmatch(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)", path)
    if not m:
        return None
    double = m[1] == "transformer_blocks"
    child = (DOUBLE if double else SINGLE).get(m[3])
    return child and f"lora_unet_{'double' if double else 'single'}_blocks_{m[2]}_{child}"


def _first(text: str, name: str, kind):
    for item in text.split(","):
        key, value = (x.strip() for x in item.split("=", 1))
        if re.search(key, name):
            return kind(value)
    return None


def _spec(tmp_path, text_rates: tuple[float, float] = (TE_LR, TE_LR), lrs: str = LRS, t5: bool = False):
    text_blocks: list[dict] = []
    blocks, extra, _, _ = flux_reg_blocks(
        {"network_reg_dims": DIMS, "network_reg_lrs": lrs},
        dim=4,
        alpha=2.0,
        train=None,
        type_dims={},
        in_dims=None,
        selected={},
        unet_lr=LR,
        text_trains=True,
        t5_trains=t5,
        family="flux",
        text_rates=text_rates,
        text_blocks=text_blocks,
    )
    assert not extra and text_blocks
    targets = ", ".join(f'"{t}"' for t in family_spec("flux").kohya_lora_targets)
    text = (
        f'[adapter]\nkind = "lora"\nrank = 4\nalpha = 2\nfused_projections = true\nloraplus_ratio = {RATIO}\n'
        f"denoiser_targets = [{targets}]\ntext_encoder_targets = {json.dumps(KOHYA_TEXT_TARGETS)}\n\n"
        f"[train]\ntext_encoder = true\nt5 = {str(t5).lower()}\n\n"
        '[[adapter.blocks]]\npattern = "^proj_out$"\nrank = 0\nalpha = 1\n'
    )
    for table, entries in (("blocks", blocks), ("text_encoder_blocks", text_blocks)):
        for block in entries:
            text += f"\n[[adapter.{table}]]\npattern = '{block['pattern']}'\nrank = {block['rank']}\n"
            text += f"alpha = {block['alpha']}\n" + (f"lr = {block['lr']!r}\n" if "lr" in block else "")
            text += f"lr_scale = {block['lr_scale']!r}\n" if "lr_scale" in block else ""
    return write_spec(tmp_path, base="builtin:tiny-flux", steps=2, extra=text)


def test_reg_dims_and_lrs_build_kohyas_ranks_and_rates_and_train(tmp_path):
    spec = _spec(tmp_path)
    plan = compile_spec(spec, [*RUN, f"output.dir={tmp_path / 'whole'}"])
    run = setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)
    rate = {id(p): g["lr"] for g in run.optimizer.param_groups for p in g["params"]}
    clipped = {id(p) for p in run.params}
    seen: set[tuple[int, float]] = set()
    held: dict[str, torch.Tensor] = {}  # the held modules' weights at their init, by parameter name
    for path, layer in run.comps.unet.named_modules():
        name = _kohya_name(path)
        if name is None:
            continue
        rank = _first(DIMS, name, int)
        rank = 4 if rank is None else rank
        if not rank:
            assert not isinstance(layer, LoraLayer), path
            continue
        assert isinstance(layer, LoraLayer) and layer.r["default"] == rank, path
        assert layer.scaling["default"] == 2.0 / rank, path
        own = _first(LRS, name, float)
        own = LR if own is None else own
        seen.add((rank, own))
        if own == 0:  # out of the optimizer, but taking gradients that the clip counts
            for key in ("lora_A", "lora_B"):
                weight = getattr(layer, key)["default"].weight
                assert id(weight) not in rate and id(weight) in clipped and weight.requires_grad, path
                held[f"{path}.{key}.default.weight"] = weight.detach().clone()
            continue
        assert rate[id(layer.lora_A["default"].weight)] == own, path
        assert rate[id(layer.lora_B["default"].weight)] == own * RATIO, path
    # tiny Flux has one double and one single block: every rule above was exercised
    assert seen == {(6, 3e-3), (4, 3e-3), (4, 0.0), (4, LR), (2, LR), (2, 5e-4)}
    held |= _check_clip_l(run, rate, clipped)
    names = {g["name"] for g in run.optimizer.param_groups}
    assert {"text_encoder_lr0.0002", "text_encoder_lora_up_lr0.0002", "text_encoder"} <= names, names
    trained = {n: p.detach().clone() for n, p in _trainable(run.comps)}
    del run
    result = execute(plan, keep_models=True)
    assert result.status == "finished"
    after = dict(_trainable(result.components, remove_duplicate=False))  # the parts' tied downs
    assert all(torch.equal(after[n], w) for n, w in held.items())  # never stepped
    moved = {n for n, w in trained.items() if n not in held and not torch.equal(after[n], w)}
    assert any(n.startswith("te1.") for n in moved) and any(not n.startswith("te1.") for n in moved)
    exported = {}
    for file in Path(result.final).rglob("*.safetensors"):
        exported |= load_file(file)
    assert any("txt_attn" in k or "add_q_proj" in k for k in exported), sorted(exported)[:8]
    _check_resumed(spec, tmp_path, result, held)


def _check_resumed(spec, tmp_path, whole, held: dict[str, torch.Tensor]) -> None:
    """The run stopped after step 1 (a checkpoint there) and resumed: kohya's losses and weights bit for bit,
    the held modules never stepped, their gradients (added up over step 1) restored from the checkpoint."""
    parts = compile_spec(spec, [*RUN, "checkpoints.every=1", f"output.dir={tmp_path / 'parts'}"])
    first = execute(parts, stop_after=1)
    assert first.status == "interrupted" and first.steps == 1
    second = execute(parts, resume=True, keep_models=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    ours = dict(_trainable(whole.components, remove_duplicate=False))
    theirs = dict(_trainable(second.components, remove_duplicate=False))
    assert ours.keys() == theirs.keys() and all(torch.equal(theirs[n], p) for n, p in ours.items())
    assert all(torch.equal(theirs[n], w) for n, w in held.items())


def _trainable(comps, remove_duplicate: bool = True):
    """(name, parameter) of the denoiser's and CLIP-L's trainable parameters (CLIP-L's as `te1.<name>`)."""
    yield from (
        (n, p) for n, p in comps.unet.named_parameters(remove_duplicate=remove_duplicate) if p.requires_grad
    )
    yield from ((f"te1.{n}", p) for n, p in comps.text_encoders[0].named_parameters() if p.requires_grad)


def _check_clip_l(run, rate: dict, clipped: set) -> dict[str, torch.Tensor]:
    """CLIP-L's layers at kohya's rank and rate: assemble_params gives a module the first matching regex's
    `reg_lr_<i>` group at that rate (LoRA+'s up matrices at rate x ratio), leaves a group at rate 0 out of the
    optimizer, and the others train at text_encoder_lr (x ratio). Run in-process against kohya's
    LoRANetwork.prepare_optimizer_params_with_multiple_te_lrs (sd-scripts HEAD) on these names, it gave
    layer 0's q_proj 2e-4 / plus 8e-4, layer 0's fc1 and layer 1's q_proj 5e-4 / plus 2e-3, and layer 1's
    fc1 no group. The held modules' weights, by `te1.<name>`."""
    held = {}
    seen: set[tuple[int, float]] = set()
    for path, layer in run.comps.text_encoders[0].named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        name = "lora_te1_" + clip_path(path).replace(".", "_")
        rank = _first(DIMS, name, int) or 4
        assert layer.r["default"] == rank and layer.scaling["default"] == 2.0 / rank, path
        own = _first(LRS, name, float)
        own = TE_LR if own is None else own
        seen.add((rank, own))
        for key, factor in (("lora_A", 1.0), ("lora_B", RATIO)):
            weight = getattr(layer, key)["default"].weight
            assert id(weight) in clipped and weight.requires_grad, path
            if own == 0:  # out of the optimizer
                assert id(weight) not in rate, path
                held[f"te1.{path}.{key}.default.weight"] = weight.detach().clone()
            else:
                assert rate[id(weight)] == own * factor, path
    assert seen == {(4, 2e-4), (4, TE_LR), (3, TE_LR), (4, 0.0)}
    return held


def test_clip_l_and_t5_at_rate_0_train_the_regexes_modules_alone(tmp_path):
    """CLIP-L and T5-XXL (train_t5xxl=True) at text_encoder_lr 0 with network_reg_lrs training CLIP-L's layer
    0's attention and T5's block 0's (reg_dims.py lifted_encoders): only those modules are in the optimizer,
    at their own rates (LoRA+'s ups x ratio), as kohya's assemble_params keeps their `reg_lr_<i>` groups and
    leaves each encoder's default group at 0 out; every other module of either is built, requires its
    gradient and is in the clip list, out of the optimizer (held, its gradients uncleared as kohya's). Run
    in-process against kohya's LoRANetwork.prepare_optimizer_params_with_multiple_te_lrs (sd-scripts HEAD) on
    stub modules with text_encoder_lr 0 and `layers_1_=1e-4,layers_2_=0`, it gave CLIP-L's `reg_lr_0` (1e-4)
    and its plus group (4e-4) alone, layers 0's and 2's modules in no group; with text_encoder_lr [1e-5, 0]
    and `block_1_=1e-4,block_2_=0` T5's `reg_lr_0` (1e-4, plus 4e-4) alone, blocks 0's and 2's modules in no
    group, all sixteen parameters in get_trainable_params (the clip list)."""
    spec = _spec(tmp_path, text_rates=(0.0, 0.0), lrs=LRS_T5, t5=True)
    plan = compile_spec(spec, [f"optimizer.lr={LR}"])
    run = setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)
    rate = {id(p): g["lr"] for g in run.optimizer.param_groups for p in g["params"]}
    clipped = {id(p) for p in run.params}
    for index, prefix, path_of in ((0, "lora_te1_", clip_path), (1, "lora_te3_", lambda p: p)):
        seen = set()
        for path, layer in run.comps.text_encoders[index].named_modules():
            if not isinstance(layer, LoraLayer):
                continue
            own = _first(LRS_T5, prefix + path_of(path).replace(".", "_"), float)
            seen.add(own)
            for key, factor in (("lora_A", 1.0), ("lora_B", RATIO)):
                weight = getattr(layer, key)["default"].weight
                assert id(weight) in clipped and weight.requires_grad, path
                assert rate.get(id(weight)) == (own * factor if own else None), path
        assert seen == ({2e-4, None, 0.0} if index == 0 else {3e-4, None, 0.0}), (prefix, seen)
    names = {g["name"] for g in run.optimizer.param_groups if g["name"].startswith("text_encoder")}
    assert names == {f"text_encoder{up}_lr{r}" for up in ("", "_lora_up") for r in ("0.0002", "0.0003")}, (
        names
    )
