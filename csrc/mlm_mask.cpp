// xlmr_fast_C::mlm_mask / mlm_mask_static: MLM masking with the counter-based RNG of
// xlmr_fast/ops/mlm_mask.py (bit-identical to mlm_mask_reference there). The per-position math
// lives in kernels/cuda/mlm_mask.cuh and is shared with the CUDA kernel.
//
//   mlm_mask(input_ids (B, T) int32|int64, vocab_size, mask_id, key, key2, threshold, pad_id,
//            mask_special) -> (masked_ids (B, T) like input_ids, labels (B, T) int64,
//                              positions (count,) int64, ascending flat indices)
//   mlm_mask_static(..., capacity) -> (masked_ids, labels, positions (capacity,) int64 padded
//                                      with -1, count (1,) int64 = number drawn)
// key, key2: the uint32 keys from mask_key(seed, step), passed as int64; threshold =
// round(mask_prob * 2^32) in [0, 2^32]. Static overflow rule (count > capacity): only the first
// `capacity` selected positions (flat order) are kept; the others are left unselected
// (original id, label -100); count still holds the number drawn.
//
// CPU: two passes over fixed segments of the flat positions (segments rather than rows so a
// (1, 10^6) batch parallelises as well as a (64, 512) one): pass 1 selects and corrupts each
// segment and notes its selected offsets; a serial prefix sum over segments gives each segment
// its first rank; pass 2 writes the positions (and undoes selections past capacity).
// CUDA (built with XLMR_FAST_WITH_CUDA): one launch of kernels/cuda/mlm_mask.cu, no host sync
// for mlm_mask_static; mlm_mask reads the count back (a sync) to return exact-length positions.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "mlm_mask.cuh"

#ifdef XLMR_FAST_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace {

using at::Tensor;
namespace mlm = xlmr_fast::mlm;

constexpr int64_t kSegment = 8192;  // flat positions per parallel work item (< 2^16 offsets)
constexpr int64_t kTwo32 = int64_t(1) << 32;

mlm::Params make_params(const char* op, const Tensor& input_ids, int64_t vocab_size,
                        int64_t mask_id, int64_t key, int64_t key2, int64_t threshold,
                        int64_t pad_id, bool mask_special) {
  TORCH_CHECK(input_ids.dim() == 2, op, ": input_ids must be 2-D (B, T), got ",
              input_ids.sizes());
  TORCH_CHECK(input_ids.scalar_type() == at::kInt || input_ids.scalar_type() == at::kLong, op,
              ": input_ids must be int32 or int64, got ", input_ids.scalar_type());
  TORCH_CHECK(input_ids.numel() < kTwo32, op, ": input_ids has ", input_ids.numel(),
              " positions; at most 2^32 - 1 per call (split the batch)");
  TORCH_CHECK(vocab_size >= 6, op, ": vocab_size must be >= 6, got ", vocab_size);
  TORCH_CHECK(mask_id >= 0 && mask_id < vocab_size, op, ": mask_id=", mask_id,
              " outside [0, vocab_size=", vocab_size, ")");
  TORCH_CHECK(key >= 0 && key < kTwo32, op, ": key must be a uint32 in [0, 2^32), got ", key);
  TORCH_CHECK(key2 >= 0 && key2 < kTwo32, op, ": key2 must be a uint32 in [0, 2^32), got ",
              key2);
  TORCH_CHECK(threshold >= 0 && threshold <= kTwo32, op, ": threshold must be in [0, 2^32], got ",
              threshold);
  mlm::Params prm;
  prm.key = static_cast<uint32_t>(key);
  prm.key2 = static_cast<uint32_t>(key2);
  prm.threshold = static_cast<uint64_t>(threshold);
  prm.vocab_size = vocab_size;
  prm.mask_id = mask_id;
  prm.pad_id = pad_id;
  prm.mask_special = mask_special;
  return prm;
}

