#!/usr/bin/env bash
# Set up .venv with the whole verified stack (`make setup`). Idempotent and fast to re-run:
# every step writes a stamp (.venv/.setup-stamps/STEP) holding a hash of what it depends on
# (its own code, the pinned versions, setup.py, the Python version); a step is skipped
# when its stamp matches and its quick import check passes.
#
# Environment:
#   PYTHON=python3          interpreter used to create .venv (>= 3.10)
#   CONVNEXT_CACHE=DIR      download/wheel cache (default ~/.cache/convnext-backbone);
#                           the mmcv wheel built here (~3 min) is reused from it
#   CONVNEXT_D2_SOURCE=1    install detectron2 from its official source repository with its
#                           compiled ops instead of the repacked PyPI wheel (needs network
#                           access to github.com and a C++ toolchain)
set -eEuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
CACHE=${CONVNEXT_CACHE:-$HOME/.cache/convnext-backbone}
WHEELS="$CACHE/wheels"
CONSTRAINTS="$ROOT/scripts/constraints.txt"
STAMPS="$VENV/.setup-stamps"
D2_SOURCE=${CONVNEXT_D2_SOURCE:-0}
SAL_WHEEL_SPEC="sal-detectron2==0.7.2"
D2_WHEEL_NAME="detectron2-0.7.2+pypi.sal-py3-none-any.whl"
MMCV_VERSION=2.1.0

STEP=venv
HINT="check that ${PYTHON:-python3} is Python >= 3.10 with the venv module (apt-get install python3-venv)"
on_error() {
  local rc=$?
  echo "setup step '$STEP' failed: $HINT" >&2
  exit "$rc"
}
trap on_error ERR

pip_install() { "$PY" -m pip install --disable-pip-version-check -c "$CONSTRAINTS" "$@"; }

# ---- steps: step_NAME does the work; CHECKS[NAME] (below) tests that its result is there ----

step_base() {
  # A fresh venv has setuptools 65 from ensurepip: ask for >= 70.1 (constraints cap < 81).
  pip_install torch torchvision numpy "setuptools>=70.1" wheel
}

step_detectron2() {
  if [ "$D2_SOURCE" = 1 ]; then
    # Official source install with compiled ops (opt-in; not used by CI or the tests).
    pip_install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'
    return
  fi
  local dl="$CACHE/downloads"
  mkdir -p "$dl" "$WHEELS"
  ls "$dl"/sal_detectron2-0.7.2-*.whl >/dev/null 2>&1 ||
    "$PY" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
      --python-version 3.10 -d "$dl" "$SAL_WHEEL_SPEC"
  # Repacking takes seconds: redo it so a changed repack script takes effect.
  "$PY" scripts/repack_detectron2_wheel.py "$(ls "$dl"/sal_detectron2-0.7.2-*.whl | head -1)" "$WHEELS"
  # Same version string as a previous repack: force the files in, then resolve its deps.
  pip_install --force-reinstall --no-deps "$WHEELS/$D2_WHEEL_NAME"
  pip_install "$WHEELS/$D2_WHEEL_NAME"
}

step_mmcv() {
  bash scripts/build_mmcv_wheel.sh "$PY" "$WHEELS"
  pip_install "$(ls "$WHEELS"/mmcv-$MMCV_VERSION-*.whl | head -1)"
}

step_project() {
  # --no-build-isolation: build with the venv's setuptools (<81), no download.
  # Editable mode: setuptools' default (PEP 660 "lenient") installs an import finder that
  # maps convnext_backbone -> ./convnext_backbone and detectron2_convnext / mmseg_convnext
  # -> ./integrations/*, and sees modules added later. editable_mode=compat only puts the
  # repo root on sys.path (the integrations would not import) and strict misses new files.
  pip_install --no-build-isolation -e ".[all]"
}

# ---- driver ----

