"""kohya --network_weights / --dim_from_weights: `adapter.init_weights` checked at plan time against the
adapter from the file's header and alpha bytes (no torch), and the converter's mapping of real kohya command
lines.

The files are written here byte by byte in the safetensors format (8-byte header length, JSON header, data),
with kohya's module names for SD 1.5 (networks/lora.py: `lora_unet_` + the diffusers module path with dots as
underscores, `lora_te_` + the CLIP path)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from convert_kit import SD15, SDXL, empty_hub_cache, fate, images, kohya, out_path, plan_of  # noqa: F401
from dbspec.compiler.lora_file import read_lora_file
from dbspec.frontend import plan_spec
from dbspec.plan.summary import adapter_rows
from tests.unit.convert_kit import GPU

Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
OUT = "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0"
TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"
SHORTCUT = "lora_unet_up_blocks_0_resnets_0_conv_shortcut"
_PACK = {"F32": "<f", "F16": "<e", "F64": "<d"}


def write_lora(path: Path, modules: dict[str, tuple], alpha_dtype: str = "F16") -> Path:
    """modules: kohya name -> (rank, alpha or None, width, kernel); zeros for the matrices."""
    header: dict = {"__metadata__": {"ss_network_module": "networks.lora"}}
    data = b""

    def add(name, dtype, shape, raw):
        nonlocal data
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw

    for name, (rank, alpha, width, kernel) in modules.items():
        down = (rank, width, kernel, kernel) if kernel else (rank, width)
        up = (width, rank, 1, 1) if kernel else (width, rank)
        for suffix, shape in ((".lora_down.weight", down), (".lora_up.weight", up)):
            count = 1
            for n in shape:
                count *= n
            add(name + suffix, "F16", shape, bytes(2 * count))
        if alpha is not None:
            add(name + ".alpha", alpha_dtype, (), struct.pack(_PACK[alpha_dtype], alpha))
    raw_header = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw_header)) + raw_header + data)
    return path


MODULES = {Q: (8, 4.0, 320, 0), OUT: (8, 4.0, 320, 0), TE: (8, 4.0, 768, 0)}


def test_header_reader_takes_ranks_and_alpha_values_from_the_bytes(tmp_path):
    for dtype, alpha in (("F32", 0.1), ("F16", 0.1), ("F64", 3.5)):
        path = write_lora(tmp_path / f"{dtype}.safetensors", {Q: (4, alpha, 320, 0)}, dtype)
        module = read_lora_file(path).modules[Q]
        expected = struct.unpack(_PACK[dtype], struct.pack(_PACK[dtype], alpha))[0]
        assert (module.rank, module.alpha, module.conv) == (4, expected, False)
    conv = read_lora_file(write_lora(tmp_path / "c.safetensors", {CONV: (2, None, 320, 3)})).modules[CONV]
    assert (conv.rank, conv.alpha, conv.conv) == (2, None, True)


def _convert(tmp_path, args: str, module: str = "networks.lora"):
    images(tmp_path / "x" / "10_ohwx", 3, (512, 512))
    return kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        f"--train_data_dir=x --resolution=512 --network_module={module} {args} --learning_rate=1e-4 "
        "--max_train_steps=200 --save_model_as=safetensors",
    )


def test_network_weights_converts_and_the_plan_starts_from_the_file(tmp_path):
    lora = write_lora(tmp_path / "prev.safetensors", MODULES)
    outcome = _convert(tmp_path, "--network_dim=8 --network_alpha=4 --network_weights=prev.safetensors")
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.init_weights == str(lora.resolve())
    assert plan.adapter.init_layers == 3  # kohya trains the text encoder too (no --network_train_unet_only)
    assert fate(outcome, "network_weights") == "mapped"
    rows = dict(adapter_rows(plan.adapter))
    assert str(lora.resolve()) in rows["  starts from"]
    # kohya's load_weights is load_state_dict(strict=False): layers the file lacks keep their init
    assert plan.adapter.init_partial and "strict=False" in rows["  starts from"]


def test_dim_from_weights_takes_rank_and_alpha_from_the_file_not_network_dim(tmp_path):
    write_lora(tmp_path / "prev.safetensors", {**MODULES, CONV: (4, 1.0, 320, 3), SHORTCUT: (8, 4.0, 640, 1)})
    outcome = _convert(
        tmp_path, "--network_dim=32 --network_alpha=16 --network_weights=prev.safetensors --dim_from_weights"
    )
    a = plan_of(outcome, tmp_path).adapter
    # create_network_from_weights: every module's dim is its lora_down rows, alpha the stored value
    assert (a.rank, a.alpha, a.conv_rank, a.conv_alpha) == (8, 4.0, 4, 1.0)
    assert "conv_shortcut" in a.denoiser_targets and a.init_layers == 5
    assert fate(outcome, "network_dim") == "inert" and fate(outcome, "dim_from_weights") == "mapped"


def test_dim_from_weights_without_alpha_uses_the_rank(tmp_path):
    write_lora(tmp_path / "prev.safetensors", {Q: (8, None, 320, 0), TE: (8, None, 768, 0)})
    outcome = _convert(tmp_path, "--network_weights=prev.safetensors --dim_from_weights")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank, a.alpha) == (8, 8.0)


def test_dim_from_weights_with_per_layer_ranks_builds_each_at_its_rank(tmp_path):
    """networks.lora's create_network_from_weights builds each module of the file at its rank and alpha and
    none elsewhere: blocks naming the file's modules (the plan shows each rank), a rank-0 block for the rest;
    network_args (but the block learning-rate weights) and --network_dropout are not read (DBS405)."""
    write_lora(
        tmp_path / "prev.safetensors", {Q: (8, 4.0, 320, 0), OUT: (4, 2.0, 320, 0), TE: (8, 4.0, 768, 0)}
    )
    outcome = _convert(
        tmp_path,
        "--network_weights=prev.safetensors --dim_from_weights --network_dropout=0.1 "
        '--network_args "conv_dim=4" "rank_dropout=0.1"',
    )
    assert fate(outcome, "dim_from_weights") == "mapped"
    assert fate(outcome, "network_args") == fate(outcome, "network_dropout") == "inert"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank, a.alpha, a.conv_rank, a.rank_dropout, a.down_dropout) == (8, 4.0, 0, 0.0, 0.0)

    def rank(path: str) -> tuple[int, float]:
        block = next(b for b in a.blocks if re.search(b.pattern, path))
        return block.rank, block.alpha

    assert rank("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q") == (8, 4.0)
    assert rank("up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0") == (4, 2.0)
    assert rank("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k") == (0, 1.0)  # not in the file
    assert a.init_layers == 3 and a.init_partial


def _plan(tmp_path: Path, adapter: str, train: str = "", base: str = SD15, kind: str = "lora"):
    (tmp_path / "img").mkdir(exist_ok=True)
    images(tmp_path / "img", 1, (512, 512))
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'spec_version = 2\n[model]\nbase = "{base}"\n[adapter]\nkind = "{kind}"\n{adapter}\n{train}\n'
        '[optimizer]\nlr = 1e-4\n[[datasets]]\nname = "s"\npath = "img"\nprompt = "a photo of ohwx"\n'
        "[schedule]\nsteps = 10\n"
    )
    return plan_spec(spec, GPU, "spec.toml", [])


@pytest.mark.parametrize(
    ("modules", "adapter", "code", "words"),
    [
        (
            MODULES,
            "rank = 16\nalpha = 4.0",
            "DBS356",
            f"`{TE}.lora_down.weight` has rank 8 (shape [8, 768]); adapter.rank is 16",
        ),
        (MODULES, "rank = 8\nalpha = 8.0", "DBS356", f"`{TE}.alpha` is 4; adapter.alpha is 8"),
        (
            {
                **MODULES,
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2": (8, 4.0, 320, 0),
            },
            "rank = 8\nalpha = 4.0",
            "DBS356",
            "adapter.denoiser_targets does not name",
        ),
        ({**MODULES, CONV: (8, 4.0, 320, 3)}, "rank = 8\nalpha = 4.0", "DBS356", "adapter.conv_targets"),
        ({"lora_te2_text_model_x_q_proj": (8, 4.0, 64, 0)}, "rank = 8\nalpha = 4.0", "DBS356", "no model"),
        (MODULES, "rank = 8\nalpha = 4.0\ndora = true", "DBS356", "DoRA"),
    ],
)
def test_a_file_that_does_not_fit_names_the_file_and_the_first_tensor(
    tmp_path, modules, adapter, code, words
):
    lora = write_lora(tmp_path / "prev.safetensors", modules)
    planned = _plan(tmp_path, f'{adapter}\ninit_weights = "prev.safetensors"', "[train]\ntext_encoder = true")
    assert planned.plan is None
    hits = [d for d in planned.diagnostics if d.code == code]
    assert hits and hits[0].path == "adapter.init_weights", planned.diagnostics
    assert words in hits[0].message and str(lora.resolve()) in hits[0].message


def _pt_twin(path: Path, suffix: str = ".pt") -> Path:
    """The same tensors in a torch.save file (as kohya's save_model_as pt / ckpt writes them)."""
    import torch
    from safetensors.torch import load_file

    twin = path.with_suffix(suffix)
    torch.save(load_file(str(path)), twin)
    return twin


@pytest.mark.parametrize(
    ("adapter", "words"),
    [
        ("rank = 8\nalpha = 4.0", ""),
        (
            "rank = 16\nalpha = 4.0",
            f"`{TE}.lora_down.weight` has rank 8 (shape [8, 768]); adapter.rank is 16",
        ),
        ("rank = 8\nalpha = 8.0", f"`{TE}.alpha` is 4; adapter.alpha is 8"),
    ],
)
def test_a_pt_file_plans_as_its_safetensors_twin(tmp_path, adapter, words):
    """A torch.save `.pt` file (read without torch: compiler/pickle_weights.py) gives the plan the same lines,
    and a file that does not fit the same diagnostic, as the .safetensors file of the same tensors."""
    lora = write_lora(tmp_path / "prev.safetensors", MODULES)
    twin = _pt_twin(lora)
    seen = []
    for file in (lora, twin):
        planned = _plan(tmp_path, f'{adapter}\ninit_weights = "{file.name}"', "[train]\ntext_encoder = true")
        said = [(d.code, d.path, d.message.replace(str(file.resolve()), "FILE")) for d in planned.diagnostics]
        rows = adapter_rows(planned.plan.adapter) if planned.plan else []
        seen.append((said, [(k, v.replace(str(file.resolve()), "FILE")) for k, v in rows]))
    assert seen[0] == seen[1]
    said, rows = seen[1]
    if words:
        assert any(code == "DBS356" and words in message for code, _, message in said), said
    else:
        assert dict(rows)["  starts from"].startswith("FILE"), rows


def test_a_missing_or_foreign_file_is_dbs357(tmp_path):
    planned = _plan(tmp_path, 'init_weights = "nowhere.safetensors"')
    assert [d.code for d in planned.diagnostics if d.severity == "error"] == ["DBS357"]
    foreign = tmp_path / "loha.safetensors"
    write_lora(foreign, {Q: (8, 4.0, 320, 0)})
    text = foreign.read_bytes().replace(b"lora_down", b"hada_w1_a")  # same length: a LyCORIS-style name
    foreign.write_bytes(text)
    planned = _plan(tmp_path, 'rank = 8\nalpha = 4.0\ninit_weights = "loha.safetensors"')
    (hit,) = [d for d in planned.diagnostics if d.code == "DBS357"]
    assert "hada_w1_a" in hit.message and "kohya's LoRA layout" in hit.message


def test_layers_of_a_frozen_text_encoder_are_ignored_with_a_warning(tmp_path):
    write_lora(tmp_path / "prev.safetensors", MODULES)
    planned = _plan(tmp_path, 'rank = 8\nalpha = 4.0\ninit_weights = "prev.safetensors"')
    assert planned.plan is not None and planned.plan.adapter.init_layers == 2
    (hit,) = [d for d in planned.diagnostics if d.code == "DBS358"]
    assert "1 LoRA layer(s) of `text_encoder`" in hit.message


def test_sdxl_original_layout_names_fit_the_diffusers_targets(tmp_path):
    """kohya names SDXL's U-Net modules in the original layout: a ResNet's conv1 is `in_layers_2`, its
    time_emb_proj `emb_layers_1`, a downsampler `op`, an upsampler `output_blocks_N_M_conv`."""
    modules = {
        "lora_unet_input_blocks_1_0_in_layers_2": (4, 1.0, 320, 3),
        "lora_unet_input_blocks_1_0_emb_layers_1": (8, 4.0, 320, 0),
        "lora_unet_input_blocks_3_0_op": (4, 1.0, 320, 3),
        "lora_unet_output_blocks_2_2_conv": (4, 1.0, 1280, 3),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_out_0": (8, 4.0, 640, 0),
    }
    write_lora(tmp_path / "prev.safetensors", modules)
    adapter = (
        'rank = 8\nalpha = 4.0\nconv_rank = 4\nconv_alpha = 1.0\ninit_weights = "prev.safetensors"\n'
        'denoiser_targets = ["to_out.0", "time_emb_proj"]'
    )
    planned = _plan(tmp_path, adapter, base=SDXL)
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    assert planned.plan.adapter.init_layers == 5


def _tucker_file(path: Path, mid: bool = True) -> Path:
    """MODULES plus CONV in LoCon's Tucker form (1x1 lora_down, 3x3 lora_mid, 1x1 lora_up; rank 4, alpha 1);
    without `mid` CONV as a plain LoCon's (3x3 lora_down)."""
    import numpy as np
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    write_lora(path, MODULES)
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    kernel = (1, 1) if mid else (3, 3)
    tensors |= {
        f"{CONV}.lora_down.weight": np.zeros((4, 320, *kernel), np.float16),
        f"{CONV}.lora_up.weight": np.zeros((320, 4, 1, 1), np.float16),
        f"{CONV}.alpha": np.array(1.0, np.float16),
    }
    if mid:
        tensors[f"{CONV}.lora_mid.weight"] = np.zeros((4, 4, 3, 3), np.float16)
    save_file(tensors, str(path))
    return path


TUCKER_ARGS = (
    '--network_dim=8 --network_alpha=4 --network_weights=prev.safetensors --network_args "algo=locon" '
    '"conv_dim=4" "conv_alpha=1" "use_tucker=True"'
)


def test_network_weights_of_a_tucker_locon_start_its_lora_mid(tmp_path):
    """LyCORIS LoCon with use_tucker: LoConModule's load_state_dict takes lora_mid beside lora_down /
    lora_up; the plan reads the file's 3x3 modules by their lora_mid (a convolution at conv_rank)."""
    _tucker_file(tmp_path / "prev.safetensors")
    plan = plan_of(_convert(tmp_path, TUCKER_ARGS, module="lycoris.kohya"), tmp_path)
    assert plan.adapter.tucker and plan.adapter.init_layers == 4 and plan.adapter.init_partial
    module = read_lora_file(tmp_path / "prev.safetensors", lora_mid=True).modules[CONV]
    assert module.conv and module.mid == (4, 4, 3, 3) and module.rank == 4


def test_a_plain_locon_file_for_a_tucker_locon_is_refused_naming_the_tensor(tmp_path):
    _tucker_file(tmp_path / "prev.safetensors", mid=False)
    outcome = _convert(tmp_path, TUCKER_ARGS, module="lycoris.kohya")
    assert outcome.written
    planned = plan_spec(out_path(tmp_path), GPU)
    assert planned.plan is None
    (hit,) = [d for d in planned.diagnostics if d.code == "DBS356"]
    assert f"`{CONV}.lora_down.weight` has shape [4, 320, 3, 3]" in hit.message and "lora_mid" in hit.message


def test_dim_from_weights_of_a_tucker_locon_builds_its_tucker_form(tmp_path):
    """LyCORIS's create_network_from_weights builds LoConModule's Tucker form where the file has lora_mid:
    adapter.tucker, the convolution at its rank; a file mixing it with a plain k x k LoCon: DBS403."""
    _tucker_file(tmp_path / "prev.safetensors")
    plan = plan_of(_convert(tmp_path, TUCKER_ARGS + " --dim_from_weights", module="lycoris.kohya"), tmp_path)
    assert plan.adapter.tucker and plan.adapter.conv_rank == 4 and plan.adapter.init_layers == 4
    mixed = tmp_path / "mixed"
    _tucker_file(mixed / "prev.safetensors")
    _tucker_file(mixed / "other.safetensors", mid=False)
    from safetensors.numpy import load_file, save_file

    plain = {
        k.replace("resnets_0_conv1", "resnets_1_conv1"): v
        for k, v in load_file(str(mixed / "other.safetensors")).items()
        if CONV in k
    }
    save_file({**load_file(str(mixed / "prev.safetensors")), **plain}, str(mixed / "prev.safetensors"))
    outcome = _convert(mixed, TUCKER_ARGS + " --dim_from_weights", module="lycoris.kohya")
    assert outcome.exit_code == 1 and fate(outcome, "dim_from_weights") == "unsupported"
    assert "mixes LoCon's Tucker form" in outcome.conversion.reports["dim_from_weights"].note


def test_init_partial_ignores_file_layers_the_adapter_does_not_adapt(tmp_path):
    """adapter.init_partial (kohya's strict=False load): a file layer outside the targets is ignored with
    DBS387 naming it; without init_partial it is DBS356."""
    ff = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2"
    write_lora(tmp_path / "prev.safetensors", {**MODULES, ff: (8, 4.0, 320, 0)})
    planned = _plan(tmp_path, 'rank = 8\nalpha = 4.0\ninit_weights = "prev.safetensors"\ninit_partial = true')
    assert planned.plan is not None and planned.plan.adapter.init_layers == 2  # Q, OUT (TE frozen)
    (hit,) = [d for d in planned.diagnostics if d.code == "DBS387"]
    assert ff in hit.message and "strict=False" in hit.message and hit.path == "adapter.init_partial"
    planned = _plan(tmp_path, 'rank = 8\nalpha = 4.0\ninit_weights = "prev.safetensors"')
    assert planned.plan is None and "DBS356" in {d.code for d in planned.diagnostics}


def test_dim_from_weights_with_a_file_of_no_text_encoder_module_trains_none(tmp_path):
    """create_network_from_weights builds LoRAs only for the file's modules: none on the text encoder here,
    so kohya's run trains no text encoder although network_train_unet_only is not given."""
    write_lora(tmp_path / "prev.safetensors", {Q: (8, 4.0, 320, 0), OUT: (8, 4.0, 320, 0)})
    plan = plan_of(_convert(tmp_path, "--network_weights=prev.safetensors --dim_from_weights"), tmp_path)
    assert not plan.train_text_encoder and (plan.adapter.rank, plan.adapter.alpha) == (8, 4.0)
    write_lora(tmp_path / "prev.safetensors", MODULES)  # with a text-encoder module it trains
    assert plan_of(
        _convert(tmp_path, "--network_weights=prev.safetensors --dim_from_weights"), tmp_path
    ).train_text_encoder


def test_networks_dylora_network_weights_converts_and_plans_from_the_file(tmp_path):
    """networks.dylora --network_weights (issue 12): DyLoRANetwork.load_weights is
    load_state_dict(strict=False) of kohya's LoRA layout, each layer's rows and columns into its one-rank
    parameters: adapter.init_weights on the DyLoRA, init_partial, checked against its rank and alpha as a
    LoRA's."""
    lora = write_lora(tmp_path / "prev.safetensors", MODULES)
    outcome = _convert(
        tmp_path,
        '--network_dim=8 --network_alpha=4 --network_weights=prev.safetensors --network_args "unit=2"',
        module="networks.dylora",
    )
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.kind, a.dylora_unit, a.init_weights, a.init_layers, a.init_partial) == (
        "dylora",
        2,
        str(lora.resolve()),
        3,
        True,
    )
    assert fate(outcome, "network_weights") == "mapped"
    outcome = _convert(  # a file of another rank: the plan names the tensor (DBS356)
        tmp_path,
        '--network_dim=16 --network_alpha=4 --network_weights=prev.safetensors --network_args "unit=2"',
        module="networks.dylora",
    )
    assert outcome.written
    from convert_kit import out_path

    planned = plan_spec(out_path(tmp_path), GPU, "spec.toml", [])
    assert planned.plan is None and "DBS356" in {d.code for d in planned.diagnostics}


