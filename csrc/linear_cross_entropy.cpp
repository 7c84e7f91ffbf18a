// xlmr_fast_C::linear_cross_entropy_fwd / _bwd: fused linear + cross-entropy over vocabulary
// chunks. GEMMs are cuBLAS calls (at::mm_out, fp32 output from bf16/fp16 operands); the
// per-chunk softmax/CE work is kernels/cuda/linear_cross_entropy.cu. Only one (N, C) logits
// chunk exists at a time, with C sized by the caller (default: about 32 MB of fp32 logits, so
// the chunk the GEMM just wrote is still in L2 when the CE kernel reads it).
//
//   fwd(hidden (N,H), weight (V,H), bias (V,)?, targets (N,) int64, ignore_index,
//       label_smoothing, chunk) -> (loss_rows (N,) fp32, stats (2, N) fp32)
//       loss_rows = lse - (1 - eps) z_t - eps / V * sum_j z_j, 0 on ignored rows;
//       stats = (row max m, log s) with lse = m + log s, kept apart so that the backward's
//       exp((z - m) - log s) does not inherit lse's rounding at the logits' magnitude.
//   bwd(grad_rows (N,) fp32, hidden, weight, bias?, targets, stats, ignore_index,
//       label_smoothing, chunk) -> (dX (N,H) hidden's dtype, dW (V,H) weight's dtype,
//       db (V,) bias's dtype, or (0,) fp32 when bias is None)
//       per chunk: logits recomputed, dlogits = (softmax - smoothed onehot) * grad_rows,
//       dX += dlogits @ W_c (fp32 accumulator), dW_c = dlogits^T @ X written once (fp32
//       accumulation inside cuBLAS), db_c = column sums (fp32).
// hidden sets the compute dtype (bf16/fp16/fp32); weight is either that dtype or fp32 (an fp32
// master weight under autocast), cast per chunk, and its grad is returned in fp32.
// targets are not range-checked (that would need a device sync): an out-of-range target that
// is not ignore_index gives a wrong loss instead of an error.
//
// The CPU kernels are the same chunk loop with plain at:: ops in fp32: they let the CPU tests
// exercise this orchestration (chunk edges, bias, smoothing, ignored rows).
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>

#ifdef XLMR_FAST_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "linear_cross_entropy.cuh"
#endif

namespace {

using at::Tensor;

int64_t chunk_columns(int64_t chunk, int64_t n_rows, int64_t vocab) {
  if (chunk <= 0) {
    // ~32 MB of fp32 logits per chunk, a multiple of 256 columns.
    chunk = (32ll << 20) / (4 * std::max<int64_t>(n_rows, 1));
    chunk = std::max<int64_t>(256, chunk / 256 * 256);
  }
  return std::min(chunk, vocab);
}

void check_inputs(const char* op, const Tensor& hidden, const Tensor& weight,
                  const std::optional<Tensor>& bias, const Tensor& targets) {
  TORCH_CHECK(hidden.dim() == 2, op, ": hidden must be 2-D (N, H), got ", hidden.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == hidden.size(1), op,
              ": weight must be (V, H) with H = hidden.size(1) = ", hidden.size(1), ", got ",
              weight.sizes());
  TORCH_CHECK(weight.size(0) > 0, op, ": weight has no rows (V = 0)");
  const auto dt = hidden.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
              ": hidden must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(weight.scalar_type() == dt || weight.scalar_type() == at::kFloat, op,
              ": weight must have hidden's dtype (", dt, ") or float32, got ",
              weight.scalar_type());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                ": bias must be (V,) = (", weight.size(0), ",), got ", bias->sizes());
    TORCH_CHECK(at::isFloatingType(bias->scalar_type()), op, ": bias must be floating point");
    TORCH_CHECK(bias->device() == hidden.device(), op, ": bias is on ", bias->device(),
                ", hidden on ", hidden.device());
  }
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0), op,
              ": targets must be (N,) = (", hidden.size(0), ",), got ", targets.sizes());
  TORCH_CHECK(targets.scalar_type() == at::kLong, op, ": targets must be int64, got ",
              targets.scalar_type());
  TORCH_CHECK(weight.device() == hidden.device() && targets.device() == hidden.device(), op,
              ": hidden, weight and targets must be on one device");
}

