"""Install exporter/, runtime/, kernels/ and models/ under the one import namespace ``mvgpt``.

The runtime extra needs no torch: ``pip install .[runtime]`` gives mvgpt-run with numpy,
onnxruntime, opencv and tokenizers only. ``.[export]`` adds torch and the ONNX tools, ``.[dev]``
everything the tests need.
"""

from setuptools import setup

FOLDERS = ("exporter", "runtime", "kernels", "models")

RUNTIME = [
    "numpy>=1.24",
    "onnxruntime>=1.20",
    "opencv-python-headless>=4.8",
    "tokenizers>=0.15",
]
EXPORT = [
    "torch==2.13.0",  # the CPU build; a bare "torch" pulls several GB of CUDA wheels
    "onnx>=1.16",
    "onnxscript>=0.2",
    "safetensors>=0.4",
    "huggingface_hub>=0.20",
]
DEV = EXPORT + ["transformers>=4.45", "pillow", "pytest>=8", "ruff>=0.6"]

setup(
    name="mvgpt",
    version="0.1.0",
    description="Mobile-VideoGPT on any device through ONNX",
    python_requires=">=3.10",
    packages=["mvgpt"] + [f"mvgpt.{name}" for name in FOLDERS],
    package_dir={"mvgpt": "mvgpt", **{f"mvgpt.{name}": name for name in FOLDERS}},
    package_data={
        "mvgpt.kernels": ["*.cc", "*.h", "check/*.cc", "check/*.h", "lib/*.so", "lib/*.dylib"]
    },
    install_requires=RUNTIME,
    extras_require={"runtime": [], "export": EXPORT, "dev": DEV},
    entry_points={
        "console_scripts": [
            "mvgpt-export=mvgpt.exporter.cli:main",
            "mvgpt-run=mvgpt.runtime.cli:main",
        ]
    },
)
