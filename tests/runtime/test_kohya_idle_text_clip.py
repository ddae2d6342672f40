"""kohya's text-encoder LoRA at text_encoder_lr 0 under a clip (issue 12; dbspec/convert/kohya/idle_text.py,
runtime/idle_text.py): lycoris-lora 4.1.3's kohya network on the tiny SD 1.x U-Net and CLIP, stepped as
train_network.py steps it (apply_to with the text encoder, its group at rate 0 left out by
prepare_optimizer_params, `clip_grad_norm_(network.get_trainable_params(), max_grad_norm)`,
`optimizer.zero_grad(set_to_none=True)`). The fresh text modules leave CLIP's output the base's, yet their
lora_up gradients are not 0, never cleared, and count in the clip: with max_grad_norm the U-Net's modules end
elsewhere than with the text encoder's dropped (--network_train_unet_only, what train.text_encoder = false
trains); with max_grad_norm 0 they end bit for bit the same. `train.text_encoder_idle = "kohya"` is kohya's
run: dbspec's own Run (runtime/setup.py: its optimizer, its clip list) stepped on the same inputs from the
same modules ends with kohya's U-Net modules and CLIP gradients, and a tiny run resumes bit-exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.runtime.tiny import build_pipeline
from tests.runtime.shared import kept_lycoris_presets

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# the U-Net's attention and CLIP's attention/MLP Linears (diffusers calls kohya's CrossAttention Attention)
PRESET = """\
enable_conv = false
unet_target_module = ["Attention"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
"""


def _run(
    pipe,
    with_text: bool,
    max_grad_norm: float,
    start: dict | None = None,
    steps: int = 2,
    bypass: bool = False,
    record: dict | None = None,
):
    """`record`: filled with the network's state before the first step and the text modules' gradients
    after the last (by kohya name)."""
    text, unet = copy.deepcopy(pipe.text_encoder), copy.deepcopy(pipe.unet)
    named = nn.Module()
    named.text_model = text  # kohya's CLIP names its modules text_model.*
    network = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, unet, algo="locon", preset=pipe.preset, bypass_mode=bypass
    )
    network.apply_to(named, unet, with_text, True)
    if start is not None:  # the same U-Net modules to start from in both runs
        network.load_state_dict(start, strict=False)
    if record is not None:
        record["start"] = {k: v.detach().clone() for k, v in network.state_dict().items()}
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
    if record is not None:
        record["grads"] = {f"{m.lora_name}.lora_up.weight": m.lora_up.weight.grad.clone() for m in held}
    return {k: v.detach().clone() for k, v in network.state_dict().items() if k.startswith("lora_unet")}, seen


def test_fresh_text_modules_at_rate_0_change_the_clip_not_the_unclipped_run(tmp_path, monkeypatch):
    kept_lycoris_presets(monkeypatch)
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


IDLE = """
[adapter]
kind = "lora"
rank = 4
alpha = 1.0
denoiser_targets = ["to_q", "to_k", "to_v", "to_out.0"]
text_encoder_targets = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]

