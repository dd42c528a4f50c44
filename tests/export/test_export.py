"""mvgpt-export on a tiny random checkpoint: every graph validated, the package self-consistent,
the decoder's cached steps equal one full pass, and bad inputs fail cleanly before any work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from mvgpt.exporter.package import export_package
from mvgpt.runtime import manifest as M
from mvgpt.runtime.sessions import session_options
from tests.packages import assert_graphs_match_manifest


@pytest.fixture(scope="module")
def package(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "pkg"
    checks = export_package(*tiny_checkpoint, out)
    return out, checks


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "mvgpt.exporter.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_graph_validates(package):
    out, checks = package
    for c in checks:
        print(f"{c.file:<28} max|diff| {c.max_abs_diff:.3e} rel {c.max_rel_diff:.2e}")
    assert {c.file for c in checks} == {
        "clip_vision.onnx",
        "frame_scorer.onnx",
        "video_mamba.onnx",
        "video_mamba_portable.onnx",
        "image_projector.onnx",
        "video_projector.onnx",
        "embed_tokens.onnx",
        "decoder.onnx",
        "decoder_portable.onnx",
    }
    assert all(c.ok and c.max_rel_diff < 1e-4 for c in checks)


def test_manifest_describes_every_graph(package):
    out, _ = package
    manifest = json.loads((out / M.MANIFEST_FILE).read_text())
    assert manifest[M.K_SOURCE]["random_weights"] is True
    assert set(manifest[M.K_STAGES]) == set(M.STAGES)
    assert len(assert_graphs_match_manifest(out, manifest)) == 9
    for stage in M.CUSTOM_OP_STAGES:  # each portable graph reads its main graph's data
        portable = manifest[M.K_STAGES][stage][M.S_PORTABLE_FILE]
        assert not (out / f"{portable}.data").exists()
        assert manifest[M.K_SIZES][portable] == (out / portable).stat().st_size
    assert manifest[M.K_VISUAL]["num_visual_tokens"] == 2402
    assert (out / M.TOKENIZER_FILE).is_file()
    assert not list(out.parent.glob(".pkg.partial-*"))


DECODER_FILES = ["decoder.onnx", "decoder_portable.onnx"]  # mvgpt's attention op, onnxruntime's


def _decoder_session(out, name):
    options = session_options(custom_op=M.CUSTOM_OP_ATTENTION if name == "decoder.onnx" else None)
    return ort.InferenceSession(str(out / name), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", DECODER_FILES)
def test_decoder_cached_steps_equal_one_full_pass(package, name):
    out, _ = package
    manifest = json.loads((out / M.MANIFEST_FILE).read_text())
    dec = manifest[M.K_DECODER]
    sess = _decoder_session(out, name)
    rng = np.random.default_rng(0)
    total = 9
    embeds = rng.standard_normal((1, total, dec["hidden_size"]), dtype=np.float32)

    def run(x, start, past):
        feeds = {
            "inputs_embeds": x,
            "attention_mask": np.ones((1, start + x.shape[1]), np.int64),
            M.NUM_LOGITS_TO_KEEP: np.array(0, np.int64),
        }
        for i in range(dec["num_hidden_layers"]):
            feeds[M.past_key_name(i)], feeds[M.past_value_name(i)] = past[i]
        outs = sess.run(None, feeds)
        presents = [(outs[1 + 2 * i], outs[2 + 2 * i]) for i in range(dec["num_hidden_layers"])]
        return outs[0], presents

    empty = np.zeros((1, dec["num_key_value_heads"], 0, dec["head_dim"]), np.float32)
    full, _ = run(embeds, 0, [(empty, empty)] * dec["num_hidden_layers"])
    logits, past = run(embeds[:, :5], 0, [(empty, empty)] * dec["num_hidden_layers"])
    steps = [logits]
    for t in range(5, total):
        logits, past = run(embeds[:, t : t + 1], t, past)
        steps.append(logits)
    diff = float(np.abs(np.concatenate(steps, axis=1) - full).max())
    print("cached steps vs full pass, max |diff|:", diff)
    assert diff < 1e-4
    assert past[0][0].shape[2] == total


def _one_error_line(result):
    lines = result.stderr.strip().splitlines()
    print(result.stderr)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert lines and lines[-1].startswith("mvgpt-export: error:")
    return lines[-1]


def test_corrupt_checkpoint_fails_before_work(tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], ckpt)
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 3])  # truncated download
    out = tmp_path / "pkg"
    line = _one_error_line(_cli("--checkpoint", ckpt, "--clip", tiny_checkpoint[1], "--out", out))
    assert "model.safetensors" in line
    assert not out.exists() and not list(tmp_path.glob(".pkg.partial-*"))
    (ckpt / "model.safetensors").unlink()  # incomplete folder
    line = _one_error_line(_cli("--checkpoint", ckpt, "--clip", tiny_checkpoint[1], "--out", out))
    assert "no model.safetensors" in line


def test_wrong_clip_folder(tiny_checkpoint, tmp_path):
    out = tmp_path / "pkg"
    line = _one_error_line(
        _cli("--checkpoint", tiny_checkpoint[0], "--clip", tiny_checkpoint[0], "--out", out)
    )
    assert "vision_config" in line
    assert not out.exists()


def test_unwritable_output(tiny_checkpoint, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    line = _one_error_line(
        _cli(
            "--checkpoint",
            tiny_checkpoint[0],
            "--clip",
            tiny_checkpoint[1],
            "--out",
            blocker / "pkg",
        )
    )
    assert "cannot write" in line


def test_hub_id_offline_is_one_clear_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mvgpt.exporter.cli",
            "--checkpoint",
            "nobody/no-such-model",
            "--out",
            str(tmp_path / "pkg"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    line = _one_error_line(result)
    assert "could not be downloaded" in line
    assert "Error: " in line.partition("got ")[2]  # the hub's own reason is in the message


def _decoder_feeds(dec, embeds, start, keep):
    return {
        "inputs_embeds": embeds,
        "attention_mask": np.ones((1, start + embeds.shape[1]), np.int64),
        M.NUM_LOGITS_TO_KEEP: np.array(keep, np.int64),
    }


@pytest.mark.parametrize("name", DECODER_FILES)
def test_decoder_num_logits_to_keep(package, name):
    out, _ = package
    manifest = json.loads((out / M.MANIFEST_FILE).read_text())
    dec = manifest[M.K_DECODER]
    assert dec["attention"] == M.DECODER_ATTENTION
    sess = _decoder_session(out, name)
    empty = np.zeros((1, dec["num_key_value_heads"], 0, dec["head_dim"]), np.float32)
    embeds = np.random.default_rng(1).standard_normal((1, 6, dec["hidden_size"]), np.float32)
    feeds = _decoder_feeds(dec, embeds, 0, 0)
    for i in range(dec["num_hidden_layers"]):
        feeds[M.past_key_name(i)] = feeds[M.past_value_name(i)] = empty
    full = sess.run(["logits"], feeds)[0]
    last = sess.run(["logits"], {**feeds, M.NUM_LOGITS_TO_KEEP: np.array(1, np.int64)})[0]
    diff = float(np.abs(full[:, -1:] - last).max())
    print("last-position logits vs full pass, max |diff|:", diff)
    assert full.shape[1] == 6 and last.shape[1] == 1 and diff < 1e-5


@pytest.mark.parametrize("name", DECODER_FILES)
def test_decoder_writes_a_shared_cache_buffer_in_place(package, name):
    """past and present bound to one preallocated buffer (the runtime's way): a prefill chunk
    and cached steps give the logits of one full pass, the buffer holds exactly the keys and
    values of an unshared run, and the positions not yet used stay untouched."""
    out, _ = package
    dec = json.loads((out / M.MANIFEST_FILE).read_text())[M.K_DECODER]
    layers, kvh, hd = dec["num_hidden_layers"], dec["num_key_value_heads"], dec["head_dim"]
    sess = _decoder_session(out, name)
    total, capacity = 9, 16
    embeds = np.random.default_rng(2).standard_normal((1, total, dec["hidden_size"]), np.float32)
    empty = np.zeros((1, kvh, 0, hd), np.float32)
    feeds = _decoder_feeds(dec, embeds, 0, 0)
    for i in range(layers):
        feeds[M.past_key_name(i)] = feeds[M.past_value_name(i)] = empty
    full, *presents = sess.run(None, feeds)

    buffers = np.full((layers, 2, 1, kvh, capacity, hd), 7.0, np.float32)
    values = [
        [ort.OrtValue.ortvalue_from_numpy(buffers[i, k]) for k in (0, 1)] for i in range(layers)
    ]
    logits = np.empty((1, 1, full.shape[2]), np.float32)
    rows = []
    for start, stop in [(0, 5), *((t, t + 1) for t in range(5, total))]:
        binding = sess.io_binding()
        for name, value in _decoder_feeds(dec, embeds[:, start:stop], start, 1).items():
            binding.bind_cpu_input(name, value)
        for i in range(layers):
            for kind, (past, present) in enumerate(
                [
                    (M.past_key_name(i), M.present_key_name(i)),
                    (M.past_value_name(i), M.present_value_name(i)),
                ]
            ):
                binding.bind_ortvalue_input(past, values[i][kind])
                binding.bind_ortvalue_output(present, values[i][kind])
        binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        sess.run_with_iobinding(binding)
        rows.append(logits[0, -1].copy())
    logit_diff = float(np.abs(np.stack(rows[1:]) - full[0, 5:]).max())
    logit_diff = max(logit_diff, float(np.abs(rows[0] - full[0, 4]).max()))
    cache_diff = max(
        float(np.abs(buffers[i, k, :, :, :total] - presents[2 * i + k]).max())
        for i in range(layers)
        for k in (0, 1)
    )
    print(f"shared buffer vs full pass: logits max |diff| {logit_diff:.2e}, cache {cache_diff:.2e}")
    assert logit_diff < 1e-4 and cache_diff < 1e-5
    assert np.all(buffers[:, :, :, :, total:] == 7.0)


def test_leftovers_of_killed_exports_are_removed_and_named(tmp_path):
    """A killed export leaves its hidden staging folder; the next export into the same place
    removes it (and says so) but never the folder of an export still running."""
    from mvgpt.exporter.package import prepare_output

    out = tmp_path / "pkg"
    dead = tmp_path / ".pkg.partial-999999999-abc"  # no such process
    unnamed = tmp_path / ".pkg.partial-x1y2z3"  # made before staging folders carried a pid
    old = tmp_path / ".pkg.old-999999999"
    live = tmp_path / f".pkg.partial-{os.getpid()}-live"
    other = tmp_path / ".other.partial-999999999-abc"  # another package's: not ours to touch
    for folder in (dead, unnamed, old, live, other):
        folder.mkdir()
        (folder / "decoder.onnx.data").write_bytes(b"\0" * 1000)
    said: list[str] = []
    staging = prepare_output(out, said.append)
    print(said)
    assert not dead.exists() and not unnamed.exists() and not old.exists()
    assert live.exists() and other.exists()
    assert staging.name.startswith(f".pkg.partial-{os.getpid()}-")
    assert len(said) == 3 and all("did not finish" in line for line in said)
    assert any(str(dead) in line for line in said)
