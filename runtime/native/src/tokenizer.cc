#include "tokenizer.h"

#include <algorithm>
#include <climits>
#include <fstream>
#include <sstream>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include <nlohmann/json.hpp>

#include "status.h"
#include "utf8.h"

namespace mvgpt {
namespace {

using json = nlohmann::json;

// ByteLevel's regex (tokenizers' pre_tokenizers::byte_level), when use_regex is true
constexpr int64_t kMaxId = int64_t{1} << 24;  // ids beyond this are not a tokenizer's

constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

[[noreturn]] void fail(mvgpt_status status, const std::string& path, const std::string& what) {
  throw Error(status, path + ": " + what);
}

// GPT-2's byte -> char table: printable Latin-1 bytes map to themselves, the others to U+0100...
std::array<char32_t, 256> byte_level_chars() {
  std::array<char32_t, 256> chars{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    chars[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return chars;
}

std::string nfc(std::string_view text) {
  UErrorCode err = U_ZERO_ERROR;
  const UNormalizer2* normalizer = unorm2_getNFCInstance(&err);
  if (U_FAILURE(err)) throw Error(MVGPT_INTERNAL, std::string("ICU NFC: ") + u_errorName(err));
  int32_t units = 0;
  u_strFromUTF8(nullptr, 0, &units, text.data(), static_cast<int32_t>(text.size()), &err);
  if (err != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(err)) {
    throw Error(MVGPT_INTERNAL, std::string("ICU UTF-8 -> UTF-16: ") + u_errorName(err));
  }
  err = U_ZERO_ERROR;
  std::u16string source(static_cast<size_t>(units), u'\0');
  u_strFromUTF8(source.data(), units, nullptr, text.data(), static_cast<int32_t>(text.size()), &err);
  if (unorm2_isNormalized(normalizer, source.data(), units, &err) && U_SUCCESS(err)) {
    return std::string(text);
  }
  err = U_ZERO_ERROR;
  const int32_t needed = unorm2_normalize(normalizer, source.data(), units, nullptr, 0, &err);
  err = U_ZERO_ERROR;
  std::u16string normal(static_cast<size_t>(needed), u'\0');
  unorm2_normalize(normalizer, source.data(), units, normal.data(), needed, &err);
  if (U_FAILURE(err)) throw Error(MVGPT_INTERNAL, std::string("ICU NFC: ") + u_errorName(err));
  int32_t bytes = 0;
  u_strToUTF8(nullptr, 0, &bytes, normal.data(), needed, &err);
  err = U_ZERO_ERROR;
  std::string out(static_cast<size_t>(bytes), '\0');
  u_strToUTF8(out.data(), bytes, nullptr, normal.data(), needed, &err);
  if (U_FAILURE(err)) throw Error(MVGPT_INTERNAL, std::string("ICU UTF-16 -> UTF-8: ") + u_errorName(err));
  return out;
}

const json& member(const json& object, const char* key, const std::string& path) {
  if (!object.is_object() || !object.contains(key)) {
    fail(MVGPT_BAD_FORMAT, path, std::string("expected the key \"") + key + "\", got none; fix: "
                                     "use the tokenizer.json the package was exported with");
  }
  return object.at(key);
}

bool is_off(const json& object, const char* key) {
  if (!object.contains(key)) return true;
  const json& v = object.at(key);
  return v.is_null() || (v.is_boolean() && !v.get<bool>()) || (v.is_string() && v.get<std::string>().empty());
}

// The pattern in PCRE2's terms where PCRE2 and Oniguruma (which `tokenizers` uses) differ: their
// \s. Oniguruma's is Unicode's White_Space property; PCRE2's (with UCP) also takes U+180E, the
// Mongolian vowel separator, which has not been a space since Unicode 6.3. So \s and \S become
// \p{White_Space} and \P{White_Space}, inside character classes too.
std::string onig_to_pcre2(const std::string& pattern) {
  std::string out;
  out.reserve(pattern.size() + 32);
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] != '\\' || i + 1 >= pattern.size()) {
      out += pattern[i];
      continue;
    }
    const char next = pattern[++i];
    if (next == 's') {
      out += "\\p{White_Space}";
    } else if (next == 'S') {
      out += "\\P{White_Space}";
    } else {
      out += '\\';
      out += next;  // (any other escape, \\ included, is kept whole)
    }
  }
  return out;
}

}  // namespace