def test_dylora_network_weights_with_dim_from_weights_and_lycoris_alphas_convert(tmp_path):
    """Once refused (DBS403): networks.dylora with --dim_from_weights builds its network from the file (unit
    1, network_args unread), and LyCORIS algo=dylora takes each layer's alpha from the file and nothing else
    (its weights are up_list / down_list); tests/unit/test_convert_kohya_dylora.py checks the plans."""
    write_lora(tmp_path / "prev.safetensors", MODULES)
    outcome = _convert(
        tmp_path,
        '--network_dim=8 --network_alpha=2 --network_weights=prev.safetensors --network_args "algo=dylora"',
        module="lycoris.kohya",
    )
    assert fate(outcome, "network_weights") == "mapped"
    assert {b.alpha for b in plan_of(outcome, tmp_path).adapter.blocks} == {4.0}
    outcome = _convert(
        tmp_path,
        "--network_dim=8 --network_alpha=4 --network_weights=prev.safetensors --dim_from_weights",
        module="networks.dylora",
    )
    assert fate(outcome, "dim_from_weights") == "mapped"
    assert plan_of(outcome, tmp_path).adapter.dylora_unit == 1


@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_dylora_networks_start_from_a_torch_save_file(tmp_path, suffix):
    """networks.dylora's load_weights and LyCORIS algo=dylora's alphas read a torch.save file as its
    .safetensors twin (kohya torch.loads it; was DBS403)."""
    twin = _pt_twin(write_lora(tmp_path / "prev.safetensors", MODULES), suffix)
    outcome = _convert(
        tmp_path,
        f'--network_dim=8 --network_alpha=4 --network_weights={twin.name} --network_args "unit=2"',
        module="networks.dylora",
    )
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.init_weights, a.init_layers, a.init_partial) == ("dylora", str(twin.resolve()), 3, True)
    outcome = _convert(
        tmp_path,
        f'--network_dim=8 --network_alpha=2 --network_weights={twin.name} --network_args "algo=dylora"',
        module="lycoris.kohya",
    )
    assert fate(outcome, "network_weights") == "mapped"
    assert {b.alpha for b in plan_of(outcome, tmp_path).adapter.blocks} == {4.0}


