"""kohya's --fp8_base / --fp8_base_unet with LyCORIS modules that read or take the layer's own weight: where
kohya stops (DBS402).

train_network.py and sdxl_train_network.py cast the frozen U-Net to float8_e4m3fn after the network's
apply_to (`unet.to(dtype=unet_weight_dtype)`); flux_train_network.py and sd3_train_network.py cast the
denoiser as they load it (load_target_model's `model.to(torch.float8_e4m3fn)` / `mmdit.to(...)`), before
the network is built. torch implements no arithmetic on float8_e4m3fn: its add / sub / mul kernels raise
NotImplementedError on the CPU ("add_stub") and on CUDA ("ufunc_add_CUDA"), and it promotes no float8 type.

- LyCORIS's FullModule (lycoris-lora 4.1.3's lycoris/modules/full.py) moves the layer's weight and bias into
  its trained copy at apply_to and deletes them from the layer: after apply_to on SD 1.x/2.x and SDXL the
  cast passes those layers by (dbspec's cast backend leaves them float: runtime/blocks.py
  full_layer_paths); on Flux / SD3 / Chroma apply_to adds the float8 weight into the copy in place
  (`self.weight.data.add_(self.org_module[0].weight.data)`, full.py line 112) and raises.
- The other modules' default forward (no bypass_mode) computes with the layer's weight: LoConModule,
  LohaModule and LokrModule multiply their update cast to the layer's float8 dtype by their scale (e.g.
  lycoris/modules/locon.py line 338), DiagOFTModule and ButterflyOFTModule subtract the float8 weight
  (`delta_weight = new_weight - base_weight`, diag_oft.py line 247), TLoraModule adds to it, DyLoraModule and
  IA3Module mix it with float tensors (no float8 promotion): kohya stops at the first step. Their bypass
  forward reads the layer's output and runs; GLoRAModule's default forward does too. Checked for a preset
  file's layers (lycoris_maps.check_layers), a built-in preset's network (network.builtin_network_on_fp8)
  and a --dim_from_weights file's modules (file_on_fp8: create_network_from_weights hands them no
  bypass_mode).
- flux_train_network.py's / sd3_train_network.py's prepare_text_encoder_fp8 (--fp8_base without
  --fp8_base_unet, T5-XXL on the device: its outputs not cached) reads
  `t5xxl.encoder.block[0].layer[0].SelfAttention.q.weight.dtype` (library/flux_utils.py
  get_t5xxl_actual_dtype), which a FullModule there has deleted: AttributeError.

Checked on the CPU with lycoris-lora 4.1.3's modules (tests/unit/test_convert_kohya_lycoris_fp8.py)."""

from __future__ import annotations

from dbspec.convert.common.core import Legacy
from dbspec.convert.kohya.lycoris_file import PresetError

# when kohya casts the denoiser's weights to float8_e4m3fn (fp8_denoiser)
AFTER_APPLY = "after apply_to"  # train_network.py, sdxl_train_network.py
AT_LOAD = "at load"  # flux_train_network.py, sd3_train_network.py (Chroma too)

T5_FIRST_QUERY = "encoder.block.0.layer.0.SelfAttention.q"


def given(a: dict[str, Legacy], key: str) -> bool:
    """Whether kohya's argument `key` is set (present and truthy)."""
    return key in a and bool(a[key].value)


def fp8_denoiser(a: dict[str, Legacy], flow: bool) -> str:
    """When kohya's --fp8_base / --fp8_base_unet casts the denoiser (`flow`: Flux / SD3 / Chroma's scripts),
    "" without them."""
    if not (given(a, "fp8_base") or given(a, "fp8_base_unet")):
        return ""
    return AT_LOAD if flow else AFTER_APPLY


# lycoris-lora 4.1.3's default forward (no bypass_mode) on a float8 layer: the line that raises (on the CPU
# and on CUDA: torch has no float8 add / mul kernels and promotes no float8 type) and what it does there
_FORWARD_STOPS = {
    "lora": ("locon.py line 338", "multiplies the update cast to float8 by its scale"),
    "loha": ("loha.py line 317", "multiplies the update cast to float8 by its scalar"),
    "lokr": ("lokr.py line 563", "multiplies the update cast to float8 by its scalar"),
    "dylora": ("dylora.py line 142", "adds the float8 weight to the update (`diff + self.org_weight`)"),
    "ia3": ("ia3.py line 14", "multiplies the float8 weight by its scales"),
    "boft": ("boft.py line 216", "subtracts the float8 weight (`delta_weight = new_weight - base_weight`)"),
    "diag-oft": (
        "diag_oft.py line 247",
        "subtracts the float8 weight (`delta_weight = new_weight - base_weight`)",
    ),
    "tlora": ("tlora.py line 557", "adds the update to the float8 weight (`base_weight + diff_weight`)"),
}


