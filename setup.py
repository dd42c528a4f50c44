"""Install exporter/, runtime/, kernels/ and models/ under the one import namespace ``mvgpt``, with
the custom-op library built into the package.

``pip install .`` gives the runtime (numpy, onnxruntime, opencv, tokenizers; no torch) with the
built-in toy model and its sample video (``runtime/builtin/``, package data), and builds
``mvgpt/kernels/lib/libmvgpt_ops.so`` with CMake during the package build (``BuildPyWithKernels``),
so ``pip install .``, ``pip install -e .`` and ``pip wheel .`` all carry the fast path; a wheel
runs on any machine of its platform without a compiler. When the library cannot be built (no
compiler, no onnxruntime headers) the install still succeeds, says so, and the runtime runs the
portable graphs; ``MVGPT_REQUIRE_NATIVE=1`` makes that an error instead (setup.sh sets it).

Extras: ``export`` (torch CPU build and the ONNX tools), ``dev`` (export + everything the tests
need), ``gpu`` (onnxruntime-gpu for ``--provider cuda``; install it in place of onnxruntime, see
the README), ``runtime`` (nothing more than the default).
"""

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel

ROOT = Path(__file__).resolve().parent
FOLDERS = ("exporter", "runtime", "kernels", "models")
REQUIRE_NATIVE_ENV = "MVGPT_REQUIRE_NATIVE"

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
# cmake and ninja: the tests build wheels without build isolation (offline)
DEV = EXPORT + ["transformers>=4.45", "pillow", "pytest>=8", "ruff>=0.6", "cmake>=3.18", "ninja"]
GPU = ["onnxruntime-gpu>=1.20"]
# the built-in model (runtime/builtin/, see runtime/default_model.py): the toy package made by
# mvgpt-export and the sample video with its questions; shipped whenever the folder holds them
BUILTIN_FILES = [
    "builtin/*.json",
    "builtin/*.mp4",
    "builtin/*/*.json",
    "builtin/*/*.onnx",
    "builtin/*/*.onnx.data",
]


def native_build():
    """kernels/native_build.py, loaded by path: mvgpt is not importable while it is being built."""
    spec = importlib.util.spec_from_file_location(
        "_mvgpt_native_build", ROOT / "kernels" / "native_build.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithKernels(build_py):
    """build_py, then the custom-op library into the package's kernels/lib/ (the source folder's
    for an editable install, where the runtime finds it)."""

    def run(self):
        super().run()
        native = native_build()
        if getattr(self, "editable_mode", False):
            target = native.LIB_PATH
            if native.is_up_to_date(target):
                return
        else:
            target = Path(self.build_lib) / "mvgpt" / "kernels" / "lib" / native.LIB_NAME
            target.unlink(missing_ok=True)  # never ship a library left by an earlier build
        try:
            native.build_library(target)
        except native.KernelError as e:
            message = f"mvgpt: the custom-op library was not built: {e}"
            if os.environ.get(REQUIRE_NATIVE_ENV) == "1":
                raise SystemExit(
                    f"{message}\n({REQUIRE_NATIVE_ENV}=1: the native build is required)"
                ) from e
            sys.stderr.write(
                f"{message}\nmvgpt: installing without it: the runtime runs the portable "
                "graphs (correct, several times slower); rebuild later with "
                "`python -m mvgpt.kernels.build`\n"
            )
            return
        sys.stderr.write(f"mvgpt: built {target}\n")


class PlatformWheel(bdist_wheel):
    """The wheel holds a native library, so it is tagged for this platform (any Python 3: the
    library does not use the Python C API)."""

    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True


setup(
    name="mvgpt",
    version="0.1.0",
    description="Mobile-VideoGPT on any device through ONNX",
    python_requires=">=3.10",
    packages=["mvgpt"] + [f"mvgpt.{name}" for name in FOLDERS],
    package_dir={"mvgpt": "mvgpt", **{f"mvgpt.{name}": name for name in FOLDERS}},
    package_data={
        "mvgpt.kernels": [
            "*.cc",
            "*.h",
            "*.cu",
            "*.cuh",
            "CMakeLists.txt",
            "check/*.cc",
            "check/*.h",
            "check/*.cu",
        ],
        "mvgpt.runtime": BUILTIN_FILES,
    },
    install_requires=RUNTIME,
    extras_require={"runtime": [], "export": EXPORT, "dev": DEV, "gpu": GPU},
    entry_points={
        "console_scripts": [
            "mvgpt-export=mvgpt.exporter.cli:main",
            "mvgpt-run=mvgpt.runtime.cli:main",
        ]
    },
    cmdclass={"build_py": BuildPyWithKernels, "bdist_wheel": PlatformWheel},
    distclass=BinaryDistribution,
    zip_safe=False,
)