def test_a_hand_written_dylora_spec_starts_from_a_file(tmp_path):
    write_lora(tmp_path / "prev.safetensors", MODULES)
    planned = _plan(
        tmp_path, 'rank = 8\nalpha = 4.0\nunit = 4\ninit_weights = "prev.safetensors"', kind="dylora"
    )
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    assert planned.plan.adapter.init_layers == 2  # Q, OUT (the text encoder does not train)


def _convert_sdxl(tmp_path, args: str):
    images(tmp_path / "x" / "10_ohwx", 3, (1024, 1024))
    return kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
        "--train_data_dir=x --resolution=1024 --network_module=networks.lora --network_dim=32 "
        f"{args} --learning_rate=1e-4 --max_train_steps=200 --save_model_as=safetensors --cache_latents",
    )


SDXL_MODULES = {
    # kohya's names in the original U-Net layout -> (rank, alpha, width, kernel)
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (8, 4.0, 640, 0),
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k": (4, 2.0, 640, 0),
    "lora_unet_output_blocks_0_1_transformer_blocks_1_ff_net_2": (2, 1.0, 1280, 0),
    "lora_unet_middle_block_1_proj_in": (4, 2.0, 1280, 0),
    "lora_unet_input_blocks_1_0_emb_layers_1": (8, 4.0, 320, 0),
    "lora_unet_input_blocks_1_0_in_layers_2": (4, 1.0, 320, 3),
    "lora_unet_input_blocks_3_0_op": (2, 2.0, 320, 3),
    "lora_unet_output_blocks_2_2_conv": (4, 1.0, 1280, 3),
    "lora_unet_output_blocks_8_0_out_layers_3": (1, 0.5, 320, 3),
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (8, 4.0, 768, 0),
    "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": (8, 4.0, 1280, 0),
}
# the diffusers path each names
SDXL_PATHS = {
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": ((8, 4.0), (0, 1.0)),
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k": ((4, 2.0), (0, 1.0)),
    "up_blocks.0.attentions.0.transformer_blocks.1.ff.net.2": ((2, 1.0), (0, 1.0)),
    "mid_block.attentions.0.proj_in": ((4, 2.0), (0, 1.0)),
    "down_blocks.0.resnets.0.time_emb_proj": ((8, 4.0), (0, 1.0)),
    "down_blocks.0.resnets.0.conv1": ((0, 1.0), (4, 1.0)),
    "down_blocks.0.downsamplers.0.conv": ((0, 1.0), (2, 2.0)),
    "up_blocks.0.upsamplers.0.conv": ((0, 1.0), (4, 1.0)),
    "up_blocks.2.resnets.2.conv2": ((0, 1.0), (1, 0.5)),
}


