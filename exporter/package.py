"""``export_package``: checkpoint folders -> a validated model package folder.

Order of work: check both folders strictly (before any heavy work), load the reference, trace
every stage (VideoMamba with the ``mvgpt::SelectiveScan`` op and the decoder with
``mvgpt::GroupQueryAttention``, each with its portable graph), validate each graph against
torch, quantize where asked (the portable graphs made again from the quantized graphs), then
write tokenizer.json and manifest.json. The package is assembled in a hidden sibling folder and
moved into place only when complete, so a failed export never leaves a folder that looks valid.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from mvgpt.exporter.graphs import export_graph, graph_bytes, stamp_graph
from mvgpt.exporter.half import FP16, manifest_tensors
from mvgpt.exporter.quantize import (
    PRECISIONS,
    manifest_entry,
    min_cosine_for,
    quantize_package,
)
from mvgpt.exporter.scan_op import ScanOp, register_onnx_symbolic
from mvgpt.exporter.validate import (
    StageCheck,
    check_graph,
    format_table,
    raise_on_failures,
    reference,
)
from mvgpt.exporter.wrappers import graph_specs
from mvgpt.kernels.portable import make_portable
from mvgpt.models.checkpoint import check_folders, load_checkpoint, weight_files
from mvgpt.models.mobile_videogpt import MobileVideoGPT
from mvgpt.runtime import manifest as M
from mvgpt.runtime.errors import ExportError
from mvgpt.runtime.preprocess import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from mvgpt.runtime.prompt import IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX, STOP_STRING, SYSTEM_PROMPT


def write_portable_graphs(staging: Path, files: dict[str, str], stages=M.CUSTOM_OP_STAGES) -> None:
    """Each custom-op stage's portable graph (kernels/portable.py: the stage's graph with its
    mvgpt op rewritten) beside the stage's graph, reading the same external data file; made
    again after quantization, so that both graphs always hold the same weights."""
    for stage in stages:
        graph = onnx.load(str(staging / files[stage]), load_external_data=False)
        onnx.save_model(make_portable(graph), str(staging / M.portable_file(stage)))


DEFAULT_MAX_NEW_TOKENS = 1024  # the official inference.py default

Progress = Callable[[str], None]


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap memory back to the system (glibc keeps large freed
    blocks in its heap otherwise, and the freed torch weights would still count as this
    process's memory while onnxruntime loads the graphs)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _quiet(_: str) -> None:
    pass


def fingerprint(checkpoint_dir: Path) -> str:
    """sha256 over config.json and every weight file of the checkpoint, in name order."""
    digest = hashlib.sha256()
    for path in [checkpoint_dir / "config.json", *weight_files(checkpoint_dir)]:
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def leftovers(out: Path) -> list[Path]:
    """Hidden folders beside ``out`` that earlier exports into it left behind: staging folders
    (``.NAME.partial-PID-*``) and replaced packages (``.NAME.old-PID``) whose process is gone
    (killed, e.g. by the out-of-memory killer). A folder of a running export is not listed."""
    found = []
    for kind in ("partial", "old"):
        for path in sorted(out.parent.glob(f".{out.name}.{kind}-*")):
            pid = path.name[len(f".{out.name}.{kind}-") :].split("-", 1)[0]
            if path.is_dir() and not (pid.isdigit() and _pid_alive(int(pid))):
                found.append(path)
    return found


def prepare_output(out: Path, progress: Progress = _quiet) -> Path:
    """Check the destination is usable and remove what killed exports into it left; return a
    fresh hidden staging folder beside it (named with this process's id)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder (expected a new or package folder)")
    if out.is_dir() and any(out.iterdir()) and not (out / M.MANIFEST_FILE).is_file():
        raise ExportError(
            f"{out}: folder is not empty and holds no {M.MANIFEST_FILE}; refusing to overwrite "
            "(choose a new folder or an earlier mvgpt package)"
        )
    if out.parent.is_dir():
        for path in leftovers(out):
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            shutil.rmtree(path, ignore_errors=True)
            progress(f"removed {path} ({size / 1e9:.2f} GB), left by an export that did not finish")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{out.name}.partial-{os.getpid()}-"
        return Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    except OSError as e:
        raise ExportError(f"{out.parent}: cannot write the package there ({e.strerror})") from e


def publish(staging: Path, out: Path) -> None:
    """Move the finished package into place, replacing an earlier package at ``out``."""
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp made it private
    for path in staging.iterdir():
        path.chmod(0o666 & ~umask)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


SPECIAL_TOKENS = {"endoftext": "<|endoftext|>", "im_start": "<|im_start|>", "im_end": "<|im_end|>"}


def special_token_ids(tokenizer_file: Path) -> dict[str, int]:
    """The ChatML special tokens' ids, read from the checkpoint's own tokenizer.json."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    ids = {key: tokenizer.token_to_id(text) for key, text in SPECIAL_TOKENS.items()}
    missing = [SPECIAL_TOKENS[k] for k, v in ids.items() if v is None]
    if missing:
        raise ExportError(
            f"{tokenizer_file}: no id for {missing} (expected a Qwen2 ChatML tokenizer); fix: "
            "use the checkpoint's own tokenizer.json"
        )
    return ids


def build_manifest(
    model: MobileVideoGPT,
    specs,
    files: dict,
    source: dict,
    generation: dict,
    tokens: dict[str, int],
    precision: str = "fp32",
):
    cfg = model.cfg
    stages = {}
    for spec in specs:
        entry = {
            M.S_FILE: files[spec.stage],
            M.S_INPUTS: [t.to_dict() for t in spec.inputs],
            M.S_OUTPUTS: [t.to_dict() for t in spec.outputs],
        }
        op = M.CUSTOM_OP_STAGES.get(spec.stage)
        entry[M.S_CUSTOM_OP] = None if op is None else {"domain": M.CUSTOM_OP_DOMAIN, "op_type": op}
        entry[M.S_SESSION_CONFIG] = dict(M.CUSTOM_OP_SESSION_CONFIG.get(op, {}))
        if op is not None:
            entry[M.S_PORTABLE_FILE] = M.portable_file(spec.stage)
        stages[spec.stage] = entry
    size = cfg.clip.image_size
    qwen = cfg.qwen
    return {
        M.K_SCHEMA_VERSION: M.SCHEMA_VERSION,
        M.K_SOURCE: source,
        M.K_PRECISION: precision,
        M.K_OPSET: M.OPSET,
        M.K_IR_VERSION: M.IR_VERSION,
        M.K_CUSTOM_OPS: [
            {"domain": M.CUSTOM_OP_DOMAIN, "op_type": op} for op in M.CUSTOM_OP_STAGES.values()
        ],
        M.K_STAGES: stages,
        M.K_PREPROCESS: {
            "clip": {
                M.P_SIZE: size,
                M.P_MEAN: list(CLIP_MEAN),
                M.P_STD: list(CLIP_STD),
                M.P_RESIZE: M.RESIZE_CLIP_CROP if cfg.clip.center_crop else M.RESIZE_CLIP_SQUASH,
            },
            "video_mamba": {
                M.P_SIZE: cfg.video_mamba.img_size,
                M.P_MEAN: list(IMAGENET_MEAN),
                M.P_STD: list(IMAGENET_STD),
                M.P_RESIZE: M.RESIZE_MAMBA,
            },
        },
        M.K_SAMPLING: {
            "num_frames": cfg.selection.num_frames,
            "fps": 1.0,
            "chunk_size": cfg.selection.chunk_size,
            "num_select_k_frames_in_chunk": cfg.selection.num_select_k_frames_in_chunk,
        },
        M.K_PROMPT: {
            M.PR_TEMPLATE: M.CHATML_TEMPLATE,
            M.PR_SYSTEM: SYSTEM_PROMPT,
            M.PR_PLACEHOLDER: IMAGE_PLACEHOLDER,
            M.PR_NUM_PLACEHOLDERS: cfg.selection.num_frames,
            M.PR_NUM_SENTINELS: cfg.selection.num_selected,
            M.PR_TOKEN_INDEX: IMAGE_TOKEN_INDEX,
            M.PR_STOP: STOP_STRING,
        },
        M.K_TOKENS: tokens,
        M.K_GENERATION: {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS, **generation},
        M.K_DECODER: {
            "num_hidden_layers": qwen.num_hidden_layers,
            "num_key_value_heads": qwen.num_key_value_heads,
            "head_dim": qwen.head_dim,
            "hidden_size": qwen.hidden_size,
            "vocab_size": qwen.vocab_size,
            "max_position_embeddings": qwen.max_position_embeddings,
            "attention": M.DECODER_ATTENTION,
            "kv_cache": M.DECODER_KV_CACHE,
        },
        M.K_VISUAL: {
            "num_image_tokens": cfg.num_image_tokens,
            "num_video_tokens": cfg.num_video_tokens,
            "num_visual_tokens": cfg.num_visual_tokens,
        },
        M.K_TOKENIZER: M.TOKENIZER_FILE,
    }


def export_package(
    checkpoint_dir: str | Path,
    clip_dir: str | Path,
    out: str | Path,
    *,
    precision: str = "fp32",
    source_note: dict | None = None,
    progress: Progress = _quiet,
    min_cosine: float | None = None,
) -> list[StageCheck]:
    """Export, validate and publish a package; returns the validation table rows.

    ``min_cosine`` is the agreement with fp32 every quantized graph must reach (recorded in the
    manifest; default: the precision's, quantize.min_cosine_for)."""
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    checkpoint_dir, clip_dir, out = Path(checkpoint_dir), Path(clip_dir), Path(out)
    check_folders(checkpoint_dir, clip_dir)  # fail before any heavy work
    staging = prepare_output(out, progress)
    try:
        checks = _export_into(
            checkpoint_dir,
            clip_dir,
            staging,
            precision=precision,
            source_note=source_note,
            progress=progress,
            min_cosine=min_cosine_for(precision, min_cosine),
        )
        publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return checks


def _export_into(
    checkpoint_dir: Path,
    clip_dir: Path,
    staging: Path,
    *,
    precision: str,
    source_note: dict | None,
    progress: Progress,
    min_cosine: float,
) -> list[StageCheck]:
    progress("loading checkpoint")
    ckpt = load_checkpoint(checkpoint_dir, clip_dir)
    model = MobileVideoGPT.from_checkpoint(ckpt)
    generation_config = ckpt.generation_config
    del ckpt  # its tensors are the model's weights now (from_checkpoint assigns them)
    register_onnx_symbolic(M.OPSET)
    for block in model.video_mamba.layers:
        block.mixer.scan = ScanOp(delta_softplus=True)
    specs = graph_specs(model)
    files: dict[str, str] = {}
    for n, spec in enumerate(specs, 1):
        name = f"{spec.stage}.onnx"
        progress(f"[{n}/{len(specs)}] exporting {name}")
        export_graph(spec, staging / name)
        files[spec.stage] = name
    write_portable_graphs(staging, files)
    progress("computing the torch references")
    references = [reference(spec) for spec in specs]  # then torch's weights can go
    shutil.copy(checkpoint_dir / M.TOKENIZER_FILE, staging / M.TOKENIZER_FILE)
    config = json.loads((checkpoint_dir / "config.json").read_text())
    source = {
        "checkpoint": str(checkpoint_dir.resolve()),
        "clip": str(clip_dir.resolve()),
        "checkpoint_sha256": fingerprint(checkpoint_dir),
        "random_weights": bool(config.get("mvgpt_random_weights", False)),
        **(source_note or {}),
    }
    tokens = special_token_ids(checkpoint_dir / M.TOKENIZER_FILE)
    manifest = build_manifest(
        model, specs, files, source, generation_config, tokens, precision=precision
    )
    # the torch weights are not needed to validate or quantize: free them before onnxruntime
    # loads the graphs, so the two never hold the model at the same time
    del model, specs, spec  # (``spec``: the export loop's last one, the decoder's wrapper)
    release_freed_memory()
    checks = []
    for ref in references:
        progress(f"validating {files[ref.stage]}")
        op = M.CUSTOM_OP_STAGES.get(ref.stage)
        checks.append(check_graph(ref, staging / files[ref.stage], custom_op=op))
        if op is not None:
            checks.append(check_graph(ref, staging / M.portable_file(ref.stage), custom_op=None))
    progress("validation:\n" + format_table(checks))
    raise_on_failures(checks)
    finish_package(staging, files, manifest, precision, progress, min_cosine)
    return checks


def finish_package(
    staging: Path,
    files: dict[str, str],
    manifest: dict,
    precision: str,
    progress: Progress,
    min_cosine: float,
) -> None:
    """From validated fp32 graphs in ``staging`` (``files``: stage -> graph file) to a complete
    package there: quantized or fp16 graphs where ``precision`` asks (each checked against fp32),
    the manifest's stage entries for them, the portable graphs made from the final graphs, every
    graph stamped, and manifest.json with the graphs' sizes."""
    manifest[M.K_PRECISION] = precision
    if precision != "fp32":
        quant_checks = quantize_package(staging, files, precision, progress, min_cosine)
        manifest[M.K_QUANTIZATION] = manifest_entry(precision, files, quant_checks, min_cosine)
        stages = manifest[M.K_STAGES]
        for check in quant_checks:  # an fp16 graph changes its stage's entry (half.py)
            if check.method == FP16 and check.ok:
                stages[check.stage] = manifest_tensors(stages[check.stage], check.stage)
                if stages[check.stage][M.S_CUSTOM_OP] is None:
                    (staging / M.portable_file(check.stage)).unlink(missing_ok=True)
    portable = [s for s in M.CUSTOM_OP_STAGES if manifest[M.K_STAGES][s][M.S_CUSTOM_OP]]
    manifest[M.K_CUSTOM_OPS] = [manifest[M.K_STAGES][s][M.S_CUSTOM_OP] for s in portable]
    if manifest[M.K_STAGES][M.DECODER][M.S_CUSTOM_OP] is None:  # an fp16 decoder (half.py)
        manifest[M.K_DECODER]["attention"] = M.DECODER_ATTENTION_FP16
    if precision != "fp32":
        write_portable_graphs(staging, files, portable)  # from the quantized graphs
    for stage, name in files.items():
        stamp_graph(staging / name, stage, M.G_MAIN)
    for stage in portable:
        stamp_graph(staging / M.portable_file(stage), stage, M.G_PORTABLE)
    # a portable graph's bytes are its graph only: it reads its main graph's data file
    graphs = [*files.values(), *(M.portable_file(stage) for stage in portable)]
    manifest[M.K_SIZES] = {name: graph_bytes(staging / name) for name in graphs}
    (staging / M.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def convert_package(
    package: str | Path,
    out: str | Path,
    *,
    precision: str,
    progress: Progress = _quiet,
    min_cosine: float | None = None,
) -> None:
    """An fp32 package at another precision, from its ONNX graphs alone (no checkpoint): the
    graphs are copied and go through ``finish_package`` as an export's do, checked
    against the fp32 graphs they came from."""
    from mvgpt.runtime.package import read_manifest

    src, out = Path(package), Path(out)
    manifest = read_manifest(src)
    if manifest.get(M.K_PRECISION) != "fp32":
        raise ExportError(
            f"{src}: expected an fp32 package to convert, got precision "
            f"{manifest.get(M.K_PRECISION)!r}; fix: convert the fp32 package it was made from"
        )
    if precision not in PRECISIONS or precision == "fp32":
        raise ExportError(
            f"converting {src}: expected --precision one of "
            f"{', '.join(p for p in PRECISIONS if p != 'fp32')}, got {precision!r}"
        )
    files = {stage: entry[M.S_FILE] for stage, entry in manifest[M.K_STAGES].items()}
    staging = prepare_output(out, progress)
    try:
        for name in [*files.values(), M.TOKENIZER_FILE]:
            for path in (src / name, src / f"{name}.data"):
                if path.is_file():
                    shutil.copyfile(path, staging / path.name)
        for key in (M.K_SIZES, M.K_QUANTIZATION):
            manifest.pop(key, None)
        manifest[M.K_SOURCE] = {**manifest[M.K_SOURCE], "converted_from": str(src.resolve())}
        bar = min_cosine_for(precision, min_cosine)
        finish_package(staging, files, manifest, precision, progress, bar)
        publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
