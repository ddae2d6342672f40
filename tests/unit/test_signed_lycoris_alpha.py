"""A lora / loha / lokr adapter's alpha and conv_alpha may be negative (issue 12: LyCORIS's LoConModule,
LohaModule and LokrModule and kohya's LoRAModule keep the sign, scale alpha / rank), but a given alpha of 0
is DBS260 (the updates scaled to nothing; unset it is the rank); a DyLoRA adapter's too (DyLoraModule keeps
the sign); blocks of those kinds (and text-encoder blocks) take a negative alpha, full blocks not (DBS581).
The layers are checked against lycoris-lora in tests/runtime/test_lycoris_entry_signs_locon.py and
test_lycoris_entry_signs_dylora.py."""

from __future__ import annotations

import pytest

from dbspec.frontend import check_spec
from tests.unit.test_rules import DOG, HEAD, STEPS


def _errors(tmp_path, body: str) -> list[tuple[str, str]]:
    """(code, key path) of every error `dbspec check` reports on the spec (structure, ranges, rules)."""
    spec = tmp_path / "spec.toml"
    spec.write_text(HEAD + body + DOG + STEPS, encoding="utf-8")
    return [(d.code, d.path) for d in check_spec(spec).diagnostics if d.severity == "error"]


@pytest.mark.parametrize("kind", ["lora", "loha", "lokr"])
def test_negative_alphas_check_clean(tmp_path, kind):
    body = (
        f'[adapter]\nkind = "{kind}"\nrank = 4\nalpha = -1.0\nconv_rank = 4\nconv_alpha = -2.0\n'
        f"[optimizer]\nlr = 1e-4\n"
        "[[adapter.blocks]]\npattern = 'ff'\nrank = 4\nalpha = -2.0\n"
        "[[adapter.text_encoder_blocks]]\npattern = 'q_proj'\nrank = 4\nalpha = -2.0\n"
    )
    assert [e for e in _errors(tmp_path, body) if "alpha" in e[1]] == []


@pytest.mark.parametrize("kind", ["lora", "loha", "lokr"])
def test_a_given_alpha_of_zero_is_dbs260(tmp_path, kind):
    body = f'[adapter]\nkind = "{kind}"\nrank = 4\nalpha = 0.0\n[optimizer]\nlr = 1e-4\n'
    assert ("DBS260", "adapter.alpha") in _errors(tmp_path, body)


def test_dylora_alphas_take_the_sign_full_blocks_not(tmp_path):
    """A DyLoRA adapter's and a DyLoRA block's negative alphas check clean (was DBS105 / DBS581: LyCORIS's
    DyLoraModule and kohya's DyLoRAModule keep the sign, tests/runtime/test_lycoris_entry_signs_dylora.py);
    a given alpha of 0 is DBS260; a full block's negative alpha stays DBS581."""
    body = '[adapter]\nkind = "dylora"\nrank = 4\nunit = 4\nalpha = -1.0\n[optimizer]\nlr = 1e-4\n'
    assert [e for e in _errors(tmp_path, body) if "alpha" in e[1]] == []
    assert ("DBS260", "adapter.alpha") in _errors(tmp_path, body.replace("-1.0", "0.0"))
    block = (
        '[adapter]\nkind = "lora"\nrank = 4\n[optimizer]\nlr = 1e-4\n'
        "[[adapter.text_encoder_blocks]]\npattern = 'q_proj'\nkind = 'dylora'\nrank = 4\nunit = 4\n"
        "alpha = -2.0\n"
    )
    assert [e for e in _errors(tmp_path, block) if "alpha" in e[1]] == []
    full = block.replace("kind = 'dylora'\nrank = 4\nunit = 4\n", "kind = 'full'\nrank = 4\n")
    assert ("DBS581", "adapter.text_encoder_blocks[0].alpha") in _errors(tmp_path, full)
