#!/usr/bin/env bash
# Set-up: install mvgpt with everything the exporter and the tests need (torch is the CPU build
# that pip finds on this machine), then build the mvgpt onnxruntime custom-op library.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
python -m mvgpt.kernels.build
