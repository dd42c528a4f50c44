"""Loading a model package folder: manifest.json -> one onnxruntime session per stage.

Owns the manifest checks (folder, JSON, schema version, required keys, graph files), the
execution-provider choice, the choice between a custom-op stage's graph (with the mvgpt library,
see sessions.py) and its portable graph (when the library is missing or cannot be loaded), and
the load-time check of every session's real inputs and outputs against the manifest, reported
all at once in one PackageError. ORT loads the ``*.onnx.data`` external weights from beside
each graph.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import onnxruntime as ort
import tokenizers

from . import manifest as M
from .errors import KernelError, MvgptError, PackageError
from .prompt import check_template
from .sessions import LIB_NAME, library_available, library_providers, session_options

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
# where a provider's decoder keeps a float16 KV cache (onnxruntime's OrtValue device names): the
# CUDA provider's GroupQueryAttention runs fp16 (and bf16) only, so an fp32 cache stays in host
# memory, beside the CPU attention kernel that then reads it; any other provider: host memory
CACHE_DEVICES = {"cuda": "cuda"}
REQUIRED_KEYS = (
    M.K_STAGES,
    M.K_PREPROCESS,
    M.K_SAMPLING,
    M.K_PROMPT,
    M.K_TOKENS,
    M.K_GENERATION,
    M.K_DECODER,
    M.K_VISUAL,
)
# ORT's element type names -> the numpy dtype names the manifest uses
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
_FIX_EXPORT = "fix: re-export the package with mvgpt-export"
CACHE_DTYPES = ("float32", "float16")  # of the decoder's KV cache (fp16 packages: float16)


@dataclass(frozen=True)
class StageIO:
    """A stage's graph tensors by role (manifest S_ROLE): role -> the graph's name for it, and
    the decoder's cache tensors per layer. Runtimes bind tensors through this, never by name."""

    inputs: Mapping[str, str]
    outputs: Mapping[str, str]
    # per decoder layer: the names of (past key, past value, present key, present value)
    cache: tuple[tuple[str, str, str, str], ...] = ()
    cache_dtype: str = "float32"  # the cache tensors' element type (fp16 packages: float16)


def _roles(
    stage: str,
    kind: str,
    tensors: Any,
    single: tuple[str, ...],
    per_layer: tuple[str, ...],
    layers: int,
    problems: list[str],
) -> tuple[dict[str, str], dict[tuple[str, int], str]]:
    """The role -> name maps of one side (inputs or outputs) of a stage entry; what is wrong
    (a role missing, unknown or given twice, a bad layer) goes to ``problems``."""
    where = f"{stage} {kind}s"
    if not isinstance(tensors, list) or not all(isinstance(t, dict) for t in tensors):
        problems.append(f"{where}: expected a list of tensors in the manifest, got {tensors!r}")
        return {}, {}
    named: dict[str, str] = {}
    cached: dict[tuple[str, int], str] = {}
    for tensor in tensors:
        name, role, layer = tensor.get(M.S_NAME), tensor.get(M.S_ROLE), tensor.get(M.S_LAYER)
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: expected every tensor to have a name, got {tensor!r}")
            continue
        if role in single:
            key, table = role, named
        elif role in per_layer:
            if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < layers:
                problems.append(
                    f"{where} {name!r}: expected a layer in [0, {layers}), got {layer!r}"
                )
                continue
            key, table = (role, layer), cached
        else:
            known = ", ".join(single + per_layer)
            problems.append(f"{where} {name!r}: expected a role among {known}, got {role!r}")
            continue
        if key in table:
            which = f"{role!r}" + ("" if key == role else f" for layer {layer}")
            problems.append(f"{where}: expected one tensor with role {which}, got two")
        table[key] = name
    problems += [
        f"{where}: expected a tensor with role {r!r}, got none" for r in single if r not in named
    ]
    problems += [
        f"{where}: expected a tensor with role {r!r} for layer {i}, got none"
        for i in range(layers)
        for r in per_layer
        if (r, i) not in cached
    ]
    return named, cached


