// Helpers shared by the CPU kernels: the AVX2+FMA run-time switch and per-thread scratch buffers.
#pragma once
#include <c10/core/CPUAllocator.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#if defined(__GNUC__) && defined(__x86_64__)
#define SHG_CPU_AVX2 1
#define SHG_ALWAYS_INLINE inline __attribute__((always_inline))
#define SHG_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define SHG_CPU_AVX2 0
#define SHG_ALWAYS_INLINE inline
#define SHG_TARGET_AVX2
#endif

namespace shg_fast::cpu {

// True when the CPU has AVX2 and FMA, unless SHG_FAST_CPU_BASELINE=1 asks for the baseline code
// (read once per process; the tests run both paths).
inline bool use_avx2_fma() {
#if SHG_CPU_AVX2
  static const bool use = [] {
    const char* baseline = std::getenv("SHG_FAST_CPU_BASELINE");
    const bool forced_baseline = baseline != nullptr && std::string(baseline) == "1";
    return !forced_baseline && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return use;
#else
  return false;
#endif
}

// Kernels that keep scratch between calls, each with its own buffer per thread.
enum class Scratch { kWinograd = 0, kConv1x1 = 1, kCount = 2 };

// Scratch of at least `bytes` for `owner`, owned by the calling thread and reused by its later calls:
// a fresh buffer of several MB per call costs page faults comparable to the kernels' own work.
inline char* thread_scratch(Scratch owner, int64_t bytes) {
  thread_local c10::DataPtr buffers[static_cast<int>(Scratch::kCount)];
  thread_local int64_t capacity[static_cast<int>(Scratch::kCount)] = {};
  const int slot = static_cast<int>(owner);
  if (bytes > capacity[slot]) {
    buffers[slot] = c10::GetCPUAllocator()->allocate(bytes);
    capacity[slot] = bytes;
  }
  return static_cast<char*>(buffers[slot].get());
}

}  // namespace shg_fast::cpu