def test_sdxl_dim_from_weights_builds_each_module_at_its_rank_convolutions_too(tmp_path):
    """kohya's SDXL files name the original U-Net layout (`input_blocks_4_1_...`): each module becomes a block
    on diffusers' path at its rank and alpha, the 3x3 convolutions at their conv rank and alpha each, and a
    rank-0 block leaves every module the file lacks without a LoRA (create_network_from_weights)."""
    write_lora(tmp_path / "prev.safetensors", SDXL_MODULES)
    outcome = _convert_sdxl(tmp_path, "--network_weights=prev.safetensors --dim_from_weights")
    assert fate(outcome, "dim_from_weights") == "mapped", outcome
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank, a.alpha, a.conv_rank, a.conv_alpha) == (8, 4.0, 4, 1.0)
    assert "time_emb_proj" in a.denoiser_targets and a.init_layers == len(SDXL_MODULES)

    def ranks(path: str) -> tuple[tuple[int, float], tuple[int, float]]:
        block = next(b for b in a.blocks if re.search(b.pattern, path))
        return (block.rank, block.alpha), (block.conv_rank, block.conv_alpha)

    for path, expected in SDXL_PATHS.items():
        assert ranks(path) == expected, path
    for path in (
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v",
        "down_blocks.0.resnets.0.conv2",
    ):
        assert ranks(path) == ((0, 1.0), (0, 1.0)), path  # not in the file: no LoRA, as kohya builds none


