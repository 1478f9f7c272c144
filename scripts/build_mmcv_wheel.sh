#!/usr/bin/env bash
# Build mmcv 2.1.0 (with its compiled CPU ops) from the PyPI sdist, once, into the wheel cache.
# Why: PyPI has no mmcv wheel for torch 2.14 / py3.11, mmcv-lite lacks mmcv.ops (which
# MMSegmentation imports), and torch 2.14's headers need C++20 while mmcv's setup.py
# hard-codes -std=c++14/17.
# Fast: most of the time went into re-reading torch's headers for each of the 77 sources,
# with debug info nobody uses. scripts/mmcv_ninja.py stands in for `ninja` in torch's
# extension build: it adds -g0 and precompiles mmcv's common header (pytorch_cpp_helper.hpp)
# with the exact flags of the build, checks that gcc uses it, and falls back to the plain
# -g0 build when it cannot (MMCV_PCH=0 forces that). The generated code is the same; the
# build prints one progress line per object with an estimate of the time left.
# A cached mmcv-2.1.0 wheel, also one built by an earlier version of this script (same
# sources and flags, plus debug info), is reused.
# Usage: scripts/build_mmcv_wheel.sh PYTHON CACHE_DIR   (PYTHON must already have torch)
# Environment: MAX_JOBS=N parallel compiles (default: nproc), MMCV_PCH=0 (see above).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY="$(cd "$(dirname "${1:?python executable}")" && pwd)/$(basename "$1")"
CACHE=${2:?cache dir}
VERSION=2.1.0
mkdir -p "$CACHE"
if ls "$CACHE"/mmcv-$VERSION-*.whl >/dev/null 2>&1; then
  echo "mmcv $VERSION wheel already cached: $(ls "$CACHE"/mmcv-$VERSION-*.whl)"
  # how that build went (the line this script printed when it built the wheel), if recorded
  sed -n 's/^mmcv [0-9.]* built in /  built earlier in /p' "$CACHE/mmcv-build.log" 2>/dev/null | tail -1
  exit 0
fi
T0=$SECONDS
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip download --no-deps --no-build-isolation --no-binary=:all: -q -d "$WORK" "mmcv==$VERSION"
tar -xzf "$WORK/mmcv-$VERSION.tar.gz" -C "$WORK"
SRC="$WORK/mmcv-$VERSION"
sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
grep -q -- '-std=c++20' "$SRC/setup.py" || { echo "could not patch the C++ standard in mmcv's setup.py" >&2; exit 1; }
"$PY" -m pip install -q ninja
# torch runs `ninja` from PATH: put the shim first, pointing at the real one.
REAL_NINJA=$(dirname "$PY")/ninja
[ -x "$REAL_NINJA" ] || REAL_NINJA=$(command -v ninja) || { echo "no ninja found" >&2; exit 1; }
mkdir -p "$WORK/bin"
printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$PY" "$HERE/mmcv_ninja.py" >"$WORK/bin/ninja"
chmod +x "$WORK/bin/ninja"
JOBS=${MAX_JOBS:-$(nproc)}
echo "compiling mmcv $VERSION ops (CPU, C++20, $JOBS jobs): about 3 min on 2 idle cores, once per machine"
# pip -v streams the build's output: all of it goes to build.log, the progress lines (which
# mmcv_ninja.py starts with "[mmcv") to the terminal.
set +e
( cd "$SRC" && PATH="$WORK/bin:$PATH" MMCV_REAL_NINJA="$REAL_NINJA" MMCV_WITH_OPS=1 FORCE_CUDA=0 \
    MAX_JOBS=$JOBS "$PY" -m pip wheel -v --no-deps --no-build-isolation -w "$WORK/dist" . ) 2>&1 |
  tee "$WORK/build.log" | sed -un 's/^ *\(\[mmcv[] ]\)/\1/p'
BUILD_RC=${PIPESTATUS[0]}
set -e
if [ "$BUILD_RC" != 0 ] || ! ls "$WORK"/dist/mmcv-$VERSION-*.whl >/dev/null 2>&1; then
  tail -40 "$WORK/build.log" >&2
  cp "$WORK/build.log" "$CACHE/mmcv-build-failed.log"
  echo "mmcv build failed; full log in $CACHE/mmcv-build-failed.log" >&2
  exit 1
fi
# Write under a temporary name first so an interrupted copy never looks like a cached wheel.
WHL=$(ls "$WORK"/dist/mmcv-$VERSION-*.whl)
cp "$WHL" "$CACHE/.partial.whl" && mv "$CACHE/.partial.whl" "$CACHE/$(basename "$WHL")"
SUMMARY="mmcv $VERSION built in $((SECONDS - T0)) s (download, compile, wheel; $(sed -n 's/^ *\[mmcv\] compiled //p' "$WORK/build.log" | tail -1))"
{ cat "$WORK/build.log"; echo "$SUMMARY"; } >"$CACHE/mmcv-build.log"
echo "$SUMMARY; cached $CACHE/$(basename "$WHL")"
