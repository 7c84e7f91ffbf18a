// MLM masking (xf.ops.mlm_mask): the per-position math shared by the CPU kernel
// (csrc/mlm_mask.cpp) and the CUDA kernel (kernels/cuda/mlm_mask.cu), and the host launcher of
// the CUDA kernel. Plain C++/CUDA, no torch headers: csrc includes this file in every build (the
// per-position functions compile as ordinary inline C++ without nvcc), and CI compiles the .cu
// with bare nvcc.
//
// The contract is the docstring of xlmr_fast/ops/mlm_mask.py; in short, for flat position p:
//   h   = mix32(mix32(p ^ key) ^ key2)
//   r_s = mix32(h ^ (s * 0x9E3779B9 mod 2^32)),  s = 1, 2, 3
//   selected = eligible(id) && r_1 < threshold             (threshold in [0, 2^32])
//   new id   = mask_id                      if r_2 < 0.8 * 2^32
//              4 + r_3 mod (vocab_size - 5) if r_2 < 0.9 * 2^32
//              id                           otherwise
// key and key2 are derived on the host from (seed, step) (mask_key() in the Python module).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define XF_MLM_HD __host__ __device__ __forceinline__
#else
#define XF_MLM_HD inline
#endif

namespace xlmr_fast {
namespace mlm {

constexpr uint32_t kMixC1 = 0x7FEB352Du;
constexpr uint32_t kMixC2 = 0x846CA68Bu;
constexpr uint32_t kStream = 0x9E3779B9u;
constexpr uint32_t kThreshMask = 3435973836u;    // int(0.8 * 2^32): r_2 below -> <mask>
constexpr uint32_t kThreshRandom = 3865470566u;  // int(0.9 * 2^32): r_2 below -> random id
constexpr int64_t kFirstOrdinaryId = 4;
constexpr int64_t kBosId = 0;
constexpr int64_t kEosId = 2;
constexpr int64_t kIgnoreIndex = -100;

// Everything one call needs besides the tensors (passed by value to the kernel).
struct Params {
  uint32_t key;         // mask_key(seed, step)[0]
  uint32_t key2;        // mask_key(seed, step)[1]
  uint64_t threshold;   // round(mask_prob * 2^32), in [0, 2^32]: 2^32 selects every eligible id
  int64_t vocab_size;   // >= 6
  int64_t mask_id;
  int64_t pad_id;
  bool mask_special;    // false: <s> (0) and </s> (2) are never selected
};

// Wellons' lowbias32: a bijection of uint32 with low bias (xorshift-multiply, two rounds).
XF_MLM_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= kMixC1;
  x ^= x >> 15;
  x *= kMixC2;
  x ^= x >> 16;
  return x;
}

// The per-position hash h (callers guarantee p < 2^32).
XF_MLM_HD uint32_t position_hash(uint64_t p, const Params& prm) {
  return mix32(mix32(static_cast<uint32_t>(p) ^ prm.key) ^ prm.key2);
}

XF_MLM_HD uint32_t draw(uint32_t h, uint32_t s) { return mix32(h ^ (s * kStream)); }

XF_MLM_HD bool eligible(int64_t id, const Params& prm) {
  return id != prm.pad_id && (prm.mask_special || (id != kBosId && id != kEosId));
}

XF_MLM_HD bool selected(int64_t id, uint32_t h, const Params& prm) {
  return eligible(id, prm) && static_cast<uint64_t>(draw(h, 1u)) < prm.threshold;
}

// The id a selected position gets (80% <mask>, 10% random ordinary id, 10% unchanged).
XF_MLM_HD int64_t replacement(int64_t id, uint32_t h, const Params& prm) {
  const uint32_t r2 = draw(h, 2u);
  if (r2 < kThreshMask) return prm.mask_id;
  if (r2 >= kThreshRandom) return id;
  const uint32_t r3 = draw(h, 3u);
  const uint64_t m = static_cast<uint64_t>(prm.vocab_size - 5);
  // m > 2^32 - 1 cannot happen with a real vocabulary; r_3 mod m = r_3 then, as in the reference.
  const uint64_t r = m > 0xFFFFFFFFull ? r3 : r3 % static_cast<uint32_t>(m);
  return kFirstOrdinaryId + static_cast<int64_t>(r);
}

}  // namespace mlm
}  // namespace xlmr_fast

#if defined(__CUDACC__) || defined(XLMR_FAST_WITH_CUDA)
#include <cuda_runtime.h>

namespace xlmr_fast {

// One launch, no host sync: masked ids (ids' dtype), labels (int64), the ascending flat positions
// of the selected ids compacted into positions[0, capacity) (rest filled with -1) and count[0] =
// the true number of selected ids. When count > capacity, the selected ids past the first
// `capacity` (in flat order) are left unselected (original id, label -100), so the three outputs
// agree; count still says how many were drawn so the caller can detect the overflow.
// ids/masked: n contiguous int32 (ids_int64 = false) or int64 values; n < 2^32.
cudaError_t mlm_mask_launch(const void* ids, bool ids_int64, void* masked, int64_t* labels,
                            int64_t* positions, int64_t* count, int64_t n, int64_t capacity,
                            const mlm::Params& prm, cudaStream_t stream);

}  // namespace xlmr_fast
#endif
