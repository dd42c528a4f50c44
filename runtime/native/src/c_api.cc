// The C API: converts arguments, forwards to the classes, and turns every exception into a status
// and this thread's last message. No exception leaves this file.
#include <cstring>
#include <new>
#include <string>

#include "mvgpt.h"
#include "status.h"
#include "tokenizer.h"

struct mvgpt_tokenizer {
  mvgpt::Tokenizer impl;
  explicit mvgpt_tokenizer(const std::string& path) : impl(path) {}
};

namespace {

thread_local std::string last_error;

mvgpt_status fail(mvgpt_status status, std::string message) {
  last_error = std::move(message);
  return status;
}

template <typename F>
mvgpt_status guarded(F&& body) {
  last_error.clear();
  try {
    return body();
  } catch (const mvgpt::Error& e) {
    return fail(e.status(), e.what());
  } catch (const std::bad_alloc&) {
    return fail(MVGPT_INTERNAL, "out of memory");
  } catch (const std::exception& e) {
    return fail(MVGPT_INTERNAL, e.what());
  } catch (...) {
    return fail(MVGPT_INTERNAL, "unknown error");
  }
}

mvgpt_status null_argument(const char* name) {
  return fail(MVGPT_INVALID_ARGUMENT, std::string(name) + ": expected a pointer, got NULL");
}

}  // namespace

extern "C" {

const char* mvgpt_last_error(void) { return last_error.c_str(); }

const char* mvgpt_version(void) { return "0.1.0"; }

int mvgpt_schema_version(void) { return 3; }

mvgpt_status mvgpt_tokenizer_load(const char* path, mvgpt_tokenizer** out) {
  if (out == nullptr) return null_argument("out");
  *out = nullptr;
  if (path == nullptr) return null_argument("path");
  return guarded([&] {
    *out = new mvgpt_tokenizer(path);
    return MVGPT_OK;
  });
}

void mvgpt_tokenizer_free(mvgpt_tokenizer* tokenizer) { delete tokenizer; }

mvgpt_status mvgpt_tokenizer_encode(const mvgpt_tokenizer* tokenizer, const char* text, size_t length,
                                    int32_t* ids, size_t capacity, size_t* count) {
  if (tokenizer == nullptr) return null_argument("tokenizer");
  if (text == nullptr && length > 0) return null_argument("text");
  if (count == nullptr) return null_argument("count");
  if (ids == nullptr && capacity > 0) return null_argument("ids");
  return guarded([&] {
    const auto encoded = tokenizer->impl.encode(std::string_view(text == nullptr ? "" : text, length));
    *count = encoded.size();
    if (encoded.size() > capacity) {
      return fail(MVGPT_BUFFER_TOO_SMALL, "ids: expected room for " + std::to_string(encoded.size()) +
                                              " ids, got " + std::to_string(capacity) +
                                              "; fix: call again with *count ids of room");
    }
    if (!encoded.empty()) std::memcpy(ids, encoded.data(), encoded.size() * sizeof(int32_t));
    return MVGPT_OK;
  });
}

mvgpt_status mvgpt_tokenizer_decode(const mvgpt_tokenizer* tokenizer, const int32_t* ids, size_t count,
                                    int skip_special_tokens, char* text, size_t capacity, size_t* length) {
  if (tokenizer == nullptr) return null_argument("tokenizer");
  if (ids == nullptr && count > 0) return null_argument("ids");
  if (length == nullptr) return null_argument("length");
  if (text == nullptr && capacity > 0) return null_argument("text");
  return guarded([&] {
    const std::string decoded = tokenizer->impl.decode(ids, count, skip_special_tokens != 0);
    *length = decoded.size();
    if (decoded.size() > capacity) {
      return fail(MVGPT_BUFFER_TOO_SMALL, "text: expected room for " + std::to_string(decoded.size()) +
                                              " bytes, got " + std::to_string(capacity) +
                                              "; fix: call again with *length bytes of room");
    }
    if (!decoded.empty()) std::memcpy(text, decoded.data(), decoded.size());
    return MVGPT_OK;
  });
}

int32_t mvgpt_tokenizer_token_id(const mvgpt_tokenizer* tokenizer, const char* token) {
  if (tokenizer == nullptr || token == nullptr) return -1;
  return tokenizer->impl.token_id(token);
}

size_t mvgpt_tokenizer_vocab_size(const mvgpt_tokenizer* tokenizer) {
  return tokenizer == nullptr ? 0 : tokenizer->impl.vocab_size();
}

}  // extern "C"
