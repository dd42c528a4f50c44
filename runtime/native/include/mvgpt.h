/* mvgpt: the native runtime's C API.
 *
 * Opaque handles (`mvgpt_x *`, made by `mvgpt_x_load`, released by `mvgpt_x_free`), a status code
 * from every call that can fail and the message of the last failure on this thread
 * (`mvgpt_last_error`). No C++ exception crosses this header. Strings are UTF-8; sizes are in
 * bytes or elements as named.
 *
 * Reads the package format of runtime/PACKAGE.md (schema 3). This version holds the tokenizer:
 * tokenizer.json's byte-level BPE (its normalizer, pre-tokenizer regex and added tokens), encoding
 * exactly as Hugging Face `tokenizers` does.
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
 * length of the whole text to `*length`; MVGPT_BUFFER_TOO_SMALL when it does not fit. An id
 * outside the vocabulary is MVGPT_INVALID_ARGUMENT. */
MVGPT_API mvgpt_status mvgpt_tokenizer_decode(const mvgpt_tokenizer *tokenizer, const int32_t *ids,
                                              size_t count, int skip_special_tokens, char *text,
                                              size_t capacity, size_t *length);

/* The id of a token (a vocabulary entry or an added token such as "<|im_end|>"), or -1. */
MVGPT_API int32_t mvgpt_tokenizer_token_id(const mvgpt_tokenizer *tokenizer, const char *token);

/* Number of ids: the vocabulary's and the added tokens' (the largest id + 1). */
MVGPT_API size_t mvgpt_tokenizer_vocab_size(const mvgpt_tokenizer *tokenizer);

#ifdef __cplusplus
}
#endif

#endif /* MVGPT_H */