STEPS=(base detectron2 mmcv project)
declare -A DESCRIBE=(
  [base]="torch, torchvision, numpy<2, setuptools<81, wheel"
  [detectron2]="detectron2 ($([ "$D2_SOURCE" = 1 ] && echo "official source with compiled ops" || echo "PyPI sal-detectron2 repacked as pure Python"))"
  [mmcv]="mmcv $MMCV_VERSION with ops (C++20 build, cached in $WHEELS; ~3 min the first time)"
  [project]="convnext-backbone (editable) with extras [all]"
)
declare -A HINTS=(
  [base]="pip could not install torch/torchvision/numpy/setuptools; check network access to PyPI and scripts/constraints.txt"
  [detectron2]="$([ "$D2_SOURCE" = 1 ] &&
    echo "the source install needs access to github.com and a C++ toolchain (CUDA for GPU ops); without them run 'make setup' without CONVNEXT_D2_SOURCE" ||
    echo "could not get or install detectron2; delete $WHEELS/$D2_WHEEL_NAME and $CACHE/downloads and retry")"
  [mmcv]="the mmcv build failed; read $WHEELS/mmcv-build-failed.log (needs a C++ compiler, e.g. apt-get install build-essential), delete it and retry"
  [project]="pip install -e .[all] failed or a package does not import; read the pip output above, then run '$PY -m convnext_backbone.doctor'"
)
# Quick "is it installed" test per step: Python run from / (so the project's packages must
# come from the editable install, not the working directory). All of them run in one
# process (torch imports once) when deciding what to skip. The project's packages (the list in
# convnext_backbone/adapters.py, read from the repository at $CONVNEXT_ROOT) are found, not
# imported: a bug in an adapter is for the tests to report.
declare -A CHECKS=(
  [base]="import torch, torchvision, numpy, pkg_resources"
  [detectron2]="import detectron2.model_zoo"
  [mmcv]="from mmcv.ops import nms"
  [project]="import importlib.util as u, os, runpy, mmseg, mmdet, mmengine, transformers, timm, onnx, onnxruntime, pycocotools, ruff
packages = runpy.run_path(os.environ['CONVNEXT_ROOT'] + '/convnext_backbone/adapters.py')['PACKAGES']
missing = [m for m in packages if u.find_spec(m) is None]
assert not missing, f'not installed: {missing}'"
)
# Files whose content a step depends on (besides its own function body).
declare -A INPUTS=(
  [base]="scripts/constraints.txt"
  [detectron2]="scripts/constraints.txt scripts/repack_detectron2_wheel.py"
  [mmcv]="scripts/constraints.txt scripts/build_mmcv_wheel.sh scripts/mmcv_ninja.py"
  [project]="scripts/constraints.txt setup.py convnext_backbone/adapters.py"
)

step_hash() {
  local name=$1 f
  {
    declare -f "step_$name"
    echo "${CHECKS[$name]}"
    for f in ${INPUTS[$name]}; do cat "$f"; done
    echo "$PY_VERSION"
    case $name in  # settings that change what a step installs
      detectron2) echo "d2_source=$D2_SOURCE cache=$CACHE" ;;
      mmcv) echo "cache=$CACHE" ;;
    esac
  } | sha256sum | cut -d' ' -f1
}

# check NAME...: run those steps' checks in one Python process; print the names that fail
# (the errors go to $STAMPS/.check.log).
CHECK_RUNNER="import sys, warnings
warnings.simplefilter('ignore')
failed = []
for name, code in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        exec(compile(code, name, 'exec'), {})
    except BaseException as e:
        failed.append(name)
        print(f'check {name}: {type(e).__name__}: {e}', file=sys.stderr)
print(' '.join(failed))"
check() {
  local args=() name
  for name in "$@"; do args+=("$name" "${CHECKS[$name]}"); done
  (cd / && CONVNEXT_ROOT="$ROOT" "$PY" -c "$CHECK_RUNNER" "${args[@]}" 2>"$STAMPS/.check.log")
}

START=$SECONDS
if [ ! -x "$PY" ]; then
  echo "[setup] creating $VENV"
  "${PYTHON:-python3}" -c 'import sys; assert sys.version_info >= (3, 10), sys.version'
  "${PYTHON:-python3}" -m venv "$VENV"
fi
mkdir -p "$STAMPS"
PY_VERSION=$("$PY" -c "import sys; print(sys.version)")
FAILING=" $(check "${STEPS[@]}" || echo "${STEPS[*]}") "  # a crash of the check = all stale

N=$((${#STEPS[@]} + 1))
k=0
for STEP in "${STEPS[@]}"; do
  k=$((k + 1))
  HINT=${HINTS[$STEP]}
  stamp="$STAMPS/$STEP"
  want=$(step_hash "$STEP")
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [[ "$FAILING" != *" $STEP "* ]]; then
    echo "[setup $k/$N] ${DESCRIBE[$STEP]}: up to date"
    continue
  fi
  echo "[setup $k/$N] ${DESCRIBE[$STEP]}"
  rm -f "$stamp"
  t0=$SECONDS
  "step_$STEP"
  if [ -n "$(check "$STEP")" ]; then
    cat "$STAMPS/.check.log" >&2
    HINT="installed, but its import check fails (above): ${HINTS[$STEP]}"
    false
  fi
  echo "$want" >"$stamp"
  echo "[setup $k/$N] done in $((SECONDS - t0)) s"
done

STEP=doctor
HINT="a required dependency is missing; read the report above"
echo "[setup $N/$N] environment check (convnext-backbone doctor)"
"$PY" -m convnext_backbone.doctor
echo "[setup] ready in $((SECONDS - START)) s; activate with: source .venv/bin/activate"