// The backward's own inputs. grad_rows must be exactly (N,): the CUDA kernel reads grad_rows[row]
// for every row (a (1,) tensor would be read out of bounds; at:: ops would broadcast it), and
// it and stats must be on hidden's device (a host pointer in a kernel is an illegal access).
void check_bwd_inputs(const Tensor& grad_rows, const Tensor& stats, const Tensor& hidden) {
  const char* op = "linear_cross_entropy_bwd";
  const int64_t n_rows = hidden.size(0);
  TORCH_CHECK(grad_rows.dim() == 1 && grad_rows.size(0) == n_rows, op,
              ": grad_rows must be (N,) = (", n_rows, ",), got ", grad_rows.sizes());
  TORCH_CHECK(at::isFloatingType(grad_rows.scalar_type()), op,
              ": grad_rows must be floating point, got ", grad_rows.scalar_type());
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == 2 && stats.size(1) == n_rows, op,
              ": stats must be (2, N) = (2, ", n_rows, ") as returned by "
              "linear_cross_entropy_fwd, got ", stats.sizes());
  TORCH_CHECK(at::isFloatingType(stats.scalar_type()), op, ": stats must be floating point, got ",
              stats.scalar_type());
  TORCH_CHECK(grad_rows.device() == hidden.device() && stats.device() == hidden.device(), op,
              ": grad_rows is on ", grad_rows.device(), " and stats on ", stats.device(),
              ", hidden on ", hidden.device());
}

// ---------------------------------------------------------------------------- CPU (at:: ops)
Tensor logits_chunk_cpu(const Tensor& x32, const Tensor& weight, const std::optional<Tensor>& bias,
                        int64_t c0, int64_t vc) {
  Tensor z = at::mm(x32, weight.narrow(0, c0, vc).to(at::kFloat).t());
  if (bias.has_value()) z = z + bias->narrow(0, c0, vc).to(at::kFloat);
  return z;
}

std::tuple<Tensor, Tensor> fwd_cpu(const Tensor& hidden, const Tensor& weight,
                                   const std::optional<Tensor>& bias, const Tensor& targets,
                                   int64_t ignore_index, double label_smoothing, int64_t chunk) {
  check_inputs("linear_cross_entropy_fwd", hidden, weight, bias, targets);
  const int64_t N = hidden.size(0), V = weight.size(0);
  const int64_t C = chunk_columns(chunk, N, V);
  const auto f32 = hidden.options().dtype(at::kFloat);
  const Tensor x32 = hidden.to(at::kFloat);
  Tensor m = at::full({N}, -std::numeric_limits<float>::infinity(), f32);
  Tensor s = at::zeros({N}, f32), zt = at::zeros({N}, f32), sz = at::zeros({N}, f32);
  for (int64_t c0 = 0; c0 < V; c0 += C) {
    const int64_t vc = std::min(C, V - c0);
    const Tensor z = logits_chunk_cpu(x32, weight, bias, c0, vc);
    const Tensor mn = at::maximum(m, std::get<0>(z.max(1)));
    // Shift by 0 while a row has seen only -inf logits (e.g. a -inf bias on the whole first
    // chunk): exp(-inf - -inf) would be NaN; exp(-inf - 0) is the 0 those logits add.
    const Tensor shift = at::where(mn == -std::numeric_limits<float>::infinity(),
                                   at::zeros_like(mn), mn);
    s = s * at::exp(m - shift) + at::exp(z - shift.unsqueeze(1)).sum(1);
    m = mn;
    const Tensor in_chunk = (targets >= c0) & (targets < c0 + vc);
    const Tensor idx = (targets - c0).clamp(0, vc - 1).unsqueeze(1);
    zt = zt + at::where(in_chunk, z.gather(1, idx).squeeze(1), at::zeros_like(zt));
    sz = sz + z.sum(1);
  }
  const Tensor logs = at::log(s);
  Tensor head = m - (1.0 - label_smoothing) * zt;
  if (label_smoothing > 0.0) head = head - (label_smoothing / double(V)) * sz;
  const Tensor loss = at::where(targets != ignore_index, head + logs, at::zeros_like(head));
  return {loss, at::stack({m, logs})};
}

