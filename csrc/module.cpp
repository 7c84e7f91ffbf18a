// Python module xlmr_fast._C. The ops themselves register with the dispatcher in
// their own files (TORCH_LIBRARY_FRAGMENT(xlmr_fast_C, ...)) and are called as
// torch.ops.xlmr_fast_C.<op>; this file only reports what the build contains.
#include <torch/extension.h>

namespace {

py::dict build_info() {
  py::dict d;
#ifdef XLMR_FAST_WITH_CUDA
  d["cuda"] = true;
#else
  d["cuda"] = false;
#endif
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "xlmr_fast compiled ops (CPU data-path ops; CUDA kernels when built with CUDA)";
  m.def("build_info", &build_info, "what this build of xlmr_fast._C contains");
}
