// LD_PRELOAD library: the process (and every process it starts) sees an x86-64 CPU with AVX2 and
// FMA but no AVX-512, AVX-VNNI or AMX, on the real hardware, at full speed - or, with
// MVGPT_CPU_VIEW=avx512-novnni, one with AVX-512 F/DQ/CD/BW/VL but no VNNI, BF16, IFMA, VBMI
// or AMX (a Skylake-SP's set).
//
// Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, 0; the `cpuid_fault` flag of /proc/cpuinfo)
// makes every CPUID instruction of this thread, and of the threads it starts, raise SIGSEGV. The
// handler below turns CPUID back on for a moment, runs it, clears the feature bits of the hidden
// instruction sets from the result, writes it into the registers and steps over the instruction.
// Libraries that choose their kernels by CPUID (onnxruntime's MLAS, PyTorch's cpuinfo, NumPy,
// libgcc's __builtin_cpu_supports, mvgpt's ops) then choose their AVX2 paths. glibc's own string
// functions were chosen before any constructor runs: avx2_view.py also sets GLIBC_TUNABLES for
// them.
//
// A program that installs its own SIGSEGV handler (Python's faulthandler, sanitizers) would
// take the faults away from this one: sigaction() and signal() are interposed so that such a
// handler is recorded and called for every SIGSEGV that is not a CPUID, and this one stays.
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef ARCH_SET_CPUID
#define ARCH_SET_CPUID 0x1012
#endif

typedef int (*sigaction_fn)(int, const struct sigaction*, struct sigaction*);

static struct sigaction g_next;  // the program's own SIGSEGV disposition
static int g_active;             // CPUID faulting is on and the handler installed

static sigaction_fn real_sigaction(void) {
  static sigaction_fn fn;
  if (fn == NULL) fn = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
  return fn;
}

static long set_cpuid(int enabled) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

static int g_keep_avx512;  // MVGPT_CPU_VIEW=avx512-novnni: AVX-512 F/DQ/CD/BW/VL stay (Skylake-SP)

// Feature bits cleared, by (leaf, subleaf) and register.
static void hide(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
  if (leaf == 7 && sub == 0 && g_keep_avx512) {
    r[1] &= ~(1u << 21);  // IFMA
    r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
    r[3] &= ~((1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
  } else if (leaf == 7 && sub == 0) {
    // EBX: AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31
    r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) |
              (1u << 30) | (1u << 31));
    // ECX: VBMI 1, VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14
    r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
    // EDX: 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, AMX-BF16 22, AVX512-FP16 23, AMX-TILE 24, AMX-INT8 25
    r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) |
              (1u << 25));
  } else if (leaf == 7 && sub == 1) {
    // EAX: AVX-VNNI 4, AVX512-BF16 5, AMX-FP16 21, AVX-IFMA 23
    r[0] &= ~((1u << 4) | (1u << 5) | (1u << 21) | (1u << 23));
    // EDX: AVX-VNNI-INT8 4, AVX-NE-CONVERT 5, AMX-COMPLEX 8, AVX-VNNI-INT16 10, AVX10 19
    r[3] &= ~((1u << 4) | (1u << 5) | (1u << 8) | (1u << 10) | (1u << 19));
  } else if (leaf == 0x24) {  // AVX10's leaf
    r[0] = r[1] = r[2] = r[3] = 0;
  }
}

static void forward(int sig, siginfo_t* info, void* ctx) {
  const struct sigaction next = g_next;
  if (next.sa_flags & SA_SIGINFO) {
    next.sa_sigaction(sig, info, ctx);
  } else if (next.sa_handler == SIG_IGN) {
    return;
  } else if (next.sa_handler == SIG_DFL) {
    // the default action: reinstall it; returning re-runs the faulting instruction, and a signal
    // that was sent (kill, raise: si_code <= 0) is sent again
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction()(SIGSEGV, &dfl, NULL);
    if (info->si_code <= 0) raise(SIGSEGV);
  } else {
    next.sa_handler(sig);
  }
}

static void on_segv(int sig, siginfo_t* info, void* ctx) {
  ucontext_t* uc = (ucontext_t*)ctx;
  greg_t* g = uc->uc_mcontext.gregs;
  const unsigned char* ip = (const unsigned char*)g[REG_RIP];
  if (info->si_code != SI_KERNEL || ip[0] != 0x0f || ip[1] != 0xa2) return forward(sig, info, ctx);
  const uint32_t leaf = (uint32_t)g[REG_RAX], sub = (uint32_t)g[REG_RCX];
  uint32_t r[4];
  set_cpuid(1);
  __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
  set_cpuid(0);
  hide(leaf, sub, r);
  g[REG_RAX] = r[0];
  g[REG_RBX] = r[1];
  g[REG_RCX] = r[2];
  g[REG_RDX] = r[3];
  g[REG_RIP] += 2;
}

int sigaction(int sig, const struct sigaction* act, struct sigaction* old) {
  if (sig != SIGSEGV || !g_active) return real_sigaction()(sig, act, old);
  if (old != NULL) *old = g_next;
  if (act != NULL) g_next = *act;
  return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
  struct sigaction act, old;
  memset(&act, 0, sizeof act);
  act.sa_handler = handler;
  act.sa_flags = SA_RESTART;
  sigemptyset(&act.sa_mask);
  if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
  return old.sa_handler;
}

__attribute__((constructor)) static void start(void) {
  const char* view = getenv("MVGPT_CPU_VIEW");
  if (view != NULL && strcmp(view, "avx512-novnni") == 0) {
    g_keep_avx512 = 1;
  } else if (view != NULL && view[0] != '\0' && strcmp(view, "avx2") != 0) {
    fprintf(stderr, "avx2_view: MVGPT_CPU_VIEW=%s: expected avx2 or avx512-novnni\n", view);
    _exit(1);
  }
  struct sigaction act;
  memset(&act, 0, sizeof act);
  act.sa_sigaction = on_segv;
  act.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&act.sa_mask);
  if (real_sigaction()(SIGSEGV, &act, &g_next) != 0 || set_cpuid(0) != 0) {
    fprintf(stderr, "avx2_view: CPUID faulting is not available on this machine\n");
    _exit(1);
  }
  g_active = 1;
}