std::tuple<Tensor, Tensor, Tensor> bwd_cpu(const Tensor& grad_rows, const Tensor& hidden,
                                           const Tensor& weight, const std::optional<Tensor>& bias,
                                           const Tensor& targets, const Tensor& stats,
                                           int64_t ignore_index, double label_smoothing,
                                           int64_t chunk) {
  check_inputs("linear_cross_entropy_bwd", hidden, weight, bias, targets);
  const int64_t N = hidden.size(0), H = hidden.size(1), V = weight.size(0);
  check_bwd_inputs(grad_rows, stats, hidden);
  const int64_t C = chunk_columns(chunk, N, V);
  const double eps = label_smoothing;
  const Tensor row_m = stats[0].to(at::kFloat).unsqueeze(1);
  const Tensor row_logs = stats[1].to(at::kFloat).unsqueeze(1);
  const Tensor x32 = hidden.to(at::kFloat);
  const Tensor g = at::where(targets != ignore_index, grad_rows.to(at::kFloat),
                             at::zeros({N}, x32.options()));
  Tensor dx = at::zeros({N, H}, x32.options());
  Tensor dw = at::empty({V, H}, weight.options());
  Tensor db = bias.has_value() ? at::empty({V}, bias->options())
                               : at::empty({0}, x32.options());
  for (int64_t c0 = 0; c0 < V; c0 += C) {
    const int64_t vc = std::min(C, V - c0);
    const Tensor z = logits_chunk_cpu(x32, weight, bias, c0, vc);
    Tensor d = at::exp((z - row_m) - row_logs) - eps / double(V);
    const Tensor in_chunk = (targets >= c0) & (targets < c0 + vc);
    const Tensor idx = (targets - c0).clamp(0, vc - 1).unsqueeze(1);
    const Tensor hit = at::where(in_chunk, at::full({N}, -(1.0 - eps), x32.options()),
                                 at::zeros({N}, x32.options()));
    d.scatter_add_(1, idx, hit.unsqueeze(1));
    d = d * g.unsqueeze(1);
    dx.addmm_(d, weight.narrow(0, c0, vc).to(at::kFloat));
    dw.narrow(0, c0, vc).copy_(at::mm(d.t(), x32));
    if (bias.has_value()) db.narrow(0, c0, vc).copy_(d.sum(0));
  }
  return {dx.to(hidden.scalar_type()), dw, db};
}

// ---------------------------------------------------------------------------- CUDA
#ifdef XLMR_FAST_WITH_CUDA
xlmr_fast::LceDType lce_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return xlmr_fast::LceDType::kFloat32;
    case at::kBFloat16: return xlmr_fast::LceDType::kBFloat16;
    case at::kHalf: return xlmr_fast::LceDType::kFloat16;
    default: TORCH_CHECK(false, "linear_cross_entropy: unsupported dtype ", t);
  }
  return xlmr_fast::LceDType::kFloat32;
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "linear_cross_entropy: ", what, " failed: ",
              cudaGetErrorString(err));
}

// out (rows, cols) fp32 or out's dtype = a @ b, with fp32 output from 16-bit operands when
// out is fp32 (cuBLAS accumulates in fp32 either way; this skips a rounding to 16 bits).
void mm_into(Tensor& out, const Tensor& a, const Tensor& b) {
  if (out.scalar_type() == a.scalar_type()) {
    at::mm_out(out, a, b);
  } else {
    at::mm_out(out, a, b, out.scalar_type());
  }
}

void addmm_into(Tensor& acc, const Tensor& a, const Tensor& b) {
  if (acc.scalar_type() == a.scalar_type()) {
    acc.addmm_(a, b);
  } else {
    at::addmm_out(acc, acc, a, b, acc.scalar_type(), 1, 1);
  }
}

