"""GGUF files: our writer/reader against gguf-py's, corrupt files, atomic writes.

(c) files written by qat.export.gguf.GGUFWriter are read by gguf-py's GGUFReader with identical
    metadata (types and values) and tensor bytes; files written by gguf-py's GGUFWriter are read
    by ours identically;
(d) corrupt files raise GGUFError (a ValueError) with a message naming the problem;
(e) an interrupted write leaves nothing under the final name (and no temp file).
"""

import os
import struct

import gguf
import numpy as np
import pytest
import torch

import qat.export.gguf as qg

GQ = gguf.GGMLQuantizationType
VT = gguf.GGUFValueType


@pytest.fixture
def rng(_seed):
    return np.random.default_rng(_seed)


# Every scalar type, every array element type, UTF-8 strings, extremes of each range.
METADATA = [
    ("general.architecture", "llama", "STRING", None),
    ("general.name", "tiny \u00e9\u2581\U0001f600", "STRING", None),
    ("general.alignment", 64, "UINT32", None),
    ("t.u8", 255, "UINT8", None),
    ("t.i8", -128, "INT8", None),
    ("t.u16", 65535, "UINT16", None),
    ("t.i16", -32768, "INT16", None),
    ("t.u32", 2**32 - 1, "UINT32", None),
    ("t.i32", -(2**31), "INT32", None),
    ("t.f32", float(np.float32(1e-5)), "FLOAT32", None),
    ("t.bool", True, "BOOL", None),
    ("t.u64", 2**64 - 1, "UINT64", None),
    ("t.i64", -(2**63), "INT64", None),
    ("t.f64", 3.141592653589793, "FLOAT64", None),
    ("t.empty_string", "", "STRING", None),
    ("tokenizer.ggml.tokens", ["<s>", "</s>", "\u2581the", "", "<0x0A>"], "ARRAY", "STRING"),
    ("tokenizer.ggml.scores", [0.0, -1.5, 3.25, -1000.0, 0.1], "ARRAY", "FLOAT32"),
    ("tokenizer.ggml.token_type", [1, 3, 6, -7, 2**31 - 1], "ARRAY", "INT32"),
    ("t.arr_u8", [0, 1, 255], "ARRAY", "UINT8"),
    ("t.arr_i8", [-128, 127], "ARRAY", "INT8"),
    ("t.arr_u16", [65535], "ARRAY", "UINT16"),
    ("t.arr_i16", [-32768, 5], "ARRAY", "INT16"),
    ("t.arr_u32", [0, 2**32 - 1], "ARRAY", "UINT32"),
    ("t.arr_u64", [2**64 - 1], "ARRAY", "UINT64"),
    ("t.arr_i64", [-(2**63), 2**63 - 1], "ARRAY", "INT64"),
    ("t.arr_f64", [1e300, -2.5], "ARRAY", "FLOAT64"),
    ("t.arr_bool", [True, False, True], "ARRAY", "BOOL"),
]


def _tensors(rng):
    """(name, float32 array in PyTorch order, type) for every type we quantize, mixed ranks."""
    out = []
    for i, t in enumerate(qg.QUANT_TYPES):
        bs = qg.TYPES[t].block_size
        shape = [(3, max(bs, 32) * 2), (max(bs, 64),), (2, 2, max(bs, 32))][i % 3]
        out.append((f"blk.{i}.w_{t.lower()}", rng.standard_normal(shape).astype(np.float32), t))
    return out


def _write_ours(path, rng):
    w = qg.GGUFWriter()
    for key, value, vtype, elem in METADATA:
        w.add(key, value, vtype, elem)
    tensors = _tensors(rng)
    for name, x, t in tensors:
        w.add_tensor(name, torch.from_numpy(x), t)
    raw = np.arange(66, dtype=np.uint8)  # one IQ2_XXS block: a type we only copy
    w.add_quantized("raw.iq2_xxs", raw, (256,), "IQ2_XXS")
    w.write(path)
    return tensors, raw


