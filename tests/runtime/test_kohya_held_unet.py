"""kohya's LoRA at unet_lr 0 under a clip (issue 12; dbspec/convert/kohya/held_unet.py): lycoris-lora
4.1.3's kohya network on the tiny SD 1.x U-Net and CLIP, stepped as train_network.py steps it (apply_to
with the U-Net, which reads no rate; its group at rate 0 left out by prepare_optimizer_params, "NO LR
skipping!"; `clip_grad_norm_(network.get_trainable_params(), max_grad_norm)`; `optimizer.zero_grad(
set_to_none=True)`), its U-Net modules started from a file's (non-zero lora_up, as --network_weights loads
them). They never move, yet their gradients add up uncleared and count in the clip: CLIP's modules end
elsewhere than with the U-Net's modules dropped (network_train_text_encoder_only). dbspec's run of it, the
denoiser's adapter held at lr_scale 0 by a block matching every module, stepped on the same inputs from the
same modules, ends with kohya's CLIP modules bit for bit, its U-Net modules at the file's weights with
kohya's accumulated gradients (the checkpoint keeps them, runtime/optimizer_blocks.py held_gradients: a
resume with held blocks is checked bit-exact in test_flux_reg_dims.py). DyLoRA, GLoRA, Diag-OFT, BOFT, full
and IA^3 (lycoris.kohya algo=dylora / glora / diag-oft / boft / full / ia3) held by their own blocks at
lr_scale 0 alike (full's and IA^3's a ScaleBlock, no size), from a file of every module (dbspec's
init_weights)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.runtime.tiny import build_pipeline
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_kohya_idle_text_clip import PRESET, _dbspec_steps, _layers

lycoris_kohya = pytest.importorskip("lycoris.kohya")

LIMIT = 1e-6  # engages on every step of the tiny model
HELD = """
[adapter]
kind = "lora"
rank = 4
alpha = 1.0
denoiser_targets = ["to_q", "to_k", "to_v", "to_out.0"]
text_encoder_targets = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]

[[adapter.blocks]]
pattern = ""
rank = 4
alpha = 1.0
lr_scale = 0.0

[train]
text_encoder = true
"""


def _kohya(pipe, with_unet: bool, start: dict | None, steps: int = 2, record: dict | None = None):
    """kohya's network (LoCon in bypass mode: up(down(x)) x scale, peft's order) stepped at unet_lr 0 and
    text_encoder_lr 1e-3; `start`: the network's weights to load (the U-Net's from a file). Its CLIP
    modules' weights after `steps`, and the clip norms."""
    text, unet = copy.deepcopy(pipe.text_encoder), copy.deepcopy(pipe.unet)
    named = nn.Module()
    named.text_model = text  # kohya's CLIP names its modules text_model.*
    network = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, unet, algo="locon", preset=pipe.preset, bypass_mode=True
    )
    network.apply_to(named, unet, True, with_unet)
    if start is not None:
        network.load_state_dict(start, strict=False)
    if record is not None:
        record["start"] = {k: v.detach().clone() for k, v in network.state_dict().items()}
    params, _ = network.prepare_optimizer_params(1e-3, 0.0, 1e-3)  # unet_lr 0: "NO LR skipping!"
    network.prepare_grad_etc()
    text.requires_grad_(False)
    unet.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    norms = []
    for _ in range(steps):
        ids = torch.randint(0, pipe.text_encoder.config.vocab_size, (2, 8), generator=generator)
        latents = torch.randn(2, unet.config.in_channels, 16, 16, generator=generator)
        target = torch.randn(latents.shape, generator=generator)
        out = unet(latents, torch.tensor([500, 500]), encoder_hidden_states=text(ids)[0]).sample
        (torch.nn.functional.mse_loss(out, target) * 100).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(network.get_trainable_params(), LIMIT)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if record is not None:
        record["grads"] = {
            f"{m.lora_name}.{n}": p.grad.clone() for m in network.unet_loras for n, p in m.named_parameters()
        }
    state = network.state_dict()
    return {k: v.detach().clone() for k, v in state.items() if k.startswith("lora_te")}, norms