// A compiled PCRE2 pattern (UTF, Unicode properties for \d \w and POSIX classes, \s as Oniguruma's:
// onig_to_pcre2; JIT when the library has it). Matching allocates its own match data: one Regex serves several threads.
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& path) {
    int code = 0;
    PCRE2_SIZE offset = 0;
    const std::string translated = onig_to_pcre2(pattern);
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &code, &offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(code, message, sizeof(message));
      fail(MVGPT_UNSUPPORTED, path, "the pre-tokenizer regex does not compile with PCRE2 at offset " +
                                        std::to_string(offset) + " (" + reinterpret_cast<char*>(message) +
                                        "); fix: use a tokenizer whose regex PCRE2 accepts");
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // (without JIT support: the interpreter)
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // The pieces of `text` (valid UTF-8): each match and each gap between matches (Isolated).
  std::vector<std::string_view> split(std::string_view text) const {
    std::vector<std::string_view> pieces;
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> data(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    if (!data) throw Error(MVGPT_INTERNAL, "PCRE2: out of memory");
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t at = 0, gap = 0;
    while (at <= text.size()) {
      const int rc = pcre2_match(code_, subject, text.size(), at, PCRE2_NO_UTF_CHECK, data.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof(message));
        throw Error(MVGPT_INTERNAL, std::string("PCRE2 match: ") + reinterpret_cast<char*>(message));
      }
      const PCRE2_SIZE* span = pcre2_get_ovector_pointer(data.get());
      const size_t start = span[0], end = span[1];
      if (end == start) {  // an empty match: no piece; go on after the next character
        if (start >= text.size()) break;
        at = start + std::max<size_t>(1, utf8::sequence_length(text, start));
        continue;
      }
      if (start > gap) pieces.push_back(text.substr(gap, start - gap));
      pieces.push_back(text.substr(start, end - start));
      at = gap = end;
    }
    if (gap < text.size()) pieces.push_back(text.substr(gap));
    return pieces;
  }

 private:
  pcre2_code* code_ = nullptr;
};

Tokenizer::~Tokenizer() = default;

Tokenizer::Tokenizer(const std::string& path) {
  try {
    load(path);
  } catch (const json::exception& e) {  // a value of the wrong type or range
    fail(MVGPT_BAD_FORMAT, path, std::string("expected a tokenizers file, got a value of the wrong type (") + e.what() +
                                     "); fix: use the tokenizer.json the package was exported with");
  }
}

