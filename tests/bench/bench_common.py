"""Shared by the Python benchmarks: machine description and the docs/benchmarks.md writer."""

import platform
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def cpu_model():
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def write_section(key, text, path=BENCHMARKS_MD):
    """Replace (or append) the block between <!-- bench:key --> markers."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{text}{end}\n"
    if start in doc:
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end) + 1 :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block
    path.write_text(doc)
