// Host launchers of the CUDA pieces of xf.ops.linear_cross_entropy (plain CUDA, no torch).
//
// The GEMMs (logits chunk = X @ W_c^T, dX += dlogits @ W_c, dW_c = dlogits^T @ X) are cuBLAS
// calls made by csrc/linear_cross_entropy.cpp; these kernels do the per-chunk softmax / CE work
// on a (n_rows, vc) logits chunk of the vocabulary columns [c0, c0 + vc):
//   lce_chunk_stats  running per-row max m, sum-exp s (relative to m), target logit zt and sum
//                    of logits sz (label smoothing), merged chunk after chunk (fp32)
//   lce_finalize     log_s = log s; loss = (m - (1 - eps) zt - eps / V * sz) + log_s
//                    (= lse - (1 - eps) zt - eps / V sz, 0 if ignored; grouped so that a tiny
//                    loss keeps its digits when the target is the max)
//   lce_chunk_grad   dlogits = (exp((z - m) - log_s) - eps / V - (1 - eps) [col == t]) * g_row
//                    (0 on ignored rows); may write in place over the logits (same dtype)
// z = logits + bias[col] when bias (fp32, full (V,) vector) is given.
// All return the launch's cudaError_t.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace xlmr_fast {

enum class LceDType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Before the first chunk: m = -inf, s = zt = sz = 0 (n_rows each).
cudaError_t lce_init_stats(float* m, float* s, float* zt, float* sz, int64_t n_rows,
                           cudaStream_t stream);

cudaError_t lce_chunk_stats(const void* logits, LceDType logits_dtype, int64_t ld,
                            const float* bias, const int64_t* targets, int64_t n_rows,
                            int64_t c0, int64_t vc, int smooth, float* m, float* s, float* zt,
                            float* sz, cudaStream_t stream);

cudaError_t lce_finalize(const float* m, const float* s, const float* zt, const float* sz,
                         const int64_t* targets, int64_t n_rows, int64_t vocab,
                         int64_t ignore_index, float label_smoothing, float* loss, float* log_s,
                         cudaStream_t stream);

cudaError_t lce_chunk_grad(const void* logits, LceDType logits_dtype, int64_t ld_in,
                           const float* bias, const int64_t* targets, const float* row_max,
                           const float* row_log_s, const float* grad_rows, int64_t n_rows,
                           int64_t c0, int64_t vc, int64_t vocab, int64_t ignore_index,
                           float label_smoothing, void* dlogits, LceDType dlogits_dtype,
                           int64_t ld_out, cudaStream_t stream);

}  // namespace xlmr_fast
