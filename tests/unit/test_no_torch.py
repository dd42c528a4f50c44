"""The runtime never imports torch: a subprocess whose import system refuses torch (and the
exporter and models packages, which need it) loads a tiny package and answers a question. Nor
does it import the kernels package (the runtime is the bottom layer; it only finds the library
file that package builds)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.videos import make_video


def import_blocker(*blocked: str) -> str:
    """Python source that makes every later import of ``blocked`` (and their submodules) fail:
    the first lines of a subprocess script that must run without them."""
    return textwrap.dedent(
        f"""
        import sys

        BLOCKED = {blocked!r}

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                    raise ImportError(f"the runtime imported {{name}}")
                return None

        sys.meta_path.insert(0, Refuse())
        """
    )


SCRIPT = import_blocker(
    "torch", "torchvision", "mvgpt.exporter", "mvgpt.models", "transformers"
) + textwrap.dedent(
    """
    from mvgpt.runtime import Pipeline
    from mvgpt.runtime.cli import main

    pipeline = Pipeline.load(sys.argv[1], threads=1)
    answer = pipeline.answer(sys.argv[2], "What happens?", max_new_tokens=3)
    assert answer.token_ids and len(answer.frame_indices) == 16, answer
    code = main([sys.argv[2], "What happens?", "--model", sys.argv[1], "--max-new-tokens", "2"])
    assert code == 0, code
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
    assert not leaked, leaked
    layers = sorted(m for m in sys.modules if m.startswith("mvgpt.") and m != "mvgpt.runtime"
                    and not m.startswith("mvgpt.runtime."))
    assert not layers, layers
    print("ok", list(answer.token_ids))
    """
)


def test_runtime_runs_with_torch_blocked(tiny_package, tmp_path):
    video = make_video(tmp_path / "clip.mp4", seconds=3, fps=10)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_package), str(video)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stderr
    assert "ok [" in done.stdout


def test_the_blocker_blocks(tmp_path):
    """The same blocker makes an import of torch fail (so the test above can fail)."""
    script = SCRIPT.split("from mvgpt.runtime import Pipeline")[0] + "import torch\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode != 0 and "the runtime imported torch" in done.stderr
