"""GGUF reference quantizers: MB/s of fp32 input on one core, qat vs gguf-py (numpy), side by side.

    python tests/bench/bench_gguf_quantize.py [--numel N] [--types Q8_0,Q4_K,...] [--ggml-lib PATH] [--write]

qat.export.gguf.quantize runs the C++ core on the calling thread (one core); gguf-py's numpy
quantizers are single-threaded too. gguf-py quantizes only some types (F16, BF16, Q4_0..Q8_0 in
gguf 0.19); the others show "-". --ggml-lib adds a column for ggml's own ggml_quantize_chunk
from a libggml-base.so you built (not needed otherwise). --write replaces this benchmark's
section in docs/benchmarks.md (appending it at the end the first time).
"""

import argparse
import ctypes
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import qat.export.gguf as qg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cpu_model, write_section  # noqa: E402

DEFAULT_TYPES = ["Q8_0", "Q4_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q5_K", "Q6_K", "IQ4_NL", "F16", "BF16"]


def timed(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gguf_py_quantizer(t):
    try:
        import gguf
    except ImportError:
        return None
    qtype = gguf.GGMLQuantizationType[t]
    try:
        gguf.quants.quantize(np.zeros((1, qg.TYPES[t].block_size), np.float32), qtype)
    except NotImplementedError:
        return None
    return lambda x: gguf.quants.quantize(x, qtype)


def ggml_quantizer(lib, t):
    if lib is None:
        return None
    out = {}

    def run(x):
        n = x.size
        if "buf" not in out:
            out["buf"] = np.empty(qg.quantized_nbytes(x.shape, t), np.uint8)
        lib.ggml_quantize_chunk(qg.TYPES[t].id, x.ctypes.data, out["buf"].ctypes.data, 0, x.shape[0], x.shape[1], None)
        return n

    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--numel", type=int, default=4 * 1024 * 1024)
    p.add_argument("--types", default=",".join(DEFAULT_TYPES))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--ggml-lib", default=None, metavar="PATH", help="libggml-base.so for a ggml column")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()

    lib = None
    if args.ggml_lib:
        lib = ctypes.CDLL(args.ggml_lib)
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    rng = np.random.default_rng(0)
    cols = 4096
    x = rng.standard_normal((args.numel // cols, cols)).astype(np.float32)
    mb = x.nbytes / 1e6
    rows = []
    for t in args.types.split(","):
        t_ours = timed(lambda: qg.quantize(x, t), args.reps)
        g = gguf_py_quantizer(t)
        t_gguf = timed(lambda: g(x), max(1, args.reps // 2)) if g else None
        c = ggml_quantizer(lib, t)
        t_ggml = timed(lambda: c(x), args.reps) if c else None
        rows.append((t, mb / t_ours, mb / t_gguf if t_gguf else None, mb / t_ggml if t_ggml else None))
        r = rows[-1]
        print(f"{t:7} qat {r[1]:8.1f} MB/s   gguf-py {r[2] or float('nan'):8.1f} MB/s"
              + (f"   ggml {r[3]:8.1f} MB/s" if lib else ""), flush=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cmd = f"python tests/bench/bench_gguf_quantize.py --numel {args.numel}" + (" --ggml-lib PATH" if lib else "")
    head = "| type | qat MB/s | gguf-py MB/s | qat / gguf-py |" + (" ggml-base MB/s |" if lib else "") + "\n"
    head += "|---|---:|---:|---:|" + ("---:|" if lib else "") + "\n"
    body = ""
    for t, ours, gp, gm in rows:
        body += f"| {t} | {ours:.0f} | {f'{gp:.0f}' if gp else '-'} | {f'{ours / gp:.1f}x' if gp else '-'} |"
        body += (f" {gm:.0f} |" if gm else " - |") if lib else ""
        body += "\n"
    text = (f"## GGUF reference quantizers, one core: {cpu_model()}\n\n"
            f"MB/s of fp32 input ({args.numel} elements, rows of {cols}, normal random), median of {args.reps}; "
            f"Python {sys.version.split()[0]}, numpy {np.__version__}, qat commit {commit}.\n"
            f"Command: `{cmd}`\n\n{head}{body}\n"
            "Goal (issue 5): >= 100 MB/s per core for Q8_0 and Q4_K. qat's Q2_K/Q4_K/Q5_K and IQ4_NL run\n"
            "their scale searches on several (sub-)blocks side by side in vector lanes (same fp32 operations,\n"
            "same bytes); gguf-py has no K-quant or IQ4_NL quantizer. The VM is shared with other work:\n"
            "single rows move by 20-30% between runs."
            + (" The ggml-base column is ggml's ggml_quantize_chunk from a libggml-base.so built\n"
               "with ggml's default CMake flags (no -march for ggml-base)." if lib else "") + "\n")
    print("\n" + text)
    if args.write:
        write_section("gguf-quantize-cpu", text)


if __name__ == "__main__":
    main()