def _stage_io(stage: str, entry: dict, decoder: dict, problems: list[str]) -> StageIO:
    inputs, outputs = M.STAGE_ROLES[stage]
    is_decoder = stage == M.DECODER
    layers = int(decoder.get("num_hidden_layers", 0)) if is_decoder else 0
    past_roles, present_roles = (
        (M.CACHE_INPUT_ROLES, M.CACHE_OUTPUT_ROLES) if is_decoder else ((), ())
    )
    ins, past = _roles(stage, "input", entry.get(M.S_INPUTS), inputs, past_roles, layers, problems)
    outs, present = _roles(
        stage, "output", entry.get(M.S_OUTPUTS), outputs, present_roles, layers, problems
    )
    cache = tuple(
        (
            past.get((M.R_PAST_KEY, i), ""),
            past.get((M.R_PAST_VALUE, i), ""),
            present.get((M.R_PRESENT_KEY, i), ""),
            present.get((M.R_PRESENT_VALUE, i), ""),
        )
        for i in range(layers)
    )
    cache_types = {
        t.get(M.S_DTYPE)
        for t in (*(entry.get(M.S_INPUTS) or ()), *(entry.get(M.S_OUTPUTS) or ()))
        if isinstance(t, dict) and t.get(M.S_ROLE) in (*past_roles, *present_roles)
    }
    cache_dtype = next(iter(cache_types), "float32")
    if len(cache_types) > 1 or cache_dtype not in CACHE_DTYPES:
        problems.append(
            f"{stage}: expected one KV cache dtype of {', '.join(CACHE_DTYPES)}, got "
            f"{', '.join(sorted(map(str, cache_types)))}"
        )
        cache_dtype = "float32"
    return StageIO(MappingProxyType(ins), MappingProxyType(outs), cache, cache_dtype)


def stage_io(manifest: dict, stage: str) -> StageIO:
    """A (checked, ``read_manifest``) manifest's tensors of ``stage`` by role; PackageError
    naming every problem when its tensors do not give each role of the stage exactly once."""
    problems: list[str] = []
    io = _stage_io(stage, manifest[M.K_STAGES][stage], manifest[M.K_DECODER], problems)
    if problems:
        raise PackageError(f"manifest stage {stage}: {'; '.join(problems)}; {_FIX_EXPORT}")
    return io


REQUIRED_INTS = {
    M.K_DECODER: (
        "num_hidden_layers",
        "num_key_value_heads",
        "head_dim",
        "hidden_size",
        "vocab_size",
    ),
    M.K_SAMPLING: ("num_frames", "chunk_size", "num_select_k_frames_in_chunk"),
    M.K_VISUAL: ("num_visual_tokens",),
}


