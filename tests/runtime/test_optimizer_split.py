"""optimizer.split (kohya's sdxl_train.py --fused_optimizer_groups) on the tiny SDXL model: kohya's tensor
order, one Prodigy per chunk as kohya builds them, AdamW split equal to one AdamW, resume bit-exact."""

from __future__ import annotations

import copy
import functools
import json

import attrs
import prodigyopt
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from dbspec.runtime.exports import single_file_state
from dbspec.runtime.execute import execute
from dbspec.runtime.families.original_order import original_order
from dbspec.compiler.split import BUILTIN_TENSORS
from dbspec.runtime.optim import OptimizerError, make_optimizer, param_groups
from dbspec.runtime.optim_split import SPLIT_KEY, SplitOptimizer, make_split
from dbspec.runtime.tiny import build_pipeline as _build_pipeline
from tests.runtime.optim_kit import newest_state
from tests.runtime.runspec import compile_spec, final_weights, summary_text, write_spec
from tests.unit.test_split_chunks import kohya_chunks

# one build per base for the module (each about a second on a loaded machine); the tests that read a
# pipeline leave it as built, the ones that step its tensors take copies (_models)
build_pipeline = functools.cache(_build_pipeline)

SDXL_CONFIG = dict(  # stabilityai/stable-diffusion-xl-base-1.0's unet/config.json (the keys that shape it)
    sample_size=128,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)


def test_original_order_follows_kohyas_sdxl_unet_registration():
    """The full-size SDXL UNet's 1,680 tensors in the order kohya's SdxlUNet2DConditionModel registers them
    (the whole sequence was compared with kohya's class built on the meta device; these are its rules)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_CONFIG)
    names = [name for name, _ in original_order(unet)]
    assert len(names) == len(set(names)) == 1680
    assert names[:6] == [
        "time_embed.0.weight",
        "time_embed.0.bias",
        "time_embed.2.weight",
        "time_embed.2.bias",
        "label_emb.0.0.weight",
        "label_emb.0.0.bias",
    ]
    assert names[-4:] == ["out.0.weight", "out.0.bias", "out.2.weight", "out.2.bias"]
    tops = list(dict.fromkeys(n.split(".")[0] for n in names))
    assert tops == ["time_embed", "label_emb", "input_blocks", "middle_block", "output_blocks", "out"]
    resblock = [n.removeprefix("input_blocks.4.0.") for n in names if n.startswith("input_blocks.4.0.")]
    assert resblock == [
        f"{m}.{t}"
        for m in (
            "in_layers.0",
            "in_layers.2",
            "emb_layers.1",
            "out_layers.0",
            "out_layers.3",
            "skip_connection",
        )
        for t in ("weight", "bias")
    ]
    prefix = "input_blocks.4.1.transformer_blocks.0."
    block = [n.removeprefix(prefix) for n in names if n.startswith(prefix)]
    attn = ["to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias"]
    ff = ["ff.net.0.proj.weight", "ff.net.0.proj.bias", "ff.net.2.weight", "ff.net.2.bias"]
    norms = [f"norm{i}.{t}" for i in (1, 2, 3) for t in ("weight", "bias")]
    assert block == [*(f"attn1.{a}" for a in attn), *ff, *(f"attn2.{a}" for a in attn), *norms]
    transformer = list(dict.fromkeys(n.split(".")[3] for n in names if n.startswith("input_blocks.4.1.")))
    assert transformer == ["norm", "proj_in", "transformer_blocks", "proj_out"]
    blocks = [int(n.split(".")[1]) for n in names if n.startswith("output_blocks.")]
    assert blocks == sorted(blocks)


@pytest.mark.parametrize("family", ["sdxl", "sdxl_refiner"])
def test_the_tiny_sdxl_tables_place_every_tensor(family):
    """Every tensor of the tiny SDXL (and refiner) UNet has its original name, in the single-file layout."""
    pipe = build_pipeline(f"builtin:tiny-{family.replace('_', '-')}")
    named = original_order(pipe.unet)
    assert len(named) == len(list(pipe.unet.parameters()))
    assert {id(p) for _, p in named} == {id(p) for p in pipe.unet.parameters()}
    encoders = [
        e for e in (pipe.text_encoder if hasattr(pipe, "text_encoder") else None, pipe.text_encoder_2) if e
    ]
    state = single_file_state(unet=pipe.unet, vae=pipe.vae, text_encoders=encoders, family=family)
    unet_keys = {
        k.removeprefix("model.diffusion_model.") for k in state if k.startswith("model.diffusion_model.")
    }
    assert [n for n, _ in named] == sorted(unet_keys, key=[n for n, _ in named].index)
    assert {n for n, _ in named} == unet_keys


def _prodigy_plan(tmp_path, split: int, text_lr: float):
    spec = write_spec(tmp_path, base="builtin:tiny-sdxl", steps=4, extra="[train]\ntext_encoder = true\n")
    return compile_spec(
        spec,
        [
            'optimizer.kind="prodigy"',
            "optimizer.lr=1.0",
            f"optimizer.text_encoder_lr={text_lr}",
            f"optimizer.split={split}",
        ],
    )


def _models():
    pipe = build_pipeline("builtin:tiny-sdxl")
    return copy.deepcopy((pipe.unet, [pipe.text_encoder, pipe.text_encoder_2]))


def _params(unet, encoders) -> list:
    return list(unet.parameters()) + [p for e in encoders for p in e.parameters()]


def _step(models_params: list, n: int, optimizers: list) -> None:
    """`n` steps with one seeded gradient stream over the same tensors (by position) of each copy: a steady
    direction per tensor plus noise, so that Prodigy's estimate of d grows."""
    g = torch.Generator().manual_seed(3)
    steady = [torch.randn(p.shape, generator=g) for p in models_params[0]]
    for _ in range(n):
        grads = [(s + 0.3 * torch.randn(s.shape, generator=g)) * 1e-2 for s in steady]
        for params, optimizer in zip(models_params, optimizers, strict=True):
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad.clone()
            optimizer.step()


