"""kohya's own OFT (`network_module = "networks.oft"`, sd-scripts networks/oft.py; adapter.kind "diag-oft"
with form "kohya", runtime/lycoris_oft.py KohyaOftLayer): the layer against an independent float64
implementation of kohya's OFTModule formula (block count, always-applied clamp with its 1e-8 terms, Cayley
R = (I + Q)(I - Q)^-1, R^T per block of rows, the layer run on the rotated weight); then a tiny SD model
trains, resumes bit-exact, and its export is kohya's networks.oft file (`oft_unet_*`: `oft_blocks`,
`alpha`), which applied to a fresh model by the same formula gives the trained model's output."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from dbspec.plan.model import AdapterPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, write_spec


def kohya_weight(blocks: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """kohya's OFTModule weight, written out in float64: Q = B - B^T over all blocks, scaled by
    (min(|Q|, alpha x out) + 1e-8) / (|Q| + 1e-8); R_k = (I + Q_k)(I - Q_k)^-1; the rows of block k become
    R_k^T W_k."""
    blocks, weight = blocks.double(), weight.double()
    out = weight.shape[0]
    count = blocks.shape[0]
    size = out // count
    assert count * size == out
    q = blocks - blocks.transpose(1, 2)
    norm = q.flatten().norm()
    q = q * ((torch.clamp(norm, max=alpha * out) + 1e-8) / (norm + 1e-8))
    eye = torch.eye(size, dtype=torch.float64)
    rows = []
    for k in range(count):
        r = torch.linalg.solve(eye - q[k], eye + q[k], left=False)  # (I + Q)(I - Q)^-1
        rows.append(r.T @ weight[k * size : (k + 1) * size].reshape(size, -1))
    return torch.cat(rows).reshape(weight.shape)


def kohya_forward(layer: nn.Module, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.double()
    if isinstance(layer, nn.Conv2d):
        return nn.functional.conv2d(x.double(), weight, bias, layer.stride, layer.padding, layer.dilation)
    return nn.functional.linear(x.double(), weight, bias)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(40, 64)
        self.conv = nn.Conv2d(16, 32, 3, padding=1)


@pytest.mark.parametrize(("count", "alpha"), [(4, 1.0), (8, 1e-3), (2, 0.05), (1, 1e-5), (16, 1.0)])
def test_layer_is_kohyas_oft_module_formula(count, alpha):
    """Random blocks (the constraint binding for the small alphas): forward and gradients of the blocks
    within float32 of the float64 formula; untrained (zero blocks) the base layer."""
    torch.manual_seed(0)
    net = Net()
    base = copy.deepcopy(net)
    adapter = AdapterPlan(
        kind="diag-oft", conv_targets=("conv",), oft_form="kohya", oft_blocks=count, oft_constraint=alpha
    )
    add_lora(net, adapter, ("proj",), seed=3, conv=True)
    x = {"proj": torch.randn(3, 40), "conv": torch.randn(2, 16, 6, 5)}
    for name in x:
        with torch.no_grad():
            torch.testing.assert_close(getattr(net, name)(x[name]), getattr(base, name)(x[name]))
    g = torch.Generator().manual_seed(2)
    for name in x:
        layer = getattr(net, name)
        blocks = layer.lora_oft_blocks["default"]
        size = getattr(base, name).weight.shape[0] // count
        assert blocks.shape == (count, size, size)
        with torch.no_grad():
            blocks.copy_(torch.randn(blocks.shape, generator=g) * 0.3)
        reference = blocks.detach().double().requires_grad_(True)
        theirs = kohya_forward(
            getattr(base, name), kohya_weight(reference, getattr(base, name).weight, alpha), x[name]
        )
        ours = layer(x[name])
        assert not torch.allclose(ours, layer.base_layer(x[name]), atol=1e-4)
        torch.testing.assert_close(ours.double(), theirs.detach(), rtol=1e-5, atol=1e-6)
        weights = torch.randn(ours.shape, generator=g)
        (ours * weights).sum().backward()
        (theirs * weights.double()).sum().backward()
        torch.testing.assert_close(blocks.grad.double(), reference.grad, rtol=1e-4, atol=1e-5)
        merged = copy.deepcopy(layer)
        merged.merge()
        with torch.no_grad():
            torch.testing.assert_close(
                merged.base_layer.weight.double(),
                kohya_weight(blocks, getattr(base, name).weight, alpha),
                rtol=1e-5,
                atol=1e-6,
            )
        merged.unmerge()
        torch.testing.assert_close(merged.base_layer.weight, getattr(base, name).weight)


def test_a_width_the_count_does_not_divide_is_refused():
    adapter = AdapterPlan(kind="diag-oft", oft_form="kohya", oft_blocks=3, oft_constraint=1.0)
    with pytest.raises(ValueError, match="cannot split the 64 output rows of `0` into 3 blocks"):
        add_lora(nn.Sequential(nn.Linear(8, 64)), adapter, ("0",), seed=0)


SPEC = """
[adapter]
kind = "diag-oft"
form = "kohya"
block_count = 4
constraint = 0.01
denoiser_targets = [
    "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
    "time_emb_proj", "conv_shortcut",
]
conv_targets = ["conv1", "conv2", "downsamplers.0.conv", "upsamplers.0.conv"]

