"""On Flux's fused Linears (issue 12; was DBS403 there, converted on SD 1.x/2.x / SDXL already): a LoCon /
LoHa / LoKr network's `rs_lora` beside preset entries of other algorithms (each kind's block at alpha x
sqrt(dim), as LoConModule / LohaModule / LokrModule scale by alpha / sqrt(dim); a LoKr block on another kind's
adapter rank_stabilized "on"), a LoKr entry's own rs_lora on a LoKr network beside them, and a BOFT network's
LoCon / LoHa entries (converted as the entries' network, its own layers `boft` blocks). Each kohya layer's
lycoris-lora 4.1.3 module, built by create_network from the same network_args and file on kohya's stacked
original-layout Linears and loaded from our export, against the plan's diffusers parts from the same
generator state: outputs, input gradients and generator state over six training forwards (module_dropout
draws), and every trained tensor's gradient (no tiny run)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.shared import kept_lycoris_presets

pytest.importorskip("lycoris.kohya")

# LoHa on the double blocks' image q/k/v, LoKr on the text q/k/v (low rank) and the single blocks' linear1
# (full factors: dim 1000), CLIP-L's attention LoHa; the network's algorithm on the rest
RS_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "loha"
dim = 4
alpha = 2
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "lokr"
dim = 2
alpha = 1
[name_algo_map."single_blocks.*.linear1"]
algo = "lokr"
dim = 1000
alpha = 3
[module_algo_map.CLIPAttention]
algo = "loha"
dim = 2
"""
# a LoKr network: its own LoKr entry with rs_lora on the single blocks' linear1 (full factors) beside LoHa
LOKR_OWN_FILE = RS_FILE.replace("alpha = 3\n", "alpha = 3\nrs_lora = true\n").replace(
    'algo = "lokr"\ndim = 2', 'algo = "locon"\ndim = 2'
)
# a BOFT network's LoCon / LoHa entries: the BOFT layers the rest (the double blocks' out projections)
BOFT_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear1"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*_attn.qkv"]
algo = "locon"
dim = 4
alpha = 2
[name_algo_map."single_blocks.*.linear1"]
algo = "loha"
dim = 2
alpha = 1
[module_algo_map.CLIPAttention]
algo = "locon"
"""


def _alike(
    tmp_path,
    monkeypatch,
    algo: str,
    text: str,
    args: dict[str, str],
    dim: int = 4,
    grads: bool = True,
    keep: list | None = None,
):
    """The file converted with network algo `algo` and `args` on tiny Flux; every kohya layer's lycoris-lora
    module (loaded from our export) against the plan's parts, and (`grads`) every trained tensor's gradient
    (not with use_scalar: the export folds a trained scalar into a factor whose gradient it then scales);
    the plan's adapter and LyCORIS's modules (`keep` gets our transformer and text encoders). CLIP-L's
    frozen biases are drawn too (the tiny one's are 0; Diag-OFT's / IA^3's bypass forward differs by them)."""
    from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
    from tests.runtime.shared import moved_components
    from tests.runtime.test_lycoris_mixed_flow_bypass_dropout import (
        modules_alike,
        _grads_as_lycoris,
    )
    from tests.runtime.test_lycoris_mixed_flow_full import (
        _BASE,
        _kohya_layers,
        _kohya_tree,
    )
    from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
    from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip
    from tests.unit.convert_kit import flux_lycoris, plan_of

    file = tmp_path / "mixed.toml"
    file.write_text(text, encoding="utf-8")
    given = " ".join(f'"{k}={v}"' for k, v in args.items())
    outcome = flux_lycoris(tmp_path, f'"algo={algo}" "preset={file.name}" {given}', f"--network_dim={dim}")
    plan = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-flux", *_BASE])
    comps = moved_components(plan, text_encoder=True)
    unet, encoders = comps.unet.train(), comps.text_encoders
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # every trained tensor moved (no update 0)
        for model in (unet, *encoders):
            for p in model.parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05 + p)
        for name, p in encoders[0].named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    tensors = lycoris_state(unet=unet, text_encoders=encoders, family="flux", dtype="fp32")
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    clip = _kohya_clip(_unwrapped(encoders[0]))
    made = _network(monkeypatch, algo, file, [clip, nn.Module()], _kohya_tree(layers), tensors, dim, args)
    # a LoKr layer with both factors full: the export holds its scale in lokr_w1 (its loaders' scale 1);
    # kohya trains the factor itself at LokrModule's scale (sqrt(dim) with rs_lora), so theirs is unfolded
    full = [m for m in made.values() if type(m).__name__ == "LokrModule" and m.use_w1 and m.use_w2]
    with torch.no_grad():
        for m in full:
            m.lokr_w1.div_(m.scale)
    modules_alike(made, layers, unet, encoders, least=1)
    for m in full:  # its gradient as the export writes the factor (x the scale)
        m.lokr_w1.grad.mul_(m.scale)
    assert not grads or _grads_as_lycoris(unet, encoders, made, "flux") >= len(made)
    if keep is not None:
        keep.extend([unet, *encoders])
    return plan.adapter, made, full