class _Together:
    """kohya's optimizers, each stepped (from its hooks, once its chunk's gradients are in)."""

    def __init__(self, optimizers: list) -> None:
        self.optimizers = optimizers

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


@pytest.mark.parametrize(("text_lr", "chunks"), [(1.0, 3), (0.5, 4)])
def test_each_chunk_is_the_prodigy_kohya_builds_and_its_d_is_its_own(tmp_path, text_lr, chunks):
    """dbspec's split optimizer equals kohya's chunk optimizers (prodigyopt.Prodigy over each chunk of the
    U-Net's tensors in kohya's order, then the text encoders', chunked by kohya's loop), d included; with
    one rate, the d of each chunk differs from one Prodigy's over all tensors. A text-encoder rate of its own
    starts a chunk (4 optimizers for split 3)."""
    plan = _prodigy_plan(tmp_path, 3, text_lr)
    assert (plan.optimizer.split, plan.optimizer.split_order) == (3, "original")
    assert "3 optimizers and LR schedules" in summary_text(plan)
    o = plan.optimizer

    unet, encoders = _models()
    groups = param_groups(list(unet.parameters()), [list(e.parameters()) for e in encoders], o)
    ours, _ = make_split(groups, plan, unet, torch.device("cpu"))

    ref_unet, ref_encoders = copy.deepcopy(unet), copy.deepcopy(encoders)
    sequence = [p for _, p in original_order(ref_unet)] + [p for e in ref_encoders for p in e.parameters()]
    n_unet = len(list(ref_unet.parameters()))
    entries = [(n_unet, 1.0), (len(sequence) - n_unet, text_lr)]
    lrs = [lr for count, lr in entries for _ in range(count)]
    kohya = [
        prodigyopt.Prodigy(
            [sequence[i] for i in chunk], lr=lrs[chunk[0]], betas=o.betas, weight_decay=o.weight_decay
        )
        for chunk in kohya_chunks(entries, 3)
    ]
    assert len(ours.optimizers) == len(kohya) == chunks

    copies, optimizers = [_params(unet, encoders), _params(ref_unet, ref_encoders)], [ours, _Together(kohya)]
    if text_lr == 1.0:  # one Prodigy over every tensor (prodigyopt refuses groups at different rates)
        one_unet, one_encoders = copy.deepcopy(unet), copy.deepcopy(encoders)
        one_groups = param_groups(
            list(one_unet.parameters()), [list(e.parameters()) for e in one_encoders], o
        )
        copies.append(_params(one_unet, one_encoders))
        optimizers.append(make_optimizer(one_groups, o))
    _step(copies, 5, optimizers)

    assert all(torch.equal(a, b) for a, b in zip(copies[0], copies[1], strict=True))
    ds = [chunk.param_groups[0]["d"] for chunk in ours.optimizers]
    assert ds == [chunk.param_groups[0]["d"] for chunk in kohya]
    assert len(set(ds)) == len(ds) and min(ds) > 1e-6  # grown from prodigyopt's d0, each its own
    if text_lr == 1.0:
        assert optimizers[2].param_groups[0]["d"] not in ds  # each chunk its own estimate
        assert not all(torch.equal(a, b) for a, b in zip(copies[0], copies[2], strict=True))


