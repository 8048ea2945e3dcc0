"""``qat.export.to_gguf``: write a (QAT-trained) PyTorch model as a GGUF file.

    import qat
    summary = qat.export.to_gguf(model, "model.gguf", tokenizer=tokenizer)
    print(summary)

Each tensor's type comes from what trained it (a ``qat.gguf(...)`` weight quantizer's bytes, as
they are), else a ``types=`` rule, else the plan, else the default policy; see
:mod:`qat.export.sources` and :mod:`qat.export.type_policy`.

A Hugging Face ``LlamaForCausalLM`` becomes a llama.cpp model (:mod:`qat.export.llama`): llama
hyper-parameters, the tokenizer (:mod:`qat.export.tokenizer`; without one the file says
``tokenizer.ggml.model = "none"`` and runs from token ids), llama.cpp's tensor names and the Q/K
row permutation. Any other model becomes a generic container (``general.architecture = "qat"``):
its state_dict under the same names (names over 63 bytes shortened, see ``qat.tensors``), matrices
stored in their 2-D rows view (rows = output channels, as the quantizers see them), the plan as
YAML in ``qat.plan`` and, in ``qat.tensors`` (JSON), each tensor's state_dict name, original
shape and dtype.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import sources, type_policy
from .gguf import GGUFWriter, type_info
from .llama import is_llama, llama_config_values, llama_metadata, llama_tensors, permute_rows, rope_freq_factors
from .sources import Encoded, WeightChoice

__all__ = ["to_gguf", "ExportSummary", "ExportedTensor", "MAX_NAME_BYTES"]

#: ggml keeps tensor names in 64-byte buffers with a terminating NUL.
MAX_NAME_BYTES = 63
_QUANTIZER_CHILDREN = ("weight_quantizer", "quantized_weight")
_ACTIVATION_CHILDREN = ("input_quantizer", "output_quantizer")


@dataclass(frozen=True)
class ExportedTensor:
    name: str                 # name in the GGUF file
    source: str               # state_dict name in the model
    type: str
    shape: Tuple[int, ...]    # PyTorch order, as written
    nbytes: int
    origin: str               # qat, types, plan, default, fallback, float, raw, dequantized

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass
class ExportSummary:
    """What :func:`to_gguf` wrote; ``print(summary)`` shows types, bits per weight, sizes, time."""

    path: str
    architecture: str
    tensors: List[ExportedTensor]
    seconds: float
    file_size: int
    metadata_keys: int
    notes: List[str] = field(default_factory=list)

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / self.n_elements if self.n_elements else 0.0

    def by(self, key) -> Dict[str, Dict[str, Any]]:
        out: Dict[str, Dict[str, Any]] = {}
        for t in self.tensors:
            d = out.setdefault(key(t), {"tensors": 0, "n_elements": 0, "nbytes": 0, "types": []})
            d["tensors"] += 1
            d["n_elements"] += t.n_elements
            d["nbytes"] += t.nbytes
            if t.type not in d["types"]:
                d["types"].append(t.type)
        return out

    def __str__(self) -> str:
        from .inspect import _count, _human, _table, component_of

        lines = [f"wrote {self.path}: {self.architecture}, {len(self.tensors)} tensors, "
                 f"{_count(self.n_elements)} weights in {_human(self.nbytes)} ({self.bits_per_weight:.3f} bits per "
                 f"weight), file {_human(self.file_size)}, {self.metadata_keys} metadata keys, {self.seconds:.2f} s"]
        for title, key, label in (("by type", lambda t: t.type, "type"),
                                  ("by component", lambda t: component_of(t.name), "component"),
                                  ("by origin", lambda t: t.origin, "origin")):
            with_types = label != "type"
            rows = [[k] + (["/".join(v["types"])] if with_types else []) +
                    [str(v["tensors"]), _count(v["n_elements"]),
                     f"{8.0 * v['nbytes'] / v['n_elements']:.3f}" if v["n_elements"] else "-", _human(v["nbytes"]),
                     f"{100.0 * v['nbytes'] / self.nbytes:.1f}%" if self.nbytes else "-"]
                    for k, v in self.by(key).items()]
            header = [label] + (["types"] if with_types else []) + ["tensors", "weights", "bpw", "size", "share"]
            right = set(range(len(header) - 5, len(header)))
            lines += ["", title] + ["  " + line for line in _table(rows, header, right)]
        lines += [""] + [f"note: {n}" for n in self.notes] if self.notes else []
        return "\n".join(lines)


# ---- per-tensor decisions -----------------------------------------------------------------------

@dataclass
class _Context:
    plan: Any
    planned: bool
    rules: List[Tuple[str, str]]
    default_type: Optional[str]
    llama: bool
    first: Optional[str] = None
    last: Optional[str] = None
    dequantized: List[str] = field(default_factory=list)
    raw_specs: Dict[str, Any] = field(default_factory=dict)


def _rows_shape(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    return shape if len(shape) <= 2 else (shape[0], math.prod(shape[1:]))


def _float_choice(ctx: _Context, name: str, names: Sequence[str], tensor: Any, role: str,
                  module: Any, module_name: str, is_weight: bool) -> WeightChoice:
    """The choice for a float tensor (no trained quantizer)."""
    full = tuple(int(d) for d in tensor.shape)
    hit = type_policy.match_types(ctx.rules, *names)
    if hit is not None:
        pattern, t = hit
        shape = full if t in ("F32", "F16", "BF16") and (ctx.llama or len(full) <= 4) else _rows_shape(full)
        type_policy.check_fits(t, shape, f"tensor {name} (types rule {pattern!r})")
        return WeightChoice("types", t, shape, lambda: sources.encode_float(tensor, t, shape))
    if is_weight and len(full) >= 2 and module is not None:
        matched, spec = sources.plan_weight_spec(ctx.plan, module_name, module, ctx.first, ctx.last)
        if matched:
            if spec is None:
                return _plain(full, tensor, "plan", ctx)
            t = sources.spec_gguf_type(spec)
            shape = _rows_shape(full)
            if t is not None:
                type_policy.check_fits(t, shape, f"tensor {name} (plan spec {t})")
                return WeightChoice("plan", t, shape, lambda: sources.encode_float(tensor, t, shape))
            rows = tensor.detach().reshape(shape)
            return _stored_choice(ctx, name, sources.quantize_with_spec(spec, rows), full, "plan")
    if ctx.planned and ctx.default_type is None:
        return _plain(full, tensor, "float", ctx)
    if len(full) < 2:
        return _plain(full, tensor, "default", ctx)
    shape = _rows_shape(full)
    t, origin = type_policy.default_type_for(role, shape, ctx.default_type or "mixed")
    if t == "F32":
        return _plain(full, tensor, origin, ctx)
    return WeightChoice(origin, t, shape, lambda: sources.encode_float(tensor, t, shape))


def _plain(full: Tuple[int, ...], tensor: Any, origin: str, ctx: _Context) -> WeightChoice:
    shape = full if (ctx.llama or len(full) <= 4) else _rows_shape(full)
    return WeightChoice(origin, "F32", shape, lambda: sources.encode_float(tensor, "F32", shape))


def _stored_choice(ctx: _Context, name: str, stored: Any, full: Tuple[int, ...], origin: str) -> WeightChoice:
    """The choice for a converted weight (``quantize_weight``'s result)."""
    if sources.is_gguf_weight(stored):
        enc = sources.gguf_bytes(stored)
        if math.prod(enc.shape) != math.prod(full):
            raise ValueError(f"{name}: the GGUF weight has shape {enc.shape}, the model's weight {full}")
        if ctx.llama and enc.shape != full:
            raise ValueError(f"{name}: the GGUF weight's rows {enc.shape} are not the weight's shape {full}")
        return WeightChoice(origin, enc.type, enc.shape, lambda: enc)
    if ctx.llama:
        ctx.dequantized.append(name)
        w = stored.dequantize()
        return WeightChoice("dequantized", "F32", full, lambda: sources.encode_float(w, "F32", full))
    ctx.raw_specs[name] = stored
    return WeightChoice("raw", "", full, lambda: None)


def _trained_choice(ctx: _Context, name: str, module: Any) -> Optional[WeightChoice]:
    q = getattr(module, "weight_quantizer", None)
    if getattr(module, "quantized_weight", None) is None and q is None:
        return None
    full = getattr(module, "_weight_shape", None) or module.weight.shape
    full = tuple(int(d) for d in full)
    gguf_type = None
    if getattr(module, "quantized_weight", None) is None:
        gguf_type = sources.spec_gguf_type(getattr(q, "spec", None)) or sources.spec_gguf_type(
            getattr(module, "weight_spec", None))
    if gguf_type is None:
        return _stored_choice(ctx, name, sources.trained_weight(module), full, "qat")
    # A GGUF weight quantizer: its quantize_weight runs later, in a worker thread with the others.
    shape = tuple(int(d) for d in sources.module_weight_rows(module).shape)
    if ctx.llama and shape != full:
        raise ValueError(f"{name}: the quantizer's rows {shape} are not the weight's shape {full}")

    def encode() -> Encoded:
        enc = sources.gguf_bytes(sources.trained_weight(module))
        if enc.type != gguf_type or enc.shape != shape:
            raise ValueError(f"{name}: the quantizer stored {enc.type} {enc.shape}, expected {gguf_type} {shape}")
        return enc

    return WeightChoice("qat", gguf_type, shape, encode)


def _is_quant_module(module: Any) -> bool:
    return hasattr(module, "weight_quantizer") or getattr(module, "quantized_weight", None) is not None


def _first_last(model: Any) -> Tuple[Optional[str], Optional[str]]:
    """The modules a plan's ``<first>`` / ``<last>`` markers name, found as qat.prepare finds them."""
    from ..nn.modules import QuantModule
    from ..prepare import quantizable_types

    table = quantizable_types()
    names = [n for n, m in model.named_modules() if type(m) in table or isinstance(m, QuantModule)]
    return (names[0], names[-1]) if names else (None, None)


# ---- encoding and writing -----------------------------------------------------------------------

@dataclass
class _Entry:
    name: str
    source: str
    choice: WeightChoice
    permute_heads: int = 0


def _finish(entry: _Entry) -> Encoded:
    enc = entry.choice.encode()
    if entry.permute_heads:
        rows = enc.shape[0]
        data = np.asarray(enc.data)
        if data.dtype == np.uint8 and enc.type != "F32":
            data = permute_rows(data.reshape(rows, -1), entry.permute_heads).reshape(-1)
        else:
            data = permute_rows(data.reshape(rows, -1), entry.permute_heads).reshape(enc.shape)
        enc = Encoded(enc.type, enc.shape, np.ascontiguousarray(data))
    return enc


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="w", unit_scale=True, desc="to_gguf", file=sys.stderr, leave=False,
                disable=not sys.stderr.isatty())


