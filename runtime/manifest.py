"""Every key of ``manifest.json``, defined once: the exporter writes with these names and the
runtime reads with them (like gguf-py's constants). Reading and validation live here too.

Layout of a package folder::

    manifest.json  tokenizer.json  clip_vision.onnx  frame_scorer.onnx  video_mamba.onnx
    video_mamba_portable.onnx  image_projector.onnx  video_projector.onnx  embed_tokens.onnx
    decoder.onnx  decoder_portable.onnx  (+ *.onnx.data external weights; each portable graph
    reads its main graph's: video_mamba.onnx.data, decoder.onnx.data)
"""

from __future__ import annotations

SCHEMA_VERSION = 2  # 2: decoder attention is GroupQueryAttention, its KV cache one shared buffer
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"

# top-level keys
K_SCHEMA_VERSION = "schema_version"
K_SOURCE = "source"  # {checkpoint, checkpoint_sha256, clip, random_weights, size}
K_PRECISION = "precision"  # fp32 | int8 | int4 ...
K_OPSET = "opset"
K_IR_VERSION = "ir_version"
K_CUSTOM_OPS = "custom_ops"  # [{domain, op_type}]
K_STAGES = "stages"  # {stage name: stage entry}
K_PREPROCESS = "preprocess"  # {clip: {...}, video_mamba: {...}}
K_SAMPLING = "sampling"  # {num_frames, fps, chunk_size, num_select_k_frames_in_chunk}
K_PROMPT = "prompt"  # {system, template, image_placeholder, num_image_placeholders, ...}
K_TOKENS = "tokens"  # {endoftext, im_start, im_end, image_token_index}
K_GENERATION = "generation"  # generation_config.json values + max_new_tokens default
K_DECODER = "decoder"  # {num_hidden_layers, num_key_value_heads, head_dim, hidden_size, vocab_size,
#                        max_position_embeddings, attention, kv_cache}
K_VISUAL = "visual"  # {num_image_tokens, num_video_tokens, num_visual_tokens}
K_TOKENIZER = "tokenizer"
K_SIZES = "sizes_bytes"  # {graph file: bytes incl. external data}
K_QUANTIZATION = "quantization"  # {min_cosine, reference, stages: {key: quantization entry}}

# keys of the quantization object and of its per-graph entries (keys: stage names; packages
# exported before the portable graphs were derived from the quantized main graphs also have
# portable_key(VIDEO_MAMBA)); measured against the fp32 ONNX graphs of the same export
Q_MIN_COSINE = "min_cosine"
Q_REFERENCE = "reference"
Q_STAGES = "stages"
Q_METHOD = "method"  # fp32 | int8_dynamic_matmul_7bit | int8_per_row_table | int4_matmulnbits_...
# the int8 method of packages exported before the 7-bit weights: full-range s8 weights, whose
# products saturate in onnxruntime's int8 kernel on x86 CPUs without VNNI (the runtime says so)
INT8_FULL_RANGE = "int8_dynamic_matmul"
Q_COSINE = "cosine"
Q_MAX_ABS_DIFF = "max_abs_diff"
Q_TOP1 = "top1_agreement"  # decoder only: argmax of logits agrees with fp32

# keys of a stage entry
S_FILE = "file"
S_PORTABLE_FILE = "portable_file"  # video_mamba and decoder: the graph without mvgpt ops
S_INPUTS = "inputs"  # [{name, dtype, shape}] ; shape items are ints or symbolic names
S_OUTPUTS = "outputs"
S_NAME = "name"
S_DTYPE = "dtype"
S_SHAPE = "shape"

# preprocessing keys
P_SIZE = "size"
P_MEAN = "mean"
P_STD = "std"
P_RESIZE = "resize"  # one of the RESIZE_* values below
RESIZE_CLIP_CROP = "shortest_side_bicubic_center_crop"  # CLIP: the official processor
RESIZE_CLIP_SQUASH = "squash_bicubic"  # CLIP with do_center_crop off and a square size
RESIZE_MAMBA = "squash_bilinear"  # VideoMamba: cv2.resize to size x size

# stage names, in data-flow order
CLIP_VISION = "clip_vision"
FRAME_SCORER = "frame_scorer"
VIDEO_MAMBA = "video_mamba"
IMAGE_PROJECTOR = "image_projector"
VIDEO_PROJECTOR = "video_projector"
EMBED_TOKENS = "embed_tokens"
DECODER = "decoder"
STAGES = (
    CLIP_VISION,
    FRAME_SCORER,
    VIDEO_MAMBA,
    IMAGE_PROJECTOR,
    VIDEO_PROJECTOR,
    EMBED_TOKENS,
    DECODER,
)

NUM_LOGITS_TO_KEEP = "num_logits_to_keep"  # decoder input: logits of the last k only, 0: all

# the decoder's attention and cache convention (manifest "decoder" entry)
DECODER_ATTENTION = (
    "mvgpt.GroupQueryAttention (com.microsoft.GroupQueryAttention's inputs and attributes; "
    "portable_file: com.microsoft.GroupQueryAttention)"
)
DECODER_KV_CACHE = (
    "past_key_values.* may be a buffer longer than the positions in use; attention_mask has one "
    "column per position in use (all ones: rows unpadded), and the new positions follow the "
    "past ones (no position_ids: the graph applies RoPE); batch 1 when several positions follow "
    "a past; bind present.* to the same buffer to write new keys/values in place"
)

# the ONNX versions of every graph of a package (recorded under K_OPSET and K_IR_VERSION)
OPSET = 17
IR_VERSION = 8  # onnxruntime >= 1.10 reads it; the graphs use nothing a newer IR adds

CUSTOM_OP_DOMAIN = "mvgpt"
CUSTOM_OP_SCAN = "SelectiveScan"
CUSTOM_OP_ATTENTION = "GroupQueryAttention"  # com.microsoft's op, own decode kernel
ORT_CONTRIB_DOMAIN = "com.microsoft"  # where the portable decoder's attention op lives

# The stages whose graph uses an mvgpt op, and the op. Each also has a portable graph: the same
# graph with the op rewritten into ops every onnxruntime has (kernels/portable.py), reading the
# main graph's external data; its stage entry names it under S_PORTABLE_FILE.
CUSTOM_OP_STAGES = {VIDEO_MAMBA: CUSTOM_OP_SCAN, DECODER: CUSTOM_OP_ATTENTION}


def portable_key(stage: str) -> str:
    """The name of a stage's portable graph where graphs are keyed (quantization entries)."""
    return f"{stage}_portable"


def portable_file(stage: str) -> str:
    """The file name the exporter gives a stage's portable graph."""
    return f"{portable_key(stage)}.onnx"


def past_key_name(layer: int) -> str:
    return f"past_key_values.{layer}.key"


def past_value_name(layer: int) -> str:
    return f"past_key_values.{layer}.value"


def present_key_name(layer: int) -> str:
    return f"present.{layer}.key"


def present_value_name(layer: int) -> str:
    return f"present.{layer}.value"