def test_sd_dim_from_weights_with_convolutions_at_several_ranks(tmp_path):
    """SD 1.x: 3x3 convolutions at different ranks each keep theirs (blocks with conv_rank)."""
    other = "lora_unet_down_blocks_1_resnets_0_conv2"
    write_lora(tmp_path / "prev.safetensors", {**MODULES, CONV: (4, 1.0, 320, 3), other: (2, 2.0, 640, 3)})
    a = plan_of(_convert(tmp_path, "--network_weights=prev.safetensors --dim_from_weights"), tmp_path).adapter
    paths = (
        "down_blocks.0.resnets.0.conv1",
        "down_blocks.1.resnets.0.conv2",
        "down_blocks.1.resnets.0.conv1",
    )
    found = [next(b for b in a.blocks if re.search(b.pattern, p)) for p in paths]
    assert [(b.conv_rank, b.conv_alpha) for b in found] == [(4, 1.0), (2, 2.0), (0, 1.0)]


def test_dim_from_weights_with_text_encoder_modules_at_several_ranks(tmp_path):
    """create_network_from_weights builds the text encoders' modules at their own ranks too: SDXL's two
    encoders' modules become [[adapter.text_encoder_blocks]] over `<component>.<path>`, a rank-0 block for the
    modules the file lacks; `rank` / `alpha` are the most frequent pair."""
    te1, te2 = "lora_te1_text_model_encoder_layers_", "lora_te2_text_model_encoder_layers_"
    modules = {
        **SDXL_MODULES,
        te1 + "0_self_attn_k_proj": (4, 2.0, 768, 0),
        te2 + "1_mlp_fc1": (2, 1.0, 1280, 0),
    }
    write_lora(tmp_path / "prev.safetensors", modules)
    outcome = _convert_sdxl(tmp_path, "--network_weights=prev.safetensors --dim_from_weights")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank, a.alpha) == (8, 4.0)

    def rank(path: str) -> tuple[int, float]:
        block = next(b for b in a.text_encoder_blocks if re.search(b.pattern, path))
        return block.rank, block.alpha

    assert rank("text_encoder.text_model.encoder.layers.0.self_attn.q_proj") == (8, 4.0)
    assert rank("text_encoder.text_model.encoder.layers.0.self_attn.k_proj") == (4, 2.0)
    assert rank("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj") == (8, 4.0)
    assert rank("text_encoder_2.text_model.encoder.layers.1.mlp.fc1") == (2, 1.0)
    assert rank("text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj") == (0, 1.0)  # not in the file
    assert rank("text_encoder.text_model.encoder.layers.1.mlp.fc1") == (0, 1.0)
    assert a.init_layers == len(modules)