def _encode_all(entries: List[_Entry], progress: Any) -> List[Encoded]:
    bar = _progress(sum(math.prod(e.choice.shape) for e in entries), progress)
    workers = max(1, min(len(entries), os.cpu_count() or 1))
    try:
        # The quantizers release the GIL: tensors encode in parallel.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_finish, e) for e in entries]
            out = []
            for e, f in zip(entries, futures):
                out.append(f.result())
                if bar is not None:
                    bar.update(math.prod(e.choice.shape))
            return out
    finally:
        if bar is not None:
            bar.close()


def _short_name(name: str, taken: set) -> str:
    if len(name.encode()) <= MAX_NAME_BYTES and name not in taken:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    tail = name.encode()[-(MAX_NAME_BYTES - len(digest) - 2):].decode("utf-8", "ignore")
    return f"{digest}~{tail.lstrip('.')}"


def _plan_yaml(plan: Any, model: Any) -> Optional[str]:
    """The plan as YAML: the one given, else (for a prepared model) one exact-name rule per QAT
    module with the specs it was prepared with."""
    if plan is None:
        from ..plan import Plan, Rule

        rules = []
        for name, m in model.named_modules():
            specs = {role: getattr(m, f"{role}_spec", None) for role in ("weight", "input", "output")}
            if _is_quant_module(m) and any(v is not None for v in specs.values()):
                rules.append(Rule(pattern=name, **specs))
        plan = Plan(rules) if rules else None
    return plan.to_yaml() if plan is not None else None


