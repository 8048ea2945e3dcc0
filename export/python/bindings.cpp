// pybind11 binding of the torch-free exporter core: qat.export._core.
// The Python front (qat/export/gguf.py) adds type inference, torch/numpy handling and docs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cerrno>
#include <string>
#include <vector>

#include "qat_export/gguf.h"
#include "qat_export/pack.h"
#include "qat_export/quantize.h"
#include "qat_export/types.h"

namespace py = pybind11;
using namespace qat_export;
using gguf::Value;
using gguf::ValueType;

namespace {

const TypeTraits& type_by_name(const std::string& name) {
  const TypeTraits* t = find_type(name);
  if (!t) {
    std::string names;
    size_t n = 0;
    const TypeTraits* table = type_table(&n);
    for (size_t i = 0; i < n; ++i)
      if (table[i].supported) names += (names.empty() ? "" : ", ") + std::string(table[i].name);
    throw py::value_error("unknown GGUF tensor type '" + name + "' (supported: " + names + ")");
  }
  return *t;
}

ValueType value_type_by_name(const std::string& name) {
  ValueType t;
  if (!gguf::value_type_from_name(name, &t)) throw py::value_error("unknown GGUF value type '" + name + "'");
  return t;
}

// A C-contiguous buffer of `itemsize`-byte items; `format` empty accepts any format.
py::buffer_info contiguous(const py::buffer& b, const char* what, ssize_t itemsize, const std::string& format) {
  py::buffer_info info = b.request();
  if (!format.empty() && info.format != format)
    throw py::type_error(std::string(what) + ": expected a float32 buffer, got format '" + info.format + "'");
  ssize_t expect = info.itemsize;
  for (ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] != 1 && info.strides[d] != expect)
      throw py::value_error(std::string(what) + ": buffer is not C-contiguous");
    expect *= info.shape[d];
  }
  if (itemsize > 0 && info.itemsize != itemsize) throw py::type_error(std::string(what) + ": wrong item size");
  return info;
}

ssize_t n_items(const py::buffer_info& info) {
  ssize_t n = 1;
  for (ssize_t d : info.shape) n *= d;
  return n;
}

py::bytes quantize_py(const std::string& type_name, const py::buffer& x, int64_t n_per_row) {
  const TypeTraits& t = type_by_name(type_name);
  py::buffer_info info = contiguous(x, "quantize", 4, py::format_descriptor<float>::format());
  const int64_t n = n_items(info);
  if (n_per_row <= 0) throw py::value_error("row length must be positive");
  if (n % n_per_row != 0) throw py::value_error("element count is not a multiple of the row length");
  const size_t nbytes = row_size(t.type, n_per_row) * static_cast<size_t>(n / n_per_row);
  PyObject* obj = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(nbytes));
  if (!obj) throw py::error_already_set();
  py::bytes out = py::reinterpret_steal<py::bytes>(obj);
  char* dst = PyBytes_AS_STRING(obj);
  {
    py::gil_scoped_release release;
    quantize(t.type, static_cast<const float*>(info.ptr), dst, n / n_per_row, n_per_row);
  }
  return out;
}

py::array_t<float> dequantize_py(const std::string& type_name, const py::buffer& data, int64_t n) {
  const TypeTraits& t = type_by_name(type_name);
  py::buffer_info info = contiguous(data, "dequantize", 0, "");
  const size_t have = static_cast<size_t>(n_items(info) * info.itemsize);
  const size_t need = row_size(t.type, n);
  if (have != need)
    throw py::value_error(std::string(t.name) + ": " + std::to_string(n) + " elements take " + std::to_string(need) +
                          " bytes, got " + std::to_string(have));
  py::array_t<float> out(n);
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    dequantize(t.type, info.ptr, dst, n);
  }
  return out;
}

// ---- lattice bit layout (pack.h) --------------------------------------------------------------
const LatticeLayout& lattice_by_name(const std::string& type_name) {
  const TypeTraits& t = type_by_name(type_name);
  const LatticeLayout* l = lattice_layout(t.type);
  if (!l)
    throw py::value_error(std::string(t.name) +
                          " has no block lattice to pack (lattice types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, "
                          "Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL)");
  return *l;
}