def test_gguf_py_reads_our_file(tmp_path, rng):
    path = tmp_path / "ours.gguf"
    tensors, raw = _write_ours(path, rng)
    r = gguf.GGUFReader(path)
    assert r.alignment == 64
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    assert keys == [m[0] for m in METADATA]
    for key, value, vtype, elem in METADATA:
        f = r.fields[key]
        assert f.types[0] == VT[vtype], key
        if elem is not None:
            assert f.types[-1] == VT[elem], key
        got = f.contents()
        if vtype == "FLOAT32":
            assert got == float(np.float32(value)), key
        elif elem == "FLOAT32":
            assert got == [float(np.float32(v)) for v in value], key
        else:
            assert got == value, key
    by_name = {t.name: t for t in r.tensors}
    assert list(by_name) == [n for n, _, _ in tensors] + ["raw.iq2_xxs"]
    for name, x, t in tensors:
        rt = by_name[name]
        assert rt.tensor_type == GQ[t]
        assert [int(d) for d in rt.shape] == list(reversed(x.shape))  # ggml order
        assert np.asarray(rt.data).tobytes() == qg.quantize(x, t), name
        # gguf-py decodes the tensor to what we decode.
        deq = gguf.quants.dequantize(np.asarray(rt.data), GQ[t]).reshape(x.shape)
        assert np.array_equal(deq, qg.dequantize(qg.quantize(x, t), t, x.shape).numpy()), name
    assert np.asarray(by_name["raw.iq2_xxs"].data).tobytes() == raw.tobytes()
    # And our reader agrees with itself: same metadata types and values back.
    ours = qg.GGUFReader(path)
    assert [(f.key, f.type, f.elem_type) for f in ours.fields.values()] == [(k, t, e) for k, _, t, e in METADATA]


def test_we_read_a_gguf_py_file(tmp_path, rng):
    path = tmp_path / "theirs.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_bool("tokenizer.ggml.add_bos_token", False)
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -5)
    w.add_float64("t.f64", 0.1)
    w.add_int8("t.i8", -3)
    w.add_uint16("t.u16", 7)
    w.add_string("general.name", "their model \u00e9")
    w.add_array("tokenizer.ggml.tokens", ["a", "\u2581b", "c"])
    w.add_array("tokenizer.ggml.scores", [0.5, -1.0, 2.0])
    w.add_array("tokenizer.ggml.token_type", [1, 2, 3])
    tensors = {}
    for t in ("F32", "F16", "Q8_0", "Q4_0", "Q5_1"):
        x = rng.standard_normal((4, 64)).astype(np.float32)
        q = gguf.quants.quantize(x, GQ[t])
        w.add_tensor(f"w.{t}", q, raw_dtype=GQ[t] if t not in ("F32", "F16") else None)
        tensors[f"w.{t}"] = (t, x, np.asarray(q).tobytes())
    for t in ("Q4_K", "Q6_K", "IQ4_NL", "Q2_K"):  # K-quants: bytes from our quantizer, written by gguf-py
        x = rng.standard_normal((2, 512)).astype(np.float32)
        q = np.frombuffer(qg.quantize(x, t), np.uint8).reshape(2, -1)
        w.add_tensor(f"w.{t}", q, raw_dtype=GQ[t])
        tensors[f"w.{t}"] = (t, x, q.tobytes())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    g = gguf.GGUFReader(path)
    r = qg.GGUFReader(path)
    assert r.version == 3 and r.alignment == 32
    assert r.data_offset == g.data_offset
    expected_keys = [k for k in g.fields if not k.startswith("GGUF.")]
    assert list(r.fields) == expected_keys
    for key in expected_keys:
        gf, ours = g.fields[key], r.fields[key]
        assert ours.type == gf.types[0].name, key
        if ours.type == "ARRAY":
            assert ours.elem_type == gf.types[-1].name, key
        assert ours.value == gf.contents(), key
    assert r.metadata["llama.block_count"] == 2
    assert r.fields["llama.block_count"].type == "UINT32"
    assert [t.name for t in r.tensors] == list(tensors)
    for info, gt in zip(r.tensors, g.tensors):
        t, x, data = tensors[info.name]
        assert info.type == t and info.shape == x.shape
        assert info.ne == tuple(int(d) for d in gt.shape)
        assert info.offset + r.data_offset == gt.data_offset
        assert r.tensor_bytes(info.name) == data == np.asarray(gt.data).tobytes()
        deq = r.tensor(info.name)
        assert deq.dtype == torch.float32 and tuple(deq.shape) == x.shape
        assert np.array_equal(deq.numpy(), gguf.quants.dequantize(np.asarray(gt.data), GQ[t]).reshape(x.shape))


