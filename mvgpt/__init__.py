"""mvgpt: Mobile-VideoGPT exported to ONNX and run with a slim numpy runtime.

The subpackages live in the repository's top-level folders (see setup.py):
``mvgpt.models`` (PyTorch reference), ``mvgpt.kernels`` (SelectiveScan op),
``mvgpt.exporter`` (torch -> ONNX) and ``mvgpt.runtime`` (numpy + onnxruntime, no torch).
"""

__version__ = "0.1.0"
