// qat._C: an empty Python module whose only job is to load libqat_ops (it links it), whose
// static initializers register the operators with the dispatcher. No pybind11, no torch_python.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