def test_dim_from_weights_with_some_text_encoder_modules_builds_only_those(tmp_path):
    """kohya builds no LoRA on a text-encoder module the file lacks: a file with some layers' modules names
    them in [[adapter.text_encoder_blocks]] (a rank-0 block for the rest); so does a file with every module of
    layers 0 and 1 (CLIP has 12: the later ones get no LoRA)."""
    layer = (
        "self_attn_q_proj",
        "self_attn_k_proj",
        "self_attn_v_proj",
        "self_attn_out_proj",
        "mlp_fc1",
        "mlp_fc2",
    )
    whole = {f"lora_te_text_model_encoder_layers_{i}_{m}": (8, 4.0, 768, 0) for i in range(2) for m in layer}
    write_lora(tmp_path / "prev.safetensors", {Q: (8, 4.0, 320, 0), **whole})
    args = "--network_weights=prev.safetensors --dim_from_weights"
    blocks = plan_of(_convert(tmp_path, args), tmp_path).adapter.text_encoder_blocks
    hits = [
        next(
            (b.rank, b.alpha) for b in blocks if re.search(b.pattern, f"text_encoder.text_model.encoder.{p}")
        )
        for p in ("layers.1.mlp.fc2", "layers.2.mlp.fc2")
    ]
    assert hits == [(8, 4.0), (0, 1.0)]
    write_lora(tmp_path / "prev.safetensors", MODULES)  # one text-encoder module, layer 0's q_proj
    blocks = plan_of(_convert(tmp_path, args), tmp_path).adapter.text_encoder_blocks
    hits = {
        path: next((b.rank, b.alpha) for b in blocks if re.search(b.pattern, path))
        for path in (
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
            "text_encoder.text_model.x.q_proj",
        )
    }
    assert list(hits.values()) == [(8, 4.0), (0, 1.0)]


