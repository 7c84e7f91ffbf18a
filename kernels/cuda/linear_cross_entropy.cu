// Per-chunk softmax / cross-entropy statistics and gradient for xf.ops.linear_cross_entropy.
// See linear_cross_entropy.cuh for the contract; csrc/linear_cross_entropy.cpp does the GEMMs.
//
// Layout: one logits chunk (n_rows, vc) with row stride ld, holding vocabulary columns
// [c0, c0 + vc). Statistics are fp32. The forward is one block per row (a row of a chunk is a
// few thousand columns: one pass, coalesced loads, an online max/sum-exp per thread merged by
// warp shuffles); the gradient is elementwise over a (rows, column blocks) grid.
#include "linear_cross_entropy.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

namespace xlmr_fast {
namespace {

constexpr int kStatsThreads = 256;
constexpr int kGradThreads = 256;
constexpr int kGradItems = 4;  // columns per thread in the gradient kernel

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ __half from_f32<__half>(float v) {
  return __float2half_rn(v);
}

// Merge (m2, s2) into (m, s): both sum-exps are relative to their own max; -inf max = empty.
__device__ __forceinline__ void merge_ms(float& m, float& s, float m2, float s2) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) { m = m2; s = s2; return; }
  const float mx = fmaxf(m, m2);
  s = s * __expf(m - mx) + s2 * __expf(m2 - mx);
  m = mx;
}

template <typename LogitT>
__global__ void __launch_bounds__(kStatsThreads)
chunk_stats_kernel(const LogitT* __restrict__ logits, int64_t ld, const float* __restrict__ bias,
                   const int64_t* __restrict__ targets, int64_t c0, int64_t vc, int smooth,
                   float* __restrict__ m_run, float* __restrict__ s_run,
                   float* __restrict__ zt_run, float* __restrict__ sz_run) {
  const int64_t row = blockIdx.x;
  const LogitT* z_row = logits + row * ld;
  const float* b = bias ? bias + c0 : nullptr;
  float m = -INFINITY, s = 0.f, sz = 0.f;
  for (int64_t j = threadIdx.x; j < vc; j += kStatsThreads) {
    float z = to_f32(z_row[j]);
    if (b) z += b[j];
    sz += z;
    if (z > m) {  // online max: rescale the running sum once per new max
      s = s * __expf(m - z) + 1.f;
      m = z;
    } else if (z != -INFINITY) {  // a -inf logit adds 0; while m is still -inf, z - m is NaN
      s += __expf(z - m);
    }
  }
  // Warp reduction, then across warps through shared memory.
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, off);
    const float s2 = __shfl_xor_sync(0xffffffffu, s, off);
    merge_ms(m, s, m2, s2);
    if (smooth) sz += __shfl_xor_sync(0xffffffffu, sz, off);
  }
  __shared__ float sh_m[kStatsThreads / 32], sh_s[kStatsThreads / 32], sh_z[kStatsThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) { sh_m[warp] = m; sh_s[warp] = s; sh_z[warp] = sz; }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kStatsThreads / 32; ++w) {
      merge_ms(m, s, sh_m[w], sh_s[w]);
      sz += sh_z[w];
    }
    float mr = m_run[row], sr = s_run[row];
    merge_ms(mr, sr, m, s);
    m_run[row] = mr;
    s_run[row] = sr;
    if (smooth) sz_run[row] += sz;
    const int64_t t = targets[row] - c0;  // ignored rows (any ignore_index) just add a logit
    if (t >= 0 && t < vc) zt_run[row] += to_f32(z_row[t]) + (b ? b[t] : 0.f);
  }
}

__global__ void init_stats_kernel(float* m, float* s, float* zt, float* sz, int64_t n) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) { m[i] = -INFINITY; s[i] = 0.f; zt[i] = 0.f; sz[i] = 0.f; }
}

__global__ void finalize_kernel(const float* __restrict__ m, const float* __restrict__ s,
                                const float* __restrict__ zt, const float* __restrict__ sz,
                                const int64_t* __restrict__ targets, int64_t n, float inv_vocab,
                                int64_t ignore_index, float eps, float* __restrict__ loss,
                                float* __restrict__ log_s) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float ls = logf(s[i]);
  log_s[i] = ls;
  float head = m[i] - (1.f - eps) * zt[i];
  if (eps > 0.f) head -= eps * inv_vocab * sz[i];
  loss[i] = targets[i] == ignore_index ? 0.f : head + ls;
}

template <typename LogitT, typename GradT>
__global__ void __launch_bounds__(kGradThreads)
chunk_grad_kernel(const LogitT* logits, int64_t ld_in, const float* __restrict__ bias,
                  const int64_t* __restrict__ targets, const float* __restrict__ row_max,
                  const float* __restrict__ row_log_s,
                  const float* __restrict__ grad_rows, int64_t c0, int64_t vc,
                  int64_t ignore_index, float eps_over_v, float one_minus_eps, GradT* dlogits,
                  int64_t ld_out) {
  // No __restrict__ on logits/dlogits: they may alias (in place); each element is read
  // and then written by the same thread.
  const int64_t row = blockIdx.x;
  const int64_t t = targets[row];
  const float g = t == ignore_index ? 0.f : grad_rows[row];
  const float m = row_max[row], ls = row_log_s[row];
  const LogitT* z_row = logits + row * ld_in;
  GradT* d_row = dlogits + row * ld_out;
  const int64_t base = (int64_t)blockIdx.y * kGradThreads * kGradItems + threadIdx.x;
#pragma unroll
  for (int it = 0; it < kGradItems; ++it) {
    const int64_t j = base + (int64_t)it * kGradThreads;
    if (j < vc) {
      float z = to_f32(z_row[j]);
      if (bias) z += bias[c0 + j];
      // (z - m) - log s: exact near the max, unlike z - lse (rounded at |z|).
      float d = __expf((z - m) - ls) - eps_over_v;
      if (c0 + j == t) d -= one_minus_eps;
      d_row[j] = from_f32<GradT>(d * g);
    }
  }
}