// ------------------------------------------------------------------------------------ CPU
template <typename Id>
std::pair<Tensor, int64_t> mask_cpu_typed(const Id* ids, Id* masked, int64_t* labels, int64_t n,
                                          int64_t capacity, bool exact, const mlm::Params& prm,
                                          const at::TensorOptions& long_opts) {
  const int64_t n_seg = (n + kSegment - 1) / kSegment;
  std::vector<int64_t> seg_count(n_seg), seg_first(n_seg);
  std::vector<uint16_t> offs(n);  // pass 1 -> pass 2: selected offsets inside each segment

  at::parallel_for(0, n_seg, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t p0 = s * kSegment, p1 = std::min(n, p0 + kSegment);
      int64_t k = 0;
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t id = static_cast<int64_t>(ids[p]);
        const uint32_t h = mlm::position_hash(static_cast<uint64_t>(p), prm);
        if (mlm::selected(id, h, prm)) {
          masked[p] = static_cast<Id>(mlm::replacement(id, h, prm));
          labels[p] = id;
          offs[p0 + k++] = static_cast<uint16_t>(p - p0);
        } else {
          masked[p] = ids[p];
          labels[p] = mlm::kIgnoreIndex;
        }
      }
      seg_count[s] = k;
    }
  });

  int64_t total = 0;
  for (int64_t s = 0; s < n_seg; ++s) {
    seg_first[s] = total;
    total += seg_count[s];
  }
  if (exact) capacity = total;
  Tensor positions = at::empty({capacity}, long_opts);
  int64_t* pos = positions.data_ptr<int64_t>();

  at::parallel_for(0, n_seg, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t p0 = s * kSegment;
      for (int64_t k = 0; k < seg_count[s]; ++k) {
        const int64_t p = p0 + offs[p0 + k], rank = seg_first[s] + k;
        if (rank < capacity) {
          pos[rank] = p;
        } else {  // overflow: this selection is dropped, outputs stay consistent
          masked[p] = ids[p];
          labels[p] = mlm::kIgnoreIndex;
        }
      }
    }
  });
  std::fill(pos + std::min(total, capacity), pos + capacity, int64_t(-1));
  return {positions, total};
}

// Returns (masked, labels, positions, total).
std::tuple<Tensor, Tensor, Tensor, int64_t> mask_cpu(const char* op, const Tensor& input_ids,
                                                     int64_t vocab_size, int64_t mask_id,
                                                     int64_t key, int64_t key2, int64_t threshold,
                                                     int64_t pad_id, bool mask_special,
                                                     int64_t capacity, bool exact) {
  const mlm::Params prm = make_params(op, input_ids, vocab_size, mask_id, key, key2, threshold,
                                      pad_id, mask_special);
  TORCH_CHECK(input_ids.device().is_cpu(), op, ": CPU kernel called with input_ids on ",
              input_ids.device());
  const Tensor ids = input_ids.contiguous();
  Tensor masked = at::empty(ids.sizes(), ids.options());
  const auto long_opts = ids.options().dtype(at::kLong);
  Tensor labels = at::empty(ids.sizes(), long_opts);
  const int64_t n = ids.numel();
  std::pair<Tensor, int64_t> pt;
  if (ids.scalar_type() == at::kLong) {
    pt = mask_cpu_typed<int64_t>(ids.data_ptr<int64_t>(), masked.data_ptr<int64_t>(),
                                 labels.data_ptr<int64_t>(), n, capacity, exact, prm, long_opts);
  } else {
    pt = mask_cpu_typed<int32_t>(ids.data_ptr<int32_t>(), masked.data_ptr<int32_t>(),
                                 labels.data_ptr<int64_t>(), n, capacity, exact, prm, long_opts);
  }
  return {masked, labels, pt.first, pt.second};
}

