// The case files of the kernel check programs (kernel_check.cc, cuda_scan_check.cu; written by
// tests/kernel_cases.py): a reader of the tag, int64 fields and arrays, the scan case, and the
// output writer.
#pragma once

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "../scan_args.h"

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

// An "MVGSCAN1" case after its tag: batch dim length state has_z has_bias softplus, then u,
// delta (B,D,L); A (D,N); B, C (B,N,L); D (D); z (B,D,L) if has_z; delta_bias (D) if has_bias.
struct ScanCase {
  int64_t B, D, L, N;
  bool has_z, has_bias, softplus;
  std::vector<float> u, delta, A, Bm, C, Dv, z, bias, y;  // y: the output (B,D,L), zeros

  explicit ScanCase(Reader& in)
      : B(in.i64("batch")), D(in.i64("dim")), L(in.i64("length")), N(in.i64("state")),
        has_z(in.i64("has_z") != 0), has_bias(in.i64("has_bias") != 0),
        softplus(in.i64("softplus") != 0) {
    u = in.array<float>(B * D * L, "u");
    delta = in.array<float>(B * D * L, "delta");
    A = in.array<float>(D * N, "A");
    Bm = in.array<float>(B * N * L, "B");
    C = in.array<float>(B * N * L, "C");
    Dv = in.array<float>(D, "D");
    z = in.array<float>(has_z ? B * D * L : 0, "z");
    bias = in.array<float>(has_bias ? D : 0, "delta_bias");
    in.expect_end();
    y.assign(static_cast<size_t>(B * D * L), 0.0f);
  }

  // The op's arguments with each array given by `at(array)` (its data, or a device copy) and the
  // output at `out`; z and delta_bias null when the case has none.
  template <typename At>
  mvgpt::scan::ScanArgs args(At&& at, float* out) const {
    return {B,      D,         L,     N,     at(u),  at(delta), at(A), at(Bm), at(C), at(Dv),
            has_z ? at(z) : nullptr, has_bias ? at(bias) : nullptr, softplus, out};
  }
};

}  // namespace