def _run(tmp_path, overrides: list[str], **kw):
    spec = write_spec(tmp_path, base="builtin:tiny-sdxl", steps=3, extra="[train]\ntext_encoder = true\n")
    return execute(compile_spec(spec, overrides), **kw)


def test_adamw_split_steps_as_one_adamw(tmp_path):
    """AdamW updates each tensor on its own: three AdamW over chunks train exactly as one, step for step. The
    gradients are clipped before the step over every tensor (runtime/loop.py clip_gradients, the clip mode
    the same code whatever the split): the total norm across the chunks here."""
    clip = 'optimizer.clip_mode="norm"'
    one = _run(tmp_path, ['output.dir="one"', clip])
    split = _run(tmp_path, ['output.dir="split"', "optimizer.split=3", clip])
    assert split.losses == one.losses and len(one.losses) == 3
    a, b = final_weights(one.final), final_weights(split.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert newest_state(tmp_path / "split")["optimizer"][SPLIT_KEY]  # it did split
    chunks = newest_state(tmp_path / "split")["lr_scheduler"][SPLIT_KEY]
    assert len(chunks) == 3  # one rate for the U-Net and the encoders: 3 chunks, one schedule each


def test_a_prodigy_split_run_logs_each_d_and_resumes_bit_exact(tmp_path):
    """With Prodigy's own options off their defaults (kohya's common optimizer_args, plus slice_p): the
    state they shape (sliced sums, the bias-corrected step) resumes bit-exact too."""
    spec = write_spec(tmp_path, base="builtin:tiny-sdxl", steps=4, extra="[train]\ntext_encoder = true\n")
    kind = [
        'optimizer.kind="prodigy"',
        "optimizer.lr=1.0",
        "optimizer.text_encoder_lr=0.5",
        "optimizer.split=3",
        "optimizer.d_coef=2.0",
        "optimizer.use_bias_correction=true",
        "optimizer.safeguard_warmup=true",
        "optimizer.betas=[0.9, 0.99]",
        "optimizer.slice_p=2",
    ]
    whole = execute(compile_spec(spec, [*kind, 'output.dir="whole"']))
    assert whole.status == "finished" and len(whole.losses) == 4
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert all({"d*lr", "d*lr/1", "d*lr/2", "d*lr/3"} <= row.keys() for row in rows)
    plan = compile_spec(spec, [*kind, 'output.dir="parts"'])
    first = execute(plan, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    saved = newest_state(tmp_path / "parts")["optimizer"][SPLIT_KEY]
    assert len(saved) == 4 and all(s["state"] for s in saved)
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_of_one_optimizer_does_not_load_into_a_split():
    unet, encoders = _models()
    params = list(unet.parameters())[:3]
    chunks = [torch.optim.AdamW([p]) for p in params]
    split = SplitOptimizer(chunks, ["denoiser 1 (lr 0.001)"] * 3)
    with pytest.raises(ValueError, match="one optimizer's state; this run splits its tensors into 3"):
        split.load_state_dict(torch.optim.AdamW(params).state_dict())


BF16_WEIGHTS = '[precision]\nweights = "bf16"\nmixed = "bf16"\n[train]\ntext_encoder = true\n'


def test_split_schedule_free_and_stochastic_rounding_step_as_one(tmp_path):
    """The chunk optimizers switch to averaged weights together (schedule-free: the final weights are the
    averaged ones) and share one rounding stream (bf16 weights): on SD1 (the model's own order) a split run
    equals the unsplit one bit for bit, and resumes bit-exact."""
    for name, extra, kind in (
        (
            "sf",
            "[train]\ntext_encoder = true\n",
            ['optimizer.kind="adamw_schedulefree"', "optimizer.lr=1e-3"],
        ),
        ("sr", BF16_WEIGHTS, ["optimizer.lr=1e-3"]),
    ):
        spec = write_spec(tmp_path / name, steps=4, extra=extra)
        one = execute(compile_spec(spec, [*kind, 'output.dir="one"']))
        plan = compile_spec(spec, [*kind, "optimizer.split=2", 'output.dir="split"'])
        assert plan.optimizer.split_order == "registration"
        assert plan.precision.stochastic_rounding == (name == "sr")
        first = execute(plan, stop_after=2)
        second = execute(plan, resume=True)
        assert first.losses + second.losses == one.losses, name
        a, b = final_weights(one.final), final_weights(second.final)
        assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize("base", sorted(BUILTIN_TENSORS))
def test_the_builtin_tensor_table_counts_the_built_models(base):
    pipe = build_pipeline(base)
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    built = {"unet": len(list(denoiser.parameters()))} | {
        name: len(list(getattr(pipe, name).parameters())) for name in names if getattr(pipe, name, None)
    }
    assert built == BUILTIN_TENSORS[base]


def test_the_plan_lists_kohyas_chunks_and_the_run_cuts_them(tmp_path):
    """From a diffusers folder's headers the plan counts the trained tensors and lists kohya's chunks (its
    loop over the U-Net's tensors, then the encoders' at their own rate); the run cuts the same and refuses a
    plan whose chunks the loaded models do not come to."""
    pipe = build_pipeline("builtin:tiny-sdxl")
    pipe.save_pretrained(tmp_path / "model")
    spec = write_spec(tmp_path, base=str(tmp_path / "model"), steps=2, extra="[train]\ntext_encoder = true\n")
    overrides = ['model.family="sdxl"', 'optimizer.kind="prodigy"', "optimizer.lr=1.0"]
    plan = compile_spec(spec, [*overrides, "optimizer.text_encoder_lr=0.5", "optimizer.split=3"])
    n_unet = len(list(pipe.unet.parameters()))
    n_text = len(list(pipe.text_encoder.parameters())) + len(list(pipe.text_encoder_2.parameters()))
    expected = kohya_chunks([(n_unet, 1.0), (n_text, 0.5)], 3)
    assert [(c.tensors, c.lr) for c in plan.optimizer.split_chunks] == [
        (len(chunk), 1.0 if chunk[0] < n_unet else 0.5) for chunk in expected
    ]
    assert plan.optimizer.split_chunks[-1].spans == ("text_encoder", "text_encoder_2")
    assert f"{len(expected)} chunks (tensors, components, lr): {len(expected[0])} unet at 1" in summary_text(
        plan
    )

    unet, encoders = _models()
    groups = param_groups(list(unet.parameters()), [list(e.parameters()) for e in encoders], plan.optimizer)
    split, _ = make_split(groups, plan, unet, torch.device("cpu"))
    assert [len(list(o.param_groups[0]["params"])) for o in split.optimizers][:1] == [len(expected[0])]
    wrong = attrs.evolve(
        plan, optimizer=attrs.evolve(plan.optimizer, split_chunks=plan.optimizer.split_chunks[1:])
    )
    with pytest.raises(OptimizerError, match="the plan cut .* the loaded models hold 533"):
        make_split(groups, wrong, unet, torch.device("cpu"))


def test_the_plan_leaves_chunks_it_cannot_count_to_the_run(tmp_path):
    spec = write_spec(tmp_path, base="builtin:tiny-sdxl", steps=2)
    lora = compile_spec(spec, ["optimizer.split=2", 'adapter.kind="lora"'])
    assert lora.optimizer.split == 2 and lora.optimizer.split_chunks == ()
    assert lora.optimizer.split_order == "registration"  # kohya's order is the full UNet's
    assert "the run cuts the chunks and notes them" in summary_text(lora)
    full = compile_spec(spec, ["optimizer.split=2"])
    assert [c.tensors for c in full.optimizer.split_chunks] == [214, 214]


def test_a_single_file_checkpoint_gives_the_unets_count_not_the_encoders(tmp_path):
    """A single-file SDXL checkpoint's U-Net keys map one to one (its count is known); its text encoders'
    (OpenCLIP's merged q/k/v) do not: with them trained the run cuts the chunks."""
    pipe = build_pipeline("builtin:tiny-sdxl")
    state = single_file_state(
        unet=pipe.unet, vae=pipe.vae, text_encoders=[pipe.text_encoder, pipe.text_encoder_2], family="sdxl"
    )
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "m.safetensors"))
    overrides = ["optimizer.split=3", 'model.family="sdxl"']
    unet_only = compile_spec(write_spec(tmp_path, base=str(tmp_path / "m.safetensors")), overrides)
    n_unet = len(list(pipe.unet.parameters()))
    assert [c.tensors for c in unet_only.optimizer.split_chunks] == [
        len(c) for c in kohya_chunks([(n_unet, 1)], 3)
    ]
    extra = "[train]\ntext_encoder = true\n"
    with_text = compile_spec(
        write_spec(tmp_path, base=str(tmp_path / "m.safetensors"), extra=extra), overrides
    )
    assert with_text.optimizer.split_chunks == ()


