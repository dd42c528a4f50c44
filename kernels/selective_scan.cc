// mvgpt::SelectiveScan: the Mamba-1 selective scan (S6) as an onnxruntime custom op on CPU.
//
// Owns the op (struct API, built with ORT_API_MANUAL_INIT so the library does not link
// libonnxruntime; library.cc registers it), input validation, the choice of instruction set when
// a session creates the kernel (the widest this CPU has: AVX-512 / AVX2+FMA / NEON / scalar;
// MVGPT_SCAN_ISA names one, and one this CPU lacks is an error) and a small persistent thread
// pool (MVGPT_SCAN_THREADS, default: the CPUs this process may run on). The math itself is in
// selective_scan_impl.h, compiled once per instruction set through scan_kernel.h.
//
// Inputs: u (B,D,L), delta (B,D,L), A (D,N), B (B,N,L), C (B,N,L), D (D), optional z (B,D,L),
// optional delta_bias (D); attribute delta_softplus (0/1); output y (B,D,L); all float32.
//   dt = softplus?(delta + delta_bias);  h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t  (h_0 = 0)
//   y_t = C_t . h_t + D u_t;  y *= silu(z)

#include "common.h"  // onnxruntime's C++ API (manual init), cpu.h, shared helpers

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "ops.h"
#include "scan_kernel.h"

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__unix__)
#include <unistd.h>
#endif

