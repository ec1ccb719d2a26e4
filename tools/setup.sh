#!/usr/bin/env bash
# Install bsmamba2 on a fresh Linux machine: ffmpeg (musdb/museval need its binaries),
# Chromium (the web app's browser test), the CPU build of PyTorch, and the package with all
# its extras (train, eval, plot, web) and the test/lint tools.
# Set BSMAMBA2_TORCH to choose another torch requirement (e.g. an existing CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=()
command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || PACKAGES+=(ffmpeg libsndfile1)
command -v chromium >/dev/null 2>&1 || PACKAGES+=(chromium)  # the browser test of `bsmamba2 serve`
if [ ${#PACKAGES[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
fi
python -m pip install -q "${BSMAMBA2_TORCH:-torch==2.13.0}"
python -m pip install -q -e ".[all,dev]"
