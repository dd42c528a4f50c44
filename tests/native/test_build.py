"""The native runtime's build on a machine without ICU: libicu-dev (and libicu's runtime package)
fetched from the machine's Debian suite into runtime/native/_deps/icu/ and loaded from there, and
the NFC tokenizer parity on that build; and its role table against runtime/manifest.py's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mvgpt.kernels.native_build import NATIVE_DEPS, build_native_runtime

ROOT = Path(__file__).resolve().parents[2]


def test_build_with_fetched_icu(tmp_path, monkeypatch):
    monkeypatch.setenv("MVGPT_FETCH_ICU", "all")  # as if the system had no ICU at all
    lib = build_native_runtime(tmp_path / "lib", tmp_path / "bin")
    loaded = subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout
    print(loaded)
    icu = [line for line in loaded.splitlines() if "libicu" in line]
    assert len(icu) == 2 and all(str(NATIVE_DEPS / "icu") in line for line in icu)
    env = {**os.environ, "MVGPT_NATIVE_LIBRARY": str(lib), "MVGPT_NATIVE_STRINGS": "3000"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/native/test_tokenizer.py", "-k", "qwen2_style and encodes"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    print(run.stdout[-1500:], run.stderr[-1500:])
    assert run.returncode == 0 and "1 passed" in run.stdout


def test_native_role_table_is_the_manifest_modules():
    """The native runtime spells each stage's roles as runtime/manifest.py defines them (the C++
    table in manifest.cc is checked against STAGE_ROLES and the cache roles here)."""
    import re

    from mvgpt.runtime import manifest as M

    source = (ROOT / "runtime" / "native" / "src" / "manifest.cc").read_text()
    table = dict(re.findall(r'\{"(\w+)", (\{\{[^}]*\}, \{[^}]*\}\})\}', source))
    print(table)
    assert set(table) == set(M.STAGES)
    for stage, (inputs, outputs) in M.STAGE_ROLES.items():
        assert (
            table[stage]
            == "{{"
            + ", ".join(f'"{r}"' for r in inputs)
            + "}, {"
            + ", ".join(f'"{r}"' for r in outputs)
            + "}}"
        )
    pairs = re.findall(r'\{"(\w+)", "(\w+)"\}, (\d)\);', source)
    assert pairs == [(*M.CACHE_INPUT_ROLES, "0"), (*M.CACHE_OUTPUT_ROLES, "2")]
    assert (
        f"kSchemaVersion = {M.SCHEMA_VERSION};"
        in (ROOT / "runtime" / "native" / "src" / "manifest.h").read_text()
    )