# ---- the two layouts ----------------------------------------------------------------------------

def _llama_entries(model: Any, ctx: _Context) -> Tuple[List[_Entry], List[str]]:
    cfg = model.config
    v = llama_config_values(cfg)
    entries: List[_Entry] = []
    used = set()
    modules = dict(model.named_modules())
    embd_module = modules.get("model.embed_tokens")
    head_module = modules.get("lm_head")
    tied = bool(v["tied"]) or (embd_module is not None and head_module is not None and
                               getattr(head_module, "weight", None) is not None and
                               head_module.weight is getattr(embd_module, "weight", None))
    notes: List[str] = []
    for t in llama_tensors(cfg):
        mod_name, attr = t.hf_name.rsplit(".", 1)
        module = modules.get(mod_name)
        if module is None:
            raise ValueError(f"llama export: the model has no module {mod_name} (for {t.gguf_name})")
        used.add(t.hf_name)
        names = (t.hf_name, t.gguf_name)
        choice = _trained_choice(ctx, t.hf_name, module) if attr == "weight" else None
        if choice is None:
            tensor = getattr(module, attr, None)
            if tensor is None:
                raise ValueError(f"llama export: {t.hf_name} is missing")
            role = {"token_embd": "token_embd", "output": "output", "norm": "vector", "bias": "vector"}.get(t.role, "matrix")
            choice = _float_choice(ctx, t.hf_name, names, tensor, role, module, mod_name, attr == "weight")
        if t.role == "output" and tied and _head_follows_embedding(ctx, module, names):
            notes.append(_TIED_NOTE)
            continue
        entries.append(_Entry(t.gguf_name, t.hf_name, choice, t.permute_heads))
    if v["rope"]["rope_type"] == "llama3":
        factors = rope_freq_factors(v["rope"], v["head_dim"])
        entries.append(_Entry("rope_freqs.weight", "(rope_parameters)", WeightChoice(
            "default", "F32", tuple(factors.shape), lambda: Encoded("F32", tuple(factors.shape), factors))))
    _check_llama_coverage(model, used)
    return entries, notes, tied