def test_dim_from_weights_without_one_sdxl_encoders_modules_trains_only_the_other(tmp_path):
    """create_network_from_weights builds no LoRA on an encoder the file has no module of: SDXL's second
    (train.text_encoder_2 = false), or its first (train.text_encoder = false, the second training alone)."""
    te1, te2 = "lora_te1_text_model_encoder_layers_", "lora_te2_text_model_encoder_layers_"
    unet = {k: v for k, v in SDXL_MODULES.items() if k.startswith("lora_unet_")}
    args = "--network_weights=prev.safetensors --dim_from_weights"
    for modules, trains in (
        (
            {te1 + "0_self_attn_q_proj": (8, 4.0, 768, 0), te1 + "1_mlp_fc1": (4, 2.0, 768, 0)},
            ("lora", "frozen"),
        ),
        ({te2 + "0_self_attn_q_proj": (8, 4.0, 1280, 0)}, ("frozen", "lora")),
    ):
        write_lora(tmp_path / "prev.safetensors", {**unet, **modules})
        plan = plan_of(_convert_sdxl(tmp_path, args), tmp_path)
        found = {c.name: c.trainable for c in plan.precision.components}
        assert (found["text_encoder"], found["text_encoder_2"]) == trains


def test_sdxl_second_encoder_modules_fit_its_own_targets(tmp_path):
    """kohya's `lora_te2_` modules (SDXL's OpenCLIP bigG) are checked against adapter.text_encoder_2_targets
    where it names other layers than text_encoder_targets (the first encoder's, `lora_te1_`)."""
    te1 = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    te2 = "lora_te2_text_model_encoder_layers_0_mlp_fc1"
    modules = {te1: (8, 4.0, 768, 0), te2: (8, 4.0, 1280, 0)}
    write_lora(tmp_path / "prev.safetensors", modules)
    own = 'text_encoder_targets = ["q_proj"]\ntext_encoder_2_targets = ["fc1"]\n'
    adapter = f'rank = 8\nalpha = 4.0\ninit_weights = "prev.safetensors"\n{own}'
    train = "[train]\ntext_encoder = true\n"
    planned = _plan(tmp_path, adapter, train, base=SDXL)
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    assert planned.plan.adapter.init_layers == 2
    assert planned.plan.adapter.text_encoder_2_targets == ("fc1",)
    swapped = adapter.replace('["fc1"]', '["q_proj"]')
    planned = _plan(tmp_path, swapped, train, base=SDXL)
    hit = next(d for d in planned.diagnostics if d.code == "DBS356")
    assert "adapter.text_encoder_2_targets does not name (q_proj)" in hit.message