template <typename LogitT>
cudaError_t launch_stats(const void* logits, int64_t ld, const float* bias,
                         const int64_t* targets, int64_t n_rows, int64_t c0, int64_t vc,
                         int smooth, float* m, float* s, float* zt, float* sz,
                         cudaStream_t stream) {
  chunk_stats_kernel<LogitT><<<(unsigned)n_rows, kStatsThreads, 0, stream>>>(
      static_cast<const LogitT*>(logits), ld, bias, targets, c0, vc, smooth, m, s, zt, sz);
  return cudaGetLastError();
}

// Arguments of the gradient kernel, passed through the dtype dispatch in one piece.
struct GradArgs {
  const void* logits; int64_t ld_in; const float* bias; const int64_t* targets;
  const float* row_max; const float* row_log_s; const float* grad_rows;
  int64_t n_rows, c0, vc, vocab, ignore_index; float eps; void* dlogits; int64_t ld_out;
};

template <typename LogitT, typename GradT>
cudaError_t launch_grad(const GradArgs& a, cudaStream_t stream) {
  const int64_t per_block = (int64_t)kGradThreads * kGradItems;
  const dim3 grid((unsigned)a.n_rows, (unsigned)((a.vc + per_block - 1) / per_block));
  chunk_grad_kernel<LogitT, GradT><<<grid, kGradThreads, 0, stream>>>(
      static_cast<const LogitT*>(a.logits), a.ld_in, a.bias, a.targets, a.row_max, a.row_log_s,
      a.grad_rows, a.c0, a.vc, a.ignore_index, a.eps / (float)a.vocab, 1.f - a.eps,
      static_cast<GradT*>(a.dlogits), a.ld_out);
  return cudaGetLastError();
}

template <typename LogitT>
cudaError_t dispatch_grad_out(const GradArgs& a, LceDType out, cudaStream_t stream) {
  switch (out) {
    case LceDType::kFloat32: return launch_grad<LogitT, float>(a, stream);
    case LceDType::kBFloat16: return launch_grad<LogitT, __nv_bfloat16>(a, stream);
    case LceDType::kFloat16: return launch_grad<LogitT, __half>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t lce_init_stats(float* m, float* s, float* zt, float* sz, int64_t n_rows,
                           cudaStream_t stream) {
  if (n_rows <= 0) return cudaSuccess;
  init_stats_kernel<<<(unsigned)((n_rows + 255) / 256), 256, 0, stream>>>(m, s, zt, sz, n_rows);
  return cudaGetLastError();
}

cudaError_t lce_chunk_stats(const void* logits, LceDType logits_dtype, int64_t ld,
                            const float* bias, const int64_t* targets, int64_t n_rows,
                            int64_t c0, int64_t vc, int smooth, float* m, float* s, float* zt,
                            float* sz, cudaStream_t stream) {
  if (n_rows <= 0 || vc <= 0) return cudaSuccess;
  switch (logits_dtype) {
    case LceDType::kFloat32:
      return launch_stats<float>(logits, ld, bias, targets, n_rows, c0, vc, smooth, m, s, zt,
                                 sz, stream);
    case LceDType::kBFloat16:
      return launch_stats<__nv_bfloat16>(logits, ld, bias, targets, n_rows, c0, vc, smooth, m,
                                         s, zt, sz, stream);
    case LceDType::kFloat16:
      return launch_stats<__half>(logits, ld, bias, targets, n_rows, c0, vc, smooth, m, s, zt,
                                  sz, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t lce_finalize(const float* m, const float* s, const float* zt, const float* sz,
                         const int64_t* targets, int64_t n_rows, int64_t vocab,
                         int64_t ignore_index, float label_smoothing, float* loss, float* log_s,
                         cudaStream_t stream) {
  if (n_rows <= 0) return cudaSuccess;
  finalize_kernel<<<(unsigned)((n_rows + 255) / 256), 256, 0, stream>>>(
      m, s, zt, sz, targets, n_rows, 1.f / (float)vocab, ignore_index, label_smoothing, loss,
      log_s);
  return cudaGetLastError();
}

cudaError_t lce_chunk_grad(const void* logits, LceDType logits_dtype, int64_t ld_in,
                           const float* bias, const int64_t* targets, const float* row_max,
                           const float* row_log_s, const float* grad_rows, int64_t n_rows,
                           int64_t c0, int64_t vc, int64_t vocab, int64_t ignore_index,
                           float label_smoothing, void* dlogits, LceDType dlogits_dtype,
                           int64_t ld_out, cudaStream_t stream) {
  if (n_rows <= 0 || vc <= 0) return cudaSuccess;
  const GradArgs a{logits, ld_in, bias, targets, row_max, row_log_s, grad_rows, n_rows,
                   c0, vc, vocab, ignore_index, label_smoothing, dlogits, ld_out};
  switch (logits_dtype) {
    case LceDType::kFloat32: return dispatch_grad_out<float>(a, dlogits_dtype, stream);
    case LceDType::kBFloat16: return dispatch_grad_out<__nv_bfloat16>(a, dlogits_dtype, stream);
    case LceDType::kFloat16: return dispatch_grad_out<__half>(a, dlogits_dtype, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace xlmr_fast
