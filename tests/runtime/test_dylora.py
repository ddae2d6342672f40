"""DyLoRA (runtime/dylora.py): the training forward against kohya's networks.dylora formula (computed here
from the tensors) and lycoris-lora's own DyLoraModule for the same drawn block; only the drawn block trains
(the optimizer skips the others); a tiny model trains, resumes bit-exact, and its kohya export loads back as a
plain LoRA in LyCORIS's loader and in diffusers with the trained model's weights and outputs."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest
import torch
from peft import inject_adapter_in_model
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from dbspec.plan.model import AdapterPlan
from dbspec.runtime.execute import execute
from dbspec.runtime.sample import SampleRequest, load_pipeline
from dbspec.runtime.tiny import build_pipeline
from tests.runtime import test_lycoris as lycoris_runs
from tests.runtime.runspec import compile_spec, write_spec
from tests.runtime.test_lycoris import loader  # noqa: F401 (the fixture)

dylora_module = pytest.importorskip("lycoris.modules.dylora")

RANK, UNIT, ALPHA = 6, 2, 1.5


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(20, 12)
        self.conv = nn.Conv2d(8, 10, 3, padding=1, stride=2)
        self.point = nn.Conv2d(10, 6, 1)


def _inputs(generator):
    return {
        "proj": torch.randn(3, 5, 20, generator=generator),
        "conv": torch.randn(2, 8, 7, 6, generator=generator),
        "point": torch.randn(2, 10, 4, 3, generator=generator),
    }


def _net(form: str) -> tuple[Net, Net]:
    from dbspec.runtime.dylora import dylora_config

    torch.manual_seed(0)
    net = Net()
    base = copy.deepcopy(net)
    plan = AdapterPlan(kind="dylora", rank=RANK, alpha=ALPHA, dylora_unit=UNIT, dylora_form=form)
    inject_adapter_in_model(dylora_config(plan, ["proj", "conv", "point"], []), net, adapter_name="default")
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # ups start at zero (the base model); random factors so the update shows
        for layer in (net.proj, net.conv, net.point):
            for p in (*layer.lora_dylora_down["default"], *layer.lora_dylora_up["default"]):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return net, base


def _kohya(x: torch.Tensor, base: nn.Module, down: torch.Tensor, up: torch.Tensor, b: int) -> torch.Tensor:
    """kohya's DyLoRAModule.forward with trainable_rank = b x unit: every rank, alpha / rank x
    sqrt(rank / (b x unit + unit))."""
    if isinstance(base, nn.Conv2d) and base.kernel_size != (1, 1):
        ab = nn.functional.conv2d(x, down, stride=base.stride, padding=base.padding)
        ab = nn.functional.conv2d(ab, up)
    elif isinstance(base, nn.Conv2d):  # 1x1: as a linear over the pixels
        flat = x.reshape(x.size(0), x.size(1), -1).transpose(1, 2)
        ab = flat @ down.flatten(1).T @ up.flatten(1).T
        ab = ab.transpose(1, 2).reshape(ab.size(0), -1, *x.shape[2:])
    else:
        ab = x @ down.T @ up.T
    return base(x) + ab * (ALPHA / RANK) * math.sqrt(RANK / (b * UNIT + UNIT))


@pytest.mark.parametrize("b", [0, 1, 2])
def test_kohya_forward_and_gradients_equal_networks_dylora(b):
    net, base = _net("kohya")
    x = _inputs(torch.Generator().manual_seed(1))
    net.train()
    for name in x:
        layer = getattr(net, name)
        layer.drawn["default"] = b
        down, up = layer.full("default")
        expected = _kohya(x[name], getattr(base, name), down.detach(), up.detach(), b)
        out = layer(x[name])
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        out.square().sum().backward()
        grads = [p.grad is not None for p in layer.lora_dylora_down["default"]]
        assert grads == [i == b for i in range(RANK // UNIT)], name  # kohya's requires_grad switch
        assert [p.grad is not None for p in layer.lora_dylora_up["default"]] == grads
    net.eval()  # outside training: every rank at alpha / rank (the sqrt factor 1, b = last block)
    for name in x:
        layer = getattr(net, name)
        down, up = layer.full("default")
        with torch.no_grad():
            expected = _kohya(x[name], getattr(base, name), down, up, RANK // UNIT - 1)
            torch.testing.assert_close(layer(x[name]), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("b", [0, 1, 2])
def test_lycoris_forward_and_gradients_equal_dylora_module(b, monkeypatch):
    """lycoris-lora's DyLoraModule with the same blocks and its `random.randint` fixed to the drawn block."""
    net, base = _net("lycoris")
    x = _inputs(torch.Generator().manual_seed(1))
    net.train()
    monkeypatch.setattr(random, "randint", lambda lo, hi: b)
    for name in x:
        layer, reference = getattr(net, name), copy.deepcopy(getattr(base, name))
        lyco = dylora_module.DyLoraModule(name, reference, 1.0, lora_dim=RANK, alpha=ALPHA, block_size=UNIT)
        lyco.apply_to()
        with torch.no_grad():
            for ours, theirs in zip(layer.lora_dylora_down["default"], lyco.down_list):
                theirs.copy_(ours.flatten(1))
            for ours, theirs in zip(layer.lora_dylora_up["default"], lyco.up_list):
                theirs.copy_(ours.flatten(1))
        layer.drawn["default"] = b
        out, expected = layer(x[name]), lyco(x[name])
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        out.square().sum().backward()
        expected.square().sum().backward()
        for ours, theirs in zip(layer.lora_dylora_down["default"], lyco.down_list):
            assert (ours.grad is None) == (theirs.grad is None), name
            if ours.grad is not None:
                torch.testing.assert_close(ours.grad.flatten(1), theirs.grad, rtol=1e-4, atol=1e-5)
        for ours, theirs in zip(layer.lora_dylora_up["default"], lyco.up_list):
            assert (ours.grad is None) == (theirs.grad is None), name
            if ours.grad is not None:
                torch.testing.assert_close(ours.grad.flatten(1), theirs.grad, rtol=1e-4, atol=1e-5)
        assert sum(p.grad is not None for p in layer.lora_dylora_up["default"]) == 1


