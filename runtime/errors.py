"""The one exception family of mvgpt. Every user-facing failure is an ``MvgptError``.

A message says what went wrong, what was expected, what was found, and how to fix it; the CLIs
print it as one stderr line and exit 1 (``--debug`` shows the traceback).
"""


class MvgptError(Exception):
    """Base of every error mvgpt raises on purpose."""


class CheckpointError(MvgptError):
    """A checkpoint or CLIP folder is missing, incomplete or does not match the model."""


class VideoError(MvgptError):
    """A video cannot be opened, decoded or sampled."""


class PackageError(MvgptError):
    """A model package (manifest + graphs) is missing, corrupt or inconsistent."""


class ExportError(MvgptError):
    """An export or its validation failed."""


class KernelError(MvgptError):
    """The mvgpt custom-op library is missing or cannot be built/loaded."""


def error_line(prog: str, error: BaseException) -> str:
    """The one stderr line a CLI prints for ``error`` (newlines folded): an MvgptError as it is,
    anything else as an unexpected failure to report."""
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, MvgptError):
        return f"{prog}: error: {text}\n"
    return (
        f"{prog}: error: unexpected {type(error).__name__}: {text[:400]}; fix: rerun with "
        "--debug and report the traceback\n"
    )