def _network(monkeypatch, algo: str, file, text_encoders, tree, tensors, dim: int, args: dict[str, str]):
    """test_lycoris_mixed_flow_full.py's _lycoris_network at network_dim `dim` (alpha 1): lycoris-lora's
    create_network from the file on kohya's layers, applied, the export loaded strictly."""

    from lycoris import kohya as lycoris_kohya

    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0, dim, 1.0, None, text_encoders, tree, algo=algo, preset=str(file), **args
    )
    made.apply_to(text_encoders, tree, apply_text_encoder=True, apply_unet=True)
    result = made.load_state_dict(tensors, strict=False)
    # TLoraModule's frozen start (base_q / base_p / base_lambda): its own SVD of the same base weights
    missing = [k for k in result.missing_keys if not k.rsplit(".", 1)[-1].startswith("base_")]
    assert not result.unexpected_keys and not missing, result
    return {m.lora_name: m for m in [*made.unet_loras, *made.text_encoder_loras]}


def _classes(made) -> dict[str, str]:
    return {name: type(m).__name__ for name, m in made.items()}


def test_flux_network_rs_lora_beside_other_algorithms_is_lycoris(tmp_path, monkeypatch):
    """A LoCon network's rs_lora beside LoHa / LoKr entries: every module's alpha / sqrt(dim) (LoKr's full
    factors on linear1 too), the fused Linears one module each."""
    args = {"rs_lora": "True", "module_dropout": "0.5"}
    a, made, full = _alike(tmp_path, monkeypatch, "locon", RS_FILE, args)
    assert full  # linear1: LokrModule scaling its full factors by sqrt(1000)
    assert a.kind == "lora" and a.alpha == pytest.approx(2.0)  # 1 x sqrt(4)
    lokr = [b for b in a.blocks if b.kind == "lokr"]
    assert lokr and all(b.rank_stabilized == "on" for b in lokr)
    classes = _classes(made)
    assert classes["lora_unet_double_blocks_0_img_attn_qkv"] == "LohaModule"
    assert classes["lora_unet_single_blocks_0_linear1"] == "LokrModule"
    assert classes["lora_unet_double_blocks_0_img_attn_proj"] == "LoConModule"
    assert all(m.rs_lora for m in made.values())


def test_flux_lokr_entry_own_rs_lora_on_lokr_network_is_lycoris(tmp_path, monkeypatch):
    """A LoKr entry's own rs_lora (full factors) on a LoKr network beside LoCon / LoHa entries."""
    a, made, full = _alike(tmp_path, monkeypatch, "lokr", LOKR_OWN_FILE, {"module_dropout": "0.5"})
    assert a.kind == "lokr" and not a.lokr_rank_stabilized
    assert any(b.rank_stabilized == "on" for b in a.blocks)
    assert made["lora_unet_single_blocks_0_linear1"].rs_lora
    assert not made["lora_unet_double_blocks_0_img_attn_proj"].rs_lora


def test_flux_boft_network_locon_loha_entries_is_lycoris(tmp_path, monkeypatch):
    """A BOFT network's LoCon / LoHa entries: converted as a LoCon network whose own layers are `boft`
    blocks (ButterflyOFTModule on the out projections)."""
    # dim 6: a block size FLUX.1's 3072-wide out projections split by (kohya stops at 4, DBS402)
    a, made, full = _alike(tmp_path, monkeypatch, "boft", BOFT_FILE, {"module_dropout": "0.5"}, dim=6)
    assert a.kind == "lora" and any(b.kind == "boft" for b in a.blocks)
    classes = _classes(made)
    assert classes["lora_unet_double_blocks_0_img_attn_proj"] == "ButterflyOFTModule"
    assert classes["lora_unet_double_blocks_0_txt_attn_qkv"] == "LoConModule"
    assert classes["lora_unet_single_blocks_0_linear1"] == "LohaModule"


# the networks whose own modules never read rs_lora (GLoRAModule does, at its own alpha / sqrt(dim)); a
# DyLoRA network's own DyLoraModules load no file key (its entries' blocks: the same lycoris_maps._blocks,
# checked on SD in test_lycoris_mixed_rs_lora and on Flux's plan in test_convert_kohya_rs_lora_entries)
@pytest.mark.parametrize("algo", ["glora", "full", "ia3", "tlora"])
def test_flux_rs_lora_of_other_networks_reaches_their_entries_as_lycoris(tmp_path, monkeypatch, algo):
    """A GLoRA / full / IA^3 / T-LoRA network's rs_lora beside LoHa / LoKr entries (was DBS403):
    the entries' blocks at alpha x sqrt(dim), the LoKr ones on linear1 (full factors) `rank_stabilized`."""
    args = {"rs_lora": "True", "module_dropout": "0.5"}
    a, made, full = _alike(tmp_path, monkeypatch, algo, RS_FILE, args)
    assert full and all(m.rs_lora for m in full)
    lokr = [b for b in a.blocks if b.kind == "lokr"]
    assert lokr and all(b.rank_stabilized == "on" for b in lokr)
    classes = _classes(made)
    assert classes["lora_unet_double_blocks_0_img_attn_qkv"] == "LohaModule"
    own = {"glora": "GLoRAModule", "full": "FullModule", "ia3": "IA3Module"}
    assert classes["lora_unet_double_blocks_0_img_attn_proj"] == own.get(algo, "TLoraModule")