def test_layout_is_contiguous_and_aligned(tmp_path, rng):
    path = tmp_path / "a.gguf"
    _write_ours(path, rng)
    r = qg.GGUFReader(path)
    assert r.data_offset % 64 == 0
    end = 0
    for t in r.tensors:
        assert t.offset == end
        end += -(-t.nbytes // 64) * 64
    assert r.file_size == r.data_offset + end
    raw = path.read_bytes()
    assert raw[:4] == b"GGUF" and struct.unpack("<I", raw[4:8])[0] == 3


def test_writer_infers_types_like_gguf_py(tmp_path):
    w = qg.GGUFWriter()
    w.add("a.str", "x")
    w.add("a.int", 3)
    w.add("a.float", 0.5)
    w.add("a.bool", True)
    w.add("a.list_int", [1, 2])
    w.add("a.list_mixed", [1, 2.5])
    w.add("a.list_str", ["p", "q"])
    w.add("a.np_u64", np.uint64(7))
    w.add("a.np_arr", np.array([1.0, 2.0], np.float64))
    w.add("a.explicit_elem", [1, 2], "ARRAY", "UINT8")
    w.add("a.empty", [], "ARRAY", "INT32")
    w.write(tmp_path / "t.gguf")
    f = qg.GGUFReader(tmp_path / "t.gguf").fields
    got = {k: (v.type, v.elem_type) for k, v in f.items()}
    assert got == {
        "a.str": ("STRING", None), "a.int": ("INT32", None), "a.float": ("FLOAT32", None),
        "a.bool": ("BOOL", None), "a.list_int": ("ARRAY", "INT32"), "a.list_mixed": ("ARRAY", "FLOAT32"),
        "a.list_str": ("ARRAY", "STRING"), "a.np_u64": ("UINT64", None), "a.np_arr": ("ARRAY", "FLOAT64"),
        "a.explicit_elem": ("ARRAY", "UINT8"), "a.empty": ("ARRAY", "INT32"),
    }
    assert f["a.list_mixed"].value == [1.0, 2.5]
    assert f["a.empty"].value == []


def test_writer_rejects_bad_input():
    w = qg.GGUFWriter()
    w.add("k", 1)
    with pytest.raises(ValueError, match="duplicate metadata key 'k'"):
        w.add("k", 2)
    with pytest.raises(ValueError, match="does not fit UINT8"):
        w.add("u", 256, "UINT8")
    with pytest.raises(ValueError, match="negative value"):
        w.add("u", -1, "UINT32")
    with pytest.raises(ValueError, match="does not fit INT32"):
        w.add("big", 2**40)
    with pytest.raises(ValueError, match="unknown GGUF value type"):
        w.add("x", 1, "UINT128")
    with pytest.raises(ValueError, match="power of two"):
        qg.GGUFWriter(alignment=48)
    with pytest.raises(ValueError, match="nested arrays"):
        w.add("n", [[1]], "ARRAY", "ARRAY")
    with pytest.raises(TypeError, match="expected an int"):
        w.add("s", "3", "UINT32")
    x = np.ones((2, 256), np.float32)
    with pytest.raises(ValueError, match="at most 63"):
        w.add_tensor("n" * 64, x, "Q8_0")
    w.add_tensor("n" * 63, x, "Q8_0")
    with pytest.raises(ValueError, match="duplicate tensor name"):
        w.add_tensor("n" * 63, x, "Q8_0")
    with pytest.raises(ValueError, match="multiple of 256"):
        w.add_tensor("k", np.ones((2, 100), np.float32), "Q4_K")
    with pytest.raises(ValueError, match="NaN"):
        w.add_tensor("nan", np.full((1, 32), np.nan, np.float32), "Q4_0")
    with pytest.raises(ValueError, match="needs 34 bytes, got 33"):
        w.add_quantized("q", b"\0" * 33, (32,), "Q8_0")
    with pytest.raises(ValueError, match="GGUF allows 1 to 4"):
        w.add_tensor("five", np.ones((1, 1, 1, 1, 32), np.float32), "F32")


# ---- (d) corrupt files ---------------------------------------------------------------------------

def _header(n_tensors, n_kv, version=3):
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def _s(text):
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def _one_tensor(ne0=8, type_id=0, offset=0, name="t"):
    head = _header(1, 0) + _s(name) + struct.pack("<IQIQ", 1, ne0, type_id, offset)
    head += b"\0" * (-len(head) % 32)
    return head + np.arange(ne0, dtype=np.float32).tobytes()


CORRUPT = {
    "bad magic": (b"GGUX" + _one_tensor()[4:], "magic"),
    "version 1": (_one_tensor()[:4] + struct.pack("<I", 1) + _one_tensor()[8:], "version 1"),
    "version 4": (_one_tensor()[:4] + struct.pack("<I", 4) + _one_tensor()[8:], "unsupported GGUF version 4"),
    "big-endian": (_one_tensor()[:4] + struct.pack(">I", 3) + _one_tensor()[8:], "byte order"),
    "unknown tensor type": (_one_tensor(type_id=5), "unknown ggml type 5"),
    "row not a block multiple": (_one_tensor(ne0=8, type_id=8), "not a multiple of the block size 32"),
    "misplaced data": (_one_tensor(offset=32), "offset 32, expected 0"),
    "unknown value type": (_header(0, 1) + _s("k") + struct.pack("<I", 77) + b"\0" * 8, "unknown value type 77"),
    "duplicate key": (_header(0, 2) + (_s("k") + struct.pack("<IB", 0, 1)) * 2, "duplicate metadata key 'k'"),
    "bad bool": (_header(0, 1) + _s("b") + struct.pack("<IB", 7, 2), "BOOL byte 2"),
    "alignment type": (_header(0, 1) + _s("general.alignment") + struct.pack("<IQ", 10, 32), "must be UINT32"),
    "alignment value": (_header(0, 1) + _s("general.alignment") + struct.pack("<II", 4, 12), "power of two"),
    "long name": (_one_tensor(name="x" * 64), "at most 63"),
    "string past end": (_header(0, 1) + _s("k") + struct.pack("<IQ", 8, 10**6) + b"abc", "truncated"),
    "array past end": (_header(0, 1) + _s("k") + struct.pack("<IIQ", 9, 6, 10**6), "truncated"),
    "absurd counts": (_header(2**40, 2**40), "cannot fit"),
    "data past end": (_one_tensor()[:-4], "truncated"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_reader_rejects_corrupt_files(tmp_path, case):
    data, needle = CORRUPT[case]
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    with pytest.raises(qg.GGUFError, match=needle) as e:
        qg.GGUFReader(p)
    assert isinstance(e.value, ValueError)


def test_reader_rejects_every_truncation(tmp_path, rng):
    full = tmp_path / "full.gguf"
    w = qg.GGUFWriter()
    w.add("general.architecture", "llama")
    w.add("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
    w.add_tensor("a", rng.standard_normal(256).astype(np.float32), "Q4_K")
    w.add_tensor("b", rng.standard_normal(64).astype(np.float32), "F32")  # 256 bytes: no final padding
    w.write(full)
    data = full.read_bytes()
    p = tmp_path / "cut.gguf"
    for n in range(len(data)):
        p.write_bytes(data[:n])
        with pytest.raises(qg.GGUFError, match="truncated"):
            qg.GGUFReader(p)
    p.write_bytes(data)
    assert len(qg.GGUFReader(p).tensors) == 2


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        qg.GGUFReader(tmp_path / "nope.gguf")


# ---- (e) atomic writes ---------------------------------------------------------------------------

def _writer(rng):
    w = qg.GGUFWriter()
    w.add("general.architecture", "llama")
    w.add_tensor("w", rng.standard_normal((16, 256)).astype(np.float32), "Q4_K")
    return w


@pytest.mark.parametrize("cut", [0, 1, 40, 200, 1000, 2000])
def test_interrupted_write_leaves_no_file(tmp_path, rng, cut):
    w = _writer(rng)
    w._w._fail_after_bytes_for_testing(cut)
    dest = tmp_path / "model.gguf"
    with pytest.raises(OSError, match="simulated failure"):
        w.write(dest)
    assert not dest.exists()
    assert os.listdir(tmp_path) == []  # no temp file left behind either


def test_interrupted_overwrite_keeps_the_old_file(tmp_path, rng):
    dest = tmp_path / "model.gguf"
    old = qg.GGUFWriter()
    old.add("general.name", "old")
    old.write(dest)
    before = dest.read_bytes()
    w = _writer(rng)
    w._w._fail_after_bytes_for_testing(500)
    with pytest.raises(OSError):
        w.write(dest)
    assert dest.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.gguf"]
    w._w._fail_after_bytes_for_testing(-1)
    w.write(dest)
    assert [t.name for t in qg.GGUFReader(dest).tensors] == ["w"]
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask  # a normal file, not mkstemp's 0600


def test_write_into_missing_directory_fails_cleanly(tmp_path, rng):
    with pytest.raises(FileNotFoundError):
        _writer(rng).write(tmp_path / "no" / "such" / "dir" / "m.gguf")