std::tuple<Tensor, Tensor> fwd_cuda(const Tensor& hidden, const Tensor& weight,
                                    const std::optional<Tensor>& bias, const Tensor& targets,
                                    int64_t ignore_index, double label_smoothing,
                                    int64_t chunk) {
  check_inputs("linear_cross_entropy_fwd", hidden, weight, bias, targets);
  const c10::cuda::CUDAGuard guard(hidden.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t N = hidden.size(0), V = weight.size(0);
  const int64_t C = chunk_columns(chunk, N, V);
  const Tensor x = hidden.contiguous();
  const Tensor tg = targets.contiguous();
  Tensor b32;
  if (bias.has_value()) b32 = bias->to(at::kFloat).contiguous();
  const float* bptr = bias.has_value() ? b32.data_ptr<float>() : nullptr;
  const auto f32 = x.options().dtype(at::kFloat);
  Tensor stats = at::empty({4, N}, f32);
  float* m = stats.data_ptr<float>();
  float *s = m + N, *zt = m + 2 * N, *sz = m + 3 * N;
  check_cuda(xlmr_fast::lce_init_stats(m, s, zt, sz, N, stream), "lce_init_stats");
  Tensor buf = at::empty({N * C}, f32);
  const int smooth = label_smoothing > 0.0 ? 1 : 0;
  for (int64_t c0 = 0; c0 < V; c0 += C) {
    const int64_t vc = std::min(C, V - c0);
    Tensor z = buf.narrow(0, 0, N * vc).view({N, vc});
    // cast per chunk: an fp32 master weight is not copied whole into the compute dtype
    mm_into(z, x, weight.narrow(0, c0, vc).to(x.scalar_type()).t());
    check_cuda(xlmr_fast::lce_chunk_stats(z.data_ptr(), xlmr_fast::LceDType::kFloat32, vc, bptr,
                                          tg.data_ptr<int64_t>(), N, c0, vc, smooth, m, s, zt,
                                          sz, stream),
               "lce_chunk_stats");
  }
  // stats rows 0 (m) and 1 (log s, written over s by finalize) are the returned stats.
  Tensor loss = at::empty({N}, f32);
  check_cuda(xlmr_fast::lce_finalize(m, s, zt, sz, tg.data_ptr<int64_t>(), N, V, ignore_index,
                                     static_cast<float>(label_smoothing), loss.data_ptr<float>(),
                                     s, stream),
             "lce_finalize");
  return {loss, stats.narrow(0, 0, 2)};
}

std::tuple<Tensor, Tensor, Tensor> bwd_cuda(const Tensor& grad_rows, const Tensor& hidden,
                                            const Tensor& weight,
                                            const std::optional<Tensor>& bias,
                                            const Tensor& targets, const Tensor& stats,
                                            int64_t ignore_index, double label_smoothing,
                                            int64_t chunk) {
  check_inputs("linear_cross_entropy_bwd", hidden, weight, bias, targets);
  check_bwd_inputs(grad_rows, stats, hidden);
  const c10::cuda::CUDAGuard guard(hidden.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t N = hidden.size(0), H = hidden.size(1), V = weight.size(0);
  const int64_t C = chunk_columns(chunk, N, V);
  const Tensor x = hidden.contiguous();
  const auto cdt = x.scalar_type();
  const Tensor tg = targets.contiguous();
  const auto f32 = x.options().dtype(at::kFloat);
  const Tensor g = grad_rows.to(at::kFloat).contiguous();
  const Tensor st = stats.to(at::kFloat).contiguous();
  const float* row_m = st.data_ptr<float>();
  const float* row_logs = row_m + N;
  Tensor b32;
  if (bias.has_value()) b32 = bias->to(at::kFloat).contiguous();
  const float* bptr = bias.has_value() ? b32.data_ptr<float>() : nullptr;

  Tensor zbuf = at::empty({N * C}, f32);
  // dlogits in the compute dtype (the GEMM operand); fp32 inputs write in place over the logits.
  Tensor dbuf = cdt == at::kFloat ? zbuf : at::empty({N * C}, x.options());
  Tensor dx = at::empty({N, H}, f32);
  Tensor dw = at::empty({V, H}, weight.options());
  Tensor db = bias.has_value() ? at::empty({V}, bias->options()) : at::empty({0}, f32);
  Tensor db32 = (bias.has_value() && bias->scalar_type() != at::kFloat) ? at::empty({V}, f32) : db;
  for (int64_t c0 = 0; c0 < V; c0 += C) {
    const int64_t vc = std::min(C, V - c0);
    const Tensor wc = weight.narrow(0, c0, vc).to(cdt);  // cast per chunk, as the forward
    Tensor z = zbuf.narrow(0, 0, N * vc).view({N, vc});
    Tensor d = dbuf.narrow(0, 0, N * vc).view({N, vc});
    mm_into(z, x, wc.t());
    check_cuda(xlmr_fast::lce_chunk_grad(z.data_ptr(), xlmr_fast::LceDType::kFloat32, vc, bptr,
                                         tg.data_ptr<int64_t>(), row_m, row_logs,
                                         g.data_ptr<float>(), N, c0, vc, V, ignore_index,
                                         static_cast<float>(label_smoothing), d.data_ptr(),
                                         lce_dtype(cdt), vc, stream),
               "lce_chunk_grad");
    if (bias.has_value()) {
      Tensor dbc = db32.narrow(0, c0, vc);
      at::sum_out(dbc, d, at::IntArrayRef({0}), false, at::kFloat);
    }
    Tensor dwc = dw.narrow(0, c0, vc);
    mm_into(dwc, d.t(), x);  // written once, in weight's dtype
    if (c0 == 0) {
      mm_into(dx, d, wc);
    } else {
      addmm_into(dx, d, wc);
    }
  }
  if (db32.defined() && bias.has_value() && !db32.is_same(db)) db.copy_(db32);
  return {dx.to(cdt), dw, db};
}
#endif  // XLMR_FAST_WITH_CUDA

}  // namespace

TORCH_LIBRARY_FRAGMENT(xlmr_fast_C, m) {
  m.def("linear_cross_entropy_fwd(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, "
        "int ignore_index, float label_smoothing, int chunk) -> (Tensor, Tensor)");
  m.def("linear_cross_entropy_bwd(Tensor grad_rows, Tensor hidden, Tensor weight, Tensor? bias, "
        "Tensor targets, Tensor stats, int ignore_index, float label_smoothing, int chunk) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(xlmr_fast_C, CPU, m) {
  m.impl("linear_cross_entropy_fwd", &fwd_cpu);
  m.impl("linear_cross_entropy_bwd", &bwd_cpu);
}

#ifdef XLMR_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(xlmr_fast_C, CUDA, m) {
  m.impl("linear_cross_entropy_fwd", &fwd_cuda);
  m.impl("linear_cross_entropy_bwd", &bwd_cuda);
}
#endif
