"""mvgpt: Mobile-VideoGPT exported to ONNX and run with a slim numpy runtime.

The subpackages live in the repository's top-level folders (see setup.py):
``mvgpt.models`` (PyTorch reference), ``mvgpt.kernels`` (the custom ops SelectiveScan and
GroupQueryAttention), ``mvgpt.exporter`` (torch -> ONNX) and ``mvgpt.runtime`` (numpy +
onnxruntime, no torch; the bottom layer: it imports no other mvgpt package).
"""

__version__ = "0.1.0"