def test_unet_held_at_rate_0_steps_as_kohyas_network(tmp_path, monkeypatch):
    from dbspec.plan.io import plan_to_json
    from dbspec.runtime.device import make_accelerator
    from dbspec.runtime.setup import setup
    from tests.runtime.runspec import compile_spec, summary_text, write_spec

    kept_lycoris_presets(monkeypatch)
    pipe = build_pipeline("builtin:tiny-sd1")
    (tmp_path / "preset.toml").write_text(PRESET)
    pipe.preset = str(tmp_path / "preset.toml")
    # a file's U-Net modules: non-zero lora_up (random, as a trained file's)
    torch.manual_seed(0)  # LyCORIS's own init of lora_down
    generator = torch.Generator().manual_seed(1)
    probe = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, nn.Module(), pipe.unet, algo="locon", preset=pipe.preset
    )
    start = {
        k: torch.randn(v.shape, generator=generator) * 0.1 if "lora_up" in k else v.clone()
        for k, v in probe.state_dict().items()
        if k.startswith("lora_unet")
    }
    kohya: dict = {}
    ends, norms = _kohya(pipe, True, start, record=kohya)
    dropped, norms_dropped = _kohya(pipe, False, start)
    assert all(n > LIMIT for n in norms + norms_dropped)  # the clip engages
    assert norms != norms_dropped  # the held U-Net modules' gradients are in kohya's norm
    assert any(not torch.equal(ends[k], dropped[k]) for k in ends)  # and change CLIP's updates

    spec = write_spec(tmp_path, steps=2, extra=HELD)
    plan = compile_spec(spec, [f"optimizer.max_grad_norm={LIMIT}"])
    assert plan.train_denoiser and plan.train_text_encoder
    assert "fp32, lora, held: nothing of it trains" in summary_text(plan)
    run = setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)
    text, unet = run.comps.text_encoders[0], run.comps.unet
    stepped = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    held = [p for p in unet.parameters() if p.requires_grad]
    assert held and not stepped & {id(p) for p in held}  # out of the optimizer
    texts = [p for p in text.parameters() if p.requires_grad]
    assert [id(p) for p in run.params] == [id(p) for p in texts + held]  # kohya's order: text first
    layers = _layers(text, "lora_te_text_model_") | _layers(unet, "lora_unet_")
    assert {f"{k}.lora_down.weight" for k in layers} == {k for k in kohya["start"] if "lora_down" in k}
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_A["default"].weight.copy_(kohya["start"][f"{name}.lora_down.weight"])
            layer.lora_B["default"].weight.copy_(kohya["start"][f"{name}.lora_up.weight"])
    _dbspec_steps(run, pipe, LIMIT)
    for name, layer in layers.items():
        for ours, theirs in (("lora_A", "lora_down"), ("lora_B", "lora_up")):
            weight = getattr(layer, ours)["default"].weight
            if name.startswith("lora_te_"):
                assert torch.equal(weight.detach(), ends[f"{name}.{theirs}.weight"]), name
            else:  # never stepped; kohya's accumulated gradient
                assert torch.equal(weight.detach(), kohya["start"][f"{name}.{theirs}.weight"]), name
                assert torch.equal(weight.grad, kohya["grads"][f"{name}.{theirs}.weight"]), name


# DyLoRA at one block per layer (block_size = dim: LyCORIS's draw always block 0), GLoRA, Diag-OFT, BOFT
KINDS = {
    "dylora": (
        {"algo": "dylora", "block_size": "4"},
        'kind = "dylora"\nrank = 4\nalpha = 1.0\nunit = 4\ndylora_form = "lycoris"',
    ),
    # a strict load (the file holds every module: kohya's strict=False loads it alike)
    "glora": ({"algo": "glora"}, 'kind = "glora"\nrank = 4\nalpha = 1.0'),
    "diag-oft": ({"algo": "diag-oft"}, 'kind = "diag-oft"\nblock_size = 4'),
    "boft": ({"algo": "boft"}, 'kind = "boft"\nblock_size = 4'),
    # no size: a ScaleBlock (pattern, lr_scale) holds them
    "full": ({"algo": "full"}, 'kind = "full"'),
    "ia3": ({"algo": "ia3"}, 'kind = "ia3"'),
}


