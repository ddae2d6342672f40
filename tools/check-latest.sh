#!/usr/bin/env bash
# Run the test suite in a fresh venv against the newest releases that pyproject.toml allows (ignoring the lock
# and requirements/constraints.txt), or with --lowest against the oldest allowed releases of dbspec's direct
# dependencies (proves the lower bounds). Prints which packages moved against requirements/lock.txt and which
# tests failed. Not part of CI's pass/fail: upstream releases must never block landing.
#   tools/check-latest.sh [--lowest] [--keep DIR] [extra pytest args...]
# TORCH="torch==2.13.0" selects the torch to install first (the CPU wheel here).
set -uo pipefail
cd "$(dirname "$0")/.."
mode=highest; dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --lowest) mode=lowest-direct; shift ;;
    --keep) dir="$2"; shift 2 ;;
    *) break ;;
  esac
done
dir=${dir:-$(mktemp -d -t dbspec-check-XXXX)}
venv="$dir/venv"
echo "== $mode releases, venv in $venv"
python3 -m venv "$venv" || exit 2
"$venv/bin/pip" install -q "${TORCH:-torch==2.13.0}" uv || exit 2
"$venv/bin/uv" pip compile pyproject.toml --extra test --resolution "$mode" --python "$venv/bin/python" \
  --override requirements/overrides.txt -q -o "$dir/resolved.txt" || exit 2
grep -v "sys_platform == 'never'" "$dir/resolved.txt" > "$dir/install.txt"
"$venv/bin/pip" install -q -r "$dir/install.txt" -e ".[test]" || exit 2

echo "== packages that differ from requirements/lock.txt (locked -> tested)"
"$venv/bin/python" - "$dir/install.txt" <<'PY'
import sys
from packaging.requirements import InvalidRequirement, Requirement
def pins(path):
    """name -> version of the lines that apply to this interpreter and platform (the lock is universal)."""
    out = {}
    for line in open(path):
        try:
            req = Requirement(line.split("#")[0].strip())
        except InvalidRequirement:
            continue
        if (req.marker is None or req.marker.evaluate()) and str(req.specifier).startswith("=="):
            out[req.name.lower()] = str(req.specifier)[2:]
    return out
locked, tested = pins("requirements/lock.txt"), pins(sys.argv[1])
moved = [(n, locked.get(n, "-"), tested.get(n, "-")) for n in sorted(set(locked) | set(tested))
         if locked.get(n) != tested.get(n)]
for name, old, new in moved:
    print(f"  {name}: {old} -> {new}")
print(f"  ({len(moved)} moved)" if moved else "  (none)")
PY

echo "== dbspec env"
"$venv/bin/dbspec" env || true
echo "== tests"
HF_HUB_OFFLINE=1 "$venv/bin/python" -m pytest -q -n 2 -p no:cacheprovider -rf "$@" | tee "$dir/pytest.log" | tail -n 40
status=${PIPESTATUS[0]}
echo "== failed tests"
grep -E "^FAILED|^ERROR" "$dir/pytest.log" || echo "  (none)"
exit "$status"