_TIED_NOTE = "output.weight left out: the LM head is tied to the token embeddings (llama.cpp reuses token_embd)"


def _head_follows_embedding(ctx: _Context, head: Any, names: Sequence[str]) -> bool:
    """Under the default policy a tied LM head is the token embedding (llama.cpp's convention).
    Anything that gives the head its own stored form (a trained quantizer, a types rule, a plan)
    keeps it; the export then drops it only if it encodes to token_embd's very bytes."""
    if ctx.planned or getattr(head, "weight_quantizer", None) is not None \
            or getattr(head, "quantized_weight", None) is not None:
        return False
    return type_policy.match_types(ctx.rules, *names) is None


def _drop_tied_duplicate(entries: List[_Entry], encoded: List[Encoded]) -> bool:
    """Removes output.weight when it is token_embd's exact type and bytes; True if removed."""
    names = [e.name for e in entries]
    if "output.weight" not in names or "token_embd.weight" not in names:
        return False
    i, j = names.index("output.weight"), names.index("token_embd.weight")
    a, b = encoded[i], encoded[j]
    if a.type != b.type or a.shape != b.shape or not np.array_equal(
            np.asarray(a.data).view(np.uint8), np.asarray(b.data).view(np.uint8)):
        return False
    del entries[i], encoded[i]
    return True


def _check_llama_coverage(model: Any, used: set) -> None:
    quant_prefixes = tuple(f"{n}.{c}." for n, m in model.named_modules() if _is_quant_module(m)
                           for c in _QUANTIZER_CHILDREN + _ACTIVATION_CHILDREN)
    extra = [k for k in model.state_dict() if k not in used and not k.startswith(quant_prefixes)
             and not k.endswith("rotary_emb.inv_freq")]
    if extra:
        raise ValueError(f"llama export: the model has tensors llama.cpp's llama layout has no place for: "
                         f"{', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}")


