"""qat.export.gguf quantize/dequantize against gguf-py (PyPI ``gguf``), on fresh random input.

(a) gguf-py's ``gguf.quants.dequantize`` of our bytes equals our dequantization bit for bit, for
    every type we implement;
(b) for every type gguf-py can quantize itself (probed at run time: F16, BF16, Q4_0, Q4_1,
    Q5_0, Q5_1, Q8_0 in gguf 0.19), our bytes equal gguf-py's bytes.
K-quant and IQ4_NL *quantizer* bytes have no PyPI oracle; they were checked against ggml-base
built from source (see the exporter notes in docs/benchmarks.md / the commit log), and the
C++ tests compare the vectorized searches with their scalar ports.
"""

import gguf
import numpy as np
import pytest
import torch

import qat.export.gguf as qg

GQ = gguf.GGMLQuantizationType

# gguf-py warns when a block scale overflows fp16 and inf * 0 appears (inputs we test on purpose).
pytestmark = [
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]


def _gguf_can_quantize(name):
    try:
        gguf.quants.quantize(np.zeros((1, qg.TYPES[name].block_size), np.float32), GQ[name])
        return True
    except NotImplementedError:
        return False


GGUF_QUANTIZES = [t for t in qg.QUANT_TYPES if _gguf_can_quantize(t)]


@pytest.fixture
def rng(_seed):
    return np.random.default_rng(_seed)


def edge_inputs(rng, t):
    """(label, float32 array with rows a multiple of the block size) pairs."""
    bs = qg.TYPES[t].block_size
    row = max(bs, 256)  # one K-quant super-block or several small blocks per row
    out = []
    out.append(("normal", rng.standard_normal((8, 4 * row)).astype(np.float32)))
    out.append(("uniform", rng.uniform(-3, 3, (4, 2 * row)).astype(np.float32)))
    out.append(("zeros", np.zeros((2, row), np.float32)))
    const = np.empty((4, row), np.float32)
    const[0], const[1], const[2], const[3] = 0.75, -2.5, 1e-30, 3e4
    out.append(("constant", const))
    # Ties: integers and halves on grids where each type's scale comes out exact.
    halves = (rng.integers(-40, 41, (8, row)) * 0.5).astype(np.float32)
    out.append(("halves", halves))
    ties = np.empty((6, row), np.float32)
    for r, (amax, lo, hi) in enumerate([(127, -127, 127), (8, -8, 7), (16, -16, 15), (15, 0, 15), (31, 0, 31), (4, -4, 3)]):
        v = rng.integers(lo, hi + 1, row) + rng.choice([0.0, 0.5], row)
        v = np.clip(v, lo, hi).astype(np.float32)
        if bs > 1:  # pin each block's extremes so that its scale comes out exact
            v[::bs] = -amax if lo < 0 else hi
            v[1::bs] = lo if lo == 0 else v[1::bs]
        ties[r] = v
    out.append(("ties", ties))
    outlier = (rng.standard_normal((4, row)) * 0.01).astype(np.float32)
    outlier[:, 5::bs] = 1000.0
    out.append(("outlier", outlier))
    out.append(("large", (rng.standard_normal((4, row)) * 3e5).astype(np.float32)))
    out.append(("fp16_scale_overflow", (rng.standard_normal((2, row)) * 1e9).astype(np.float32)))
    out.append(("tiny", (rng.standard_normal((2, row)) * 1e-7).astype(np.float32)))
    sub = rng.standard_normal((4, row)).astype(np.float32)
    sub *= np.exp2(rng.integers(-12, 12, (4, row // 16))).repeat(16, axis=1).astype(np.float32)
    out.append(("subblock_scales", sub))
    sparse = np.where(rng.random((4, row)) < 0.8, 0.0, rng.standard_normal((4, row))).astype(np.float32)
    out.append(("sparse", sparse))
    out.append(("all_positive", (np.abs(rng.standard_normal((4, row))) + 1).astype(np.float32)))
    out.append(("all_negative", (-np.abs(rng.standard_normal((4, row))) - 1).astype(np.float32)))
    if bs == 1:  # plain element types: rounding boundaries and specials of fp16/bf16
        special = np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, -65520.0, 6.1e-5, 5.96e-8, 2.98e-8,
                            1e-40, np.inf, -np.inf, np.nan, 3.4e38, 1.00048828125, 1.0009765625], np.float32)
        out.append(("special", np.resize(special, (2, row))))
        bits = rng.integers(0, 2**32, (2, row), dtype=np.uint64).astype(np.uint32)
        arr = bits.view(np.float32)
        out.append(("random_bits", np.where(np.isnan(arr), np.float32(np.nan), arr).astype(np.float32)))
    return out


def same_floats(a, b):
    a = np.asarray(a, np.float32).reshape(-1)
    b = np.asarray(b, np.float32).reshape(-1)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b):
        return False
    return np.array_equal(a[~nan_a].view(np.uint32), b[~nan_b].view(np.uint32))


