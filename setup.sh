#!/usr/bin/env bash
# Set-up: install mvgpt with everything the exporter and the tests need (torch is the CPU build
# that pip finds on this machine). The package build compiles the mvgpt custom-op library with
# CMake (setup.py); MVGPT_REQUIRE_NATIVE=1 makes a failed native build an error here instead of
# a fallback to the portable graphs. Then the native C/C++ runtime (runtime/native: libmvgpt and
# mvgpt-cli), which links the onnxruntime wheel just installed.
set -euo pipefail
cd "$(dirname "$0")"
MVGPT_REQUIRE_NATIVE=1 python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
python -m mvgpt.kernels.build --native >/dev/null
