#!/usr/bin/env bash
# Set-up: install mvgpt with everything the exporter and the tests need (torch is the CPU build
# that pip finds on this machine). The package build compiles the mvgpt custom-op library with
# CMake (setup.py); MVGPT_REQUIRE_NATIVE=1 makes a failed native build an error here instead of
# a fallback to the portable graphs. Then the native C/C++ runtime (runtime/native: libmvgpt and
# mvgpt-cli), which links the onnxruntime wheel just installed, and OpenCV for video files.
set -euo pipefail
cd "$(dirname "$0")"
MVGPT_REQUIRE_NATIVE=1 python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
# OpenCV's C++ API gives the native runtime video files: Debian/Ubuntu's package when this runs
# as root and the headers are missing (elsewhere the runtime is built without, and says so)
if [ ! -e /usr/include/opencv4/opencv2/videoio.hpp ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  opencv=(apt-get install -y -q --no-install-recommends libopencv-videoio-dev)
  "${opencv[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null && "${opencv[@]}" >/dev/null; } ||
    echo "setup.sh: note: could not install libopencv-videoio-dev; the native runtime reads no video files" >&2
fi
python -m mvgpt.kernels.build --native >/dev/null