def forward_on_fp8(path: str, algo: str, source: str, bypassed: bool, fp8: str) -> None:
    """PresetError (kohya stops: DBS402) for a denoiser layer whose LyCORIS module runs its default forward
    (no bypass_mode, its entry's own or the network's) on a float8 base (`fp8`: fp8_denoiser's): every
    module but FullModule (its float copy) and GLoRAModule (which reads the layer's output) computes with
    the layer's weight there; their bypass forward reads the layer's output and runs."""
    if fp8 and algo in _FORWARD_STOPS and not bypassed:
        line, what = _FORWARD_STOPS[algo]
        raise PresetError(
            f"{source} gives {path} algo = {algo!r} without bypass_mode while kohya's --fp8_base holds its "
            f"weight as float8_e4m3fn: LyCORIS's default forward {what} (lycoris/modules/{line}), "
            "arithmetic torch does not implement for Float8_e4m3fn: kohya stops at the first step "
            "(bypass_mode=True computes from the layer's output and runs)",
            True,
        )


def full_on_fp8(path: str, algo: str, source: str, fp8: str) -> None:
    """PresetError (kohya stops: DBS402) for a denoiser layer of LyCORIS's full algo where kohya casts the
    denoiser to float8 as it loads it (Flux / SD3 / Chroma), before the network is built."""
    if fp8 == AT_LOAD and algo == "full":
        raise PresetError(
            f"{source} gives {path} algo = 'full' while kohya's --fp8_base casts the denoiser to "
            "float8_e4m3fn as it loads it, before the network is built: FullModule.apply_to adds that weight "
            "into its copy in place (`self.weight.data.add_(self.org_module[0].weight.data)`, "
            "lycoris/modules/full.py line 112), which torch does not implement for Float8_e4m3fn "
            "(NotImplementedError before training)",
            True,
        )


def t5_first_query_full(paths: list[str]) -> None:
    """PresetError (kohya stops: DBS402) where a FullModule takes T5-XXL's first query weight (`paths`: T5's
    FullModule layers; the caller has checked that apply_to keeps them and
    lycoris_flow_file.t5_fp8_prepared)."""
    if T5_FIRST_QUERY in paths:
        raise PresetError(
            f"it gives T5-XXL's {T5_FIRST_QUERY} algo = 'full', whose apply_to deletes the layer's weight, "
            "and kohya's --fp8_base (without --fp8_base_unet) then prepares T5-XXL for fp8 by reading "
            "`encoder.block[0].layer[0].SelfAttention.q.weight.dtype` (library/flux_utils.py "
            "get_t5xxl_actual_dtype): AttributeError before training",
            True,
        )


def file_on_fp8(modules: dict, fp8: str, t5_full: list[str]) -> str:
    """Why kohya stops on a --dim_from_weights file's modules (`modules`: lycoris_flow_weights
    .read_lycoris_file's) with --fp8_base (`fp8`: fp8_denoiser's, "" without denoiser modules; `t5_full`:
    T5-XXL's paths of its FullModules where kohya prepares T5 for fp8, else []), in kohya's order:
    apply_to (full_on_fp8), prepare_text_encoder_fp8 (t5_first_query_full), the first forward
    (forward_on_fp8: create_network_from_weights builds each module from its tensors,
    make_module_from_state_dict, with no bypass_mode); "" where kohya runs."""
    unet = []
    for name, module in sorted(modules.items()):
        algo = {"locon": "lora"}.get(module.algo, module.algo)
        if algo == "oft":  # DiagOFTModule's blocks are (n, b, b), ButterflyOFTModule's 4-D
            algo = "boft" if len(module.shapes.get("oft_blocks", ())) == 4 else "diag-oft"
        if name.startswith("lora_unet_"):
            unet.append((name, algo))
    try:
        for name, algo in unet:
            full_on_fp8(name, algo, "the file's module", fp8)
        t5_first_query_full(t5_full)
        for name, algo in unet:
            forward_on_fp8(name, algo, "the file's module", False, fp8)
    except PresetError as exc:
        return str(exc)
    return ""