void Tokenizer::load(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    fail(MVGPT_NOT_FOUND, path, "expected a tokenizer.json file, got none (or unreadable); fix: pass "
                                "a package folder written by mvgpt-export");
  }
  json root;
  try {
    root = json::parse(file);
  } catch (const json::exception& e) {
    fail(MVGPT_BAD_FORMAT, path, std::string("expected JSON, got a parse error (") + e.what() +
                                     "); fix: use the tokenizer.json the package was exported with");
  }
  const auto unsupported = [&](const std::string& what) {
    fail(MVGPT_UNSUPPORTED, path, what + "; fix: use a byte-level BPE tokenizer (GPT-2/Qwen2 style)");
  };

  // model: BPE
  const json& model = member(root, "model", path);
  if (!model.is_object() || model.value("type", "") != "BPE") {
    unsupported("expected model.type \"BPE\", got " + (model.is_object() ? model.value("type", "none") : "none"));
  }
  for (const char* key : {"dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback"}) {
    if (!is_off(model, key)) unsupported(std::string("expected model.") + key + " off, got " + model.at(key).dump());
  }
  ignore_merges_ = model.value("ignore_merges", false);
  const json& vocab = member(model, "vocab", path);
  if (!vocab.is_object()) fail(MVGPT_BAD_FORMAT, path, "expected model.vocab to be an object; fix: re-export");
  int32_t largest = -1;
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= kMaxId) {
      fail(MVGPT_BAD_FORMAT, path, "expected model.vocab ids >= 0, got " + id.dump() + " for " + token);
    }
    vocab_.emplace(token, id.get<int32_t>());
    largest = std::max(largest, id.get<int32_t>());
  }
  // added tokens
  std::vector<std::pair<int32_t, std::pair<std::string, bool>>> added;
  if (root.contains("added_tokens") && !root.at("added_tokens").is_null()) {
    for (const json& t : root.at("added_tokens")) {
      for (const char* key : {"lstrip", "rstrip", "single_word"}) {
        if (!is_off(t, key)) unsupported(std::string("expected added token ") + t.dump() + " without " + key);
      }
      const json& id_value = member(t, "id", path);
      const int64_t id = id_value.is_number_integer() ? id_value.get<int64_t>() : -1;
      const std::string content = member(t, "content", path).get<std::string>();
      if (content.empty() || id < 0 || id >= kMaxId) fail(MVGPT_BAD_FORMAT, path, "expected an added token with content and id >= 0, got " + t.dump());
      added.push_back({static_cast<int32_t>(id), {content, t.value("special", false)}});
      largest = std::max(largest, static_cast<int32_t>(id));
    }
  }
  tokens_.assign(static_cast<size_t>(largest) + 1, std::string());
  kind_.assign(tokens_.size(), 0);
  present_.assign(tokens_.size(), false);
  for (const auto& [token, id] : vocab_) tokens_[id] = token, present_[id] = true;
  for (const auto& [id, entry] : added) {
    tokens_[id] = entry.first;
    present_[id] = true;
    kind_[id] = entry.second ? 2 : 1;
    added_.push_back({entry.first, id});
  }
  std::stable_sort(added_.begin(), added_.end(),
                   [](const Added& a, const Added& b) { return a.content.size() > b.content.size(); });
  // merges: "a b" strings or ["a", "b"] pairs, in rank order
  int32_t rank = 0;
  for (const json& merge : member(model, "merges", path)) {
    std::string left, right;
    if (merge.is_string()) {
      const std::string text = merge.get<std::string>();
      const size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
        fail(MVGPT_BAD_FORMAT, path, "expected a merge \"a b\", got " + merge.dump());
      }
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      fail(MVGPT_BAD_FORMAT, path, "expected a merge \"a b\" or [\"a\", \"b\"], got " + merge.dump());
    }
    const auto l = vocab_.find(left), r = vocab_.find(right), m = vocab_.find(left + right);
    if (l == vocab_.end() || r == vocab_.end() || m == vocab_.end()) {
      fail(MVGPT_BAD_FORMAT, path, "merge " + merge.dump() + ": expected its parts and result in the vocabulary, got one missing");
    }
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(l->second)) << 32) | static_cast<uint32_t>(r->second);
    merges_.emplace(key, std::make_pair(rank++, m->second));  // (a repeated merge keeps its first rank)
  }
  // normalizer: none or NFC
  const json normalizer = root.value("normalizer", json());
  if (!normalizer.is_null()) {
    if (normalizer.value("type", "") != "NFC") unsupported("expected no normalizer or NFC, got " + normalizer.dump());
    nfc_ = true;
  }
  // pre-tokenizer: ByteLevel(use_regex) or Sequence[Split(regex, Isolated), ByteLevel(no regex)]
  const json pre = root.value("pre_tokenizer", json());
  const auto byte_level = [&](const json& p, bool regex) {
    if (p.value("type", "") != "ByteLevel" || p.value("add_prefix_space", false) || p.value("use_regex", true) != regex) {
      unsupported("expected a ByteLevel pre-tokenizer without prefix space" + std::string(regex ? "" : " and without regex") + ", got " + p.dump());
    }
  };
  if (pre.is_object() && pre.value("type", "") == "ByteLevel") {
    byte_level(pre, true);
    split_ = std::make_unique<Regex>(kGpt2Pattern, path);
  } else if (pre.is_object() && pre.value("type", "") == "Sequence" && pre.contains("pretokenizers") &&
             pre.at("pretokenizers").size() == 2) {
    const json& split = pre.at("pretokenizers")[0];
    const bool ok = split.value("type", "") == "Split" && split.value("behavior", "") == "Isolated" &&
                    !split.value("invert", false) && split.contains("pattern") && split.at("pattern").contains("Regex");
    if (!ok) unsupported("expected Split(Regex, Isolated, invert false) first, got " + split.dump());
    byte_level(pre.at("pretokenizers")[1], false);
    split_ = std::make_unique<Regex>(split.at("pattern").at("Regex").get<std::string>(), path);
  } else {
    unsupported("expected a ByteLevel or Sequence[Split, ByteLevel] pre-tokenizer, got " + pre.dump());
  }
  const json decoder = root.value("decoder", json());
  if (!decoder.is_null() && decoder.value("type", "") != "ByteLevel") unsupported("expected a ByteLevel decoder, got " + decoder.dump());
  byte_level_decoder_ = !decoder.is_null();
  const auto chars = byte_level_chars();
  for (int b = 0; b < 256; ++b) {
    utf8::append(byte_chars_[b], chars[b]);
    char_bytes_[chars[b]] = static_cast<uint8_t>(b);
  }
}