@pytest.mark.parametrize("form", ["kohya", "lycoris"])
def test_one_step_moves_only_the_drawn_blocks(form):
    """AdamW (with weight decay) after one step: in each layer the drawn block's up left zero, the others
    untouched, as the optimizer skips parameters without a gradient; the draws follow the generator."""
    from dbspec.runtime.dylora import draw_blocks

    torch.manual_seed(0)
    net = Net()
    from dbspec.runtime.dylora import dylora_config

    plan = AdapterPlan(kind="dylora", rank=RANK, alpha=ALPHA, dylora_unit=UNIT, dylora_form=form)
    inject_adapter_in_model(dylora_config(plan, ["proj", "conv", "point"], []), net, adapter_name="default")
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    before = copy.deepcopy(net.state_dict())
    generator = torch.Generator().manual_seed(11)
    assert draw_blocks([net], generator) == 3
    expected = torch.Generator().manual_seed(11)
    draws = [int(torch.randint(RANK // UNIT, (1,), generator=expected)) for _ in range(3)]
    x = _inputs(torch.Generator().manual_seed(1))
    net.train()
    loss = sum(getattr(net, n)(x[n]).square().mean() for n in x)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    after = net.state_dict()
    for name, b in zip(("proj", "conv", "point"), draws):
        assert getattr(net, name).drawn["default"] == b
        for i in range(RANK // UNIT):
            for part in ("down", "up"):
                key = f"{name}.lora_dylora_{part}.default.{i}"
                assert torch.equal(before[key], after[key]) == (i != b), (key, b)


LYCORIS_TABLE = 'kind = "dylora"\nrank = 4\nalpha = 2.0\nunit = 2\ndylora_form = "lycoris"\nconv_rank = 4\n'
KOHYA_TABLE = 'kind = "dylora"\nrank = 4\nalpha = 2.0\nunit = 1\nconv_rank = 4\nconv_alpha = 2.0\n'
FORMS = {
    "lycoris": (LYCORIS_TABLE, {"algo": "dylora", "block_size": "2", "conv_dim": "4", "conv_alpha": "4"}),
    "kohya": (KOHYA_TABLE, {"unit": "1", "conv_dim": "4"}),
}


# The forms differ in the training forward only: the same blocks, optimizer state and draws from the run's
# generator are saved, so the kohya form's run is the one stopped and resumed bit-exact.
RESUMED_FORMS = ("kohya",)


@pytest.fixture(scope="module")
def dylora_runs(tmp_path_factory):
    """Each form's 4-step run at lr 1e-2 (models kept), by form, made on first use: its spec, plan and result.
    test_dylora_trains_resumes_bit_exact_and_loads_as_lora checks it; its kohya export starts
    test_a_dylora_starts_from_its_kohya_export's run (no second run of the same spec)."""
    made: dict[str, tuple] = {}

    def run(form: str):
        if form not in made:
            extra = lycoris_runs.SPEC.format(adapter=FORMS[form][0])
            spec = write_spec(tmp_path_factory.mktemp(f"dylora-{form}"), steps=4, extra=extra)
            plan = compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=whole"])
            made[form] = (spec, plan, execute(plan, keep_models=True))
        return made[form]

    return run


@pytest.mark.parametrize("form", list(FORMS))
def test_dylora_trains_resumes_bit_exact_and_loads_as_lora(dylora_runs, form, loader):  # noqa: F811
    _, args = FORMS[form]
    spec, plan, whole = dylora_runs(form)
    ours = lycoris_runs._files(Path(whole.final))
    assert "dbspec.kohya.safetensors" in ours
    assert "pytorch_lora_weights.safetensors" in ours  # every rank: a plain diffusers LoRA
    if form in RESUMED_FORMS:
        parts = compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=parts"])
        assert execute(parts, stop_after=2).status == "interrupted"
        second = execute(parts, resume=True)
        assert second.status == "finished" and second.steps == 4
        resumed = lycoris_runs._files(Path(second.final))
        assert ours.keys() == resumed.keys()
        for name, tensors in ours.items():
            assert tensors.keys() == resumed[name].keys()
            assert all(torch.equal(tensors[k], resumed[name][k]) for k in tensors), name

    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    with safe_open(str(export), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert json.loads(metadata["ss_network_args"]) == args
    module = "networks.dylora" if form == "kohya" else "lycoris.kohya"
    assert metadata["ss_network_module"] == module
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert {k.split(".", 1)[1] for k in keys if k.startswith(conv + ".")} == {
        "lora_down.weight",
        "lora_up.weight",
        "alpha",
    }
    trained = whole.components
    for m in (trained.unet, *trained.text_encoders):
        m.eval()  # every rank at alpha / rank
    fresh = build_pipeline(plan.model.base)
    base_output = lycoris_runs._unet_output(fresh.unet)
    named = torch.nn.Module()
    named.text_model = fresh.text_encoder
    network, weights = loader(1.0, str(export), None, named, fresh.unet, for_inference=True)
    merged = {
        "lora_unet": lycoris_runs._merged(trained.unet),
        "lora_te": lycoris_runs._merged(trained.text_encoders[0]),
    }
    names = {
        **lycoris_runs._kohya_names(trained.unet, "lora_unet"),
        **lycoris_runs._kohya_names(trained.text_encoders[0], "lora_te", lambda n: f"text_model.{n}"),
    }
    assert network.text_encoder_loras and len(network.unet_loras) + len(network.text_encoder_loras) == len(
        names
    )
    for lyco in [*network.unet_loras, *network.text_encoder_loras]:
        assert type(lyco).__name__ == "LoConModule"  # lora_down / lora_up: LyCORIS loads a LoRA
        prefix = "lora_unet" if lyco.lora_name.startswith("lora_unet") else "lora_te"
        ours_weight = merged[prefix][f"{names[lyco.lora_name]}.weight"]
        torch.testing.assert_close(
            lycoris_runs._lycoris_weight(lyco), ours_weight, rtol=1e-4, atol=1e-4, msg=lyco.lora_name
        )
    trained_output = lycoris_runs._unet_output(trained.unet)
    assert not torch.allclose(base_output, trained_output, atol=1e-3)  # training really changed the model
    pipe = load_pipeline(SampleRequest(source=Path(whole.output), settings=plan.validation))  # dbspec sample
    torch.testing.assert_close(lycoris_runs._unet_output(pipe.unet), trained_output, rtol=1e-5, atol=1e-5)
    for source in (export, Path(whole.final)):  # diffusers: kohya's file, and final/'s diffusers LoRA
        pipe = build_pipeline(plan.model.base)
        pipe.load_lora_weights(str(source))
        torch.testing.assert_close(lycoris_runs._unet_output(pipe.unet), trained_output, rtol=1e-4, atol=1e-4)


def _lycoris_copy(layer, base: nn.Module, name: str, **options):
    """lycoris-lora's DyLoraModule on a copy of `base`, its blocks set to `layer`'s."""
    rank, unit = layer.r["default"], layer.unit
    lyco = dylora_module.DyLoraModule(
        name, copy.deepcopy(base), 1.0, lora_dim=rank, alpha=ALPHA, block_size=unit, **options
    )
    lyco.apply_to()
    with torch.no_grad():
        for ours, theirs in zip(layer.lora_dylora_down["default"], lyco.down_list):
            theirs.copy_(ours.flatten(1))
        for ours, theirs in zip(layer.lora_dylora_up["default"], lyco.up_list):
            theirs.copy_(ours.flatten(1))
    return lyco


def _lycoris_net(**options) -> tuple[Net, Net]:
    from dbspec.runtime.dylora import dylora_config

    torch.manual_seed(0)
    net = Net()
    base = copy.deepcopy(net)
    plan = AdapterPlan(
        kind="dylora", rank=RANK, alpha=ALPHA, dylora_unit=UNIT, dylora_form="lycoris", **options
    )
    targets = ["proj", "point"] if plan.bypass else ["proj", "conv", "point"]
    inject_adapter_in_model(dylora_config(plan, targets, []), net, adapter_name="default")
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name in targets:
            layer = getattr(net, name)
            for p in (*layer.lora_dylora_down["default"], *layer.lora_dylora_up["default"]):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return net, base


def test_module_dropout_equals_dylora_module(monkeypatch):
    """module_dropout: DyLoraModule.forward's `torch.rand(1) < module_dropout` from torch's global generator,
    first in each training forward: the same seed skips the same forwards here and in lycoris-lora; a skipped
    forward is the base layer's and gives the blocks no gradient; outside training nothing is drawn."""
    b = 1
    net, base = _lycoris_net(module_dropout=0.5)
    x = _inputs(torch.Generator().manual_seed(1))
    monkeypatch.setattr(random, "randint", lambda lo, hi: b)
    net.train()
    skipped = 0
    for name in x:
        layer = getattr(net, name)
        lyco = _lycoris_copy(layer, getattr(base, name), name, module_dropout=0.5)
        layer.drawn["default"] = b
        torch.manual_seed(7)
        theirs = [lyco(x[name]) for _ in range(8)]
        torch.manual_seed(7)
        ours = [layer(x[name]) for _ in range(8)]
        for out, expected in zip(ours, theirs):
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        plain = getattr(base, name)(x[name])
        dropped = [torch.equal(out, plain) for out in ours]
        skipped += sum(dropped)
        assert 0 < sum(dropped) < 8, name  # both kinds of forward were compared
        assert not ours[dropped.index(True)].requires_grad  # the frozen base alone: nothing to train
        ours[dropped.index(False)].square().sum().backward()
        assert [p.grad is not None for p in layer.lora_dylora_down["default"]] == [
            i == b for i in range(RANK // UNIT)
        ]
    net.eval()
    state = torch.get_rng_state()
    net.proj(x["proj"])
    assert torch.equal(state, torch.get_rng_state())  # no draw outside training
    assert skipped


def test_bypass_equals_dylora_module_with_one_block(monkeypatch):
    """bypass: DyLoRAModule's bypass forward with one block per layer (rank = block_size), Linear, strided 3x3
    and 1x1 Conv2d: W x + up (down x), unscaled (alpha left out), in training and evaluation alike, gradients
    too."""
    from dbspec.runtime.dylora import dylora_config

    torch.manual_seed(0)
    net, base = Net(), None
    base = copy.deepcopy(net)
    plan = AdapterPlan(
        kind="dylora", rank=UNIT, alpha=ALPHA, dylora_unit=UNIT, dylora_form="lycoris", bypass=True
    )
    inject_adapter_in_model(dylora_config(plan, ["proj", "conv", "point"], []), net, adapter_name="default")
    generator = torch.Generator().manual_seed(3)
    x = _inputs(torch.Generator().manual_seed(1))
    for name in ("proj", "conv", "point"):
        layer = getattr(net, name)
        with torch.no_grad():
            for p in (*layer.lora_dylora_down["default"], *layer.lora_dylora_up["default"]):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        lyco = _lycoris_copy(layer, getattr(base, name), name, bypass_mode=True)
        for training in (True, False):
            layer.train(training), lyco.train(training)
            layer.drawn["default"] = 0 if training else None
            out, expected = layer(x[name]), lyco(x[name])
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        down, up = layer.full("default")
        unscaled = getattr(base, name)(x[name]) + layer._two_ops(x[name], down, up)
        torch.testing.assert_close(out, unscaled, rtol=1e-5, atol=1e-5)  # alpha 1.5 not applied
        layer.train(), lyco.train()
        out, expected = layer(x[name]), lyco(x[name])
        out.square().sum().backward()
        expected.square().sum().backward()
        for ours, theirs in zip(layer.lora_dylora_down["default"], lyco.down_list):
            torch.testing.assert_close(ours.grad.flatten(1), theirs.grad, rtol=1e-4, atol=1e-5)
        for ours, theirs in zip(layer.lora_dylora_up["default"], lyco.up_list):
            torch.testing.assert_close(ours.grad.flatten(1), theirs.grad, rtol=1e-4, atol=1e-5)


def test_dylora_module_bypass_crashes_where_the_converter_refuses(monkeypatch):
    """What the converter's DBS402 (and a spec's DBS549) stand on: lycoris-lora's bypass forward fails with
    several blocks unless the last is drawn; a block size off the rank is its assertion."""
    torch.manual_seed(0)
    net = Net()
    monkeypatch.setattr(random, "randint", lambda lo, hi: 0)
    lyco = dylora_module.DyLoraModule(
        "proj", net.proj, 1.0, lora_dim=4, alpha=1, block_size=2, bypass_mode=True
    )
    lyco.apply_to()
    with pytest.raises(RuntimeError):
        lyco(torch.randn(3, 20))
    with pytest.raises(AssertionError):  # block_size not dividing the rank: DyLoraModule asserts
        dylora_module.DyLoraModule("p", nn.Linear(4, 4), 1.0, lora_dim=6, alpha=1, block_size=4)


SWITCHES = {
    "module_dropout": LYCORIS_TABLE + "module_dropout = 0.5\n",
    "bypass": 'kind = "dylora"\nrank = 2\nalpha = 2.0\nunit = 2\ndylora_form = "lycoris"\nbypass = true\n',
    "loraplus": KOHYA_TABLE + "loraplus_ratio = 4.0\n",
}


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_dylora_switches_train(tmp_path, switch):
    """module_dropout (torch's global generator, checkpointed), bypass and LoRA+ (the up blocks in their own
    group at lr x 4): a tiny run trains. None is stopped and resumed: module_dropout's generator and bypass's
    blocks are the state test_dylora_trains_resumes_bit_exact_and_loads_as_lora resumes (the kohya form), and
    LoRA+'s own optimizer group test_optx.py's test_a_loraplus_run_trains_and_resumes_bit_exact resumes
    (which group a parameter joins is lora_up_ids', test_loraplus_puts_the_up_blocks_in_their_own_group)."""
    spec = write_spec(tmp_path, steps=2, extra=lycoris_runs.SPEC.format(adapter=SWITCHES[switch]))
    plan = compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=whole"])
    whole = execute(plan)
    assert whole.status == "finished"
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    tensors = load_file(str(export))
    ups = [v for k, v in tensors.items() if k.endswith("lora_up.weight")]
    assert ups and any(bool(v.abs().sum()) for v in ups)  # training moved the ups
    if switch == "loraplus":
        assert plan.optimizer.loraplus_denoiser_ratio == 4.0 == plan.optimizer.loraplus_text_encoder_ratio
    if switch == "bypass":
        assert plan.adapter.bypass and plan.adapter.conv_rank == 0
    if switch == "module_dropout":
        assert plan.adapter.module_dropout == 0.5


def test_loraplus_puts_the_up_blocks_in_their_own_group():
    """LoRA+ (kohya DyLoRANetwork.prepare_optimizer_params): every lora_B block, and no lora_A block, in the
    "plus" group at lr x ratio."""
    from types import SimpleNamespace

    from dbspec.plan.model import OptimizerPlan
    from dbspec.runtime.optim import param_groups
    from dbspec.runtime.prepare import lora_up_ids

    net, _ = _net("kohya")
    ups = lora_up_ids(SimpleNamespace(unet=net, text_encoders=[]))
    params = [p for p in net.parameters() if p.requires_grad]
    opt = OptimizerPlan(
        kind="adamw",
        lr=1e-4,
        text_encoder_lr=1e-4,
        weight_decay=0.0,
        betas=(0.9, 0.999),
        eps=1e-8,
        momentum=0.0,
        max_grad_norm=0.0,
        loraplus_denoiser_ratio=16.0,
    )
    groups = param_groups(params, [], opt, ups)
    assert [g["name"] for g in groups] == ["denoiser", "denoiser_lora_up"]
    assert groups[1]["lr"] == 1e-4 * 16
    expected = {id(p) for n, p in net.named_parameters() if ".lora_dylora_up." in n}
    assert {id(p) for p in groups[1]["params"]} == expected == ups and len(expected) == 3 * (RANK // UNIT)


@pytest.mark.parametrize("form", list(FORMS))
def test_a_dylora_starts_from_its_kohya_export(tmp_path, dylora_runs, form):
    """adapter.init_weights on a DyLoRA (kohya networks.dylora --network_weights, issue 12): a run's kohya
    export starts a second run whose blocks are the first run's trained blocks (its lora_down rows and lora_up
    columns cut into blocks), every tensor of it; the second run trains. A DyLoRA started from a file resumes
    bit-exact in test_dylora_weights.py (test_a_dim_from_weights_dylora_resumes_bit_exact, the kohya form's
    blocks from a file), and the checkpoint winning over the file is test_init_weights.py's
    test_a_second_run_starts_from_the_kohya_export_and_resumes_bit_exact."""
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.init_weights import load_init_weights
    from dbspec.runtime.prepare import configure_models

    table, _ = FORMS[form]
    _, _, first = dylora_runs(form)
    (export,) = Path(first.final).glob("*.kohya.safetensors")
    second = table + f'init_weights = "{export}"\n'
    spec = write_spec(tmp_path / "second", steps=2, extra=lycoris_runs.SPEC.format(adapter=second))
    plan = compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=whole"])
    assert plan.adapter.init_layers == len({k.split(".")[0] for k in load_file(str(export))})
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    assert load_init_weights(plan, comps.unet, comps.text_encoders) == plan.adapter.init_layers
    for ours_model, theirs_model in ((comps.unet, first.components.unet),):
        ours = {n: p for n, p in ours_model.named_parameters() if "lora_dylora_" in n}
        theirs = dict(theirs_model.named_parameters())
        assert any(float(p.abs().max()) > 5e-3 for n, p in ours.items() if "_up." in n)  # trained, loaded
        for name, param in ours.items():
            torch.testing.assert_close(param, theirs[name].to(param.dtype), rtol=0, atol=1e-3, msg=name)
    whole = execute(plan)
    assert whole.status == "finished" and whole.steps == 2
