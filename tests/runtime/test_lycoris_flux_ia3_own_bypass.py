"""An IA^3 network's preset-file entries with their own `bypass_mode` on Flux's fused Linears (issue 12; was
DBS403 there, converting on SD 1.x/2.x and SDXL since tests/runtime/test_lycoris_ia3_own_bypass_entries.py):
the ia3 adapter's own [[adapter.blocks]] `bypass` (spec ScaleBlock), set on every diffusers part of a fused
Linear by runtime/mixed_kinds.py set_block_bypass. lycoris-lora 4.1.3's create_single_module hands an entry's
own bypass_mode to its IA3Module over the network's; on kohya's fused q/k/v or linear1 its bypass forward
scales the stacked output, bias included, by (1 + s), which is each part's output times its own rows of s; its
default forward scales the weight alone. Layer by layer without a tiny run: the plan's transformer as
runtime/prepare.py builds it (module_dropout wrapped, every scale moved at random), its LyCORIS export loaded
into lycoris-lora's create_network from the same file on kohya's layers (the parts' base weights and biases
stacked, the biases at random); each kohya layer's IA3Module in training from one generator state against the
parts called in diffusers' order: outputs, input gradients, generator state, and each scale's gradient (the
parts' concatenated)."""

from __future__ import annotations

import pytest
import torch

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model, mmdit, sd3_parts
from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.test_lycoris_flow_rank_dropout_layers import (
    FLUX,
    SD3,
    _network,
    _plan,
    _prepared,
    _same_training,
)
from tests.runtime.test_lycoris_mixed_flow_full import _base, _kohya_layers, _kohya_tree

pytest.importorskip("lycoris.kohya")

DROP = 0.3
# the network's IA^3 on the double blocks' attention and the single blocks' Linears; the image q/k/v's and
# linear1's entries in the other mode
PRESET = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = []
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "ia3"
bypass_mode = {own}
[name_algo_map."single_blocks.*.linear1"]
algo = "ia3"
bypass_mode = {own}
"""
# SD3: the joint blocks' image q/k/v entries in the other mode, the context q/k/v the network's
SD3_PRESET = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["joint_blocks.*.attn.qkv"]
text_encoder_target_module = []

[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "ia3"
bypass_mode = {own}
"""
PRESET_ENTRIES = {"flux": 2, "sd3": 1}  # the map entries: one block each
# family: (script, preset, kohya's rows, their diffusers parts, the entries' kohya paths)
FAMILIES = {
    "flux": (
        FLUX,
        PRESET,
        flux_model(1, 1),
        diffusers_parts,
        ("double_blocks.0.img_attn.qkv", "single_blocks.0.linear1"),
    ),
    "sd3": (
        SD3,
        SD3_PRESET,
        mmdit(2, ()),
        sd3_parts,
        ("joint_blocks.0.x_block.attn.qkv", "joint_blocks.1.x_block.attn.qkv"),
    ),
}


def check_ia3_layers(
    monkeypatch, plan, transformer, file, args: dict[str, str], modes, rows, parts_of
) -> dict:
    """The prepared `transformer`'s kohya layers (`rows`, their diffusers parts `parts_of`) against
    lycoris-lora's algo=ia3 network from the preset `file` (with `args`) loaded with its export, every module
    an IA3Module in the mode `modes` gives its kohya path (else the "network"'s): {kohya path: IA3Module}
    of those compared."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # the fused biases at random: bypass_mode scales them, the default forward not
        for name, p in transformer.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    ours = _prepared(transformer, "unet", plan, plan.adapter.denoiser_targets)
    tensors = lycoris_state(unet=ours, text_encoders=[], family=plan.model.family, dtype="fp32")
    layers = _kohya_layers(ours, rows, parts_of)
    made = _network(monkeypatch, "ia3", file, [torch.nn.Module()] * 3, _kohya_tree(layers), args)
    result = made.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys and not result.missing_keys, result
    theirs = {m.lora_name: m for m in made.unet_loras}
    singles = {id(b.proj_mlp) for b in getattr(ours, "single_transformer_blocks", ())}
    ours.train()
    compared, skipped = {}, []
    for path, (parts, order) in layers.items():
        module = theirs.get("lora_unet_" + path.replace(".", "_"))
        if module is None:
            continue
        assert order is None and module.module_dropout == DROP, path
        assert bool(module.bypass_mode) is modes.get(path, modes["network"]), path
        calls = sorted(parts, key=lambda p: id(p) not in singles)  # diffusers calls proj_mlp first

        def stacked(x, parts=parts, calls=calls):
            got = {id(p): p(x) for p in calls}
            return torch.cat([got[id(p)] for p in parts], dim=-1)

        x = torch.randn(3, _base(parts[0]).in_features)
        _same_training(module.train(), stacked, x, path)
        grad = torch.cat([p.lora_ia3["default"].grad for p in parts])
        torch.testing.assert_close(grad, module.weight.grad, rtol=1e-4, atol=1e-5, msg=path)
        compared[path] = module
        torch.manual_seed(11)  # _same_training's draws: which forwards skipped the scales
        with torch.no_grad():
            plain = module.org_forward(x)
            skipped += [torch.equal(module(x), plain) for _ in range(6)]
    ours.zero_grad(set_to_none=True)
    assert any(skipped) and not all(skipped)  # both the module_dropout's skip and the scales seen
    return compared


@pytest.mark.parametrize("family", ["flux", "sd3"])
@pytest.mark.parametrize("network", [False, True])
def test_ia3_entries_in_their_own_bypass_mode_on_fused_layers(tmp_path, monkeypatch, network, family):
    """Outside bypass_mode with the entries in it, and the reverse: each fused Linear's parts in their
    entry's mode, the other Linears in the network's; the same outputs, draws and scale gradients as
    lycoris-lora's IA3Modules, which in the other mode compute another output (the fused bias)."""
    script, preset, rows, parts_of, entries = FAMILIES[family]
    own = str(not network).lower()
    args = {"algo": "ia3", "module_dropout": str(DROP), **({"bypass_mode": "True"} if network else {})}
    plan = _plan(tmp_path, family, script, preset.format(own=own), args)
    a = plan.adapter
    assert (a.kind, a.bypass, a.module_dropout) == ("ia3", network, DROP) and a.fused
    assert [b.bypass for b in a.blocks if b.rank] == [not network] * PRESET_ENTRIES[family], a.blocks
    transformer = build_pipeline(f"builtin:tiny-{family}").transformer.float()
    modes = {"network": network, **dict.fromkeys(entries, not network)}
    drops = {k: v for k, v in args.items() if k != "algo"}
    compared = check_ia3_layers(
        monkeypatch, plan, transformer, tmp_path / "p.toml", drops, modes, rows, parts_of
    )
    assert {type(m).__name__ for m in compared.values()} == {"IA3Module"}
    assert set(entries) < set(compared)  # and some in the network's mode
    # each entry's module in the network's mode: another output (its fused bias scaled or not)
    layers = _kohya_layers(transformer, rows, parts_of)
    for path in entries:
        module, parts = compared[path], layers[path][0]
        x = torch.randn(3, _base(parts[0]).in_features)
        with torch.no_grad():
            module.eval(), [p.eval() for p in parts]
            mine = torch.cat([p(x) for p in parts], dim=-1)
            torch.testing.assert_close(module.org_module[0](x), mine, rtol=1e-5, atol=1e-5)
            module.bypass_mode = network
            assert not torch.allclose(module.org_module[0](x), mine, atol=1e-4), path
