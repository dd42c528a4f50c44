// The tokenizer of a package: tokenizer.json's byte-level BPE as Hugging Face `tokenizers` runs it.
//
// Supported (anything else is refused at load with MVGPT_UNSUPPORTED, naming the feature):
// - normalizer: none, or NFC (ICU);
// - pre-tokenizer: ByteLevel with its GPT-2 regex, or Sequence[Split(Regex, Isolated),
//   ByteLevel without regex] (Qwen2's); no prefix space. The regex runs on PCRE2 (UTF + Unicode
//   properties), as `tokenizers` runs it on Oniguruma;
// - model: BPE with merges (either JSON form), no dropout, no unk token, no byte fallback,
//   ignore_merges honoured; symbols not in the vocabulary are dropped, as `tokenizers` does
//   without an unk token;
// - added tokens (special or not) matched leftmost-longest in the raw text before anything else,
//   no lstrip/rstrip/single_word;
// - decoder: ByteLevel (or none).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace mvgpt {

class Regex;  // PCRE2, tokenizer.cc

class Tokenizer {
 public:
  // Reads and checks `path`; throws Error (MVGPT_NOT_FOUND, MVGPT_BAD_FORMAT, MVGPT_UNSUPPORTED).
  explicit Tokenizer(const std::string& path);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Ids of UTF-8 `text` (encode(text, add_special_tokens=False)); throws Error
  // (MVGPT_INVALID_ARGUMENT) on invalid UTF-8.
  std::vector<int32_t> encode(std::string_view text) const;
  // Text of `ids` (invalid UTF-8 bytes -> U+FFFD; ids without a token skipped, as `tokenizers`).
  std::string decode(const int32_t* ids, size_t count, bool skip_special_tokens) const;
  int32_t token_id(std::string_view token) const;  // -1: none
  size_t vocab_size() const { return tokens_.size(); }

 private:
  struct Added {
    std::string content;
    int32_t id;
  };
  void load(const std::string& path);
  void encode_piece(std::string_view piece, std::vector<int32_t>& ids) const;
  void bpe(const std::string& word, std::vector<int32_t>& ids) const;

  std::unordered_map<std::string, int32_t> vocab_;  // model vocabulary
  std::vector<std::string> tokens_;                 // id -> token string (added tokens too)
  std::vector<uint8_t> kind_;                       // id -> 0 model, 1 added, 2 added special
  std::vector<bool> present_;                       // id -> has a token
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // pair -> (rank, id)
  std::vector<Added> added_;                        // longest first
  std::unique_ptr<Regex> split_;                    // the pre-tokenizer's regex
  bool nfc_ = false;
  bool ignore_merges_ = false;
  bool byte_level_decoder_ = false;
  std::array<std::string, 256> byte_chars_;            // byte -> UTF-8 of its byte-level char
  std::unordered_map<char32_t, uint8_t> char_bytes_;   // byte-level char -> byte
};

}  // namespace mvgpt
