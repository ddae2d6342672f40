"""`dbspec env`'s known-bad table and report, with versions given (no torch)."""

from __future__ import annotations

from dbspec.envreport import KNOWN_BREAKS, LIBRARIES, breaks_for, render_text, report

PEFT_GATE = {"transformers": ">=5.24", "peft": "<0.22"}


def test_transformers_5_24_with_peft_0_21_is_flagged():
    found = breaks_for({"transformers": "5.24.0", "peft": "0.21.2"})
    assert [b.when for b in found] == [PEFT_GATE]
    assert "add_adapter" in found[0].effect and "requirements/lock.txt" in found[0].fix


def test_the_locked_pair_a_fixed_peft_and_a_missing_package_are_not_flagged():
    assert breaks_for({"transformers": "5.23.0", "peft": "0.21.2"}) == []
    assert breaks_for({"transformers": "5.24.0", "peft": "0.22.0"}) == []
    assert breaks_for({"transformers": "5.24.0", "peft": None}) == []
    assert breaks_for({"transformers": "not-a-version", "peft": "0.21.2"}) == []


def test_prereleases_count_as_their_release():
    assert breaks_for({"transformers": "5.25.0rc1", "peft": "0.22.0.dev0"}) == []
    assert len(breaks_for({"transformers": "5.25.0rc1", "peft": "0.21.2"})) == 1


def test_every_known_break_names_installed_packages_and_says_what_to_do():
    for known in KNOWN_BREAKS:
        assert known.when and known.effect and known.fix
        assert set(known.when) <= set(LIBRARIES) | {"torch"}


def test_report_without_torch_says_what_still_works():
    data = report({"installed": False})
    assert set(data["libraries"]) == set(LIBRARIES)
    text = render_text(data)
    assert "torch            not installed (dbspec check and plan work" in text
    assert f"python           {data['python']}" in text


def test_text_lists_cuda_devices_and_warnings():
    facts = {
        "installed": True,
        "version": "2.13.0+cu130",
        "build": "CUDA 13.0",
        "cuda_available": True,
        "cuda_devices": [{"index": 0, "name": "NVIDIA H200", "memory_gib": 139.8, "capability": "9.0"}],
        "mps_available": False,
        "bf16": "supported on cuda:0",
        "cpu_capability": "AVX2",
    }
    data = report(facts)
    data["warnings"] = [{"when": PEFT_GATE, "effect": "E", "fix": "F"}]
    text = render_text(data)
    assert "cuda             0: NVIDIA H200 (140 GiB, cc 9.0)" in text
    assert "warning: transformers >=5.24, peft <0.22: E\n  fix: F" in text
