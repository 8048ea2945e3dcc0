"""qat.export.gguf.pack / unpack_params: the bit layout of the lattice types, checked against
the reference quantizer's bytes (unpack then pack gives them back), against gguf-py's decoder
(random fields decode to the format's formula), and on bad input."""

import numpy as np
import pytest
import torch

from qat.export import gguf as G

TYPES = G.LATTICE_TYPES
KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)


@pytest.mark.parametrize("t", TYPES)
def test_unpack_pack_round_trips_reference_bytes(t):
    w = torch.randn(5, 2, 512) * torch.rand(5, 2, 1)
    w[0, 0] = 0.0
    data = G.quantize(w, t)
    p = G.unpack_params(data, t, w.shape)
    assert p.codes.shape == w.shape and p.codes.dtype == torch.int8
    blocks = 512 // G.type_info(t).block_size
    assert p.d.shape == (5, 2, blocks) and p.d.dtype == torch.float32
    assert G.pack(t, *p) == data
    assert G.pack(t, p.codes.numpy(), p.d.half().numpy(), *(None if a is None else a.numpy() for a in p[2:])) == data


def random_fields(t, rows, rng):
    lay = G.lattice_layout(t)
    block = lay["block"]
    n = rows * block
    codes = rng.integers(lay["codes"][0], lay["codes"][1] + 1, size=(rows, block)).astype(np.int8)
    d = (rng.standard_normal((rows, 1)) * 0.1).astype(np.float16)
    dmin = (rng.standard_normal((rows, 1)) * 0.1).astype(np.float16) if lay["has_dmin"] else None
    S = lay["n_sub"]
    sc = rng.integers(lay["scales"][0], lay["scales"][1] + 1, size=(rows, 1, S)).astype(np.int8) if S else None
    mn = rng.integers(0, lay["mins"][1] + 1, size=(rows, 1, S)).astype(np.int8) if lay["has_mins"] else None
    return n, codes, d, dmin, sc, mn


def formula(t, codes, d, dmin, sc, mn):
    """formats.md's decode of each type in float32, in ggml's operation order."""
    lay = G.lattice_layout(t)
    q = codes.astype(np.float32)
    d32 = d.astype(np.float32)
    if t in ("Q4_0", "Q5_0", "Q8_0"):
        off = {"Q4_0": 8, "Q5_0": 16, "Q8_0": 0}[t]
        return (codes.astype(np.int32) - off).astype(np.float32) * d32
    if t in ("Q4_1", "Q5_1"):
        return q * d32 + dmin.astype(np.float32)
    if t == "IQ4_NL":
        return d32 * KVALUES[codes]
    sub = lay["block"] // lay["n_sub"]
    s = (d32[:, :, None] * sc.astype(np.float32)).repeat(sub, axis=-1).reshape(codes.shape)
    if t in ("Q3_K", "Q6_K"):
        off = 4 if t == "Q3_K" else 32
        return s * (codes.astype(np.int32) - off).astype(np.float32)
    m = (dmin.astype(np.float32)[:, :, None] * mn.astype(np.float32)).repeat(sub, axis=-1).reshape(codes.shape)
    return s * q - m


@pytest.mark.parametrize("t", TYPES)
def test_pack_decodes_to_formula(t):
    """Random codes and fields, packed here, decode in gguf-py (an independent reader of the
    layout) and in the exporter core to the format's formula; unpack gives the fields back."""
    gguf_py = pytest.importorskip("gguf")
    rng = np.random.default_rng()
    n, codes, d, dmin, sc, mn = random_fields(t, 7, rng)
    data = G.pack(t, codes, d, dmin, sc, mn)
    expect = formula(t, codes, d, dmin, sc, mn)
    raw = np.frombuffer(data, dtype=np.uint8).reshape(7, -1)
    decoded = gguf_py.quants.dequantize(raw, getattr(gguf_py.GGMLQuantizationType, t))
    np.testing.assert_array_equal(decoded.view(np.int32), expect.view(np.int32))
    np.testing.assert_array_equal(G.dequantize(data, t, codes.shape).numpy().view(np.int32), expect.view(np.int32))
    p = G.unpack_params(data, t, codes.shape)
    assert np.array_equal(p.codes.numpy(), codes)
    assert np.array_equal(p.d.numpy(), d.astype(np.float32))
    for mine, theirs in ((p.dmin, dmin), (p.scales, sc), (p.mins, mn)):
        assert (mine is None) == (theirs is None)
        if mine is not None:
            assert np.array_equal(mine.numpy(), theirs.astype(mine.numpy().dtype))


def test_pack_errors():
    rng = np.random.default_rng(0)
    n, codes, d, dmin, sc, mn = random_fields("Q4_K", 2, rng)
    G.pack("Q4_K", codes, d, dmin, sc, mn)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 15\]"):
        G.pack("Q4_K", codes + 16, d, dmin, sc, mn)
    with pytest.raises(ValueError, match="scales.*outside"):
        G.pack("Q4_K", codes, d, dmin, sc + 64, mn)
    with pytest.raises(ValueError, match="fp16 cannot store exactly"):
        G.pack("Q4_K", codes, d.astype(np.float32) + np.float32(1e-6), dmin, sc, mn)
    with pytest.raises(ValueError, match="mins is required"):
        G.pack("Q4_K", codes, d, dmin, sc, None)
    with pytest.raises(ValueError, match="has no mins"):
        G.pack("Q6_K", codes, d, None, sc.repeat(2, -1), mn)
    with pytest.raises(ValueError, match="d must have shape"):
        G.pack("Q4_K", codes, d[:1], dmin, sc, mn)
    with pytest.raises(ValueError, match="must hold integers"):
        G.pack("Q4_K", codes, d, dmin, sc + 0.5, mn)
    with pytest.raises(TypeError, match="integer tensor"):
        G.pack("Q4_K", codes.astype(np.float32), d, dmin, sc, mn)
    with pytest.raises(ValueError, match="not a multiple of 256"):
        G.pack("Q4_K", codes[:, :128], d, dmin, sc, mn)
    with pytest.raises(ValueError, match="no block lattice"):
        G.pack("F16", codes, d)
    with pytest.raises(ValueError, match="no block lattice"):
        G.unpack_params(b"\0" * 136, "IQ4_XS", (256,))
    with pytest.raises(ValueError, match="take 144 bytes, got 143"):
        G.unpack_params(b"\0" * 143, "Q4_K", (256,))
    assert G.pack("Q8_0", np.zeros((0, 32), np.int8), np.zeros((0, 1), np.float16)) == b""
