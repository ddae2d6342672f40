"""The starting file of `adapter.init_weights`: what the plan-time checks of compiler/init_weights.py and
compiler/mixed_init_file.py (a run of several kinds) share: the spec key, kohya's component prefixes,
LyCORIS's tensor names per kind, reading the file and the tally of its layers."""

from __future__ import annotations

from dbspec.compiler.context import Context
from dbspec.compiler.safetensors_header import ModelFileError
from dbspec.families import family_spec, flow_text_prefixes, lycoris_text_prefixes

KEY = ("adapter", "init_weights")


def kohya_component_prefixes(family: str) -> dict[str, str]:
    """kohya's module-name prefix -> the component it adapts (networks/lora.py: `lora_te` for one text
    encoder, `lora_te1` / `lora_te2` for SDXL's two)."""
    spec = family_spec(family)
    names = spec.text_encoder_names
    text = {"lora_te_": names[0]} if len(names) == 1 else {f"lora_te{i + 1}_": n for i, n in enumerate(names)}
    return {"lora_unet_": spec.denoiser, **text}


def flow_component_prefixes(family: str, lycoris: bool = False) -> dict[str, str]:
    """kohya's module-name prefix -> the plan component it adapts, for Flux and SD3 (the plan names the
    denoiser `unet` in every family); `lycoris`: lycoris.kohya's prefixes (T5-XXL lora_te2_ on Flux)."""
    names = family_spec(family).text_encoder_names
    prefixes = lycoris_text_prefixes(family) if lycoris else flow_text_prefixes(family)
    return {"lora_unet_": "unet", **dict(zip(prefixes, names))}


def tally(ctx: Context, path, ignored: dict[str, int], used: int) -> tuple[str, int]:
    """The file's layers of models that do not train (DBS358) and none of one that does (DBS356); the checked
    path and how many layers start the run."""
    for component, count in ignored.items():
        ctx.report(
            "DBS358",
            "warning",
            f"`{path}` holds {count} LoRA layer(s) of `{component}`, which does not train: they are ignored",
            KEY,
        )
    if not used:
        ctx.report("DBS356", "error", f"`{path}` holds no layer of a model this run trains", KEY)
        return "", 0
    return str(path), used


# LyCORIS's LoKr / LoHa tensors of one module (lycoris/modules/lokr.py, loha.py state dicts)
FACTORS = {
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    "full": ("diff", "diff_b"),  # FullModule's custom_state_dict
    "ia3": ("weight", "on_input"),  # IA3Module's
    "diag-oft": ("oft_blocks", "rescale"),  # DiagOFTModule's (and its alpha, the constraint)
    "boft": ("oft_blocks", "rescale"),  # ButterflyOFTModule's
    "glora": ("a1.weight", "a2.weight", "b1.weight", "b2.weight"),  # GLoRAModule's
    "tlora": ("q_layer.weight", "p_layer.weight", "lambda_layer"),  # TLoraModule's custom_state_dict
}


def has_norms(adapter) -> bool:
    """Whether the adapter offsets norms (LyCORIS's train_norm NormModules), whose `w_norm` / `b_norm` a
    lycoris.kohya file holds beside the modules and load_state_dict(strict=False) loads into them
    (runtime/init_weights.py loads them into the offsets)."""
    keys = ("denoiser_norms", "text_encoder_norms", "text_encoder_2_norms")
    return any(getattr(adapter, key, ()) for key in keys)


def module_name(key: str, tensors: tuple[str, ...]) -> str | None:
    """The module a LyCORIS tensor key belongs to (`<module>.<tensor>`, GLoRA's tensors dotted themselves:
    `a1.weight`), or None when it ends in none of `tensors`."""
    return next((key[: -len(t) - 1] for t in tensors if key.endswith("." + t)), None)


def read_file(ctx: Context, path, reader, what: str):
    """The starting file as `reader` reads it, or None (reported: missing, or unreadable as `what`)."""
    if not path.is_file():
        ctx.report("DBS357", "error", f"{what} file `{path}` not found", KEY, help="check the path")
        return None
    try:
        return reader(path)
    except ModelFileError as exc:
        ctx.report("DBS357", "error", f"`{exc.path}` cannot start the {what}: {exc.reason}", KEY)
        return None


