// UTF-8 helpers: validation with the offending byte's offset, code point decoding and encoding,
// and the lossy conversion of arbitrary bytes (each maximal invalid subpart -> U+FFFD, as Rust's
// String::from_utf8_lossy, which `tokenizers` uses when it decodes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mvgpt::utf8 {

// Length of the valid sequence at text[i] (1-4), or 0 when the bytes there are not valid UTF-8.
size_t sequence_length(std::string_view text, size_t i);

// The offset of the first byte that is not valid UTF-8, or npos when all of `text` is.
size_t first_invalid(std::string_view text);

// The code point of the valid sequence of `length` bytes at text[i].
char32_t decode(std::string_view text, size_t i, size_t length);

void append(std::string& out, char32_t code_point);

std::string lossy(std::string_view bytes);

}  // namespace mvgpt::utf8