def _kind_network(pipe, args: dict, with_unet: bool, start: dict):
    text, unet = copy.deepcopy(pipe.text_encoder), copy.deepcopy(pipe.unet)
    named = nn.Module()
    named.text_model = text
    network = lycoris_kohya.create_network(1.0, 4, 1.0, None, named, unet, preset=pipe.preset, **args)
    network.apply_to(named, unet, True, with_unet)
    if start:  # FullModule's load hook needs its `diff`
        network.load_state_dict(start, strict=False)
    with torch.no_grad():  # DyLoraModule loads only its alpha: its blocks set to the file's, as dbspec's
        for module in (*network.text_encoder_loras, *network.unet_loras):
            if start and hasattr(module, "up_list"):
                for i, (down, up) in enumerate(zip(module.down_list, module.up_list, strict=True)):
                    size = down.shape[0]
                    down.copy_(start[f"{module.lora_name}.lora_down.weight"][i * size : (i + 1) * size])
                    up.copy_(start[f"{module.lora_name}.lora_up.weight"][:, i * size : (i + 1) * size])
    return network, text, unet


def _kind_kohya(pipe, args: dict, with_unet: bool, start: dict, steps: int = 2):
    """kohya's steps (as _kohya's) on lycoris-lora's `args` network started from `start`: its text modules'
    state after `steps` and the clip norms."""
    network, text, unet = _kind_network(pipe, args, with_unet, start)
    params, _ = network.prepare_optimizer_params(1e-3, 0.0, 1e-3)  # unet_lr 0: "NO LR skipping!"
    network.prepare_grad_etc()
    text.requires_grad_(False)
    unet.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    norms = []
    for _ in range(steps):
        ids = torch.randint(0, pipe.text_encoder.config.vocab_size, (2, 8), generator=generator)
        latents = torch.randn(2, unet.config.in_channels, 16, 16, generator=generator)
        target = torch.randn(latents.shape, generator=generator)
        out = unet(latents, torch.tensor([500, 500]), encoder_hidden_states=text(ids)[0]).sample
        (torch.nn.functional.mse_loss(out, target) * 100).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(network.get_trainable_params(), LIMIT)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    state = network.state_dict()
    return {k: v.detach().clone() for k, v in state.items() if k.startswith("lora_te")}, norms


@pytest.mark.parametrize("kind", list(KINDS))
def test_other_kinds_held_at_rate_0_step_as_kohyas_network(tmp_path, monkeypatch, kind):
    """DyLoRA, GLoRA, Diag-OFT, BOFT, full and IA^3 (their blocks' lr_scale 0): lycoris-lora's network of
    the kind at unet_lr 0, its U-Net modules from a file (every parameter moved), against dbspec's run from
    that file (init_weights) with the denoiser held by a block over every module. Its CLIP modules end as
    kohya's (float tolerance: the kinds' forwards are dbspec's own code), its U-Net modules at the file's
    values, where dropping the U-Net modules ends CLIP's elsewhere."""
    from safetensors.torch import save_file

    from dbspec.plan.io import plan_to_json
    from dbspec.runtime.device import make_accelerator
    from dbspec.runtime.lycoris_export import lycoris_state
    from dbspec.runtime.setup import setup
    from tests.runtime.runspec import compile_spec, write_spec

    kept_lycoris_presets(monkeypatch)
    pipe = build_pipeline("builtin:tiny-sd1")
    (tmp_path / "preset.toml").write_text(PRESET)
    pipe.preset = str(tmp_path / "preset.toml")
    args, adapter = KINDS[kind]
    made, _, _ = _kind_network(pipe, args, True, {})
    torch.manual_seed(3)
    with torch.no_grad():  # a file's modules: every parameter moved (the U-Net's change its prediction)
        for p in made.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    start = {k: v.detach().clone().contiguous() for k, v in made.state_dict().items()}
    save_file(start, str(tmp_path / "prev.safetensors"))
    ends, norms = _kind_kohya(pipe, args, True, start)
    dropped, norms_dropped = _kind_kohya(pipe, args, False, start)
    assert all(n > LIMIT for n in norms + norms_dropped) and norms != norms_dropped
    gap = max(float((ends[k] - dropped[k]).abs().max()) for k in ends)
    assert gap > 1e-5  # the held modules change CLIP's updates

    extra = HELD.replace(
        'kind = "lora"\nrank = 4\nalpha = 1.0', f'{adapter}\ninit_weights = "prev.safetensors"'
    ).replace(
        "rank = 4\nalpha = 1.0\nlr_scale",
        "block_size = 4\nlr_scale"
        if "oft" in kind
        else "lr_scale"
        if kind in ("full", "ia3")
        else "rank = 4\nalpha = 1.0\nlr_scale",
    )
    spec = write_spec(tmp_path, steps=2, extra=extra)
    plan = compile_spec(spec, [f"optimizer.max_grad_norm={LIMIT}"])
    assert plan.adapter.kind == kind and plan.train_denoiser and plan.train_text_encoder
    run = setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)
    text, unet = run.comps.text_encoders[0], run.comps.unet
    stepped = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    held = [p for p in unet.parameters() if p.requires_grad]
    assert held and not stepped & {id(p) for p in held}
    texts = [p for p in text.parameters() if p.requires_grad]
    assert [id(p) for p in run.params] == [id(p) for p in texts + held]
    if kind == "dylora":  # runtime/loop.py draws each layer's block before a micro-batch (one block: 0)
        with monkeypatch.context() as m:
            m.setattr(run.optimizer, "zero_grad", _drawing(run.optimizer.zero_grad, [unet, text]))
            _dbspec_steps(run, pipe, LIMIT)
    else:
        _dbspec_steps(run, pipe, LIMIT)
    ours = lycoris_state(unet=unet, text_encoders=[text], family="sd1", dtype="fp32")
    assert {k for k in ours if k.startswith("lora_unet")} <= set(start)
    for key, value in ours.items():
        if key.endswith(".on_input"):  # IA3Module's flag (LyCORIS's int buffer, dbspec's cast to the dtype)
            assert int(value) == int({**start, **ends}[key]), key
        elif key.startswith("lora_te"):
            torch.testing.assert_close(value, ends[key], rtol=0, atol=gap / 100)
        elif not key.endswith(".alpha"):  # never stepped
            assert torch.equal(value, start[key]), key