PROMPT_KEYS = {
    M.PR_TEMPLATE: str,
    M.PR_SYSTEM: str,
    M.PR_PLACEHOLDER: str,
    M.PR_NUM_PLACEHOLDERS: int,
    M.PR_NUM_SENTINELS: int,
    M.PR_TOKEN_INDEX: int,
    M.PR_STOP: str,
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def read_manifest(folder: str | Path) -> dict:
    """The checked manifest of a package folder (no sessions are created)."""
    folder = Path(folder).expanduser()
    fix = "fix: pass a folder written by mvgpt-export (--model PKG)"
    if not folder.exists():
        raise PackageError(
            f"model package not found: expected a folder, got {str(folder)!r}; {fix}"
        )
    if not folder.is_dir():
        raise PackageError(
            f"model package is not a folder: expected a package folder, got the file "
            f"{str(folder)!r}; {fix}"
        )
    path = folder / M.MANIFEST_FILE
    if not path.is_file():
        raise PackageError(
            f"{str(folder)!r} is not a model package: expected {M.MANIFEST_FILE} in it, got none; "
            f"{fix}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PackageError(
            f"{path}: expected a JSON manifest, got unreadable content ({e}); {_FIX_EXPORT}"
        ) from e
    if not isinstance(data, dict):
        raise PackageError(
            f"{path}: expected a JSON object, got {type(data).__name__}; {_FIX_EXPORT}"
        )
    version = data.get(M.K_SCHEMA_VERSION)
    if version != M.SCHEMA_VERSION:
        raise PackageError(
            f"{path}: expected schema_version {M.SCHEMA_VERSION}, got {version!r}; fix: export "
            "the package again with this mvgpt version's mvgpt-export"
        )
    missing = [k for k in REQUIRED_KEYS if not isinstance(data.get(k), dict)]
    stages = data.get(M.K_STAGES) if isinstance(data.get(M.K_STAGES), dict) else {}
    missing += [f"stages.{s}" for s in M.STAGES if not isinstance(stages.get(s), dict)]
    for section, keys in REQUIRED_INTS.items():  # the numbers the pipeline reads
        values = data.get(section) if isinstance(data.get(section), dict) else {}
        missing += [f"{section}.{k}" for k in keys if not _is_int(values.get(k))]
    prompt = data.get(M.K_PROMPT) if isinstance(data.get(M.K_PROMPT), dict) else {}
    for key, kind in PROMPT_KEYS.items():
        if not isinstance(prompt.get(key), kind) or isinstance(prompt.get(key), bool):
            missing.append(f"prompt.{key} ({kind.__name__})")
    sampling = data.get(M.K_SAMPLING) or {}
    if not missing and sampling["num_frames"] % sampling["chunk_size"]:
        missing.append("sampling.num_frames as a multiple of sampling.chunk_size")
    if missing:
        raise PackageError(
            f"{path}: expected the keys {', '.join(missing)}, got a manifest without them; "
            f"{_FIX_EXPORT}"
        )
    try:
        check_template(data[M.K_PROMPT][M.PR_TEMPLATE])
    except MvgptError as e:
        raise PackageError(f"{path}: {e}") from e
    files = [data.get(M.K_TOKENIZER, M.TOKENIZER_FILE)]
    for stage in M.STAGES:
        files.append(stages[stage].get(M.S_FILE))
    absent = [str(f) for f in files if not isinstance(f, str) or not (folder / f).is_file()]
    if absent:
        raise PackageError(
            f"{str(folder)!r}: expected the package files {', '.join(absent)}, got them missing; "
            f"{_FIX_EXPORT}"
        )
    return data


def _check_tensors(where: str, declared: Any, actual: list, kind: str) -> list[str]:
    """Mismatches between the manifest's tensors and a session's NodeArgs (one string each)."""
    if not isinstance(declared, list) or not all(isinstance(t, dict) for t in declared):
        return []  # (_roles reports it)
    problems = []
    wanted = {t.get(M.S_NAME): t for t in declared}
    real = {arg.name: arg for arg in actual}
    for name, spec in wanted.items():
        arg = real.get(name)
        if arg is None:
            problems.append(f"{where} {kind} {name!r}: expected in the graph, got none")
            continue
        dtype = _ORT_TYPES.get(arg.type, arg.type)
        if spec.get(M.S_DTYPE) != dtype:
            problems.append(
                f"{where} {kind} {name!r}: expected dtype {spec.get(M.S_DTYPE)}, got {dtype}"
            )
        shape = spec.get(M.S_SHAPE)
        got = list(arg.shape) if arg.shape is not None else None
        if not isinstance(shape, list) or got is None or len(shape) != len(got):
            problems.append(
                f"{where} {kind} {name!r}: expected rank "
                f"{len(shape) if isinstance(shape, list) else shape}, got "
                f"{len(got) if got is not None else 'unknown'}"
            )
            continue
        for axis, (want, have) in enumerate(zip(shape, got, strict=True)):
            # a symbolic graph dim accepts the manifest's static one (ORT reports untraced output
            # dims as names); two different numbers do not
            if isinstance(want, int) and isinstance(have, int) and want != have:
                problems.append(f"{where} {kind} {name!r} axis {axis}: expected {want}, got {have}")
    for name in real:
        if name not in wanted:
            problems.append(f"{where} {kind} {name!r}: in the graph, expected in the manifest")
    return problems


def resolve_provider(provider: str) -> list[str]:
    """The ORT provider list for a short name (the named provider, then CPU as fallback)."""
    if provider not in PROVIDERS:
        raise MvgptError(
            f"unknown provider {provider!r}: expected one of {', '.join(PROVIDERS)}; "
            "fix: pick one of those"
        )
    name = PROVIDERS[provider]
    available = ort.get_available_providers()
    if name not in available:
        raise MvgptError(
            f"provider {provider!r} ({name}) is not in this onnxruntime build: expected it in "
            f"the installed providers, got {', '.join(available)}; fix: choose cpu, or install "
            "an onnxruntime package built with it"
        )
    return [name] if name == PROVIDERS["cpu"] else [name, PROVIDERS["cpu"]]


_preloaded: dict[str, str] = {}


def preload_provider_libraries(provider: str) -> str:
    """For ``cuda``: onnxruntime's ``preload_dlls()`` (onnxruntime-gpu 1.21+), which loads CUDA
    and cuDNN from pip's nvidia-* packages beside it, so that a pip-only install finds them
    without LD_LIBRARY_PATH. Once per process; returns what it printed (kept for the error when
    the provider still does not start), "" for other providers or older onnxruntime."""
    if provider != "cuda" or not hasattr(ort, "preload_dlls"):
        return ""
    if provider not in _preloaded:
        printed = _io.StringIO()
        with contextlib.redirect_stdout(printed):
            try:
                ort.preload_dlls()
            except Exception as e:  # a missing nvidia folder: the system's libraries may do
                print(f"preload_dlls: {e}")
        _preloaded[provider] = " ".join(printed.getvalue().split())
    return _preloaded[provider]


def check_provider_started(stage: str, session: ort.InferenceSession, provider: str) -> None:
    """onnxruntime falls back to the CPU, with only a log line, when a provider's libraries do
    not load (CUDA or cuDNN missing): a run asked for on a GPU must not go on at CPU speed."""
    wanted = PROVIDERS[provider]
    if wanted in session.get_providers():
        return
    said = _preloaded.get(provider, "")
    raise MvgptError(
        f"{stage}: provider {provider!r} ({wanted}) did not start, onnxruntime fell back to "
        f"{', '.join(session.get_providers())}"
        + (f" ({said[:300]})" if said else "")
        + "; fix: install the CUDA and cuDNN libraries onnxruntime-gpu was built for (pip "
        "install 'onnxruntime-gpu[cuda,cudnn]', or put them on LD_LIBRARY_PATH), or choose cpu"
    )


@dataclass
class Package:
    """A loaded package: its folder, manifest, tokenizer and one session per stage."""

    folder: Path
    manifest: dict
    tokenizer: tokenizers.Tokenizer
    sessions: dict[str, ort.InferenceSession]
    io: dict[str, StageIO]  # every stage's tensors by role
    provider: str
    custom_ops: bool  # True: video_mamba and the decoder run mvgpt's ops (not portable graphs)
    notes: list[str] = field(default_factory=list)  # things the user should hear once

    @property
    def random_weights(self) -> bool:
        source = self.manifest.get(M.K_SOURCE)
        return bool(isinstance(source, dict) and source.get("random_weights"))


def _open(path: Path, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # ORT raises Fail / InvalidGraph / NoSuchFile ... types
        reason = " ".join(str(e).split())[:300]
        raise PackageError(
            f"{path}: expected an ONNX graph onnxruntime can load, got an error ({reason}); "
            f"{_FIX_EXPORT}"
        ) from e


def load_package(folder: str | Path, provider: str = "cpu", threads: int | None = None) -> Package:
    """Read and check the manifest, open every stage's session, check the graphs against it."""
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise MvgptError(
            f"threads: expected None or an integer >= 1, got {threads!r}; fix: pass --threads N"
        )
    providers = resolve_provider(provider)
    preload_provider_libraries(provider)
    folder = Path(folder).expanduser()
    data = read_manifest(folder)
    tokenizer_path = folder / data.get(M.K_TOKENIZER, M.TOKENIZER_FILE)
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise PackageError(
            f"{tokenizer_path}: expected a tokenizers JSON file, got an unreadable one "
            f"({' '.join(str(e).split())[:200]}); {_FIX_EXPORT}"
        ) from e
    notes: list[str] = []
    stages = data[M.K_STAGES]
    problems: list[str] = []
    io = {stage: _stage_io(stage, stages[stage], data[M.K_DECODER], problems) for stage in M.STAGES}
    ops = {stage: _custom_op(stage, stages[stage], problems) for stage in M.STAGES}
    configs = {stage: _session_config(stage, stages[stage], problems) for stage in M.STAGES}
    if problems:
        raise PackageError(
            f"{folder / M.MANIFEST_FILE}: {len(problems)} problems with its stages "
            f"({'; '.join(problems)}); {_FIX_EXPORT}"
        )
    sessions: dict[str, ort.InferenceSession] = {}
    uses_ops: dict[str, bool] = {}
    for stage in M.STAGES:
        if ops[stage] is not None:
            options, file, uses_ops[stage] = _library_or_portable(
                stage, ops[stage], folder, stages[stage], configs[stage], threads, provider, notes
            )
        else:
            options = session_options(threads, config=configs[stage])
            file, uses_ops[stage] = stages[stage][M.S_FILE], False
        sessions[stage] = _open(folder / file, options, providers)
        if provider != "cpu":
            check_provider_started(stage, sessions[stage], provider)
    for stage, session in sessions.items():
        entry = stages[stage]
        variant = M.G_MAIN if ops[stage] is None or uses_ops[stage] else M.G_PORTABLE
        problems += _check_metadata(stage, variant, session)
        problems += _check_tensors(stage, entry.get(M.S_INPUTS), session.get_inputs(), "input")
        problems += _check_tensors(stage, entry.get(M.S_OUTPUTS), session.get_outputs(), "output")
    if problems:
        raise PackageError(
            f"{str(folder)!r}: the graphs do not match manifest.json ({len(problems)} "
            f"mismatches: {'; '.join(problems)}); {_FIX_EXPORT}"
        )
    custom_ops = all(uses_ops[stage] for stage in M.STAGES if ops[stage] is not None)
    notes += int8_notes(data, provider)
    return Package(folder, data, tokenizer, sessions, io, provider, custom_ops, notes)


def _custom_op(stage: str, entry: dict, problems: list[str]) -> str | None:
    """The mvgpt op a stage's main graph needs (its entry's S_CUSTOM_OP), or None."""
    op = entry.get(M.S_CUSTOM_OP)
    if op is None:
        return None
    known = tuple(M.CUSTOM_OP_STAGES.values())
    if (
        not isinstance(op, dict)
        or op.get("domain") != M.CUSTOM_OP_DOMAIN
        or op.get("op_type") not in known
    ):
        problems.append(
            f"{stage} {M.S_CUSTOM_OP}: expected null or {{domain: {M.CUSTOM_OP_DOMAIN}, op_type: "
            f"one of {', '.join(known)}}}, got {op!r}"
        )
        return None
    return op["op_type"]


def _session_config(stage: str, entry: dict, problems: list[str]) -> dict[str, str]:
    """A stage's session config entries (S_SESSION_CONFIG: string keys and values)."""
    config = entry.get(M.S_SESSION_CONFIG, {})
    if not isinstance(config, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in config.items()
    ):
        problems.append(
            f"{stage} {M.S_SESSION_CONFIG}: expected an object of string keys and values, "
            f"got {config!r}"
        )
        return {}
    return config


def _check_metadata(stage: str, variant: str, session: ort.InferenceSession) -> list[str]:
    """Mismatches between a graph's ONNX metadata (stage, schema version, variant) and the
    stage the manifest opened it as."""
    found = session.get_modelmeta().custom_metadata_map
    wanted = {M.G_STAGE: stage, M.G_SCHEMA_VERSION: str(M.SCHEMA_VERSION), M.G_VARIANT: variant}
    return [
        f"{stage} graph metadata {key}: expected {value!r}, got {found.get(key)!r}"
        for key, value in wanted.items()
        if found.get(key) != value
    ]


# CPU flags with an int8 dot product that adds u8 * s8 products in int32 (no int16 saturation)
INT32_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str] | None:
    """The x86 CPU's feature flags, or None where they cannot be read (not Linux, not x86)."""
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        return None
    return None


def int8_notes(manifest: dict, provider: str, flags: set[str] | None = None) -> list[str]:
    """A note when the package's int8 weights use the full s8 range (exported before the 7-bit
    weights) and this x86 CPU's int8 kernel adds products in int16, where they saturate."""
    stages = (manifest.get(M.K_QUANTIZATION) or {}).get(M.Q_STAGES) or {}
    full_range = sorted(k for k, e in stages.items() if e.get(M.Q_METHOD) == M.INT8_FULL_RANGE)
    flags = cpu_flags() if flags is None else flags
    if provider != "cpu" or not full_range or flags is None or "avx2" not in flags:
        return []
    if any(f in flags for f in INT32_DOT_FLAGS):
        return []
    return [
        f"{', '.join(full_range)}: this package's int8 weights use the full s8 range, which this "
        "CPU's int8 kernel (no VNNI) saturates: answers differ from VNNI CPUs; fix: re-export "
        "it with this mvgpt-export (7-bit weights, the same speed)"
    ]


def _has_kernel(op: str, provider: str) -> bool:
    """Whether the built library has a kernel of ``op`` for ``provider`` (a short name)."""
    return PROVIDERS[provider] in library_providers(op)


def _library_or_portable(
    stage: str,
    op: str,
    folder: Path,
    entry: dict,
    config: dict[str, str],
    threads: int | None,
    provider: str,
    notes: list[str],
) -> tuple[ort.SessionOptions, str, bool]:
    """(options, file, custom_ops) of a stage whose graph needs the mvgpt op ``op``: options with
    the library loaded and the stage's session config, and the stage's graph, when the library
    loads (CPU); else plain options and the portable graph, with a note saying why."""
    portable = entry.get(M.S_PORTABLE_FILE)
    has_portable = isinstance(portable, str) and (folder / portable).is_file()
    try:
        if not library_available():
            reason = "the mvgpt custom-op library is not built"
        elif provider != "cpu" and has_portable and not _has_kernel(op, provider):
            reason = f"the library's {op} kernel is CPU-only and the provider is {provider}"
        else:
            options = session_options(threads, custom_op=op, config=config)
            return options, entry[M.S_FILE], True
    except KernelError as e:
        reason = str(e)
    if not has_portable:
        raise KernelError(
            f"{stage} needs the {op} custom op and the package has no portable graph: "
            f"expected {LIB_NAME} or {portable!r}, got neither ({reason}); "
            "fix: build it with `python -m mvgpt.kernels.build`"
        )
    notes.append(f"{stage} runs the portable graph ({reason}; slower)")
    return session_options(threads, config={}), portable, False