[checkpoints]
every = 2
exports = ["kohya_lora"]
"""


def _files(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(p.relative_to(folder)): load_file(str(p)) for p in sorted(folder.rglob("*.safetensors"))}


def _unet_output(unet, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(latents, torch.tensor([10, 700]), context).sample


def test_trains_resumes_bit_exact_and_exports_kohyas_oft_file(tmp_path):
    spec = write_spec(tmp_path, steps=4, extra=SPEC)
    lr = ["optimizer.lr=1e-2"]
    whole = execute(compile_spec(spec, [*lr, "output.dir=whole"]), keep_models=True)
    plan = compile_spec(spec, [*lr, "output.dir=parts"])
    assert (plan.adapter.oft_form, plan.adapter.oft_blocks) == ("kohya", 4) and not plan.train_text_encoder
    assert execute(plan, stop_after=2).status == "interrupted"
    second = execute(plan, resume=True)
    assert second.status == "finished" and second.steps == 4
    ours, resumed = _files(Path(whole.final)), _files(Path(second.final))
    assert ours.keys() == resumed.keys() and "dbspec.kohya.safetensors" in ours
    for name, tensors in ours.items():
        assert tensors.keys() == resumed[name].keys()
        assert all(torch.equal(tensors[k], resumed[name][k]) for k in tensors), name

    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    with safe_open(str(export), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert metadata["ss_network_module"] == "networks.oft"
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("4", "0.01")
    assert json.loads(metadata["ss_network_args"]) == {"enable_all_linear": "True", "enable_conv": "True"}
    assert all(k.startswith("oft_unet_") for k in keys)
    assert {k.split(".", 1)[1] for k in keys} == {"oft_blocks", "alpha"}
    # kohya names each module prefix + "." + its path, dots to underscores (OFTNetwork.create_modules)
    trained = whole.components.unet
    adapted = {
        "oft_unet_" + n.replace(".", "_"): n
        for n, m in trained.named_modules()
        if hasattr(m, "lora_oft_blocks")
    }
    assert {k.split(".")[0] for k in keys} == set(adapted)
    assert "oft_unet_down_blocks_0_resnets_0_conv1" in adapted
    assert "oft_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in adapted
    weights = load_file(str(export))
    # the file applied to a fresh model by kohya's formula (merge_to: R^T W per block) gives the trained U-Net
    fresh = build_pipeline(plan.model.base).unet
    base_output = _unet_output(fresh)
    modules = dict(fresh.named_modules())
    with torch.no_grad():
        for key, path in adapted.items():
            layer = modules[path]
            alpha = float(weights[f"{key}.alpha"])
            assert alpha == pytest.approx(0.01)
            merged = kohya_weight(weights[f"{key}.oft_blocks"], layer.weight, alpha)
            layer.weight.copy_(merged.to(layer.weight.dtype))
    trained.eval()
    trained_output = _unet_output(trained)
    torch.testing.assert_close(_unet_output(fresh), trained_output, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(base_output, trained_output, atol=1e-3)  # training really changed the model

    from dbspec.runtime.sample import SampleError, SampleRequest, load_pipeline

    with pytest.raises(SampleError, match="sample the run's output folder"):
        load_pipeline(SampleRequest(source=export, base=plan.model.base, settings=plan.validation))
    pipe = load_pipeline(SampleRequest(source=Path(whole.output), settings=plan.validation))
    torch.testing.assert_close(_unet_output(pipe.unet), trained_output, rtol=1e-5, atol=1e-5)


def test_sdxl_names_are_kohyas_lora_names_with_its_oft_prefix():
    """kohya's SDXL U-Net (library/sdxl_original_unet.py) names: the kohya LoRA writer's for the same layers,
    `oft_unet` for `lora_unet`."""
    from dbspec.runtime.exports import kohya_lora_state
    from dbspec.runtime.lycoris_export import lycoris_state

    names = {}
    for kind in ("lora", "diag-oft"):
        pipe = build_pipeline("builtin:tiny-sdxl")
        adapter = (
            AdapterPlan(kind="lora", rank=2, alpha=1.0, conv_rank=2, conv_alpha=1.0, conv_targets=("conv1",))
            if kind == "lora"
            else AdapterPlan(
                kind="diag-oft", oft_form="kohya", oft_blocks=4, oft_constraint=1.0, conv_targets=("conv1",)
            )
        )
        add_lora(pipe.unet, adapter, ("to_q", "to_out.0"), seed=0, conv=True)
        if kind == "lora":
            state = kohya_lora_state(unet=pipe.unet, text_encoders=[], family="sdxl", dtype="fp32")[0]
        else:
            state = lycoris_state(unet=pipe.unet, text_encoders=[], family="sdxl", dtype="fp32")
        names[kind] = {key.split(".")[0] for key in state}
    assert names["diag-oft"] == names["lora"]
    assert "lora_unet_input_blocks_1_0_in_layers_2" in names["diag-oft"]  # down_blocks.0.resnets.0.conv1


def test_starts_from_kohyas_oft_file_and_resumes_bit_exact(tmp_path):
    """adapter.init_weights (kohya networks.oft --network_weights, OFTNetwork.load_weights): a run's export
    starts a second run, whose layers hold the file's blocks before step 0 (as load_state_dict copies
    them); with init_partial a layer the file lacks keeps its zero blocks; the second run resumes
    bit-exact (a resume takes the checkpoint's blocks, not the file's). The file is saved at another alpha
    (0.5, its blocks x 50) and the spec says adapter.init_alpha = "ignore": kohya's OFTModule keeps
    network_alpha's constraint (a float fixed when it is built; load_weights only fills the alpha buffer),
    so each layer rotates by the file's blocks clamped at 0.01 x width, and the export carries 0.01."""
    from safetensors.torch import save_file

    from dbspec.runtime.adapters import add_lora
    from dbspec.runtime.init_weights import load_init_weights

    first = execute(compile_spec(write_spec(tmp_path / "a", steps=2, extra=SPEC), ["optimizer.lr=1e-2"]))
    (export,) = Path(first.final).glob("*.kohya.safetensors")
    weights = load_file(str(export))
    dropped = "oft_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    partial = {  # kohya's saved file of a run at alpha 0.5, whose blocks grew past 0.01's constraint
        k: torch.full_like(v, 0.5) if k.endswith(".alpha") else v * 50
        for k, v in weights.items()
        if not k.startswith(dropped + ".")
    }
    save_file(partial, str(tmp_path / "start.safetensors"))
    extra = SPEC.replace(
        "[checkpoints]",
        f'init_weights = "{tmp_path / "start.safetensors"}"\ninit_partial = true\ninit_alpha = "ignore"\n\n'
        "[checkpoints]",
    )
    spec = write_spec(tmp_path / "b", steps=4, extra=extra)
    lr = ["optimizer.lr=1e-2"]
    plan = compile_spec(spec, [*lr, "output.dir=parts"])
    modules = {k.split(".")[0] for k in partial}
    assert plan.adapter.init_partial and plan.adapter.init_layers == len(modules)
    assert (plan.adapter.oft_constraint, plan.adapter.init_alpha) == (0.01, "ignore")

    unet = build_pipeline(plan.model.base).unet
    targets = plan.adapter.denoiser_targets
    add_lora(unet, plan.adapter, targets, seed=0, conv=True, component="unet")
    assert load_init_weights(plan, unet, []) == len(modules)
    layers = {
        "oft_unet_" + n.replace(".", "_"): m for n, m in unet.named_modules() if hasattr(m, "lora_oft_blocks")
    }
    assert set(layers) == modules | {dropped}
    bound = 0
    for key, layer in layers.items():
        ((name, value),) = layer.lora_oft_blocks.items()
        expected = partial.get(f"{key}.oft_blocks")
        if expected is None:
            assert not value.any(), key  # the file lacks it: kohya's zero init
            continue
        assert torch.equal(value, expected.to(value.dtype)), key
        base = layer.get_base_layer().weight.detach()
        with torch.no_grad():  # OFTModule's weight at network_alpha's constraint, not the file's alpha's
            ours = layer.rotated_weight(name)
            torch.testing.assert_close(ours, kohya_weight(expected, base, 0.01).float(), rtol=1e-5, atol=1e-6)
            bound += not torch.allclose(ours, kohya_weight(expected, base, 0.5).float(), atol=1e-4)
    assert bound > len(modules) // 2  # the constraint binds: the file's alpha would rotate them otherwise

    whole = execute(compile_spec(spec, [*lr, "output.dir=whole"]))
    (trained,) = Path(whole.final).glob("*.kohya.safetensors")
    with safe_open(str(trained), "pt") as handle:
        assert handle.metadata()["ss_network_alpha"] == "0.01"
        alphas = [float(handle.get_tensor(k)) for k in handle.keys() if k.endswith(".alpha")]
    assert alphas and alphas == pytest.approx([0.01] * len(alphas))  # what it trained at, not the file's 0.5
    fresh = execute(compile_spec(write_spec(tmp_path / "c", steps=4, extra=SPEC), [*lr, "output.dir=fresh"]))
    assert whole.losses[0] != fresh.losses[0]  # the file's rotations, not the identity, at step 0
    assert execute(plan, stop_after=2).status == "interrupted"
    second = execute(plan, resume=True)
    assert second.status == "finished" and second.steps == 4
    ours, resumed = _files(Path(whole.final)), _files(Path(second.final))
    assert ours.keys() == resumed.keys()
    for name, tensors in ours.items():
        assert all(torch.equal(tensors[k], resumed[name][k]) for k in tensors), name
