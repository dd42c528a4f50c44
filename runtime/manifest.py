"""Every key of ``manifest.json``, defined once: the exporter writes with these names and the
runtimes read with them (like gguf-py's constants); runtime/PACKAGE.md describes the format in
words for runtimes in other languages (tests/unit/test_package.py checks it names every key).

Layout of a package folder::

    manifest.json  tokenizer.json  clip_vision.onnx  frame_scorer.onnx  video_mamba.onnx
    video_mamba_portable.onnx  image_projector.onnx  video_projector.onnx  embed_tokens.onnx
    decoder.onnx  decoder_portable.onnx  (+ *.onnx.data external weights; each portable graph
    reads its main graph's: video_mamba.onnx.data, decoder.onnx.data)
"""

from __future__ import annotations

# 2: decoder attention is GroupQueryAttention, its KV cache one shared buffer
# 3: tensors named by role, per-stage custom op and session config, the prompt template, and each
#    graph's stage and schema version in its ONNX metadata (runtime/PACKAGE.md)
SCHEMA_VERSION = 3
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
# fp32 | int8_dynamic_matmul_7bit | int8_per_row_table | int4_matmulnbits_... | fp16_weights_...
Q_METHOD = "method"
# the int8 method of packages exported before the 7-bit weights: full-range s8 weights, whose
# products saturate in onnxruntime's int8 kernel on x86 CPUs without VNNI (the runtime says so)
INT8_FULL_RANGE = "int8_dynamic_matmul"
Q_COSINE = "cosine"
Q_MAX_ABS_DIFF = "max_abs_diff"
Q_TOP1 = "top1_agreement"  # decoder only: argmax of logits agrees with fp32
Q_KEPT = "kept_fp32"  # fp16 only: why a stage kept its fp32 graph (its cosine is the fp16 one)

# keys of a stage entry
S_FILE = "file"
S_PORTABLE_FILE = "portable_file"  # video_mamba and decoder: the graph without mvgpt ops
S_CUSTOM_OP = "custom_op"  # {domain, op_type} the main graph needs (the library), or null
S_SESSION_CONFIG = "session_config"  # {key: value} session config entries of the main graph
S_INPUTS = "inputs"  # [{name, role, dtype, shape, (layer)}]; shape items: ints or symbolic names
S_OUTPUTS = "outputs"
S_NAME = "name"
S_ROLE = "role"  # what the tensor is to a runtime (the R_* values below); the name is the graph's
S_LAYER = "layer"  # the decoder's cache tensors: which layer's keys or values
S_DTYPE = "dtype"
S_SHAPE = "shape"

