// The case files of the kernel check programs (kernel_check.cc, cuda_scan_check.cu; written by
// tests/kernel_cases.py): a reader of the tag, int64 fields and arrays, and the output writer.
#pragma once

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct BadCase : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Reader {
 public:
  explicit Reader(const char* path) : path_(path), f_(std::fopen(path, "rb")) {
    if (f_ == nullptr) throw BadCase(path_ + ": cannot open");
  }
  ~Reader() { std::fclose(f_); }
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  std::string tag() {
    char t[8];
    bytes(t, sizeof(t), "tag");
    return std::string(t, sizeof(t));
  }
  int64_t i64(const char* name) {
    int64_t v = 0;
    bytes(&v, sizeof(v), name);
    if (v < 0) throw BadCase(path_ + ": field " + name + " is negative: " + std::to_string(v));
    return v;
  }
  template <class T>
  std::vector<T> array(int64_t count, const char* name) {
    std::vector<T> v(static_cast<size_t>(count));
    bytes(v.data(), sizeof(T) * v.size(), name);
    return v;
  }
  void expect_end() {
    if (std::fgetc(f_) != EOF) throw BadCase(path_ + ": bytes left after the last array");
  }

 private:
  void bytes(void* dst, size_t n, const char* name) {
    if (n > 0 && std::fread(dst, 1, n, f_) != n) {
      throw BadCase(path_ + ": file ends inside '" + name + "' (" + std::to_string(n) + " bytes)");
    }
  }
  std::string path_;
  std::FILE* f_;
};

void write(const char* path, const std::vector<const std::vector<float>*>& arrays) {
  std::FILE* f = std::fopen(path, "wb");
  if (f == nullptr) throw BadCase(std::string(path) + ": cannot write");
  for (const auto* a : arrays) std::fwrite(a->data(), sizeof(float), a->size(), f);
  if (std::fclose(f) != 0) throw BadCase(std::string(path) + ": write failed");
}

}  // namespace