std::tuple<Tensor, Tensor, Tensor> mlm_mask_cpu(const Tensor& input_ids, int64_t vocab_size,
                                                int64_t mask_id, int64_t key, int64_t key2,
                                                int64_t threshold, int64_t pad_id,
                                                bool mask_special) {
  auto [masked, labels, positions, total] =
      mask_cpu("mlm_mask", input_ids, vocab_size, mask_id, key, key2, threshold, pad_id,
               mask_special, /*capacity=*/0, /*exact=*/true);
  return {masked, labels, positions};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> mlm_mask_static_cpu(
    const Tensor& input_ids, int64_t vocab_size, int64_t mask_id, int64_t key, int64_t key2,
    int64_t threshold, int64_t pad_id, bool mask_special, int64_t capacity) {
  TORCH_CHECK(capacity >= 0, "mlm_mask_static: capacity must be >= 0, got ", capacity);
  auto [masked, labels, positions, total] =
      mask_cpu("mlm_mask_static", input_ids, vocab_size, mask_id, key, key2, threshold, pad_id,
               mask_special, capacity, /*exact=*/false);
  Tensor count = at::full({1}, total, input_ids.options().dtype(at::kLong));
  return {masked, labels, positions, count};
}

// ----------------------------------------------------------------------------------- CUDA
#ifdef XLMR_FAST_WITH_CUDA
std::tuple<Tensor, Tensor, Tensor, Tensor> mlm_mask_static_cuda(
    const Tensor& input_ids, int64_t vocab_size, int64_t mask_id, int64_t key, int64_t key2,
    int64_t threshold, int64_t pad_id, bool mask_special, int64_t capacity) {
  const char* op = "mlm_mask_static";
  const mlm::Params prm = make_params(op, input_ids, vocab_size, mask_id, key, key2, threshold,
                                      pad_id, mask_special);
  TORCH_CHECK(input_ids.is_cuda(), op, ": CUDA kernel called with input_ids on ",
              input_ids.device());
  TORCH_CHECK(capacity >= 0, op, ": capacity must be >= 0, got ", capacity);
  const c10::cuda::CUDAGuard guard(input_ids.device());
  const Tensor ids = input_ids.contiguous();
  const auto long_opts = ids.options().dtype(at::kLong);
  Tensor masked = at::empty(ids.sizes(), ids.options());
  Tensor labels = at::empty(ids.sizes(), long_opts);
  Tensor positions = at::empty({capacity}, long_opts);
  Tensor count = at::empty({1}, long_opts);
  const cudaError_t err = xlmr_fast::mlm_mask_launch(
      ids.data_ptr(), ids.scalar_type() == at::kLong, masked.data_ptr(),
      labels.data_ptr<int64_t>(), positions.data_ptr<int64_t>(), count.data_ptr<int64_t>(),
      ids.numel(), capacity, prm, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
  return {masked, labels, positions, count};
}

std::tuple<Tensor, Tensor, Tensor> mlm_mask_cuda(const Tensor& input_ids, int64_t vocab_size,
                                                 int64_t mask_id, int64_t key, int64_t key2,
                                                 int64_t threshold, int64_t pad_id,
                                                 bool mask_special) {
  // capacity = numel never overflows; reading the count back is the one host sync.
  auto [masked, labels, positions, count] =
      mlm_mask_static_cuda(input_ids, vocab_size, mask_id, key, key2, threshold, pad_id,
                           mask_special, input_ids.numel());
  const int64_t total = count.item<int64_t>();
  return {masked, labels, positions.narrow(0, 0, total)};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(xlmr_fast_C, m) {
  m.def(
      "mlm_mask(Tensor input_ids, int vocab_size, int mask_id, int key, int key2, int threshold, "
      "int pad_id, bool mask_special) -> (Tensor, Tensor, Tensor)");
  m.def(
      "mlm_mask_static(Tensor input_ids, int vocab_size, int mask_id, int key, int key2, "
      "int threshold, int pad_id, bool mask_special, int capacity) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(xlmr_fast_C, CPU, m) {
  m.impl("mlm_mask", &mlm_mask_cpu);
  m.impl("mlm_mask_static", &mlm_mask_static_cpu);
}

#ifdef XLMR_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(xlmr_fast_C, CUDA, m) {
  m.impl("mlm_mask", &mlm_mask_cuda);
  m.impl("mlm_mask_static", &mlm_mask_static_cuda);
}
#endif