@pytest.mark.parametrize("t", qg.QUANT_TYPES)
def test_gguf_py_dequantizes_our_bytes_exactly(t, rng):
    for label, x in edge_inputs(rng, t):
        data = qg.quantize(x, t)
        assert isinstance(data, bytes) and len(data) == qg.quantized_nbytes(x.shape, t)
        ours = qg.dequantize(data, t, x.shape)
        assert ours.dtype == torch.float32 and tuple(ours.shape) == x.shape
        raw = np.frombuffer(data, np.uint8).reshape(x.shape[0], -1)
        theirs = gguf.quants.dequantize(raw, GQ[t])
        assert theirs.shape == x.shape, label
        assert same_floats(ours.numpy(), theirs), f"{t} {label}: dequantization differs from gguf-py"


@pytest.mark.parametrize("t", GGUF_QUANTIZES)
def test_bytes_equal_gguf_py_quantizer(t, rng):
    for label, x in edge_inputs(rng, t):
        ours = np.frombuffer(qg.quantize(x, t), np.uint8)
        theirs = np.asarray(gguf.quants.quantize(x, GQ[t])).view(np.uint8).reshape(-1)
        if not np.array_equal(ours, theirs):
            ts = qg.TYPES[t].type_size if qg.TYPES[t].block_size > 1 else 1
            bad = np.nonzero((ours.reshape(-1, ts) != theirs.reshape(-1, ts)).any(axis=1))[0]
            pytest.fail(f"{t} {label}: {len(bad)} blocks differ from gguf-py, first {bad[:5]}")


def test_gguf_py_quantizes_at_least_the_legacy_types():
    # What gguf 0.19 can quantize; if a future gguf-py adds K-quants they join test (b) automatically.
    assert {"F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"} <= set(GGUF_QUANTIZES)


@pytest.mark.parametrize("t", qg.QUANT_TYPES)
def test_round_trip_error_is_small(t, rng):
    x = rng.standard_normal((16, 1024)).astype(np.float32)
    y = qg.dequantize(qg.quantize(x, t), t, x.shape).numpy()
    rel = np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2))
    bound = {"F32": 0, "F16": 1e-3, "BF16": 4e-3, "Q8_0": 0.01, "Q6_K": 0.03, "Q5_0": 0.06, "Q5_1": 0.06,
             "Q5_K": 0.06, "Q4_0": 0.12, "Q4_1": 0.12, "Q4_K": 0.12, "IQ4_NL": 0.12, "Q3_K": 0.25, "Q2_K": 0.45}[t]
    assert rel <= bound


# ---- the Python front: inputs and errors ----------------------------------------------------------

