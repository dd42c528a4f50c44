"""mvgpt.runtime: numpy + onnxruntime glue that runs an exported model package (never torch).

    from mvgpt.runtime import Pipeline
    pipeline = Pipeline.load("PKG")
    print(pipeline.answer("video.mp4", "What happens?").text)

``Pipeline`` (and ``Encoding``, ``Answer``) load lazily, so importing a light module such as
``mvgpt.runtime.errors`` or ``mvgpt.runtime.manifest`` does not import onnxruntime.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Answer", "Encoding", "Pipeline"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'mvgpt.runtime' has no attribute {name!r}")