[train]
text_encoder_idle = "kohya"
"""


def _layers(module: nn.Module, prefix: str) -> dict:
    """peft's LoRA layers of `module` by kohya's module name (`prefix` + the path with _ for .)."""
    from peft.tuners.lora import LoraLayer

    return {prefix + n.replace(".", "_"): m for n, m in module.named_modules() if isinstance(m, LoraLayer)}


def _dbspec_steps(run, pipe, max_grad_norm: float, steps: int = 2) -> None:
    """`run` (runtime/setup.py's Run) stepped on _run's inputs as runtime/loop.py steps it: its clip over
    run.params, its optimizer (zero_grad clears its own parameters)."""
    from dbspec.runtime.loop import clip_gradients

    text, unet = run.comps.text_encoders[0], run.comps.unet
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        run.optimizer.zero_grad(set_to_none=True)
        ids = torch.randint(0, pipe.text_encoder.config.vocab_size, (2, 8), generator=generator)
        latents = torch.randn(2, unet.config.in_channels, 16, 16, generator=generator)
        target = torch.randn(latents.shape, generator=generator)
        out = unet(latents, torch.tensor([500, 500]), encoder_hidden_states=text(ids)[0]).sample
        (torch.nn.functional.mse_loss(out, target) * 100).backward()
        clip_gradients(run.params, run.plan.optimizer.clip_mode, max_grad_norm)
        run.optimizer.step()


def test_text_encoder_idle_steps_as_kohyas_network_and_resumes_bit_exact(tmp_path, monkeypatch):
    from dbspec.plan.io import plan_to_json
    from dbspec.runtime.device import make_accelerator
    from dbspec.runtime.execute import execute
    from dbspec.runtime.setup import setup
    from tests.runtime.runspec import compile_spec, final_weights, write_spec

    kept_lycoris_presets(monkeypatch)
    pipe = build_pipeline("builtin:tiny-sd1")
    (tmp_path / "preset.toml").write_text(PRESET)
    pipe.preset = str(tmp_path / "preset.toml")
    limit = 1e-6
    # kohya's run (bypass_mode: LoCon's forward as up(down(x)) x scale, the order peft's LoRA computes in)
    start, _ = _run(pipe, False, 0.0, steps=1, bypass=True)
    kohya: dict = {}
    ends, norms = _run(pipe, True, limit, start, bypass=True, record=kohya)
    assert all(n > limit for n in norms)  # the clip engages

    spec = write_spec(tmp_path, steps=2, extra=IDLE)
    plan = compile_spec(spec, [f"optimizer.max_grad_norm={limit}"])
    assert plan.idle_text_encoders == ("text_encoder",) and not plan.train_text_encoder
    assert not plan.cache.text_embeddings  # CLIP runs under grad
    o = plan.optimizer
    assert (o.kind, o.lr, o.betas, o.eps, o.weight_decay) == ("adamw", 1e-3, (0.9, 0.999), 1e-8, 1e-2)
    run = setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)
    text, unet = run.comps.text_encoders[0], run.comps.unet
    for model, base in ((text, pipe.text_encoder), (unet, pipe.unet)):  # the same base weights
        weights = {k.replace(".base_layer", ""): v for k, v in model.named_parameters() if "lora_" not in k}
        assert all(torch.equal(weights[k], v) for k, v in base.named_parameters())
    stepped = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    held = [p for p in text.parameters() if p.requires_grad]
    assert held and not stepped & {id(p) for p in held}  # out of the optimizer, in the clip list
    assert [id(p) for p in run.params[: len(held)]] == [id(p) for p in held]  # kohya's order: text first
    layers = _layers(text, "lora_te_text_model_") | _layers(unet, "lora_unet_")
    assert {f"{k}.lora_down.weight" for k in layers} == {k for k in kohya["start"] if "lora_down" in k}
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_A["default"].weight.copy_(kohya["start"][f"{name}.lora_down.weight"])
            layer.lora_B["default"].weight.copy_(kohya["start"][f"{name}.lora_up.weight"])
            assert layer.scaling["default"] == float(kohya["start"][f"{name}.alpha"]) / 4
    _dbspec_steps(run, pipe, limit)
    for name, layer in layers.items():
        if name.startswith("lora_unet_"):
            for ours, theirs in (("lora_A", "lora_down"), ("lora_B", "lora_up")):
                got = getattr(layer, ours)["default"].weight.detach()
                assert torch.equal(got, ends[f"{name}.{theirs}.weight"]), name
        else:  # never stepped; kohya's accumulated gradient
            assert not layer.lora_B["default"].weight.detach().any()
            assert torch.equal(layer.lora_B["default"].weight.grad, kohya["grads"][f"{name}.lora_up.weight"])

    # a tiny run of the plan resumes bit-exact: the accumulated gradients are in the checkpoint
    whole = execute(compile_spec(spec, [f"optimizer.max_grad_norm={limit}", "output.dir=whole"]))
    parts = compile_spec(spec, [f"optimizer.max_grad_norm={limit}", "output.dir=parts"])
    assert execute(parts, stop_after=1).status == "interrupted"
    resumed = execute(parts, resume=True)
    assert resumed.status == "finished" and resumed.steps == 2
    ours, theirs = final_weights(whole.final), final_weights(resumed.final)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    kept = [k for k in ours if k.split("/")[1].startswith("text_encoder.")]
    assert kept and not any(ours[k].any() for k in kept if "lora_B" in k)  # exported, never stepped


FLUX_IDLE = """
[adapter]
kind = "lora"
rank = 2

[train]
text_encoder_idle = "kohya"
"""


# SDXL --dim_from_weights with a file holding CLIP-G's modules alone (convert/kohya/model.py _idle_targets):
# CLIP-L without targets, plain; CLIP-G idle
ONLY_SECOND = 'text_encoder_targets = []\ntext_encoder_2_targets = ["q_proj", "v_proj"]\n'


# T5-XXL's modules at rate 0 too (lora_flux / lora_sd3 train_t5xxl=True, a LyCORIS preset reaching T5)
T5_IDLE = 't5_idle = "kohya"\n'
T5 = ("encoder.block.",)  # T5-XXL's modules in its peft file (transformers' paths)


@pytest.mark.parametrize(
    ("base", "idle", "targets", "t5"),
    [
        ("builtin:tiny-flux", ("text_encoder", "text_encoder_2"), "", T5_IDLE),
        ("builtin:tiny-sd3", ("text_encoder", "text_encoder_2", "text_encoder_3"), "", T5_IDLE),
        ("builtin:tiny-sdxl", ("text_encoder_2",), ONLY_SECOND, ""),
    ],
    ids=["flux", "sd3", "sdxl-second-alone"],
)
def test_flow_idle_clip_counts_in_the_clip_and_resumes_bit_exact(tmp_path, base, idle, targets, t5):
    """flux_train_network.py with CLIP-L's modules at text_encoder_lr 0 (lora_flux / LyCORIS): kohya encodes
    with CLIP-L under grad (train_clip_l: not --network_train_unet_only; its pooled output is the
    transformer's `y`), leaves their group out and clips every module's gradients. dbspec's idle CLIP-L on
    the tiny Flux: its adapter weights take gradients through the pooled projection, kept in the checkpoint
    (a resumed run ends bit for bit as the whole one) and counted in the clip (the transformer's modules end
    elsewhere than with CLIP-L plain); CLIP-L's lora_B never moves. sd3_train_network.py likewise with
    CLIP-L and CLIP-G (train_clip), both idle here; and SDXL with CLIP-G's modules alone (a --dim_from_weights
    file without CLIP-L's): CLIP-L carries nothing. On Flux and SD3 T5-XXL's modules at rate 0 too
    (train_t5xxl=True: the scripts then encode with T5 under grad each step, no output cache): train.t5_idle's
    T5 takes gradients through the prompt embeddings, non-zero in the checkpoint, counted in the clip (the
    transformer's modules end elsewhere than with T5 plain), its lora_B never moving."""
    from dbspec.runtime.checkpoints import load_state
    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import compile_spec, final_weights, write_spec

    extra = FLUX_IDLE.replace("rank = 2\n", "rank = 2\n" + targets) + t5
    spec = write_spec(tmp_path, base=base, steps=2, extra=extra)
    clip = "optimizer.max_grad_norm=1e-6"  # engages on the tiny model's gradients
    plan = compile_spec(spec, [clip, "output.dir=whole"])
    assert plan.idle_text_encoders == idle and not plan.train_text_encoder
    assert not plan.cache.text_embeddings  # CLIP runs under grad
    whole = execute(plan)
    parts = compile_spec(spec, [clip, "output.dir=parts"])
    assert execute(parts, stop_after=1).status == "interrupted"
    grads = load_state(tmp_path / "parts" / "checkpoints" / "step-000001")["idle_grads"]
    assert {k.split(".")[0] for k in grads} == set(idle)
    for name in idle:  # through the pooled projection (SD3: the prompt embeddings too)
        assert any(g.any() for k, g in grads.items() if "lora_B" in k and k.startswith(f"{name}."))
    ups = ("lora_B", ".up.")  # peft's and diffusers' SDXL text-encoder names
    resumed = execute(parts, resume=True)
    assert resumed.status == "finished" and resumed.steps == 2
    ours, theirs = final_weights(whole.final), final_weights(resumed.final)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    kept = [k for k in ours if k.split("/")[1].startswith("text_encoder") and any(u in k for u in ups)]
    assert kept and not any(ours[k].any() for k in kept)  # exported, never stepped
    clips = {n for n in idle if not (t5 and n == idle[-1])}
    assert {k.split("/")[1].split(".")[0] for k in kept} == clips  # the others carry nothing
    t5_ups = [k for k in ours if k.split("/")[1].startswith(T5) and "lora_B" in k]
    assert bool(t5_ups) == bool(t5) and not any(ours[k].any() for k in t5_ups)  # T5's: exported, never moved
    plain = final_weights(
        execute(
            compile_spec(
                spec, [clip, "train.text_encoder_idle=none", "train.t5_idle=none", "output.dir=plain"]
            )
        ).final
    )
    moved = [k for k in plain if not k.split("/")[1].startswith(("text_encoder", *T5))]
    assert moved and any(not torch.equal(plain[k], ours[k]) for k in moved)  # CLIP-L's gradients in the clip
    if t5:  # T5's gradients count in the clip too: with T5 plain the transformer's modules end elsewhere
        without = final_weights(
            execute(compile_spec(spec, [clip, "train.t5_idle=none", "output.dir=t5"])).final
        )
        assert any(not torch.equal(without[k], ours[k]) for k in moved)