@pytest.mark.parametrize("kind", ["dadapt_adam", "dadapt_lion"])
def test_each_chunk_is_the_d_adaptation_optimizer_kohya_builds(tmp_path, kind):
    """D-Adaptation as kohya builds each chunk's (cls([chunk], lr=lr, **optimizer_args)): the same steps and
    d per chunk; with the text encoders at another rate (one optimizer would raise)."""
    import dadaptation

    spec = write_spec(tmp_path, base="builtin:tiny-sdxl", steps=4, extra="[train]\ntext_encoder = true\n")
    plan = compile_spec(
        spec,
        [
            f'optimizer.kind="{kind}"',
            "optimizer.lr=1.0",
            "optimizer.text_encoder_lr=0.5",
            "optimizer.split=2",
        ],
    )
    o = plan.optimizer
    unet, encoders = _models()
    groups = param_groups(list(unet.parameters()), [list(e.parameters()) for e in encoders], o)
    ours, _ = make_split(groups, plan, unet, torch.device("cpu"))
    ref_unet, ref_encoders = copy.deepcopy(unet), copy.deepcopy(encoders)
    sequence = [p for _, p in original_order(ref_unet)] + [p for e in ref_encoders for p in e.parameters()]
    n_unet = len(list(ref_unet.parameters()))
    entries = [(n_unet, 1.0), (len(sequence) - n_unet, 0.5)]
    lrs = [lr for count, lr in entries for _ in range(count)]
    cls = {"dadapt_adam": dadaptation.DAdaptAdam, "dadapt_lion": dadaptation.DAdaptLion}[kind]
    kwargs = {"betas": o.betas, "weight_decay": o.weight_decay, "d0": o.dadapt.d0}
    if kind == "dadapt_adam":
        kwargs.update(eps=o.eps, decouple=o.dadapt.decouple, use_bias_correction=o.dadapt.use_bias_correction)
    kohya = [
        cls([sequence[i] for i in chunk], lr=lrs[chunk[0]], **kwargs) for chunk in kohya_chunks(entries, 2)
    ]
    assert len(ours.optimizers) == len(kohya) == 3
    copies = [_params(unet, encoders), _params(ref_unet, ref_encoders)]
    _step(copies, 5, [ours, _Together(kohya)])
    assert all(torch.equal(a, b) for a, b in zip(copies[0], copies[1], strict=True))
    assert [c.param_groups[0]["d"] for c in ours.optimizers] == [c.param_groups[0]["d"] for c in kohya]


