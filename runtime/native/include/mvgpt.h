/* mvgpt: the native runtime's C API.
 *
 * Opaque handles (`mvgpt_x *`, made by `mvgpt_x_load`, released by `mvgpt_x_free`), a status code
 * from every call that can fail and the message of the last failure on this thread
 * (`mvgpt_last_error`). No C++ exception crosses this header. Strings are UTF-8; sizes are in
 * bytes or elements as named.
 *
 * Reads the package format of runtime/PACKAGE.md (schema 3) and answers as the Python runtime
 * (`mvgpt-run`, `mvgpt.runtime.Pipeline`) does: the same token ids for greedy answers. A model
 * is a loaded package; an encoding is one video's visual embeddings, which answers any number of
 * questions (the KV cache of the prompt before the question is kept with it); an answer holds
 * its text, token ids and timings. The tokenizer is tokenizer.json's byte-level BPE (its
 * normalizer, pre-tokenizer regex and added tokens), encoding exactly as Hugging Face
 * `tokenizers` does.
 *
 * Thread safety: one model answers one question at a time; use one model per thread.
 */
#ifndef MVGPT_H
#define MVGPT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define MVGPT_API __declspec(dllexport)
#else
#define MVGPT_API __attribute__((visibility("default")))
#endif

typedef enum mvgpt_status {
  MVGPT_OK = 0,
  MVGPT_INVALID_ARGUMENT = 1, /* a null handle or pointer, a bad size, invalid UTF-8 */
  MVGPT_NOT_FOUND = 2,        /* a file that is not there or cannot be read */
  MVGPT_BAD_FORMAT = 3,       /* a file whose content is not what the format says */
  MVGPT_UNSUPPORTED = 4,      /* a valid file using a feature this runtime does not have */
  MVGPT_BUFFER_TOO_SMALL = 5, /* the output did not fit: the size needed is returned */
  MVGPT_INTERNAL = 6          /* anything else (out of memory, a library error) */
} mvgpt_status;

/* The message of this thread's last failed call (one line: what was expected, what was found,
 * how to fix it); "" when none failed. Valid until the thread's next mvgpt call. */
MVGPT_API const char *mvgpt_last_error(void);

/* The library's version, "MAJOR.MINOR.PATCH", and the package schema version it reads. */
MVGPT_API const char *mvgpt_version(void);
MVGPT_API int mvgpt_schema_version(void);

/* ---------------------------------------------------------------- tokenizer */

typedef struct mvgpt_tokenizer mvgpt_tokenizer;

/* Read a tokenizers JSON file (a package's tokenizer.json). */
MVGPT_API mvgpt_status mvgpt_tokenizer_load(const char *path, mvgpt_tokenizer **out);
MVGPT_API void mvgpt_tokenizer_free(mvgpt_tokenizer *tokenizer);

/* Token ids of `length` bytes of UTF-8 `text` (no special tokens added; special tokens written
 * in the text are recognised), as `tokenizers`' encode(text, add_special_tokens=False). Writes at
 * most `capacity` ids to `ids` and the number of ids of the whole text to `*count`; returns
 * MVGPT_BUFFER_TOO_SMALL (nothing written) when they do not fit. Invalid UTF-8 is
 * MVGPT_INVALID_ARGUMENT, with the byte offset in the message. */
MVGPT_API mvgpt_status mvgpt_tokenizer_encode(const mvgpt_tokenizer *tokenizer, const char *text,
                                              size_t length, int32_t *ids, size_t capacity,
                                              size_t *count);

/* The text of `count` ids, as `tokenizers`' decode(ids, skip_special_tokens): bytes that are not
 * valid UTF-8 become U+FFFD. Writes at most `capacity` bytes (no terminating zero) and the
 * length of the whole text to `*length`; MVGPT_BUFFER_TOO_SMALL when it does not fit. Ids
 * without a token (negative, beyond the vocabulary) are skipped, as `tokenizers` skips them. */
MVGPT_API mvgpt_status mvgpt_tokenizer_decode(const mvgpt_tokenizer *tokenizer, const int32_t *ids,
                                              size_t count, int skip_special_tokens, char *text,
                                              size_t capacity, size_t *length);