# prompt keys (the ChatML template: {system}, {images} - num_image_placeholders times
# image_placeholder -, then {question}; the text between placeholders is tokenized piece by piece)
PR_TEMPLATE = "template"
PR_SYSTEM = "system"
PR_PLACEHOLDER = "image_placeholder"
PR_NUM_PLACEHOLDERS = "num_image_placeholders"
PR_NUM_SENTINELS = "num_image_sentinels"
PR_TOKEN_INDEX = "image_token_index"
PR_STOP = "stop_string"
CHATML_TEMPLATE = (
    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{images}\n{question}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
TEMPLATE_FIELDS = ("{system}", "{images}", "{question}")  # each exactly once, in this order

# the ONNX metadata (metadata_props) every graph of a package carries, checked at load
G_STAGE = "mvgpt.stage"  # the stage name
G_SCHEMA_VERSION = "mvgpt.schema_version"  # str(SCHEMA_VERSION)
G_VARIANT = "mvgpt.variant"  # G_MAIN or G_PORTABLE
G_MAIN = "main"
G_PORTABLE = "portable"

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

# tensor roles (S_ROLE); the exporter names each graph tensor after its role (the cache tensors
# after role and layer: past_key_name ...), but a runtime finds tensors by role, never by name
R_PIXEL_VALUES = "pixel_values"  # clip_vision (F,3,S,S), video_mamba (1,3,T,S,S): float32
R_IMAGE_FEATURES = "image_features"  # clip_vision out, frame_scorer and image_projector in
R_FRAME_SCORES = "frame_scores"
R_VIDEO_FEATURES = "video_features"  # video_mamba out, video_projector in
R_IMAGE_TOKENS = "image_tokens"
R_VIDEO_TOKENS = "video_tokens"
R_INPUT_IDS = "input_ids"
R_INPUTS_EMBEDS = "inputs_embeds"  # embed_tokens out, decoder in
R_ATTENTION_MASK = "attention_mask"
R_NUM_LOGITS_TO_KEEP = "num_logits_to_keep"  # decoder input: logits of the last k only, 0: all
R_LOGITS = "logits"
R_PAST_KEY = "past_key"  # per layer (S_LAYER)
R_PAST_VALUE = "past_value"
R_PRESENT_KEY = "present_key"
R_PRESENT_VALUE = "present_value"
CACHE_INPUT_ROLES = (R_PAST_KEY, R_PAST_VALUE)
CACHE_OUTPUT_ROLES = (R_PRESENT_KEY, R_PRESENT_VALUE)
NUM_LOGITS_TO_KEEP = R_NUM_LOGITS_TO_KEEP  # (its graph name too)

# every stage's (input roles, output roles), the decoder's per-layer cache roles besides
STAGE_ROLES = {
    CLIP_VISION: ((R_PIXEL_VALUES,), (R_IMAGE_FEATURES,)),
    FRAME_SCORER: ((R_IMAGE_FEATURES,), (R_FRAME_SCORES,)),
    VIDEO_MAMBA: ((R_PIXEL_VALUES,), (R_VIDEO_FEATURES,)),
    IMAGE_PROJECTOR: ((R_IMAGE_FEATURES,), (R_IMAGE_TOKENS,)),
    VIDEO_PROJECTOR: ((R_VIDEO_FEATURES,), (R_VIDEO_TOKENS,)),
    EMBED_TOKENS: ((R_INPUT_IDS,), (R_INPUTS_EMBEDS,)),
    DECODER: ((R_INPUTS_EMBEDS, R_ATTENTION_MASK, R_NUM_LOGITS_TO_KEEP), (R_LOGITS,)),
}

# the decoder's attention and cache convention (manifest "decoder" entry)
DECODER_ATTENTION = (
    "mvgpt.GroupQueryAttention (com.microsoft.GroupQueryAttention's inputs and attributes; "
    "portable_file: com.microsoft.GroupQueryAttention)"
)
DECODER_ATTENTION_FP16 = "com.microsoft.GroupQueryAttention (fp16 packages: no custom op)"
DECODER_KV_CACHE = (
    "past_key/past_value (roles) may be a buffer longer than the positions in use; "
    "attention_mask has one column per position in use (all ones: rows unpadded), and the new "
    "positions follow the past ones (no position_ids: the graph applies RoPE); batch 1 when "
    "several positions follow a past; bind present_key/present_value to the same buffer to "
    "write new keys/values in place"
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

# The session config entries a graph with an mvgpt op is exported with (S_SESSION_CONFIG): the
# SelectiveScan kernel runs on its own thread pool, and onnxruntime's intra-op workers, left
# spinning after each node, would compete with it for the cores, so its sessions turn spinning
# off; GroupQueryAttention runs on onnxruntime's own pool, which picks its work up sooner
# spinning: its sessions keep the default. A portable graph runs with no entries.
NO_SPINNING = ("session.intra_op.allow_spinning", "0")
CUSTOM_OP_SESSION_CONFIG = {CUSTOM_OP_SCAN: dict([NO_SPINNING]), CUSTOM_OP_ATTENTION: {}}


def portable_key(stage: str) -> str:
    """The name of a stage's portable graph where graphs are keyed (quantization entries)."""
    return f"{stage}_portable"


def portable_file(stage: str) -> str:
    """The file name the exporter gives a stage's portable graph."""
    return f"{portable_key(stage)}.onnx"


def cache_name(role: str, layer: int) -> str:
    """The graph name the exporter gives a decoder cache tensor (R_PAST_KEY ... of ``layer``)."""
    return {
        R_PAST_KEY: past_key_name,
        R_PAST_VALUE: past_value_name,
        R_PRESENT_KEY: present_key_name,
        R_PRESENT_VALUE: present_value_name,
    }[role](layer)


def past_key_name(layer: int) -> str:
    return f"past_key_values.{layer}.key"


def past_value_name(layer: int) -> str:
    return f"past_key_values.{layer}.value"


def present_key_name(layer: int) -> str:
    return f"present.{layer}.key"


def present_value_name(layer: int) -> str:
    return f"present.{layer}.value"