// A C-contiguous buffer of exactly `n` items of `itemsize` bytes (None -> nullptr when allowed).
const void* field(const py::object& obj, const char* type_name, const char* what, ssize_t itemsize, ssize_t n,
                  bool required, std::vector<py::buffer_info>& keep) {
  if (obj.is_none()) {
    if (required) throw py::value_error(std::string("pack ") + type_name + ": " + what + " is required");
    return nullptr;
  }
  keep.push_back(contiguous(obj.cast<py::buffer>(), what, 0, ""));
  const py::buffer_info& info = keep.back();
  if (info.itemsize != itemsize)
    throw py::type_error(std::string("pack ") + type_name + ": " + what + " must have " + std::to_string(itemsize) +
                         "-byte items, got " + std::to_string(info.itemsize));
  if (n_items(info) != n)
    throw py::value_error(std::string("pack ") + type_name + ": " + what + " has " + std::to_string(n_items(info)) +
                          " items, expected " + std::to_string(n));
  return info.ptr;
}

py::bytes pack_py(const std::string& type_name, const py::buffer& codes, const py::object& d, const py::object& dmin,
                  const py::object& scales, const py::object& mins) {
  const LatticeLayout& l = lattice_by_name(type_name);
  const char* name = type_traits(l.type).name;
  std::vector<py::buffer_info> keep;
  keep.reserve(5);
  keep.push_back(contiguous(codes, "codes", 1, ""));
  const ssize_t n = n_items(keep.back());
  if (n % l.block != 0)
    throw py::value_error(std::string("pack ") + name + ": " + std::to_string(n) + " codes are not whole blocks of " +
                          std::to_string(l.block));
  const int64_t nb = n / l.block;
  PackFields f{static_cast<const int8_t*>(keep[0].ptr),
               static_cast<const uint16_t*>(field(d, name, "d", 2, nb, true, keep)),
               static_cast<const uint16_t*>(field(dmin, name, "dmin", 2, nb, l.has_dmin, keep)),
               static_cast<const int8_t*>(field(scales, name, "scales", 1, nb * l.n_sub, l.n_sub > 0, keep)),
               static_cast<const int8_t*>(field(mins, name, "mins", 1, nb * l.n_sub, l.has_mins, keep))};
  if (!l.has_dmin && f.dmin) throw py::value_error(std::string("pack ") + name + " has no dmin");
  if (l.n_sub == 0 && f.scales) throw py::value_error(std::string("pack ") + name + " has no sub-block scales");
  if (!l.has_mins && f.mins) throw py::value_error(std::string("pack ") + name + " has no sub-block mins");
  const size_t nbytes = row_size(l.type, n);
  PyObject* obj = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(nbytes));
  if (!obj) throw py::error_already_set();
  py::bytes out = py::reinterpret_steal<py::bytes>(obj);
  try {
    pack(l.type, f, nb, PyBytes_AS_STRING(obj));
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
  return out;
}

py::tuple unpack_py(const std::string& type_name, const py::buffer& data, int64_t n) {
  const LatticeLayout& l = lattice_by_name(type_name);
  py::buffer_info info = contiguous(data, "unpack", 0, "");
  if (n < 0 || n % l.block != 0)
    throw py::value_error(std::string("unpack ") + type_traits(l.type).name + ": " + std::to_string(n) +
                          " elements are not whole blocks of " + std::to_string(l.block));
  const size_t need = row_size(l.type, n);
  const size_t have = static_cast<size_t>(n_items(info) * info.itemsize);
  if (have != need)
    throw py::value_error(std::string("unpack ") + type_traits(l.type).name + ": " + std::to_string(n) +
                          " elements take " + std::to_string(need) + " bytes, got " + std::to_string(have));
  const int64_t nb = n / l.block;
  py::array_t<int8_t> codes(n);
  py::array_t<uint16_t> d(nb);
  py::object dmin = py::none(), scales = py::none(), mins = py::none();
  UnpackFields f{codes.mutable_data(), d.mutable_data(), nullptr, nullptr, nullptr};
  if (l.has_dmin) {
    py::array_t<uint16_t> a(nb);
    f.dmin = a.mutable_data();
    dmin = a;
  }
  if (l.n_sub > 0) {
    py::array_t<int8_t> a(nb * l.n_sub);
    f.scales = a.mutable_data();
    scales = a;
  }
  if (l.has_mins) {
    py::array_t<int8_t> a(nb * l.n_sub);
    f.mins = a.mutable_data();
    mins = a;
  }
  unpack(l.type, info.ptr, nb, f);
  return py::make_tuple(codes, d, dmin, scales, mins);
}