namespace mvgpt {
namespace {

using scan::ScanArgs;

int default_threads() {
  if (const char* env = std::getenv("MVGPT_SCAN_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

// A persistent pool: run(n, fn) calls fn(0..n-1) on the caller plus n-1 workers and waits.
// One job at a time; a caller that finds the pool busy runs its job alone (fn(0) only), and so
// does a forked child, whose copy of the pool has no threads.
class Pool {
 public:
#if defined(__unix__)
  Pool() : owner_(getpid()) {}
  bool forked() const { return getpid() != owner_; }
#else
  bool forked() const { return false; }
#endif

  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    start_cv_.notify_all();
    for (auto& w : workers_) w.join();
  }

  void run(int n, const std::function<void(int)>& fn) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (n <= 1 || !busy.owns_lock() || forked()) {
      fn(0);
      return;
    }
    std::unique_lock<std::mutex> lock(mu_);
    while (static_cast<int>(workers_.size()) < n - 1) {
      const int id = static_cast<int>(workers_.size()) + 1;
      workers_.emplace_back([this, id] { loop(id); });
    }
    job_ = &fn;
    active_ = n - 1;
    pending_ = n - 1;
    ++generation_;
    lock.unlock();
    start_cv_.notify_all();
    fn(0);
    lock.lock();
    done_cv_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop(int id) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (id > active_) continue;
      const std::function<void(int)>* job = job_;
      lock.unlock();
      (*job)(id);
      lock.lock();
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  std::mutex run_mu_, mu_;
  std::condition_variable start_cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* job_ = nullptr;
  uint64_t generation_ = 0;
  int active_ = 0, pending_ = 0;
  bool stop_ = false;
#if defined(__unix__)
  pid_t owner_;
#endif
};

Pool& pool() {  // never destroyed: joining at exit is unsafe in a forked child, needless otherwise
  static Pool* p = new Pool;
  return *p;
}

void run_scan(const ScanArgs& a, const scan::Path& path, int threads) {
  const std::vector<float> bc = scan::time_major_bc(a);
  const int64_t items = scan::item_count(a, path);
  const int64_t scratch = path.scratch(a.state);
  std::atomic<int64_t> next{0};
  std::mutex error_mu;
  std::exception_ptr error;
  auto work = [&](int) {  // never throws: the pool must always see every share finish
    try {
      float* s = thread_scratch(scratch);
      for (int64_t i = next.fetch_add(1); i < items; i = next.fetch_add(1)) {
        scan::run_item(a, path, bc.data(), i, s);
      }
    } catch (...) {
      next = items;  // the other shares stop early
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
    }
  };
  const int n = static_cast<int>(std::min<int64_t>(threads, std::max<int64_t>(items, 1)));
  pool().run(n, work);
  if (error) std::rethrow_exception(error);  // reported to onnxruntime as a failed status
}

// ---------------------------------------------------------------- the onnxruntime op
constexpr const char* kOp = "SelectiveScan";

// The op's inputs, in order; z and delta_bias are optional.
namespace input {
enum : int { kU, kDelta, kA, kB, kC, kD, kZ, kDeltaBias, kCount };
constexpr int kRequired = kZ;
constexpr const char* kNames[kCount] = {"u", "delta", "A", "B", "C", "D", "z", "delta_bias"};
}  // namespace input

void expect_shape(int index, const std::vector<int64_t>& got, const std::vector<int64_t>& want,
                  const char* layout) {
  if (got != want) {
    fail(kOp, std::string("input '") + input::kNames[index] + "' must have shape " +
                  shape_str(want) + " " + layout + ", got " + shape_str(got));
  }
}

// The op's inputs checked and its output allocated (on the kernel's device: host memory on the
// CPU provider, the GPU's on CUDA); the arguments of every kernel of the op.
ScanArgs checked_args(OrtKernelContext* context, bool softplus) {
  using namespace input;
  Ort::KernelContext ctx(context);
  const size_t count = ctx.GetInputCount();
  if (count < static_cast<size_t>(kRequired)) {
    fail(kOp, "expected 6 to 8 inputs (u, delta, A, B, C, D[, z, delta_bias]), got " +
                  std::to_string(count));
  }
  Ort::ConstValue in[kCount]{};
  std::vector<int64_t> shape[kCount];
  for (int i = 0; i < kCount && static_cast<size_t>(i) < count; ++i) {
    in[i] = ctx.GetInput(i);
    if (!in[i]) {
      if (i < kRequired) fail(kOp, std::string("required input '") + kNames[i] + "' is missing");
      continue;
    }
    auto info = in[i].GetTensorTypeAndShapeInfo();
    if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      fail(kOp, std::string("input '") + kNames[i] + "' must be float32");
    }
    shape[i] = info.GetShape();
  }
  if (shape[kU].size() != 3) {
    fail(kOp, "input 'u' must be 3-D (batch, dim, length), got " + shape_str(shape[kU]));
  }
  const int64_t batch = shape[kU][0], dim = shape[kU][1], length = shape[kU][2];
  if (shape[kA].size() != 2) {
    fail(kOp, "input 'A' must be 2-D (dim, state), got " + shape_str(shape[kA]));
  }
  const int64_t state = shape[kA][1];
  expect_shape(kDelta, shape[kDelta], {batch, dim, length}, "(batch, dim, length) like u");
  expect_shape(kA, shape[kA], {dim, state}, "(dim, state)");
  expect_shape(kB, shape[kB], {batch, state, length}, "(batch, state, length)");
  expect_shape(kC, shape[kC], {batch, state, length}, "(batch, state, length)");
  expect_shape(kD, shape[kD], {dim}, "(dim,)");
  if (in[kZ]) expect_shape(kZ, shape[kZ], {batch, dim, length}, "(batch, dim, length) like u");
  if (in[kDeltaBias]) expect_shape(kDeltaBias, shape[kDeltaBias], {dim}, "(dim,)");

  auto out = ctx.GetOutput(0, shape[kU]);
  auto data = [&in](int i) { return in[i] ? in[i].GetTensorData<float>() : nullptr; };
  return ScanArgs{batch,          dim,          length,       state,    data(kU),
                  data(kDelta),   data(kA),     data(kB),     data(kC), data(kD),
                  data(kZ),       data(kDeltaBias), softplus, out.GetTensorMutableData<float>()};
}

int64_t softplus_attribute(const OrtApi& api, const OrtKernelInfo* info) {
  // attribute absent: no softplus, like selective_scan_ref
  const int64_t softplus = attr_int(api, info, kOp, "delta_softplus", 0);
  if (softplus != 0 && softplus != 1) {
    fail(kOp, "attribute delta_softplus must be 0 or 1, got " + std::to_string(softplus));
  }
  return softplus;
}

struct SelectiveScanKernel {
  static constexpr const char* kProvider = "CPUExecutionProvider";

  explicit SelectiveScanKernel(bool softplus) : softplus_(softplus), threads_(default_threads()) {
    std::string error;
    Isa isa = kScalar;
    if (!parse_isa("MVGPT_SCAN_ISA", std::getenv("MVGPT_SCAN_ISA"), &isa, &error)) fail(kOp, error);
    path_ = scan::path(isa);
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return to_status(Ort::GetApi(), kOp, [&] { Compute(context); });
  }

  void Compute(OrtKernelContext* context) {
    const ScanArgs a = checked_args(context, softplus_);
    if (a.batch * a.dim * a.length == 0) return;
    note_path(Op::kSelectiveScan, kIsaNames[path_.isa]);
    run_scan(a, path_, threads_);
  }

  bool softplus_;
  int threads_;
  scan::Path path_{};
};

// The op for one execution provider: Kernel (created with the delta_softplus attribute) names it
// in kProvider. Inputs all float32, z and delta_bias optional; one float32 output.
template <typename Kernel>
struct SelectiveScanOp : Ort::CustomOpBase<SelectiveScanOp<Kernel>, Kernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    return to_status(api, kOp, [&] { *kernel = new Kernel(softplus_attribute(api, info) == 1); });
  }
  const char* GetName() const { return kOp; }
  const char* GetExecutionProviderType() const { return Kernel::kProvider; }
  size_t GetInputTypeCount() const { return input::kCount; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return static_cast<int>(index) >= input::kRequired ? INPUT_OUTPUT_OPTIONAL
                                                       : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

#if defined(MVGPT_CUDA)
// The same op for the CUDA execution provider: inputs and output in device memory, the kernel
// (selective_scan_cuda.cu) launched on onnxruntime's compute stream of the run.
struct SelectiveScanCudaKernel {
  static constexpr const char* kProvider = "CUDAExecutionProvider";

  explicit SelectiveScanCudaKernel(bool softplus) : softplus_(softplus) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return to_status(Ort::GetApi(), kOp, [&] {
      const ScanArgs a = checked_args(context, softplus_);
      if (a.batch * a.dim * a.length == 0) return;
      note_path(Op::kSelectiveScan, "cuda");
      const char* error = scan::launch_scan_cuda(a, Ort::KernelContext(context).GetGPUComputeStream());
      if (error != nullptr) fail(kOp, std::string("CUDA kernel: ") + error);
    });
  }

  bool softplus_;
};
#endif

}  // namespace

const OrtCustomOp* selective_scan_op() {
  static SelectiveScanOp<SelectiveScanKernel> op;
  return &op;
}

#if defined(MVGPT_CUDA)
const OrtCustomOp* selective_scan_cuda_op() {
  static SelectiveScanOp<SelectiveScanCudaKernel> op;
  return &op;
}
#endif

}  // namespace mvgpt