def tally_modules(ctx: Context, path, family: str, modules, prefixes: dict[str, str], components):
    """A LyCORIS file's modules counted by the component kohya's prefix names (DBS356 for one of no model of
    the run), then tallied: (the checked path, the modules of trained components), or ("", 0)."""
    trained = {c.name for c in components if c.trainable == "lora"}
    used, ignored = 0, {}
    for name in sorted(modules):
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is None:
            ctx.report(
                "DBS356",
                "error",
                f"`{path}`: module `{name}` belongs to no model of this {family} run (kohya's prefixes: "
                f"{', '.join(prefixes)})",
                KEY,
                help="start from a file of this model family",
            )
            return "", 0
        if prefixes[prefix] in trained:
            used += 1
        else:
            ignored[prefixes[prefix]] = ignored.get(prefixes[prefix], 0) + 1
    return tally(ctx, path, ignored, used)


def _rows_cols(shapes: dict[str, tuple[int, ...]], module: str) -> tuple[int | None, int | None]:
    """A LyCORIS module's layer rows (out) and columns (in) as its factors give them (LoCon's lora_up /
    lora_down; LoHa's hada_w1_a / hada_w1_b, columns on a Linear only, a convolution's flattened with its
    kernel; LoKr's Kronecker factors' rows and, on a Linear, columns), None where they do not."""

    def get(t: str) -> tuple[int, ...] | None:
        return shapes.get(f"{module}.{t}")

    up, down = get("lora_up.weight"), get("lora_down.weight")
    if up and down:
        return up[0], down[1]
    a, b = get("hada_w1_a"), get("hada_w1_b")
    if a and b:
        return a[0], (b[1] if get("hada_t1") or len(shapes.get(f"{module}.dora_scale", ())) == 2 else None)
    w1 = get("lokr_w1") or (get("lokr_w1_a") and (get("lokr_w1_a")[0], get("lokr_w1_b")[1]))
    w2 = get("lokr_w2") or (get("lokr_w2_a") and (get("lokr_w2_a")[0], get("lokr_w2_b")[1]))
    if w1 and w2 and not get("lokr_t2"):
        return w1[0] * w2[0], (w1[1] * w2[1] if len(w2) == 2 else None)
    return None, None


def other_axis_doras(shapes: dict[str, tuple[int, ...]], axis: str) -> list[str]:
    """The `dora_scale` tensors of a LyCORIS file (tensor name -> shape) shaped for the other axis than
    `axis` ("output": LyCORIS's wd_on_out, one magnitude per output row, (out, 1, ...); "input": one per input
    column, (1, in, ...)), each as "`<module>.dora_scale` has shape [...], not [...] (...)": LoConModule's,
    LohaModule's and LokrModule's `dora_scale` is built in the run's axis shape, so load_state_dict fails
    with a size mismatch on such a file (kohya and LyCORIS alike)."""
    found = []
    for key in sorted(shapes):
        if not key.endswith(".dora_scale") or len(shapes[key]) < 2:
            continue
        shape, module = tuple(shapes[key]), key[: -len(".dora_scale")]
        ones = all(d == 1 for d in shape[2:])
        per_input = ones and shape[0] == 1 and shape[1] > 1
        per_output = ones and shape[1] == 1 and shape[0] > 1
        if not (per_input if axis == "output" else per_output):
            continue
        rows, cols = _rows_cols(shapes, module)
        tail = [1] * (len(shape) - 2)
        if axis == "output":
            want = f"[{rows if rows else 'out'}, 1{''.join(', 1' for _ in tail)}]"
            what = "one magnitude per input column (wd_on_output=False), the run's one per output row"
        else:
            want = f"[1, {cols if cols else 'in'}{''.join(', 1' for _ in tail)}]"
            what = "one magnitude per output row (wd_on_output=True), the run's one per input column"
        found.append(f"`{key}` has shape {list(shape)}, not {want} ({what})")
    return found
