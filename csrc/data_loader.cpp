// xlmr_fast_C::gather_blocks: assemble a batch of training blocks from per-language token
// streams (the memory-mapped shards of xlmr_fast/data/shards.py, viewed as int32 without a copy).
//
//   gather_blocks(streams: Tensor[] (1-D int32 each, one per language),
//                 rows (B, 3) int64: (stream index, start offset, length) per row,
//                 out (B, T) int32 (written in place; may be pinned), bos, pad, num_threads) -> ()
//
// Row r becomes: out[r, 0] = bos; out[r, 1 : 1 + length] = streams[lang][start : start + length];
// out[r, 1 + length :] = pad. length <= T - 1. Bit-identical to gather_blocks_numpy in
// xlmr_fast/data/loader.py (the fallback when the extension is missing).
//
// Why C++: Python must not touch tokens; a (64, 512) batch is 128 KiB of row copies, which a
// memcpy does at memory speed, while the Python side only computes the (B, 3) row plan. All
// arguments are validated serially first (B rows, cheap) so a bad plan never reads out of
// bounds; then rows are copied in parallel with OpenMP using num_threads threads of our own
// (not torch's intra-op pool, which the training loop's own CPU ops use). torch.ops calls from
// Python release the GIL while the kernel runs (checked on torch 2.13), so the loader's
// prefetch thread assembles batches concurrently with the training loop.
#include <torch/extension.h>

#include <algorithm>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using at::Tensor;

void gather_blocks_cpu(at::TensorList streams, const Tensor& rows, const Tensor& out, int64_t bos,
                       int64_t pad, int64_t num_threads) {
  const char* op = "gather_blocks";
  TORCH_CHECK(rows.device().is_cpu() && rows.scalar_type() == at::kLong && rows.dim() == 2 &&
                  rows.size(1) == 3 && rows.is_contiguous(),
              op, ": rows must be a contiguous CPU int64 tensor (B, 3) of (stream, start, length), got ",
              rows.scalar_type(), " ", rows.sizes());
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == at::kInt && out.dim() == 2 &&
                  out.is_contiguous(),
              op, ": out must be a contiguous CPU int32 tensor (B, T), got ", out.scalar_type(), " ",
              out.sizes());
  const int64_t B = rows.size(0), T = out.size(1);
  TORCH_CHECK(out.size(0) == B, op, ": out has ", out.size(0), " rows, rows has ", B);
  TORCH_CHECK(T >= 1, op, ": out must have at least one column (the <s> token), got T=", T);
  const int64_t S = static_cast<int64_t>(streams.size());
  std::vector<const int32_t*> src(S);
  std::vector<int64_t> len(S);
  for (int64_t s = 0; s < S; ++s) {
    const Tensor& t = streams[s];
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kInt && t.dim() == 1 &&
                    t.is_contiguous(),
                op, ": streams[", s, "] must be a contiguous 1-D CPU int32 tensor, got ",
                t.scalar_type(), " ", t.sizes());
    src[s] = t.data_ptr<int32_t>();
    len[s] = t.numel();
  }
  const int64_t* plan = rows.data_ptr<int64_t>();
  for (int64_t r = 0; r < B; ++r) {
    const int64_t s = plan[3 * r], start = plan[3 * r + 1], n = plan[3 * r + 2];
    TORCH_CHECK(s >= 0 && s < S, op, ": row ", r, " names stream ", s, ", there are ", S);
    TORCH_CHECK(n >= 0 && n <= T - 1, op, ": row ", r, " has length ", n, ", must be in [0, ",
                T - 1, "]");
    TORCH_CHECK(start >= 0 && start <= len[s] - n, op, ": row ", r, " reads [", start, ", ",
                start + n, ") past the end of stream ", s, " (", len[s], " tokens)");
  }
  int32_t* dst = out.data_ptr<int32_t>();
  const int32_t b32 = static_cast<int32_t>(bos), p32 = static_cast<int32_t>(pad);
  int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, B)));
  (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t r = 0; r < B; ++r) {
    const int64_t s = plan[3 * r], start = plan[3 * r + 1], n = plan[3 * r + 2];
    int32_t* o = dst + r * T;
    o[0] = b32;
    if (n > 0) std::memcpy(o + 1, src[s] + start, static_cast<size_t>(n) * sizeof(int32_t));
    std::fill(o + 1 + n, o + T, p32);
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(xlmr_fast_C, m) {
  m.def(
      "gather_blocks(Tensor[] streams, Tensor rows, Tensor(a!) out, int bos, int pad, "
      "int num_threads) -> ()");
}

TORCH_LIBRARY_IMPL(xlmr_fast_C, CPU, m) { m.impl("gather_blocks", &gather_blocks_cpu); }
