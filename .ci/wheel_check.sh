#!/usr/bin/env bash
# CI: the package as a user gets it. Build the wheel from the tracked files, install it into a fresh venv outside
# the checkout, and from an empty folder run `cliper segment`, `cliper demo` and `cliper eval --dataset synthetic`
# on the smoke profile (offline). Nothing is written into the checkout.
#   PYTHON=python3.12 .ci/wheel_check.sh                                   # another interpreter
#   WHEEL_CHECK_VENV=/tmp/venv312 .ci/wheel_check.sh     # a venv that already holds torch (skips its ~7 min install)
#   WHEEL_CHECK_TORCH="torch==2.15.0 torchvision==0.30.0" .ci/wheel_check.sh   # another torch (default: the Makefile's pin)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${WHEEL_CHECK_TORCH:-$(sed -n 's/.*pip install --quiet \(torch==[^ ]* torchvision==[^ ]*\).*/\1/p' "$REPO/Makefile" | head -1)}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cliper-wheel-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH  # the installed wheel, never the checkout, must answer
export HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
pip_quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }  # local index noise
t0=$SECONDS

echo "== wheel: build from the tracked files of $REPO"
mkdir -p "$WORK/src"
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$REPO" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf - 2>/dev/null) | tar -C "$WORK/src" -xf -
else
    cp -r "$REPO"/. "$WORK/src"
fi
pip_quiet "$PYTHON" -m pip wheel --quiet --no-deps -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/*.whl)"
echo "   $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) kB)"

if [ -n "${WHEEL_CHECK_VENV:-}" ]; then  # a venv made earlier by this script's steps, torch already in it
    BIN="$WHEEL_CHECK_VENV/bin"
    echo "== reused venv $WHEEL_CHECK_VENV ($("$BIN/python" -V)), then the wheel with its core dependencies"
else
    echo "== fresh venv ($("$PYTHON" -V)), $TORCH_SPEC, then the wheel with its core dependencies"
    "$PYTHON" -m venv "$WORK/venv"
    BIN="$WORK/venv/bin"
    # shellcheck disable=SC2086
    pip_quiet "$BIN/python" -m pip install --quiet --no-compile $TORCH_SPEC  # no .pyc for 5 GB of torch: minutes saved
fi
pip_quiet "$BIN/python" -m pip install --quiet --force-reinstall --no-deps "$WHEEL"
pip_quiet "$BIN/python" -m pip install --quiet "$WHEEL"
echo "   installed in $((SECONDS - t0)) s"

mkdir -p "$WORK/run" && cd "$WORK/run"
"$BIN/python" - <<'PY'
import cliper_lib, torch
from cliper_lib.config import DATA_DIR
from cliper_lib.provenance import IN_CHECKOUT
assert "site-packages" in cliper_lib.__file__ and not IN_CHECKOUT, cliper_lib.__file__
assert (DATA_DIR / "samples" / "samples.yaml").is_file() and (DATA_DIR / "classes" / "voc21.txt").is_file()
print(f"   cliper_lib from {cliper_lib.__file__}, torch {torch.__version__}; package data in {DATA_DIR}")
PY
SAMPLE="$("$BIN/python" -c 'from cliper_lib.suite.toolkit.samples import sample_path; print(sample_path("chelsea"))')"

echo "== cliper segment --profile smoke"
"$BIN/cliper" segment "$SAMPLE" --classes "cat; sofa" --profile smoke --out seg --quiet
test -s seg/chelsea_overlay.png && test -s seg/chelsea_labels.png && test -s seg/chelsea_scores.json
echo "== cliper demo --profile smoke"
"$BIN/cliper" demo --profile smoke --out demo --quiet | tail -2
echo "== cliper eval --dataset synthetic --profile smoke"
"$BIN/cliper" eval --dataset synthetic --profile smoke --limit 4 --out eval/synthetic.json --no-progress | tail -3
test -s eval/synthetic.json
echo "== cliper reproduce outside a checkout says what it needs"
if "$BIN/cliper" reproduce --plan smoke 2>reproduce.err; then echo "reproduce ran outside a checkout?"; exit 1; fi
grep -q "needs a checkout" reproduce.err || { cat reproduce.err; exit 1; }
sed 's/^/   /' reproduce.err | cut -c1-160
if [ -e "$BIN/jupyter" ]; then echo "the core install pulled in Jupyter"; exit 1; fi
echo "   core install: no Jupyter pulled in"
echo "== wheel check passed in $((SECONDS - t0)) s"