/* The id of a token (a vocabulary entry or an added token such as "<|im_end|>"), or -1. */
MVGPT_API int32_t mvgpt_tokenizer_token_id(const mvgpt_tokenizer *tokenizer, const char *token);

/* Number of ids: the vocabulary's and the added tokens' (the largest id + 1). */
MVGPT_API size_t mvgpt_tokenizer_vocab_size(const mvgpt_tokenizer *tokenizer);

/* ---------------------------------------------------------------- model */

typedef struct mvgpt_model mvgpt_model;
typedef struct mvgpt_encoding mvgpt_encoding;
typedef struct mvgpt_answer mvgpt_answer;

typedef struct mvgpt_model_params {
  int threads;             /* onnxruntime intra-op threads; 0: its default */
  const char *ops_library; /* the mvgpt custom-op library (libmvgpt_ops); NULL or "": the
                              MVGPT_OPS_LIBRARY environment variable, else the portable graphs */
  const char *provider;    /* "cpu" (NULL or "": the same) or "cuda" (onnxruntime's CUDA execution
                              provider, the CPU for what it does not run; MVGPT_UNSUPPORTED when the
                              onnxruntime library has no CUDA provider) */
} mvgpt_model_params;

MVGPT_API mvgpt_model_params mvgpt_model_default_params(void);

/* Load a package folder (manifest.json, the graphs, tokenizer.json). */
MVGPT_API mvgpt_status mvgpt_model_load(const char *package, const mvgpt_model_params *params,
                                        mvgpt_model **out);
MVGPT_API void mvgpt_model_free(mvgpt_model *model);

/* 1 when the custom-op graphs run (else the portable ones); what the user should hear once about
 * the load (lines), "" when nothing. */
MVGPT_API int mvgpt_model_custom_ops(const mvgpt_model *model);
MVGPT_API const char *mvgpt_model_notes(const mvgpt_model *model);

/* Encode a video given as `num_frames` RGB frames in memory: (num_frames, height, width, 3) uint8,
 * row-major; each frame counts as one second (frames are sampled as the package says). */
MVGPT_API mvgpt_status mvgpt_encode_frames(mvgpt_model *model, const uint8_t *rgb, int num_frames,
                                           int height, int width, mvgpt_encoding **out);
/* Encode a video file (mp4, avi, mkv, webm, ... : what OpenCV's FFmpeg backend reads), decoded
 * and sampled as `mvgpt-run` does: 1 frame per second of the container's frame rate thinned to the
 * package's frame count, a short clip spread evenly and repeated, the rotation tag honoured.
 * MVGPT_UNSUPPORTED when this library was built without OpenCV (mvgpt_video_files_supported). */
MVGPT_API mvgpt_status mvgpt_encode_video(mvgpt_model *model, const char *path, mvgpt_encoding **out);
/* 1 when this library reads video files (built with OpenCV's C++ API), else 0. */
MVGPT_API int mvgpt_video_files_supported(void);
MVGPT_API void mvgpt_encoding_free(mvgpt_encoding *encoding);

/* The encoding's visual embeddings, (`*rows`, `*cols`) float32 row-major (image tokens, then video
 * tokens), pointing into the encoding; and the frames it used: `*count` indices into the frames
 * given, then the selected ones among those (positions in the sampled frames). */
MVGPT_API const float *mvgpt_encoding_visual(const mvgpt_encoding *encoding, size_t *rows, size_t *cols);
MVGPT_API size_t mvgpt_encoding_frames(const mvgpt_encoding *encoding, const int32_t **sampled,
                                       const int32_t **selected, size_t *selected_count);

typedef struct mvgpt_answer_params {
  int max_new_tokens;        /* 0: the package's default */
  double temperature;        /* > 0: sample (not the same draws as the Python runtime); else greedy */
  double top_p;              /* < 0: the package's */
  int top_k;                 /* < 0: the package's */
  double repetition_penalty; /* <= 0: the package's */
  uint64_t seed;             /* used when use_seed is nonzero */
  int use_seed;
} mvgpt_answer_params;

MVGPT_API mvgpt_answer_params mvgpt_answer_default_params(void);

/* Hears each piece of an answer's text as it is decided (UTF-8, complete characters only);
 * return nonzero to stop the answer there. */
