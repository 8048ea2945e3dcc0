"""python -m qat inspect FILE.gguf"""

import json

import numpy as np
import pytest

import qat.export.gguf as qg
from qat.__main__ import main
from qat.export.inspect import component_of


@pytest.fixture
def model_file(tmp_path):
    rng = np.random.default_rng(0)
    w = qg.GGUFWriter()
    w.add("general.architecture", "llama")
    w.add("llama.block_count", 2, "UINT32")
    w.add("tokenizer.ggml.tokens", [f"tok{i}" for i in range(50)])
    w.add_tensor("token_embd.weight", rng.standard_normal((10, 256)).astype(np.float32), "Q8_0")
    for b in range(2):
        w.add_tensor(f"blk.{b}.attn_q.weight", rng.standard_normal((4, 256)).astype(np.float32), "Q4_K")
        w.add_tensor(f"blk.{b}.attn_norm.weight", np.ones(256, np.float32), "F32")
    path = tmp_path / "m.gguf"
    w.write(path)
    return path


def test_component_names():
    assert component_of("blk.12.ffn_down.weight") == "blk.*.ffn_down"
    assert component_of("blk.12.ffn_down.weight", by_layer=True) == "blk.12"
    assert component_of("token_embd.weight") == "token_embd"
    assert component_of("output") == "output"


def test_inspect_prints_metadata_tensors_and_components(model_file, capsys):
    assert main(["inspect", str(model_file)]) == 0
    out = capsys.readouterr().out
    assert "GGUF v3" in out and "alignment 32" in out
    assert "llama.block_count" in out and "UINT32" in out
    assert "ARRAY[STRING x 50]" in out and "..." in out
    assert "blk.1.attn_q.weight" in out and "256x4" in out
    q4k = [line for line in out.splitlines() if line.strip().startswith("blk.*.attn_q")]
    assert q4k and "Q4_K" in q4k[0] and "4.500" in q4k[0]
    assert "token_embd" in out and "8.500" in out


def test_inspect_json_and_by_layer(model_file, capsys):
    assert main(["inspect", str(model_file), "--json", "--by-layer"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in s["tensors"]][:2] == ["token_embd.weight", "blk.0.attn_q.weight"]
    assert set(s["by_component"]) == {"token_embd", "blk.0", "blk.1"}
    blk0 = s["by_component"]["blk.0"]
    assert blk0["n_elements"] == 4 * 256 + 256 and blk0["nbytes"] == 4 * 144 + 1024
    assert s["by_type"]["Q4_K"]["bits_per_weight"] == 4.5
    assert s["nbytes"] == sum(t["nbytes"] for t in s["tensors"])


def test_inspect_reports_bad_files(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x07\x00\x00\x00" + b"\0" * 16)
    assert main(["inspect", str(bad)]) == 1
    assert "unsupported GGUF version 7" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.gguf")]) == 1
