// Python module entry of rubricrl._C. Loading the library defines the ops and
// registers their CPU kernels (csrc/cpu/registration.cpp); this entry then imports
// rubricrl.ops._library, which registers their fake kernels, autograd formulas and
// CUDA (Triton) kernels, so `import rubricrl._C` alone gives complete ops
// (torch.compile, autograd) with no import of the Python API needed.
#include <torch/extension.h>

namespace py = pybind11;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rubricrl C++ kernels; use rubricrl.ops or torch.ops.rubricrl";
  // rubricrl.ops imports rubricrl._C itself: listing this (initialising) module first
  // makes that nested import return it instead of initialising the extension again.
  py::module_::import("sys").attr("modules")["rubricrl._C"] = m;
  py::module_::import("rubricrl.ops._library");
}