typedef int (*mvgpt_text_callback)(const char *text, size_t length, void *user_data);

/* Answer `question` (UTF-8) about `encoding` (one this model made); `on_text` may be NULL. */
MVGPT_API mvgpt_status mvgpt_answer_question(mvgpt_model *model, mvgpt_encoding *encoding,
                                             const char *question, const mvgpt_answer_params *params,
                                             mvgpt_text_callback on_text, void *user_data,
                                             mvgpt_answer **out);
MVGPT_API const char *mvgpt_answer_text(const mvgpt_answer *answer);
/* The generated ids (eos not included); `*ids` points into the answer. */
MVGPT_API size_t mvgpt_answer_token_ids(const mvgpt_answer *answer, const int32_t **ids);
/* The answer as JSON, with the fields of `mvgpt-run --json`: answer, token_ids, frame_indices,
 * selected_frames, seconds (per stage), ttft_s, decode_tokens_per_s, encoding_reused, custom_ops. */
MVGPT_API const char *mvgpt_answer_json(const mvgpt_answer *answer);
MVGPT_API void mvgpt_answer_free(mvgpt_answer *answer);

/* ---------------------------------------------------------------- live video */

/* A stream session (runtime/stream.py's StreamSession): frames pushed as they arrive, answers
 * about the last `window_s` seconds at any time. A frame is kept when it is the first at or after
 * the next tick of a 1 / target_fps grid of stream time; each kept frame goes through
 * preprocessing and clip_vision once, when it arrives; the decoder's [prompt prefix, visual] cache
 * of the window is refreshed every `refresh_s` seconds in the background, so that a question pays
 * for its own tokens only. An answer equals mvgpt_answer_question's on the window's kept frames.
 * While a stream is open its model serves that stream only. */
typedef struct mvgpt_stream mvgpt_stream;

typedef struct mvgpt_stream_params {
  double window_s;   /* seconds of video an answer is about; <= 0: frames per video / target_fps */
  double refresh_s;  /* the background's prefix refresh period; < 0: 2 */
  double target_fps; /* kept frames per second; <= 0: 1 */
  int background;    /* nonzero: a thread of the stream encodes kept frames and refreshes the prefix;
                        0: push encodes a kept frame at once and an answer refreshes the prefix */
  int max_pending;   /* kept frames waiting for clip_vision; beyond it the oldest is dropped; <= 0: 8 */
} mvgpt_stream_params;

MVGPT_API mvgpt_stream_params mvgpt_stream_default_params(void);
MVGPT_API mvgpt_status mvgpt_stream_open(mvgpt_model *model, const mvgpt_stream_params *params, mvgpt_stream **out);
/* Stops the stream's thread (waiting for the step it is in) and frees it. */
MVGPT_API void mvgpt_stream_free(mvgpt_stream *stream);

/* Offer one (height, width, 3) uint8 RGB frame taken at `timestamp` seconds (increasing);
 * `*kept` (may be NULL) is 1 when the sampling rule keeps it. The frame is copied. */
MVGPT_API mvgpt_status mvgpt_stream_push(mvgpt_stream *stream, const uint8_t *rgb, int height, int width,
                                         double timestamp, int *kept);

/* Wait until every kept frame is encoded and the prefix covers the window (background streams);
 * `*idle` is 0 when `timeout_s` passed first. */
MVGPT_API mvgpt_status mvgpt_stream_wait_idle(mvgpt_stream *stream, double timeout_s, int *idle);

/* Answer `question` about the window of the latest prefix (`fresh` nonzero: about the window as it
 * is now, refreshing first when it has changed). The answer's JSON has mvgpt-run --stream --json's
 * fields: answer, token_ids, window, frame_timestamps, frame_indices, selected_frames,
 * prefix_age_s, prefix_seconds, seconds, ttft_s, decode_tokens_per_s, frames, kept, dropped,
 * custom_ops. */
MVGPT_API mvgpt_status mvgpt_stream_answer(mvgpt_stream *stream, const char *question, int fresh,
                                           const mvgpt_answer_params *params, mvgpt_text_callback on_text,
                                           void *user_data, mvgpt_answer **out);

#ifdef __cplusplus
}
#endif

#endif /* MVGPT_H */
