"""Opt-in: our quantizers against ggml's own (ggml_quantize_chunk, what llama-quantize calls).

gguf-py cannot quantize the K-quants or IQ4_NL, so their *quantizer* bytes need ggml itself.
Skipped unless QAT_GGML_BASE_LIB names a libggml-base.so, e.g. built from a ggml (or llama.cpp)
checkout with its default CMake flags:

    cmake -S ggml -B /tmp/ggml-build -DBUILD_SHARED_LIBS=ON -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF
    cmake --build /tmp/ggml-build --target ggml-base
    QAT_GGML_BASE_LIB=/tmp/ggml-build/src/libggml-base.so pytest tests/python/export/test_gguf_ggml_oracle.py

ggml's CMake compiles ggml-base without -march flags, so on x86-64 nothing there is fused into
FMA; qat's core is compiled with -ffp-contract=off for the same results. A ggml-base built with
FMA allowed (a global -march=native, or a target where FMA is baseline, like aarch64) rounds
differently in a few percent of K-quant blocks and this test would report those.
"""

import ctypes
import os

import numpy as np
import pytest

import qat.export.gguf as qg
from test_gguf_quants import edge_inputs

LIB = os.environ.get("QAT_GGML_BASE_LIB")
pytestmark = [
    pytest.mark.skipif(not LIB, reason="set QAT_GGML_BASE_LIB to a libggml-base.so to compare with ggml"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]


@pytest.fixture(scope="module")
def ggml():
    lib = ctypes.CDLL(LIB)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return lib


@pytest.fixture
def rng(_seed):
    return np.random.default_rng(_seed)


@pytest.mark.parametrize("t", [t for t in qg.QUANT_TYPES if t != "F32"])
def test_bytes_equal_ggml_quantize_chunk(ggml, t, rng):
    cases = edge_inputs(rng, t) + [("big_normal", rng.standard_normal((64, 4096)).astype(np.float32))]
    for label, x in cases:
        x = np.ascontiguousarray(x, np.float32)
        ref = np.empty(qg.quantized_nbytes(x.shape, t), np.uint8)
        n = ggml.ggml_quantize_chunk(qg.TYPES[t].id, x.ctypes.data, ref.ctypes.data, 0, x.shape[0], x.shape[1], None)
        assert n == ref.size
        ours = np.frombuffer(qg.quantize(x, t), np.uint8)
        ts = qg.TYPES[t].type_size
        bad = np.nonzero((ours.reshape(-1, ts) != ref.reshape(-1, ts)).any(axis=1))[0]
        assert len(bad) == 0, f"{t} {label}: {len(bad)} of {ref.size // ts} blocks differ from ggml, first {bad[:5]}"