// ---- metadata values ----------------------------------------------------------------------------
uint64_t to_unsigned(const py::handle& o, ValueType t, const std::string& key) {
  if (t == ValueType::BOOL) {
    if (py::isinstance<py::bool_>(o)) return o.cast<bool>() ? 1 : 0;
  }
  if (!PyLong_Check(o.ptr()) && !py::hasattr(o, "__index__"))
    throw py::type_error("key '" + key + "': expected an int for " + gguf::value_type_name(t) + ", got " +
                         std::string(py::str(py::type::handle_of(o).attr("__name__"))));
  py::int_ i = py::reinterpret_steal<py::int_>(PyNumber_Index(o.ptr()));
  if (!i) throw py::error_already_set();
  if (PyObject_RichCompareBool(i.ptr(), py::int_(0).ptr(), Py_LT) == 1)
    throw py::value_error("key '" + key + "': negative value for " + gguf::value_type_name(t));
  const unsigned long long v = PyLong_AsUnsignedLongLong(i.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    throw py::value_error("key '" + key + "': value does not fit " + gguf::value_type_name(t));
  }
  return v;
}

int64_t to_signed(const py::handle& o, ValueType t, const std::string& key) {
  if (!PyLong_Check(o.ptr()) && !py::hasattr(o, "__index__"))
    throw py::type_error("key '" + key + "': expected an int for " + gguf::value_type_name(t) + ", got " +
                         std::string(py::str(py::type::handle_of(o).attr("__name__"))));
  py::int_ i = py::reinterpret_steal<py::int_>(PyNumber_Index(o.ptr()));
  if (!i) throw py::error_already_set();
  const long long v = PyLong_AsLongLong(i.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    throw py::value_error("key '" + key + "': value does not fit " + gguf::value_type_name(t));
  }
  return v;
}

double to_double(const py::handle& o, ValueType t, const std::string& key) {
  if (py::isinstance<py::str>(o) || py::isinstance<py::bytes>(o))
    throw py::type_error("key '" + key + "': expected a number for " + gguf::value_type_name(t));
  return py::float_(py::reinterpret_borrow<py::object>(o)).cast<double>();
}

std::string to_string(const py::handle& o, const std::string& key) {
  if (py::isinstance<py::str>(o)) return o.cast<std::string>();
  if (py::isinstance<py::bytes>(o)) return o.cast<std::string>();
  throw py::type_error("key '" + key + "': expected str or bytes for STRING, got " +
                       std::string(py::str(py::type::handle_of(o).attr("__name__"))));
}

Value make_value(const std::string& key, const std::string& type_name, const py::object& obj,
                 const std::string& elem_name) {
  Value v;
  v.type = value_type_by_name(type_name);
  auto put = [&](ValueType t, const py::handle& o, bool array) {
    switch (t) {
      case ValueType::UINT8:
      case ValueType::UINT16:
      case ValueType::UINT32:
      case ValueType::UINT64:
      case ValueType::BOOL: {
        const uint64_t u = to_unsigned(o, t, key);
        array ? v.u_items.push_back(u) : void(v.u = u);
        break;
      }
      case ValueType::INT8:
      case ValueType::INT16:
      case ValueType::INT32:
      case ValueType::INT64: {
        const int64_t i = to_signed(o, t, key);
        array ? v.i_items.push_back(i) : void(v.i = i);
        break;
      }
      case ValueType::FLOAT32:
      case ValueType::FLOAT64: {
        const double f = to_double(o, t, key);
        array ? v.f_items.push_back(f) : void(v.f = f);
        break;
      }
      case ValueType::STRING: {
        std::string s = to_string(o, key);
        array ? v.s_items.push_back(std::move(s)) : void(v.s = std::move(s));
        break;
      }
      case ValueType::ARRAY: throw py::value_error("key '" + key + "': nested arrays are not supported");
    }
  };
  if (v.type != ValueType::ARRAY) {
    put(v.type, obj, false);
    return v;
  }
  if (elem_name.empty()) throw py::value_error("key '" + key + "': ARRAY needs an element type");
  v.elem_type = value_type_by_name(elem_name);
  if (py::isinstance<py::str>(obj) || py::isinstance<py::bytes>(obj))
    throw py::type_error("key '" + key + "': ARRAY needs a sequence, got a string");
  for (const py::handle& item : py::iter(obj)) put(v.elem_type, item, true);
  return v;
}

