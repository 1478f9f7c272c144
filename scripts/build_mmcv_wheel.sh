#!/usr/bin/env bash
# Build mmcv 2.1.0 (with its compiled CPU ops) from the PyPI sdist, once, into the wheel cache.
# Why: PyPI has no mmcv wheel for torch 2.14 / py3.11, mmcv-lite lacks mmcv.ops (which
# MMSegmentation imports), and torch 2.14's headers need C++20 while mmcv's setup.py
# hard-codes -std=c++14/17.
# Usage: scripts/build_mmcv_wheel.sh PYTHON CACHE_DIR   (PYTHON must already have torch)
set -euo pipefail
PY="$(cd "$(dirname "${1:?python executable}")" && pwd)/$(basename "$1")"
CACHE=${2:?cache dir}
VERSION=2.1.0
mkdir -p "$CACHE"
if ls "$CACHE"/mmcv-$VERSION-*.whl >/dev/null 2>&1; then
  echo "mmcv $VERSION wheel already cached: $(ls "$CACHE"/mmcv-$VERSION-*.whl)"
  exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip download --no-deps --no-build-isolation --no-binary=:all: -q -d "$WORK" "mmcv==$VERSION"
tar -xzf "$WORK/mmcv-$VERSION.tar.gz" -C "$WORK"
SRC="$WORK/mmcv-$VERSION"
sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
grep -q -- '-std=c++20' "$SRC/setup.py" || { echo "could not patch the C++ standard in mmcv's setup.py" >&2; exit 1; }
"$PY" -m pip install -q ninja
echo "compiling mmcv $VERSION ops (CPU, C++20): ~20 min on 2 cores, once per machine"
( cd "$SRC" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    "$PY" -m pip wheel --no-deps --no-build-isolation -w "$WORK/dist" . > "$WORK/build.log" 2>&1 ) || {
  tail -40 "$WORK/build.log" >&2
  cp "$WORK/build.log" "$CACHE/mmcv-build-failed.log"
  echo "mmcv build failed; full log in $CACHE/mmcv-build-failed.log" >&2
  exit 1
}
# Write under a temporary name first so an interrupted copy never looks like a cached wheel.
WHL=$(ls "$WORK"/dist/mmcv-$VERSION-*.whl)
cp "$WHL" "$CACHE/.partial.whl" && mv "$CACHE/.partial.whl" "$CACHE/$(basename "$WHL")"
echo "cached $CACHE/$(basename "$WHL")"
