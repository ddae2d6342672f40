"""peft's target-name rule (dbspec/util/targets.py) against its plain statement: a path is picked by a
target equal to it or that it ends with after a dot."""

from hypothesis import given
from hypothesis import strategies as st

from dbspec.util.targets import suffixes, targeted

_PART = st.sampled_from(["a", "b", "to_q", "0", "1", "attn", "ab"])
_PATH = st.lists(_PART, min_size=1, max_size=5).map(".".join)


def _plain(path: str, targets) -> bool:
    return any(path == t or path.endswith("." + t) for t in targets)


@given(_PATH, st.lists(_PATH, max_size=6))
def test_targeted_is_peft_rule(path, targets):
    assert targeted(path, frozenset(targets)) == _plain(path, targets)
    assert targeted(path, tuple(targets)) == _plain(path, targets)


@given(st.lists(_PATH, max_size=6), _PATH)
def test_suffixes_are_the_targets_that_pick_a_path(paths, target):
    assert (target in suffixes(paths)) == any(_plain(p, (target,)) for p in paths)


def test_a_partial_name_picks_nothing():
    assert not targeted("down.attn.to_q", {"o_q", "n.to_q", "down.attn.to_q.x"})
    assert targeted("down.attn.to_q", {"attn.to_q"})