int32_t Tokenizer::token_id(std::string_view token) const {
  for (const Added& a : added_) {
    if (a.content == token) return a.id;
  }
  const auto found = vocab_.find(std::string(token));
  return found == vocab_.end() ? -1 : found->second;
}

void Tokenizer::bpe(const std::string& word, std::vector<int32_t>& ids) const {
  if (ignore_merges_) {
    const auto whole = vocab_.find(word);
    if (whole != vocab_.end()) {
      ids.push_back(whole->second);
      return;
    }
  }
  std::vector<int32_t> symbols;
  for (size_t i = 0; i < word.size();) {
    const size_t n = utf8::sequence_length(word, i);
    const auto found = vocab_.find(word.substr(i, n));
    if (found != vocab_.end()) symbols.push_back(found->second);  // (else dropped: no unk token)
    i += n;
  }
  // merge the leftmost pair of the lowest rank until no pair merges (tokenizers' priority queue of
  // (rank, position) gives the same result)
  while (symbols.size() > 1) {
    int32_t best_rank = INT32_MAX, best_id = -1;
    size_t best = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(symbols[i])) << 32) | static_cast<uint32_t>(symbols[i + 1]);
      const auto found = merges_.find(key);
      if (found != merges_.end() && found->second.first < best_rank) {
        best_rank = found->second.first;
        best_id = found->second.second;
        best = i;
      }
    }
    if (best_id < 0) break;
    symbols[best] = best_id;
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
  ids.insert(ids.end(), symbols.begin(), symbols.end());
}

void Tokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& ids) const {
  const std::string normal = nfc_ ? nfc(piece) : std::string(piece);
  for (std::string_view word : split_->split(normal)) {
    std::string mapped;
    mapped.reserve(word.size() * 2);
    for (unsigned char b : word) mapped += byte_chars_[b];
    bpe(mapped, ids);
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  const size_t bad = utf8::first_invalid(text);
  if (bad != std::string_view::npos) {
    throw Error(MVGPT_INVALID_ARGUMENT, "text: expected UTF-8, got an invalid byte 0x" +
                                            [&] {
                                              static const char* hex = "0123456789abcdef";
                                              const unsigned char b = static_cast<unsigned char>(text[bad]);
                                              return std::string{hex[b >> 4], hex[b & 15]};
                                            }() +
                                            " at offset " + std::to_string(bad) + "; fix: pass UTF-8 text");
  }
  std::vector<int32_t> ids;
  size_t start = 0;  // the text not yet encoded begins here
  for (size_t i = 0; i < text.size();) {
    const Added* match = nullptr;
    for (const Added& a : added_) {  // longest first: the first that matches is the longest
      if (text.compare(i, a.content.size(), a.content) == 0) {
        match = &a;
        break;
      }
    }
    if (match == nullptr) {
      ++i;
      continue;
    }
    if (i > start) encode_piece(text.substr(start, i - start), ids);
    ids.push_back(match->id);
    i += match->content.size();
    start = i;
  }
  if (start < text.size()) encode_piece(text.substr(start), ids);
  return ids;
}

// As `tokenizers` decodes: ids it has no token for are skipped; the ByteLevel decoder maps each
// token's chars back to bytes, or keeps the token's own bytes when one of its chars is not a
// byte-level char; without a decoder the tokens are joined with spaces.
std::string Tokenizer::decode(const int32_t* ids, size_t count, bool skip_special_tokens) const {
  std::string bytes;
  bool first = true;
  for (size_t k = 0; k < count; ++k) {
    const int32_t id = ids[k];
    if (id < 0 || static_cast<size_t>(id) >= tokens_.size() || !present_[id]) continue;
    if (skip_special_tokens && kind_[id] == 2) continue;
    const std::string& token = tokens_[id];
    if (!byte_level_decoder_) {
      bytes += (first ? "" : " ") + token;
      first = false;
      continue;
    }
    std::string mapped;
    bool all = true;
    for (size_t i = 0; i < token.size() && all;) {
      const size_t n = std::max<size_t>(1, utf8::sequence_length(token, i));
      const auto found = char_bytes_.find(utf8::decode(token, i, n));
      if (found == char_bytes_.end()) all = false;
      else mapped += static_cast<char>(found->second);
      i += n;
    }
    bytes += all ? mapped : token;
  }
  return utf8::lossy(bytes);
}

}  // namespace mvgpt