def test_accepts_torch_numpy_and_low_precision_inputs(rng):
    x = torch.from_numpy(rng.standard_normal((4, 256)).astype(np.float32))
    ref = qg.quantize(x.numpy(), "Q4_K")
    assert qg.quantize(x, "Q4_K") == ref
    assert qg.quantize(x.numpy().tolist(), "Q4_K") == ref  # array-like of floats
    assert qg.quantize(x.t().contiguous().t(), "Q4_K") == ref  # non-contiguous view, same values
    h = x.to(torch.bfloat16)
    assert qg.quantize(h, "Q8_0") == qg.quantize(h.float(), "Q8_0")  # bf16 widens exactly
    d = x.numpy().astype(np.float64)
    assert qg.quantize(d, "Q8_0") == qg.quantize(d.astype(np.float32), "Q8_0")  # float64 rounds to float32
    assert qg.quantize(x, "q4_k") == ref  # type names are case-insensitive in the Python front
    assert qg.quantize(x, 12) == ref  # and ids work
    if torch.cuda.is_available():
        assert qg.quantize(x.cuda(), "Q4_K") == ref


def test_one_dimensional_and_empty():
    x = np.arange(64, dtype=np.float32) - 32
    data = qg.quantize(x, "Q8_0")
    assert len(data) == 2 * 34
    assert qg.dequantize(data, "Q8_0", 64).shape == (64,)
    assert qg.quantize(np.zeros((0, 32), np.float32), "Q4_0") == b""
    assert qg.dequantize(b"", "Q4_0", (0, 32)).shape == (0, 32)


def test_bad_input_errors():
    x = np.ones((2, 256), np.float32)
    with pytest.raises(ValueError, match="unknown GGUF tensor type 'Q4_X'"):
        qg.quantize(x, "Q4_X")
    with pytest.raises(ValueError, match="IQ2_XXS is not supported"):
        qg.quantize(x, "IQ2_XXS")
    with pytest.raises(ValueError, match="last dimension.*100.*multiple of 256"):
        qg.quantize(np.ones((2, 100), np.float32), "Q4_K")
    with pytest.raises(ValueError, match="multiple of 32"):
        qg.quantize(np.ones(33, np.float32), "Q8_0")
    with pytest.raises(TypeError, match="floating-point"):
        qg.quantize(np.ones((2, 256), np.int32), "Q4_K")
    with pytest.raises(TypeError, match="floating-point"):
        qg.quantize(torch.ones(2, 256, dtype=torch.int64), "Q4_K")
    with pytest.raises(TypeError, match="floating-point"):
        qg.quantize(torch.ones(2, 256, dtype=torch.bool), "Q8_0")
    with pytest.raises(ValueError, match="scalar"):
        qg.quantize(np.float32(1.0), "F32")
    with pytest.raises(ValueError, match="bytes, got"):
        qg.dequantize(b"\0" * 33, "Q8_0", (32,))
    with pytest.raises(ValueError, match="multiple of 256"):
        qg.dequantize(b"", "Q4_K", (128,))


@pytest.mark.parametrize("t", ["Q8_0", "Q4_0", "Q4_K", "Q6_K", "IQ4_NL"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_is_rejected_for_block_types(t, bad):
    x = np.ones((2, 256), np.float32)
    x[1, 7] = bad
    with pytest.raises(ValueError, match=r"element 263 \(row 1\) is (NaN|inf)"):
        qg.quantize(x, t)


def test_non_finite_input_is_kept_by_float_types():
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, 1.0], np.float32)
    for t in ("F32", "F16", "BF16"):
        y = qg.dequantize(qg.quantize(x, t), t, 5).numpy()
        assert np.isnan(y[0]) and np.isnan(y[1]) and y[2] == np.inf and y[3] == -np.inf and y[4] == 1.0, t
    h = np.frombuffer(qg.quantize(x[:2], "F16"), np.uint16)
    assert list(h) == [0x7E00, 0xFE00]  # ggml: quiet NaN, sign kept


def test_type_table_matches_gguf_py():
    for name, t in qg.TYPES.items():
        if name in GQ.__members__ and name != "Q8_1":  # gguf-py 0.19 still lists the old 40-byte Q8_1
            assert gguf.GGML_QUANT_SIZES[GQ[name]] == (t.block_size, t.type_size), name
            assert GQ[name].value == t.id, name
    assert qg.TYPES["Q8_1"].type_size == 36  # ggml-common.h: two fp16 + 32 int8
    assert qg.type_info("Q4_K").bits_per_weight == 4.5