def _drawing(zero_grad, modules):
    """`zero_grad` (which _dbspec_steps calls before each micro-batch) followed by DyLoRA's block draw."""
    from dbspec.runtime.dylora import draw_blocks

    generator = torch.Generator().manual_seed(0)

    def zero_and_draw(*args, **kwargs):
        zero_grad(*args, **kwargs)
        assert draw_blocks(modules, generator) > 0

    return zero_and_draw


MIXED = """
[adapter]
kind = "lora"
rank = 4
denoiser_targets = ["to_q", "to_k", "to_v", "to_out.0"]
""" + "".join(
    f'\n[[adapter.blocks]]\npattern = "{pattern}"\nkind = "{kind}"\nrank = 4\nalpha = 4.0\nlr_scale = 0\n'
    + ("unit = 4\n" if kind == "dylora" else "")
    for pattern, kind in (
        ("attn1.to_q", "ia3"),
        ("attn1.to_k", "full"),
        ("attn1.to_v", "glora"),
        ("attn2.to_q", "diag-oft"),
        ("attn2.to_k", "dylora"),
        ("attn2.to_v", "loha"),
    )
)


def test_held_blocks_of_other_kinds_are_out_of_the_optimizer(tmp_path):
    """A LoRA adapter's blocks of other kinds (a LyCORIS preset map's entries) at lr_scale 0 are held as its
    LoRA blocks are: their layers' weights (peft `lora_` names, runtime/blocks.py) in no optimizer group,
    in the clip's list; the rest trains."""
    from dbspec.plan.io import plan_to_json
    from dbspec.runtime.device import make_accelerator
    from dbspec.runtime.setup import setup
    from tests.runtime.runspec import compile_spec, write_spec

    plan = compile_spec(write_spec(tmp_path, steps=1, extra=MIXED), [])
    run = setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)
    stepped = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    params = [(n, p) for n, p in run.comps.unet.named_parameters() if p.requires_grad]
    held = {_part(n) for n, p in params if id(p) not in stepped}
    trained = {n for n, p in params if id(p) in stepped}
    glora = {f"glora_{x}" for x in ("a1", "a2", "b1", "b2")}
    loha = {f"hada_w{i}_{x}" for i in (1, 2) for x in ("a", "b")}
    assert held == {"ia3", "full", "oft_blocks", "dylora_down", "dylora_up"} | glora | loha
    assert trained and all(".to_out.0." in n for n in trained)  # to_out.0: the adapter's own LoRA
    assert {id(p) for p in run.params} >= {id(p) for p in run.comps.unet.parameters() if p.requires_grad}