def _generic_entries(model: Any, ctx: _Context) -> Tuple[List[_Entry], List[Dict[str, Any]]]:
    import torch

    modules = dict(model.named_modules())
    state = model.state_dict()
    quant_modules = {n: m for n, m in modules.items() if _is_quant_module(m)}
    skip_prefixes = tuple(f"{n}.{c}." if n else f"{c}." for n in quant_modules for c in _QUANTIZER_CHILDREN)
    entries: List[_Entry] = []
    records: List[Dict[str, Any]] = []
    taken: set = set()
    done_modules = set()

    def add(source: str, choice: WeightChoice, dtype: str, shape: Tuple[int, ...]) -> None:
        name = _short_name(source, taken)
        taken.add(name)
        entries.append(_Entry(name, source, choice))
        rec = {"name": name, "source": source, "shape": list(shape), "dtype": dtype}
        records.append(rec)

    def owner_of(key: str) -> Optional[str]:
        # The QAT module whose weight this key belongs to (the weight itself, or its quantizer's
        # or converted weight's state), if any.
        parts = key.split(".")
        if parts[-1] == "weight" and ".".join(parts[:-1]) in quant_modules:
            return ".".join(parts[:-1])
        for i, part in enumerate(parts[:-1]):
            if part in _QUANTIZER_CHILDREN and ".".join(parts[:i]) in quant_modules:
                return ".".join(parts[:i])
        return None

    for key, tensor in state.items():
        mod_name, _, attr = key.rpartition(".")
        owner = owner_of(key)
        if owner is not None:
            if owner in done_modules:
                continue
            done_modules.add(owner)
            module = quant_modules[owner]
            source = f"{owner}.weight" if owner else "weight"
            choice = _trained_choice(ctx, source, module)
            if choice is None:  # a QAT module that quantizes activations only
                w = module.weight
                choice = _float_choice(ctx, source, (source,), w, "matrix", module, owner, True)
            dtype = str(getattr(getattr(module, "weight", None), "dtype", torch.float32)).replace("torch.", "")
            if choice.origin == "raw":
                stored = ctx.raw_specs[source]
                for k, t in stored.state_dict().items():
                    sub = f"{owner}.quantized_weight.{k}" if owner else f"quantized_weight.{k}"
                    add(sub, _raw_choice(t, "raw"), str(t.dtype).replace("torch.", ""), tuple(t.shape))
                spec = getattr(stored, "spec", None)
                if spec is not None and hasattr(spec, "to_dict"):
                    records[-1]["spec"] = spec.to_dict()
                continue
            shape = tuple(int(d) for d in getattr(module, "_weight_shape", None) or module.weight.shape)
            add(source, choice, dtype, shape)
            continue
        if key.startswith(skip_prefixes):
            continue
        module = modules.get(mod_name)
        if not tensor.is_floating_point():
            add(key, _raw_choice(tensor, "raw"), str(tensor.dtype).replace("torch.", ""), tuple(tensor.shape))
            continue
        role = "token_embd" if isinstance(module, torch.nn.Embedding) and attr == "weight" else "matrix"
        choice = _float_choice(ctx, key, (key,), tensor, role if tensor.dim() >= 2 else "vector", module, mod_name,
                               attr == "weight")
        if choice.origin == "raw":
            stored = ctx.raw_specs[key]
            for k, t in stored.state_dict().items():
                add(f"{key}.{k}", _raw_choice(t, "raw"), str(t.dtype).replace("torch.", ""), tuple(t.shape))
            continue
        add(key, choice, str(tensor.dtype).replace("torch.", ""), tuple(tensor.shape))
    return entries, records


_RAW_TYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int8": "I8",
              "uint8": "I8", "int16": "I16", "int32": "I32", "int64": "I64", "bool": "I8"}


def _raw_choice(tensor: Any, origin: str) -> WeightChoice:
    """A tensor stored as it is (integers, converted codes and scales): its own dtype's GGUF type."""
    import torch

    dtype = str(tensor.dtype).replace("torch.", "")
    t = _RAW_TYPES.get(dtype)
    if t is None:
        raise ValueError(f"no GGUF type stores {tensor.dtype} tensors")
    shape = tuple(int(d) for d in tensor.shape) or (1,)
    if len(shape) > 4:
        shape = (math.prod(shape[:-3]),) + shape[-3:]
    x = tensor.detach().cpu().contiguous()
    if dtype == "bool":
        x = x.to(torch.int8)
    if dtype == "bfloat16":
        x = x.view(torch.int16)
    arr = x.numpy().reshape(-1).view(np.uint8)
    return WeightChoice(origin, t, shape, lambda: Encoded(t, shape, arr))


# ---- public entry point ---------------------------------------------------------------------------