py::object string_to_py(const std::string& s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "strict");
  if (o) return py::reinterpret_steal<py::object>(o);
  PyErr_Clear();
  return py::bytes(s);  // not valid UTF-8: hand back the raw bytes
}

py::object scalar_to_py(ValueType t, uint64_t u, int64_t i, double f) {
  switch (t) {
    case ValueType::BOOL: return py::bool_(u != 0);
    case ValueType::UINT8:
    case ValueType::UINT16:
    case ValueType::UINT32:
    case ValueType::UINT64: return py::int_(u);
    case ValueType::INT8:
    case ValueType::INT16:
    case ValueType::INT32:
    case ValueType::INT64: return py::int_(i);
    default: return py::float_(f);
  }
}

py::object value_to_py(const Value& v) {
  if (v.type == ValueType::STRING) return string_to_py(v.s);
  if (v.type != ValueType::ARRAY) return scalar_to_py(v.type, v.u, v.i, v.f);
  py::list out;
  switch (v.elem_type) {
    case ValueType::STRING:
      for (const auto& s : v.s_items) out.append(string_to_py(s));
      break;
    case ValueType::INT8:
    case ValueType::INT16:
    case ValueType::INT32:
    case ValueType::INT64:
      for (int64_t i : v.i_items) out.append(py::int_(i));
      break;
    case ValueType::FLOAT32:
    case ValueType::FLOAT64:
      for (double f : v.f_items) out.append(py::float_(f));
      break;
    default:
      for (uint64_t u : v.u_items) out.append(scalar_to_py(v.elem_type, u, 0, 0));
      break;
  }
  return out;
}