def _part(name: str) -> str:
    """The adapter tensor a parameter name holds (`lora_ia3`: ia3, `hada_w1_a`), its kind's prefix off."""
    part = next(p for p in name.split(".") if p.startswith(("lora_", "hada_", "lokr_")))
    return part.removeprefix("lora_")


def _glora_file(tmp_path, monkeypatch):
    """lycoris.kohya algo=glora's network on the tiny SD 1.x (every parameter moved), saved; its state."""
    from safetensors.torch import save_file

    kept_lycoris_presets(monkeypatch)
    pipe = build_pipeline("builtin:tiny-sd1")
    (tmp_path / "preset.toml").write_text(PRESET)
    pipe.preset = str(tmp_path / "preset.toml")
    made, _, _ = _kind_network(pipe, KINDS["glora"][0], True, {})
    torch.manual_seed(5)
    with torch.no_grad():
        for p in made.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return {k: v.detach().clone().contiguous() for k, v in made.state_dict().items()}, save_file


def _glora_plan(tmp_path, name: str):
    from tests.runtime.runspec import compile_spec, write_spec

    adapter = f'kind = "glora"\nrank = 4\nalpha = 1.0\ninit_weights = "{name}"'
    spec = write_spec(tmp_path, steps=1, extra=HELD.replace('kind = "lora"\nrank = 4\nalpha = 1.0', adapter))
    return compile_spec(spec, [])


def test_strict_glora_file_loads_into_the_held_layers(tmp_path, monkeypatch):
    """A strict (`init_partial = false`) start from LyCORIS's GLoRA file of every module into the run's held
    GLoRA layers: each module's two-level tensors (`<module>.a1.weight` ...) go to `<module>`, every layer
    set to the file's (runtime/lycoris_init.py; kohya names have no dots). A tensor the layer has no place
    for, or one the file lacks, still fails naming it."""
    from dbspec.runtime.lycoris_export import lycoris_state
    from tests.runtime.test_flow_init import _loaded

    state, save_file = _glora_file(tmp_path, monkeypatch)
    save_file(state, str(tmp_path / "prev.safetensors"))
    plan = _glora_plan(tmp_path, "prev.safetensors")
    assert plan.adapter.kind == "glora" and not plan.adapter.init_partial
    comps, count = _loaded(plan)
    modules = {k.split(".")[0] for k in state}
    assert count == len(modules) and any(k.endswith(".a1.weight") for k in state)
    ours = lycoris_state(unet=comps.unet, text_encoders=comps.text_encoders, family="sd1", dtype="fp32")
    assert {k for k in ours if not k.endswith(".alpha")} == {k for k in state if not k.endswith(".alpha")}
    for key, value in ours.items():
        if not key.endswith(".alpha"):
            assert torch.equal(value, state[key]), key

    some = sorted(modules)[0]  # the same run's layers from files of a tensor more / less
    odd = {**state, f"{some}.a3.weight": state[f"{some}.a1.weight"].clone()}
    save_file(odd, str(tmp_path / "odd.safetensors"))
    with pytest.raises(ValueError, match=rf"tensor `{some}\.a3\.weight` has no place in the run's layer"):
        _load_from(plan, comps, tmp_path / "odd.safetensors")
    short = {k: v for k, v in state.items() if k != f"{some}.b2.weight"}
    save_file(short, str(tmp_path / "short.safetensors"))
    with pytest.raises(ValueError, match=rf"the run's layer `{some}` has no tensor `{some}\.b2\.weight`"):
        _load_from(plan, comps, tmp_path / "short.safetensors")


def _load_from(plan, comps, path) -> int:
    import attrs

    from dbspec.runtime.init_weights import load_init_weights

    other = attrs.evolve(plan, adapter=attrs.evolve(plan.adapter, init_weights=str(path)))
    return load_init_weights(other, comps.unet, comps.text_encoders)
