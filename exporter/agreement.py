"""How closely one package's graphs agree with another's: the measuring side of quantization.

Owns the one cosine / max-difference definition of the exporter (validation against torch uses
it too), the onnxruntime sessions the checks open (with the runtime's session options), and the
check of quantized graphs against the fp32 graphs of the same export on the same seeded inputs.
Needs numpy and onnxruntime only (no torch), so that the check also runs where torch is slow or
absent - under CPU emulation, for example, where it shows what a package answers on a CPU the
machine does not have:

    python -m mvgpt.exporter.agreement FP32_PACKAGE QUANTIZED_PACKAGE [--stages decoder]

prints one JSON line per graph (method, cosine, max |diff|, decoder top-1 agreement).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mvgpt.runtime import manifest as M
from mvgpt.runtime.sessions import session_options

PREFILL_TOKENS = 48
DECODE_STEPS = 8
VALIDATION_FRAMES = 4  # the value of every symbolic frame/batch axis in the checks
SEED = 0


def session(path: Path, custom_op: str | None) -> ort.InferenceSession:
    """A CPU session for a check, set up as the runtime sets it up; with ``custom_op`` (the
    graph's mvgpt op) the mvgpt library is loaded."""
    options = session_options(custom_op=custom_op)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(got: list[np.ndarray], ref: list[np.ndarray]) -> tuple[float, float]:
    """(max |got - ref|, cosine) over all outputs flattened together, in float64."""
    a = np.concatenate([x.ravel() for x in got]).astype(np.float64)
    b = np.concatenate([x.ravel() for x in ref]).astype(np.float64)
    cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    return float(np.max(np.abs(a - b))), cosine


@dataclass
class QuantCheck:
    stage: str  # stage name, or "video_mamba_portable"
    file: str
    method: str
    max_abs_diff: float
    cosine: float
    top1_agreement: float | None  # decoder only: argmax of logits, quantized vs fp32
    ok: bool

    def to_dict(self) -> dict:
        out = {
            M.Q_METHOD: self.method,
            M.Q_COSINE: self.cosine,
            M.Q_MAX_ABS_DIFF: self.max_abs_diff,
        }
        if self.top1_agreement is not None:
            out[M.Q_TOP1] = self.top1_agreement
        return out


def _feeds(sess, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random normal inputs; symbolic axes get VALIDATION_FRAMES."""
    feeds = {}
    for arg in sess.get_inputs():
        shape = [d if isinstance(d, int) else VALIDATION_FRAMES for d in arg.shape]
        feeds[arg.name] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


def check_quantized(
    fp32_dir: Path,
    quant_dir: Path,
    files: dict[str, str],
    methods: dict[str, str],
    min_cosine: float,
) -> list[QuantCheck]:
    """Each graph in ``methods`` of ``quant_dir`` against its fp32 graph on the same seeded
    inputs (projectors on the fp32 encoders' outputs, the decoder on embeddings of random token
    ids, prefill plus cached greedy steps)."""
    rng = np.random.default_rng(SEED)
    upstream: dict[str, np.ndarray] = {}  # fp32 encoder outputs, fed to the projectors
    checks = []
    for key, method in methods.items():
        op = M.CUSTOM_OP_STAGES.get(key)  # None for a portable graph's key
        top1 = None
        if key == M.DECODER:
            embed = session(fp32_dir / files[M.EMBED_TOKENS], None)
            ref, got, top1 = _decoder_outputs(
                fp32_dir / files[key], quant_dir / files[key], op, embed, rng
            )
        else:  # one session at a time: the fp32 graph's outputs, then the quantized graph's
            ref_sess = session(fp32_dir / files[key], op)
            feeds = _feeds(ref_sess, rng)
            if key == M.EMBED_TOKENS:
                vocab = _vocab_size(fp32_dir / files[M.DECODER])
                feeds = {M.R_INPUT_IDS: rng.integers(0, vocab, (2, PREFILL_TOKENS), dtype=np.int64)}
            elif key == M.IMAGE_PROJECTOR and M.CLIP_VISION in upstream:
                feeds = {ref_sess.get_inputs()[0].name: upstream[M.CLIP_VISION]}
            elif key == M.VIDEO_PROJECTOR and M.VIDEO_MAMBA in upstream:
                feeds = {ref_sess.get_inputs()[0].name: upstream[M.VIDEO_MAMBA]}
            ref = ref_sess.run(None, feeds)
            del ref_sess
            got = session(quant_dir / files[key], op).run(None, feeds)
            if key in (M.CLIP_VISION, M.VIDEO_MAMBA):
                upstream[key] = ref[0]
        abs_diff, cosine = compare(got, ref)
        checks.append(
            QuantCheck(key, files[key], method, abs_diff, cosine, top1, cosine >= min_cosine)
        )
    return checks


def _vocab_size(decoder: Path) -> int:
    import onnx

    graph = onnx.load(str(decoder), load_external_data=False).graph
    logits = next(o for o in graph.output if o.name == M.R_LOGITS)
    return logits.type.tensor_type.shape.dim[2].dim_value


def _decoder_logits(sess, embed_sess, ids, forced=None):
    """Logits (positions, V) of one decoder over the prefill ``ids`` and DECODE_STEPS cached
    steps, and the step tokens: ``forced`` when given, else this decoder's greedy choices."""
    pasts = [a for a in sess.get_inputs() if a.name.startswith("past_key_values.")]
    kv_heads, head_dim = pasts[0].shape[1], pasts[0].shape[3]
    dtype = np.float16 if pasts[0].type == "tensor(float16)" else np.float32  # fp16: its cache
    empty = np.zeros((1, kv_heads, 0, head_dim), dtype)

    def step(ids, start, past):
        embeds = embed_sess.run(None, {M.R_INPUT_IDS: ids})[0]
        feeds = {
            M.R_INPUTS_EMBEDS: embeds,
            M.R_ATTENTION_MASK: np.ones((1, start + ids.shape[1]), np.int64),
            M.NUM_LOGITS_TO_KEEP: np.array(0, np.int64),
        }
        feeds.update(past or {a.name: empty for a in pasts})
        outs = sess.run(None, feeds)
        return outs[0][0], {a.name: o for a, o in zip(pasts, outs[1:], strict=True)}

    logits, past = step(ids, 0, None)
    all_logits, tokens = [logits], []
    for n, t in enumerate(range(PREFILL_TOKENS, PREFILL_TOKENS + DECODE_STEPS)):
        token = int(np.argmax(all_logits[-1][-1])) if forced is None else forced[n]
        tokens.append(token)
        logits, past = step(np.array([[token]], np.int64), t, past)
        all_logits.append(logits)
    return np.concatenate(all_logits), tokens


def _decoder_outputs(ref_path, got_path, custom_op, embed_sess, rng):
    """Logits of both decoders over a random prefill and DECODE_STEPS cached greedy steps
    (fp32's choice fed to both); returns (ref logits, quantized logits, top-1 agreement). The
    two decoders run one after the other, so only one is in memory at a time."""
    ref_sess = session(ref_path, custom_op)
    vocab = ref_sess.get_outputs()[0].shape[2]
    ids = rng.integers(0, vocab, (1, PREFILL_TOKENS), dtype=np.int64)
    ref_all, tokens = _decoder_logits(ref_sess, embed_sess, ids)
    del ref_sess
    got_all, _ = _decoder_logits(session(got_path, custom_op), embed_sess, ids, tokens)
    top1 = float(np.mean(ref_all.argmax(-1) == got_all.argmax(-1)))
    return [ref_all], [got_all], top1


def package_files(manifest: dict) -> dict[str, str]:
    """The ``files`` map of a package: stage -> graph file, and portable_key(stage) -> portable
    graph file (older packages measured one on its own)."""
    stages = manifest[M.K_STAGES]
    files = {stage: entry[M.S_FILE] for stage, entry in stages.items()}
    for stage, entry in stages.items():
        if M.S_PORTABLE_FILE in entry:
            files[M.portable_key(stage)] = entry[M.S_PORTABLE_FILE]
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="the fp32 package of the same export")
    parser.add_argument("package", type=Path, help="the quantized package")
    parser.add_argument("--stages", nargs="*", help="files keys to check (default: all quantized)")
    args = parser.parse_args(argv)
    try:
        manifest = json.loads((args.package / M.MANIFEST_FILE).read_text())
        stages = manifest[M.K_QUANTIZATION][M.Q_STAGES]
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {args.package}: expected a quantized package, got {e!r}", file=sys.stderr)
        return 1
    methods = {k: e[M.Q_METHOD] for k, e in stages.items() if e[M.Q_METHOD] != "fp32"}
    if args.stages:
        unknown = sorted(set(args.stages) - set(methods))
        if unknown:
            print(f"error: --stages {unknown}: expected some of {sorted(methods)}", file=sys.stderr)
            return 1
        methods = {k: m for k, m in methods.items() if k in args.stages}
    min_cosine = manifest[M.K_QUANTIZATION][M.Q_MIN_COSINE]
    files = package_files(manifest)
    for check in check_quantized(args.reference, args.package, files, methods, min_cosine):
        print(json.dumps(asdict(check)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