def to_gguf(model: Any, path: Union[str, os.PathLike], plan: Any = None, tokenizer: Any = None,
            default_type: Optional[str] = None, types: Optional[Union[Mapping[str, str], Iterable[Tuple[str, str]]]] = None,
            progress: bool = True, tokenizer_pre: Optional[str] = None, name: Optional[str] = None,
            metadata: Optional[Mapping[str, Any]] = None) -> ExportSummary:
    """Writes ``model`` to ``path`` as GGUF (atomically) and returns an :class:`ExportSummary`.

    - ``plan``: a ``qat.Plan``; GGUF weight specs (``qat.gguf("Q4_K")``) pick the types of modules
      that were not trained with them, other spec kinds go through their own quantizer, and the
      plan is stored as YAML under ``qat.plan``. Modules trained with a weight quantizer always
      ship their quantizer's result.
    - ``default_type``: the type for weights nothing else decides: ``"mixed"`` (token embeddings
      Q8_0, output Q6_K, other matrices Q4_K; the default without a plan or QAT modules) or one
      type name (``"Q8_0"``); with a plan or a prepared model, undecided weights stay F32 unless
      this is given. Defaults fall back like llama-quantize when the block does not divide the row.
    - ``types``: ``{glob: type}`` rules on the state_dict name or the GGUF name, first match wins,
      above the plan and the default; a type that does not fit the tensor raises ``ValueError``.
    - ``tokenizer``: a Hugging Face fast tokenizer, for llama models; ``tokenizer_pre`` names
      llama.cpp's pre-tokenizer when it cannot be detected.
    - ``name``: ``general.name``; ``metadata``: extra keys (values typed as ``GGUFWriter.add`` infers).
    - ``progress``: a tqdm bar on a terminal.
    """
    import torch

    start = time.perf_counter()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"to_gguf exports a torch.nn.Module, got {type(model).__name__}")
    if plan is not None and not hasattr(plan, "match"):
        raise TypeError(f"plan must be a qat.Plan, got {type(plan).__name__}")
    if default_type is not None and default_type != "mixed":
        default_type = type_info(default_type).name
    path = os.fspath(path)
    llama = is_llama(model)
    if tokenizer is not None and not llama:
        raise ValueError(f"a tokenizer is written only for llama models (Hugging Face LlamaForCausalLM); "
                         f"{type(model).__name__} becomes a generic container")
    planned = plan is not None or any(_is_quant_module(m) for m in model.modules())
    ctx = _Context(plan, planned, type_policy.normalize_types(types), default_type, llama)
    ctx.first, ctx.last = _first_last(model)

    writer = _CountingWriter()
    notes: List[str] = []
    with torch.no_grad():
        if llama:
            entries, notes, tied = _llama_entries(model, ctx)
            for key, value, vtype in llama_metadata(model.config, name or getattr(model.config, "name_or_path", None)):
                writer.add(key, value, vtype)
        else:
            entries, records = _generic_entries(model, ctx)
            writer.add("general.architecture", "qat", "STRING")
            writer.add("general.name", name or type(model).__name__, "STRING")
        encoded = _encode_all(entries, progress)
        if llama and tied and _drop_tied_duplicate(entries, encoded):
            notes.append(_TIED_NOTE)
    if any(type_info(e.type).block_size > 1 for e in encoded):
        writer.add("general.quantization_version", 2, "UINT32")
    writer.add("qat.version", _qat_version(), "STRING")
    plan_yaml = _plan_yaml(plan, model)
    if plan_yaml is not None:
        writer.add("qat.plan", plan_yaml, "STRING")
    if llama:
        if tokenizer is not None:
            from .tokenizer import tokenizer_metadata

            for key, value, vtype, elem in tokenizer_metadata(tokenizer, int(model.config.vocab_size), tokenizer_pre):
                writer.add(key, value, vtype, elem)
        else:
            writer.add("tokenizer.ggml.model", "none", "STRING")
            notes.append("no tokenizer given: llama.cpp runs the file from token ids (tokenizer.ggml.model = none)")
    else:
        for rec, enc in zip(records, encoded):
            rec["type"] = enc.type
        writer.add("qat.tensors", json.dumps(records, separators=(",", ":")), "STRING")
    for key, value in (metadata or {}).items():
        writer.add(key, value)

    tensors = []
    for entry, enc in zip(entries, encoded):
        if enc.type == "F32" and getattr(enc.data, "dtype", None) == np.float32:
            writer.add_tensor(entry.name, enc.data, "F32")
        else:
            writer.add_quantized(entry.name, enc.data, enc.shape, enc.type)
        nbytes = math.prod(enc.shape) // type_info(enc.type).block_size * type_info(enc.type).type_size
        tensors.append(ExportedTensor(entry.name, entry.source, enc.type, tuple(enc.shape), nbytes, entry.choice.origin))
    sources.warn_dequantized(ctx.dequantized, "trained with a spec that has no GGUF type")
    if ctx.dequantized:
        notes.append(f"{len(ctx.dequantized)} weights trained with non-GGUF specs written dequantized as F32")
    writer.write(path)
    return ExportSummary(path, "llama" if llama else "qat", tensors, time.perf_counter() - start,
                         os.path.getsize(path), writer.n_keys, notes)


class _CountingWriter(GGUFWriter):
    n_keys = 0

    def add(self, *args, **kwargs) -> None:
        super().add(*args, **kwargs)
        self.n_keys += 1


def _qat_version() -> str:
    try:
        from .. import __version__
        return str(__version__)
    except ImportError:
        return "unknown"
