"""Show what a GGUF file holds: metadata, tensors, types, bits per weight, size per component.

``python -m qat inspect FILE.gguf`` validates the file with qat's GGUF reader (the checks ggml
makes), then prints the header, every metadata key with its value type (arrays abbreviated),
every tensor (dims in ggml order, ne[0] = row length, type, bits per weight, bytes), a summary
per tensor type and the size per component: tensors outside the transformer blocks by the part
of their name before the first '.', block tensors by role across blocks (``blk.*.attn_q``), or
per block with ``--by-layer``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import OrderedDict
from typing import Any, Dict, List

__all__ = ["add_arguments", "run", "summarize", "format_report", "component_of"]

_BLOCK = re.compile(r"^blk\.(\d+)\.([^.]+)")


def component_of(name: str, by_layer: bool = False) -> str:
    """``blk.3.attn_q.weight`` -> ``blk.*.attn_q`` (or ``blk.3`` by layer); ``token_embd.weight`` -> ``token_embd``."""
    m = _BLOCK.match(name)
    if m:
        return f"blk.{m.group(1)}" if by_layer else f"blk.*.{m.group(2)}"
    return name.split(".", 1)[0]


def summarize(reader, by_layer: bool = False) -> Dict[str, Any]:
    """A plain-data summary of a ``qat.export.gguf.GGUFReader``."""
    tensors = []
    by_type: Dict[str, Dict[str, int]] = OrderedDict()
    by_component: Dict[str, Dict[str, Any]] = OrderedDict()
    total_params = total_bytes = 0
    for t in reader.tensors:
        n = t.n_elements
        tensors.append({"name": t.name, "type": t.type, "ne": list(t.ne), "n_elements": n, "nbytes": t.nbytes,
                        "bits_per_weight": t.bits_per_weight, "offset": t.offset})
        total_params += n
        total_bytes += t.nbytes
        bt = by_type.setdefault(t.type, {"tensors": 0, "n_elements": 0, "nbytes": 0})
        bt["tensors"] += 1
        bt["n_elements"] += n
        bt["nbytes"] += t.nbytes
        comp = by_component.setdefault(component_of(t.name, by_layer),
                                       {"tensors": 0, "n_elements": 0, "nbytes": 0, "types": []})
        comp["tensors"] += 1
        comp["n_elements"] += n
        comp["nbytes"] += t.nbytes
        if t.type not in comp["types"]:
            comp["types"].append(t.type)
    for d in list(by_type.values()) + list(by_component.values()):
        d["bits_per_weight"] = 8.0 * d["nbytes"] / d["n_elements"] if d["n_elements"] else 0.0
    return {
        "path": reader.path,
        "version": reader.version,
        "alignment": reader.alignment,
        "file_size": reader.file_size,
        "data_offset": reader.data_offset,
        "metadata": [{"key": f.key, "type": f.type, "elem_type": f.elem_type, "value": f.value}
                     for f in reader.fields.values()],
        "tensors": tensors,
        "by_type": by_type,
        "by_component": by_component,
        "n_elements": total_params,
        "nbytes": total_bytes,
        "bits_per_weight": 8.0 * total_bytes / total_params if total_params else 0.0,
    }


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"


def _count(n: int) -> str:
    for div, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}"
    return str(n)


def _value_str(v: Any, limit: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _metadata_line(m: Dict[str, Any], max_array: int) -> str:
    if m["type"] == "ARRAY":
        items = m["value"]
        shown = ", ".join(_value_str(x, 40) for x in items[:max_array])
        more = ", ..." if len(items) > max_array else ""
        return f"{m['key']:<44} ARRAY[{m['elem_type']} x {len(items)}] [{shown}{more}]"
    return f"{m['key']:<44} {m['type']:<8} {_value_str(m['value'])}"


def _table(rows: List[List[str]], header: List[str], right: set) -> List[str]:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def format_report(s: Dict[str, Any], max_array: int = 8, show_tensors: bool = True) -> str:
    out = [
        f"file        {s['path']}",
        f"size        {_human(s['file_size'])} ({s['file_size']} bytes), GGUF v{s['version']}, "
        f"alignment {s['alignment']}, data at offset {s['data_offset']}",
        f"tensors     {len(s['tensors'])}: {_count(s['n_elements'])} weights in {_human(s['nbytes'])}, "
        f"{s['bits_per_weight']:.3f} bits per weight",
        "",
        f"metadata ({len(s['metadata'])} keys)",
    ]
    out += ["  " + _metadata_line(m, max_array) for m in s["metadata"]]
    if show_tensors and s["tensors"]:
        out += ["", "tensors (ne in ggml order: ne[0] is the row length)"]
        rows = [[t["name"], t["type"], "x".join(str(d) for d in t["ne"]), f"{t['bits_per_weight']:.3f}",
                 _human(t["nbytes"])] for t in s["tensors"]]
        out += ["  " + line for line in _table(rows, ["name", "type", "ne", "bpw", "size"], {3, 4})]
    if s["tensors"]:
        out += ["", "by type"]
        rows = [[k, str(v["tensors"]), _count(v["n_elements"]), f"{v['bits_per_weight']:.3f}", _human(v["nbytes"]),
                 f"{100.0 * v['nbytes'] / s['nbytes']:.1f}%" if s["nbytes"] else "-"] for k, v in s["by_type"].items()]
        out += ["  " + line for line in _table(rows, ["type", "tensors", "weights", "bpw", "size", "share"], {1, 2, 3, 4, 5})]
        out += ["", "by component"]
        rows = [[k, "/".join(v["types"]), str(v["tensors"]), _count(v["n_elements"]), f"{v['bits_per_weight']:.3f}",
                 _human(v["nbytes"]), f"{100.0 * v['nbytes'] / s['nbytes']:.1f}%" if s["nbytes"] else "-"]
                for k, v in s["by_component"].items()]
        out += ["  " + line for line in
                _table(rows, ["component", "types", "tensors", "weights", "bpw", "size", "share"], {2, 3, 4, 5, 6})]
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a .gguf file")
    parser.add_argument("--max-array", type=int, default=8, metavar="N",
                        help="array elements shown per metadata key (default 8)")
    parser.add_argument("--no-tensors", action="store_true", help="leave out the per-tensor table")
    parser.add_argument("--by-layer", action="store_true",
                        help="group block tensors per block (blk.N) instead of per role (blk.*.attn_q)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead")


def run(args: argparse.Namespace) -> int:
    from .gguf import GGUFReader

    try:
        reader = GGUFReader(args.file)
    except (OSError, ValueError) as e:
        print(f"qat inspect: error: {e}", file=sys.stderr)
        return 1
    summary = summarize(reader, by_layer=args.by_layer)
    if args.json:
        def default(o):  # metadata strings that are not UTF-8 come back as bytes
            return o.decode("utf-8", "backslashreplace") if isinstance(o, bytes) else str(o)

        json.dump(summary, sys.stdout, indent=1, default=default)
        print()
    else:
        print(format_report(summary, max_array=args.max_array, show_tensors=not args.no_tensors))
    return 0
