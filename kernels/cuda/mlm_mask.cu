// CUDA kernel of xf.ops.mlm_mask (contract: xlmr_fast/ops/mlm_mask.py; per-position math:
// mlm_mask.cuh, shared with the CPU kernel so the two cannot drift).
//
// Why many blocks, each recounting its prefix: the compaction of the selected positions needs
// a global prefix sum over the flat positions. The first version walked all tokens in ONE
// block; on an H100 that took ~75 us for 64 x 512 ids (every chunk a dependent chain of load,
// hash, three barriers and stores on a single SM). Decoupled look-back would need a flag
// array zeroed per call (a second launch) or an epoch, which CUDA-graph replay freezes. So
// block b owns tile b (kTile tokens) and first COUNTS the selected positions of all earlier
// tiles itself (a load, a hash and a compare per token, no stores, no barriers until one
// final reduction): redundant work of n^2 / (2 kTile) hashes spread over the blocks, whose
// critical path (the last block) is a streaming count of n tokens, a few microseconds at
// n = 32k-131k. Still one launch, no workspace, no host sync, graph-safe and deterministic.
//
// Ordering: thread t owns the kItems consecutive positions tile_start + t * kItems + [0,
// kItems), so (tile, thread, item) order is flat order, and prefix + an exclusive block scan
// of the per-thread counts gives each selected position its rank; ranks ascend with p, which
// makes the positions list ascending and the overflow rule (keep the first `capacity`
// selected positions) identical to the CPU kernel's.
#include "mlm_mask.cuh"

namespace xlmr_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kItems = 8;
constexpr int64_t kTile = int64_t(kThreads) * kItems;

template <typename Id>
__device__ __forceinline__ bool is_selected(const Id* __restrict__ ids, int64_t p,
                                            const mlm::Params& prm) {
  return mlm::selected(static_cast<int64_t>(ids[p]),
                       mlm::position_hash(static_cast<uint64_t>(p), prm), prm);
}

template <typename Id>
__global__ void __launch_bounds__(kThreads)
    mlm_mask_kernel(const Id* __restrict__ ids,       // (n,) input ids
                    Id* __restrict__ masked,          // (n,) output ids, same dtype
                    int64_t* __restrict__ labels,     // (n,) original id or -100
                    int64_t* __restrict__ positions,  // (capacity,) ranks -> flat positions
                    int64_t* __restrict__ count,      // (1,) total selected (may exceed capacity)
                    int64_t n, int64_t capacity, mlm::Params prm) {
  __shared__ int warp_incl[kWarps];
  __shared__ long long warp_prefix[kWarps];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t tile_start = int64_t(blockIdx.x) * kTile;

  // 1. Selected positions before this tile, recounted (strided so loads coalesce).
  long long before = 0;
  for (int64_t p = tid; p < tile_start; p += kThreads) before += is_selected(ids, p, prm);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) before += __shfl_down_sync(0xffffffffu, before, o);
  if (lane == 0) warp_prefix[warp] = before;

  // 2. This tile: per-thread selections and counts.
  const int64_t first = tile_start + int64_t(tid) * kItems;
  int64_t id[kItems];
  uint32_t h[kItems];
  unsigned sel = 0;  // bit i: position first + i is selected
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int64_t p = first + i;
    id[i] = 0;
    h[i] = 0;
    if (p < n) {
      id[i] = static_cast<int64_t>(ids[p]);
      h[i] = mlm::position_hash(static_cast<uint64_t>(p), prm);
      if (mlm::selected(id[i], h[i], prm)) sel |= 1u << i;
    }
  }
  const int cnt = __popc(sel);
  int incl = cnt;  // block-wide exclusive scan: warp shuffles, then warp 0 scans warp totals
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  if (lane == 31) warp_incl[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int w = lane < kWarps ? warp_incl[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += v;
    }
    if (lane < kWarps) warp_incl[lane] = w;
  }
  __syncthreads();
  long long prefix = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) prefix += warp_prefix[w];
  long long rank = prefix + (warp > 0 ? warp_incl[warp - 1] : 0) + (incl - cnt);

#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int64_t p = first + i;
    if (p >= n) break;
    int64_t out = id[i], label = mlm::kIgnoreIndex;
    if (sel & (1u << i)) {
      if (rank < capacity) {  // overflow: past capacity the position stays unselected
        positions[rank] = p;
        out = mlm::replacement(id[i], h[i], prm);
        label = id[i];
      }
      ++rank;
    }
    masked[p] = static_cast<Id>(out);
    labels[p] = label;
  }

  // 3. The last tile knows the total: count, and -1 in the unused capacity.
  if (blockIdx.x == gridDim.x - 1) {
    const long long total = prefix + warp_incl[kWarps - 1];
    const long long used = total < capacity ? total : capacity;
    for (long long j = used + tid; j < capacity; j += kThreads) positions[j] = -1;
    if (tid == 0) count[0] = total;
  }
}

}  // namespace

cudaError_t mlm_mask_launch(const void* ids, bool ids_int64, void* masked, int64_t* labels,
                            int64_t* positions, int64_t* count, int64_t n, int64_t capacity,
                            const mlm::Params& prm, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(n > 0 ? (n + kTile - 1) / kTile : 1);
  if (ids_int64) {
    mlm_mask_kernel<int64_t><<<blocks, kThreads, 0, stream>>>(
        static_cast<const int64_t*>(ids), static_cast<int64_t*>(masked), labels, positions,
        count, n, capacity, prm);
  } else {
    mlm_mask_kernel<int32_t><<<blocks, kThreads, 0, stream>>>(
        static_cast<const int32_t*>(ids), static_cast<int32_t*>(masked), labels, positions,
        count, n, capacity, prm);
  }
  return cudaGetLastError();
}

}  // namespace xlmr_fast