def test_block_groups_are_cut_into_kohyas_chunks(tmp_path):
    """[[optimizer.blocks]] with optimizer.split (kohya's --block_lr with --fused_optimizer_groups): kohya's
    get_block_params_to_optimize walks its UNet's parameters (original names) into the 23 blocks and leaves
    the blocks at 0 out; its fused loop cuts the block groups in index order into chunks of
    ceil(tensors / N), a new one wherever the rate changes. Each of dbspec's chunks holds kohya's tensors at
    kohya's rate, and its Prodigy steps as kohya's (weights and d bit-equal)."""
    from dbspec.convert.kohya.block_lr import full_block_pattern
    from dbspec.runtime.optimizer_blocks import optimizer_block_groups
    from tests.runtime.test_optimizer_blocks import kohya_block

    rates = [1.0] * 23
    rates[4] = rates[22] = 0.0  # out of kohya's optimizer
    rates[10:13] = [0.5] * 3  # the middle block: two more rate changes
    blocks = "".join(
        f"[[optimizer.blocks]]\npattern = '{full_block_pattern(i)}'\nlr = {r}\n" for i, r in enumerate(rates)
    )
    spec = write_spec(tmp_path, base="builtin:tiny-sdxl", steps=4, extra=blocks)
    plan = compile_spec(spec, ['optimizer.kind="prodigy"', "optimizer.lr=1.0", "optimizer.split=3"])
    o = plan.optimizer
    assert (o.split, o.split_order, o.split_chunks) == (3, "original", ())  # the run cuts them
    assert [b.lr for b in o.blocks] == rates

    unet, _ = _models()
    groups = param_groups(list(unet.parameters()), [], o)
    ours, _ = make_split(optimizer_block_groups(groups, unet, o.blocks), plan, unet, torch.device("cpu"))

    ref = copy.deepcopy(unet)
    by_block: list[list] = [[] for _ in rates]
    for name, param in original_order(ref):
        by_block[kohya_block(name)].append(param)
    entries = [(len(by_block[i]), r) for i, r in enumerate(rates) if r and by_block[i]]
    sequence = [p for i, r in enumerate(rates) if r for p in by_block[i]]
    lrs = [lr for count, lr in entries for _ in range(count)]
    kohya = [
        prodigyopt.Prodigy(
            [sequence[i] for i in chunk], lr=lrs[chunk[0]], betas=o.betas, weight_decay=o.weight_decay
        )
        for chunk in kohya_chunks(entries, 3)
    ]
    position = {id(p): i for i, p in enumerate(unet.parameters())}
    ref_position = {id(p): i for i, p in enumerate(ref.parameters())}
    assert [
        ([position[id(p)] for g in c.param_groups for p in g["params"]], c.param_groups[0]["lr"])
        for c in ours.optimizers
    ] == [
        ([ref_position[id(p)] for p in k.param_groups[0]["params"]], k.param_groups[0]["lr"]) for k in kohya
    ]
    assert len(kohya) > 3  # the rate changes cut chunks of their own

    mine = [p for c in ours.optimizers for g in c.param_groups for p in g["params"]]  # kohya's order
    theirs = [p for k in kohya for p in k.param_groups[0]["params"]]
    held = {id(p) for i, r in enumerate(rates) if not r for p in by_block[i]}
    assert held and not held & {id(p) for p in theirs}

    # from a diffusers folder's parameter paths the plan lists those chunks, each naming its block groups
    # (was: the run alone cut them, issue 12); the run checks its cut against them
    pipe = build_pipeline("builtin:tiny-sdxl")
    pipe.save_pretrained(tmp_path / "model")
    folder = write_spec(tmp_path / "folder", base=str(tmp_path / "model"), steps=4, extra=blocks)
    listed = compile_spec(
        folder, ['model.family="sdxl"', 'optimizer.kind="prodigy"', "optimizer.lr=1.0", "optimizer.split=3"]
    )
    assert [(c.tensors, c.lr) for c in listed.optimizer.split_chunks] == [
        (len(k.param_groups[0]["params"]), k.param_groups[0]["lr"]) for k in kohya
    ]
    assert listed.optimizer.split_chunks[0].spans[0] == "denoiser_block0"
    assert "chunks (tensors, components, lr)" in summary_text(listed)
    make_split(
        optimizer_block_groups(groups, unet, listed.optimizer.blocks), listed, unet, torch.device("cpu")
    )
    # and from an SDXL single file's U-Net keys (kohya's usual checkpoint), read onto diffusers' paths
    state = single_file_state(
        unet=pipe.unet, vae=pipe.vae, text_encoders=[pipe.text_encoder, pipe.text_encoder_2], family="sdxl"
    )
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "m.safetensors"))
    one = write_spec(tmp_path / "one", base=str(tmp_path / "m.safetensors"), steps=4, extra=blocks)
    single = compile_spec(
        one, ['model.family="sdxl"', 'optimizer.kind="prodigy"', "optimizer.lr=1.0", "optimizer.split=3"]
    )
    assert single.optimizer.split_chunks == listed.optimizer.split_chunks

    _step([mine, theirs], 2, [ours, _Together(kohya)])
    assert all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True))
    assert [c.param_groups[0]["d"] for c in ours.optimizers] == [k.param_groups[0]["d"] for k in kohya]