py::dict tensor_info_to_py(const gguf::TensorInfo& t) {
  py::dict d;
  d["name"] = t.name;
  d["ne"] = t.ne;
  d["type"] = type_traits(t.type).name;
  d["type_id"] = static_cast<uint32_t>(t.type);
  d["offset"] = t.offset;
  d["nbytes"] = t.nbytes;
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "Torch-free GGUF exporter core (reference quantizers, GGUF v3 reader/writer).";

  py::register_exception<gguf::GGUFError>(m, "GGUFError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const gguf::IOError& e) {
      py::object err = py::module_::import("builtins").attr("OSError")(e.err, e.what(), e.path);
      PyErr_SetObject(PyExc_OSError, err.ptr());
    }
  });

  m.def(
      "type_table",
      [] {
        py::list out;
        size_t n = 0;
        const TypeTraits* table = type_table(&n);
        for (size_t i = 0; i < n; ++i)
          out.append(py::make_tuple(table[i].name, static_cast<uint32_t>(table[i].type), table[i].block_size,
                                    table[i].type_size, table[i].supported));
        return out;
      },
      "[(name, id, block_size, type_size, supported)] in id order.");
  m.def("quantize", &quantize_py, py::arg("type"), py::arg("x"), py::arg("n_per_row"),
        "Quantizes a C-contiguous float32 buffer, rows of n_per_row, to bytes.");
  m.def("dequantize", &dequantize_py, py::arg("type"), py::arg("data"), py::arg("n"),
        "Dequantizes n elements from a bytes-like object to a float32 numpy array.");
  m.def(
      "lattice_layout",
      [](const std::string& type_name) {
        const LatticeLayout& l = lattice_by_name(type_name);
        py::dict d;
        d["block"] = l.block;
        d["n_sub"] = l.n_sub;
        d["has_dmin"] = l.has_dmin;
        d["has_mins"] = l.has_mins;
        d["codes"] = py::make_tuple(l.code_min, l.code_max);
        d["scales"] = py::make_tuple(l.scale_min, l.scale_max);
        d["mins"] = py::make_tuple(0, l.min_max);
        return d;
      },
      py::arg("type"), "Block layout of a lattice type: block, n_sub, has_dmin, has_mins and field ranges.");
  m.def("pack", &pack_py, py::arg("type"), py::arg("codes"), py::arg("d"), py::arg("dmin") = py::none(),
        py::arg("scales") = py::none(), py::arg("mins") = py::none(),
        "Packs int8 codes, fp16-bit (uint16) d / dmin and int8 sub-block scales / mins into block bytes.");
  m.def("unpack", &unpack_py, py::arg("type"), py::arg("data"), py::arg("n"),
        "(codes int8[n], d uint16[nb], dmin, scales int8[nb*n_sub], mins) of n elements' block bytes.");

  py::class_<gguf::Writer>(m, "Writer")
      .def(py::init<>())
      .def(
          "set",
          [](gguf::Writer& w, const std::string& key, const std::string& type, const py::object& value,
             const std::string& elem_type) { w.set(key, make_value(key, type, value, elem_type)); },
          py::arg("key"), py::arg("type"), py::arg("value"), py::arg("elem_type") = "")
      .def(
          "add_tensor",
          [](gguf::Writer& w, const std::string& name, const std::vector<int64_t>& ne, const std::string& type,
             const py::buffer& data) {
            const TypeTraits& t = type_by_name(type);
            py::buffer_info info = contiguous(data, "add_tensor", 0, "");
            w.add_tensor(name, ne, t.type, info.ptr, static_cast<size_t>(n_items(info) * info.itemsize));
          },
          py::arg("name"), py::arg("ne"), py::arg("type"), py::arg("data"))
      .def(
          "add_tensor_f32",
          [](gguf::Writer& w, const std::string& name, const std::vector<int64_t>& ne, const std::string& type,
             const py::buffer& data) {
            const TypeTraits& t = type_by_name(type);
            py::buffer_info info = contiguous(data, "add_tensor_f32", 4, py::format_descriptor<float>::format());
            int64_t n = 1;
            for (int64_t d : ne) n *= d;
            if (n_items(info) != n)
              throw py::value_error("tensor '" + name + "': " + std::to_string(n_items(info)) +
                                    " values for a shape of " + std::to_string(n) + " elements");
            py::gil_scoped_release release;
            w.add_tensor_f32(name, ne, t.type, static_cast<const float*>(info.ptr));
          },
          py::arg("name"), py::arg("ne"), py::arg("type"), py::arg("data"))
      .def(
          "write",
          [](const gguf::Writer& w, const std::string& path) {
            py::gil_scoped_release release;
            w.write(path);
          },
          py::arg("path"))
      .def_property_readonly("alignment", &gguf::Writer::alignment)
      .def_property_readonly("n_tensors", &gguf::Writer::n_tensors)
      .def_property_readonly("n_kv", &gguf::Writer::n_kv)
      .def("_fail_after_bytes_for_testing", &gguf::Writer::fail_after_bytes_for_testing);

  py::class_<gguf::Reader>(m, "Reader")
      .def(py::init<const std::string&>(), py::arg("path"))
      .def_property_readonly("version", &gguf::Reader::version)
      .def_property_readonly("alignment", &gguf::Reader::alignment)
      .def_property_readonly("data_offset", &gguf::Reader::data_offset)
      .def_property_readonly("file_size", &gguf::Reader::file_size)
      .def(
          "metadata",
          [](const gguf::Reader& r) {
            py::list out;
            for (const auto& [key, v] : r.metadata()) {
              py::object elem = v.type == ValueType::ARRAY ? py::object(py::str(gguf::value_type_name(v.elem_type)))
                                                           : py::object(py::none());
              out.append(py::make_tuple(key, gguf::value_type_name(v.type), value_to_py(v), elem));
            }
            return out;
          },
          "[(key, type, value, elem_type or None)] in file order.")
      .def("tensors",
           [](const gguf::Reader& r) {
             py::list out;
             for (const auto& t : r.tensors()) out.append(tensor_info_to_py(t));
             return out;
           })
      .def("find_tensor", &gguf::Reader::find_tensor)
      .def("tensor_data", [](const gguf::Reader& r, size_t i) {
        if (i >= r.tensors().size()) throw py::index_error("tensor index out of range");
        PyObject* obj = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(r.tensors()[i].nbytes));
        if (!obj) throw py::error_already_set();
        py::bytes out = py::reinterpret_steal<py::bytes>(obj);
        char* dst = PyBytes_AS_STRING(obj);
        {
          py::gil_scoped_release release;
          r.read_tensor(i, dst);
        }
        return out;
      });
}
