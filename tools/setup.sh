#!/usr/bin/env bash
# Install bsmamba2 on a fresh Linux machine into a virtual environment, .venv beside this
# repository (BSMAMBA2_VENV to choose another folder): through apt-get what is missing of
# ffmpeg (musdb/museval need its binaries), Chromium (the web app's browser test) and
# python3-venv, then the CPU build of PyTorch and the package with all its extras (train, hub,
# eval, plot, web) and the test/lint tools. A stock Debian/Ubuntu has `python3` but no
# `python`, and its pip refuses system-wide installs (externally-managed-environment): the
# virtual environment avoids both. Packages the system Python already has (e.g. a CUDA build of torch) are seen from
# the environment and not installed again.
# Set BSMAMBA2_TORCH to choose another torch requirement (e.g. an existing CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BSMAMBA2_VENV:-.venv}"
PYTHON="$(command -v python3 || command -v python || true)"
PACKAGES=()
command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || PACKAGES+=(ffmpeg libsndfile1)
command -v chromium >/dev/null 2>&1 || PACKAGES+=(chromium)  # the browser test of `bsmamba2 serve`
[ -n "$PYTHON" ] || PACKAGES+=(python3)
if [ ! -x "$VENV/bin/python" ] && { [ -z "$PYTHON" ] || ! "$PYTHON" -c "import ensurepip, venv" 2>/dev/null; }; then
    PACKAGES+=(python3-venv)  # Debian ships venv's pip bootstrap separately
fi
if [ ${#PACKAGES[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
    PYTHON="$(command -v python3)"
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
"$VENV/bin/python" -m pip install -q "${BSMAMBA2_TORCH:-torch==2.13.0}"
"$VENV/bin/python" -m pip install -q -e ".[all,dev]"
echo "installed into $VENV: run $VENV/bin/bsmamba2, or '. $VENV/bin/activate' first"
