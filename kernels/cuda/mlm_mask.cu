// CUDA kernel of xf.ops.mlm_mask (contract: xlmr_fast/ops/mlm_mask.py; per-position math:
// mlm_mask.cuh, shared with the CPU kernel so the two cannot drift).
//
// Why ONE thread block: a training micro-batch is 64 x 512 = 32,768 tokens, i.e. well under
// 1 MB of traffic (< 1 us of HBM time); the op is bound by launch latency and by the host
// syncs of the torch version (nonzero). The compaction of the selected positions needs a
// global prefix sum over the flat positions. Doing it in one block that walks the tokens in
// chunks of kThreads * kItems, carrying the running offset in shared memory, gives the scan
// in a single launch with no workspace to zero and no inter-block protocol. Decoupled
// look-back (many blocks) would need a zeroed flag array per call (a second launch, or a
// generation scheme) for a gain of a few microseconds at these sizes: 4 chunks of 8,192
// tokens at 32k tokens, 16 at 128k, each chunk a load, ~5 hash rounds per token, a block
// scan of 3 barriers, and fire-and-forget stores. bench/bench_mlm_mask.py measures it.
//
// Ordering: thread t of a chunk owns the kItems consecutive positions
// base + t * kItems + [0, kItems), so (chunk, thread, item) order is flat order and an
// exclusive scan of the per-thread counts gives each selected position its rank; ranks are
// ascending in p, which makes the positions list ascending and the overflow rule (keep the
// first `capacity` selected positions) identical to the CPU kernel's.
#include "mlm_mask.cuh"

namespace xlmr_fast {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kItems = 8;

template <typename Id>
__global__ void __launch_bounds__(kThreads)
    mlm_mask_kernel(const Id* __restrict__ ids,       // (n,) input ids
                    Id* __restrict__ masked,          // (n,) output ids, same dtype
                    int64_t* __restrict__ labels,     // (n,) original id or -100
                    int64_t* __restrict__ positions,  // (capacity,) ranks -> flat positions
                    int64_t* __restrict__ count,      // (1,) total selected (may exceed capacity)
                    int64_t n, int64_t capacity, mlm::Params prm) {
  __shared__ int warp_incl[kWarps];  // inclusive scan of the per-warp counts of one chunk
  __shared__ long long carry;        // selected positions in all earlier chunks
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (tid == 0) carry = 0;
  __syncthreads();

  const int64_t chunk = int64_t(kThreads) * kItems;
  for (int64_t base = 0; base < n; base += chunk) {
    const int64_t first = base + int64_t(tid) * kItems;
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

    // Block-wide exclusive scan of cnt: warp shuffles, then one warp scans the warp totals.
    int incl = cnt;
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
    long long rank = carry + (warp > 0 ? warp_incl[warp - 1] : 0) + (incl - cnt);
    const int chunk_total = warp_incl[kWarps - 1];
    __syncthreads();  // every thread has read carry and warp_incl before they change
    if (tid == 0) carry += chunk_total;

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
  }
  __syncthreads();  // thread 0's last carry update is visible
  const long long total = carry;
  const long long used = total < capacity ? total : capacity;
  for (long long j = used + tid; j < capacity; j += kThreads) positions[j] = -1;
  if (tid == 0) count[0] = total;
}

}  // namespace

cudaError_t mlm_mask_launch(const void* ids, bool ids_int64, void* masked, int64_t* labels,
                            int64_t* positions, int64_t* count, int64_t n, int64_t capacity,
                            const mlm::Params& prm, cudaStream_t stream) {
  if (ids_int64) {
    mlm_mask_kernel<int64_t><<<1, kThreads, 0, stream>>>(
        static_cast<const int64_t*>(ids), static_cast<int64_t*>(masked), labels, positions,
        count, n, capacity, prm);
  } else {
    mlm_mask_kernel<int32_t><<<1, kThreads, 0, stream>>>(
        static_cast<const int32_t*>(ids), static_cast<int32_t*>(masked), labels, positions,
        count, n, capacity, prm);
  }
  return cudaGetLastError();
}

}  // namespace xlmr_fast
