"""qat.export.to_gguf: tensor types and bytes, llama layout (names, Q/K permutation, metadata),
tokenizer keys, generic containers, errors, CLI. Files are read back with qat's reader and with
gguf-py (an independent reader and dequantizer)."""

import json

import gguf
import numpy as np
import pytest
import torch
from torch import nn

import qat.export as qe
import qat.export.gguf as qg
from qat.export.from_gguf import load_llama_gguf
from qat.export.llama import permute_rows, unpermute_rows
from qat.export.tokenizer import TokenizerExportError, detect_pre_tokenizer, tokenizer_metadata

from llama_testing import ShiftedGGUFQuantizer, austen_text, smollm2, tiny_llama, train_tokenizer


def gguf_py_tensors(path):
    """name -> (type name, PyTorch-order shape, raw bytes, float32 values) via gguf-py alone."""
    r = gguf.GGUFReader(path)
    out = {}
    for t in r.tensors:
        raw = np.asarray(t.data)
        shape = tuple(int(d) for d in reversed(t.shape))
        integer = t.tensor_type.name in ("I8", "I16", "I32", "I64")
        vals = raw.reshape(shape) if integer else gguf.quants.dequantize(raw, t.tensor_type).reshape(shape).astype(np.float32)
        out[t.name] = (t.tensor_type.name, shape, raw.tobytes(), vals)
    return out


def gguf_py_metadata(path):
    r = gguf.GGUFReader(path)
    return {k: (f.types[0].name, f.contents()) for k, f in r.fields.items() if not k.startswith("GGUF.")}


# ---- Q/K permutation ------------------------------------------------------------------------------

@pytest.mark.parametrize("heads,head_dim,cols", [(1, 2, 3), (4, 16, 8), (3, 64, 5)])
def test_permute_rows_is_llama_cpp_rope_order(heads, head_dim, cols):
    x = torch.randn(heads * head_dim, cols)
    y = permute_rows(x, heads)
    half = head_dim // 2
    for h in range(heads):
        for i in range(half):
            for t in range(2):  # GGUF row 2i+t of head h is HF row t*D/2+i
                assert torch.equal(y[h * head_dim + 2 * i + t], x[h * head_dim + t * half + i])
    assert torch.equal(unpermute_rows(y, heads), x)
    assert np.array_equal(permute_rows(x.numpy(), heads), y.numpy())
    assert torch.equal(permute_rows(x[:, 0], heads), y[:, 0])  # biases


def test_permutation_commutes_with_quantization():
    w = torch.randn(8 * 32, 256)
    for t in ("Q4_K", "Q8_0", "Q6_K"):
        q = np.frombuffer(qg.quantize(w, t), np.uint8).reshape(w.shape[0], -1)
        assert permute_rows(q, 8).tobytes() == qg.quantize(permute_rows(w, 8), t)


def test_permute_rejects_bad_head_count():
    with pytest.raises(ValueError, match="heads"):
        permute_rows(torch.zeros(10, 4), 3)


# ---- llama layout ----------------------------------------------------------------------------------

def test_llama_f32_round_trip_and_metadata(tmp_path):
    model = tiny_llama(hidden=64, heads=4, kv_heads=2, ff=128, vocab=100, layers=2)
    path = tmp_path / "tiny.gguf"
    s = qe.to_gguf(model, path, default_type="F32", progress=False)
    assert s.architecture == "llama" and {t.type for t in s.tensors} == {"F32"}
    meta = gguf_py_metadata(path)
    cfg = model.config
    expect = {
        "general.architecture": ("STRING", "llama"), "llama.block_count": ("UINT32", 2),
        "llama.context_length": ("UINT32", 512), "llama.embedding_length": ("UINT32", 64),
        "llama.feed_forward_length": ("UINT32", 128), "llama.attention.head_count": ("UINT32", 4),
        "llama.attention.head_count_kv": ("UINT32", 2), "llama.rope.dimension_count": ("UINT32", 16),
        "llama.rope.freq_base": ("FLOAT32", 10000.0), "llama.vocab_size": ("UINT32", 100),
        "llama.attention.layer_norm_rms_epsilon": ("FLOAT32", float(np.float32(cfg.rms_norm_eps))),
        "tokenizer.ggml.model": ("STRING", "none"),
    }
    for k, v in expect.items():
        assert meta[k] == v, k
    names = [t.name for t in s.tensors]
    assert names[0] == "token_embd.weight" and names[-1] == "output.weight"
    assert "blk.1.ffn_down.weight" in names and len(names) == 3 + 2 * 9
    # The loader undoes the permutation: every weight comes back exactly.
    back, tok = load_llama_gguf(path)
    assert tok is None
    sd, sd2 = model.state_dict(), back.state_dict()
    for k, v in sd.items():
        assert torch.equal(sd2[k], v), k
    # gguf-py sees llama.cpp's row order for Q/K and the weights as they are elsewhere.
    tensors = gguf_py_tensors(path)
    q = sd["model.layers.0.self_attn.q_proj.weight"]
    k = sd["model.layers.0.self_attn.k_proj.weight"]
    assert np.array_equal(tensors["blk.0.attn_q.weight"][3], permute_rows(q, 4).numpy())
    assert np.array_equal(tensors["blk.0.attn_k.weight"][3], permute_rows(k, 2).numpy())
    assert np.array_equal(tensors["blk.0.attn_v.weight"][3], sd["model.layers.0.self_attn.v_proj.weight"].numpy())
    assert tensors["blk.0.attn_k.weight"][1] == (32, 64)


def test_llama_mixed_default_types_and_bytes(tmp_path):
    model = tiny_llama(hidden=256, heads=4, kv_heads=2, ff=512, vocab=300)
    path = tmp_path / "mixed.gguf"
    s = qe.to_gguf(model, path, progress=False)
    types = {t.name: t.type for t in s.tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["output.weight"] == "Q6_K"
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_down.weight"] == "Q4_K"
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert {t.origin for t in s.tensors} == {"default"}
    sd = model.state_dict()
    ours = qg.GGUFReader(path)
    theirs = gguf_py_tensors(path)
    for t in s.tensors:
        w = sd[t.source]
        if t.name.startswith("blk.0.attn_q"):
            w = permute_rows(w, 4)
        elif t.name.startswith("blk.0.attn_k") or t.name.startswith("blk.1.attn_k"):
            w = permute_rows(w, 2)
        elif t.name.startswith("blk.1.attn_q"):
            w = permute_rows(w, 4)
        expected = qg.quantize(w, t.type) if t.type != "F32" else w.numpy().tobytes()
        assert ours.tensor_bytes(t.name) == expected == theirs[t.name][2], t.name
        deq = qg.dequantize(expected, t.type, w.shape).numpy()
        assert np.array_equal(theirs[t.name][3], deq), t.name  # gguf-py decodes to the same floats
        assert np.array_equal(ours.tensor(t.name).numpy(), deq), t.name
        assert theirs[t.name][0] == t.type and theirs[t.name][1] == tuple(w.shape)
    assert s.file_size == ours.file_size and s.nbytes == sum(t.nbytes for t in ours.tensors)


def test_default_falls_back_like_llama_quantize_and_explicit_types_must_fit(tmp_path):
    model = tiny_llama(hidden=96, heads=3, kv_heads=1, ff=256, vocab=64)  # rows of 96: no K-quant fits
    s = qe.to_gguf(model, tmp_path / "a.gguf", progress=False)
    by = {t.name: t for t in s.tensors}
    assert by["blk.0.attn_q.weight"].type == "Q5_0" and by["blk.0.attn_q.weight"].origin == "fallback"
    assert by["output.weight"].type == "Q8_0" and by["output.weight"].origin == "fallback"  # Q6_K -> Q8_0
    assert by["blk.0.ffn_down.weight"].type == "Q4_K" and by["blk.0.ffn_down.weight"].origin == "default"
    s = qe.to_gguf(model, tmp_path / "b.gguf", default_type="Q2_K", progress=False)
    assert {t.name: t.type for t in s.tensors}["blk.0.attn_v.weight"] == "IQ4_NL"
    with pytest.raises(ValueError, match=r"Q4_K quantizes blocks of 256.*96 elements"):
        qe.to_gguf(model, tmp_path / "c.gguf", types={"*attn_q*": "Q4_K"}, progress=False)
    assert not (tmp_path / "c.gguf").exists()
    odd = tiny_llama(hidden=48, heads=3, kv_heads=3, ff=80, vocab=50)  # rows of 48 and 80: 32 divides neither
    s = qe.to_gguf(odd, tmp_path / "d.gguf", progress=False)
    assert {t.name: t.type for t in s.tensors}["blk.0.ffn_gate.weight"] == "F16"


def test_types_rules_first_match_on_either_name(tmp_path):
    model = tiny_llama(hidden=256, heads=4, kv_heads=4, ff=256, vocab=64)
    rules = {"blk.0.*": "Q8_0", "model.layers.*.mlp.*": "Q5_K", "*.self_attn.*": "Q2_K", "output.weight": "BF16"}
    s = qe.to_gguf(model, tmp_path / "t.gguf", types=rules, progress=False)
    by = {t.name: t for t in s.tensors}
    assert by["blk.0.ffn_up.weight"].type == "Q8_0" and by["blk.0.attn_norm.weight"].type == "Q8_0"
    assert by["blk.1.ffn_up.weight"].type == "Q5_K" and by["blk.1.attn_k.weight"].type == "Q2_K"
    assert by["output.weight"].type == "BF16" and by["token_embd.weight"].type == "Q8_0"
    assert by["blk.1.attn_norm.weight"].type == "F32"
    assert {by[n].origin for n in ("blk.0.ffn_up.weight", "output.weight")} == {"types"}


def test_trained_gguf_bytes_are_written_as_they_are(tmp_path):
    """A module whose weight quantizer returns GGUF bytes ships those bytes (Q/K rows permuted),
    not a re-quantization of its float weight."""
    model = tiny_llama(hidden=256, heads=4, kv_heads=2, ff=512, vocab=256)
    trained = {"model.layers.0.self_attn.q_proj": "Q4_K", "model.layers.1.self_attn.k_proj": "Q3_K",
               "model.layers.0.mlp.down_proj": "Q6_K", "model.embed_tokens": "Q8_0", "lm_head": "Q5_K"}
    for name, t in trained.items():
        model.get_submodule(name).weight_quantizer = ShiftedGGUFQuantizer(t)
    path = tmp_path / "qat.gguf"
    s = qe.to_gguf(model, path, progress=False)
    by = {t.source: t for t in s.tensors}
    r = qg.GGUFReader(path)
    for name, t in trained.items():
        module = model.get_submodule(name)
        stored = module.weight_quantizer.quantize_weight(module.weight.detach())
        data = stored.data.numpy()
        entry = by[name + ".weight"]
        assert entry.type == t and entry.origin == "qat"
        heads = {"q_proj": 4, "k_proj": 2}.get(name.rsplit(".", 1)[-1], 0)
        if heads:
            data = permute_rows(data.reshape(module.weight.shape[0], -1), heads)
        assert r.tensor_bytes(entry.name) == data.tobytes(), name
        assert r.tensor_bytes(entry.name) != qg.quantize(module.weight if not heads else
                                                         permute_rows(module.weight, heads), t)
    # A prepared model keeps undecided weights float: what the QAT forward used.
    assert by["model.layers.0.self_attn.v_proj.weight"].type == "F32"
    assert by["model.layers.0.self_attn.v_proj.weight"].origin == "float"


def test_tied_head_left_out_unless_given_its_own_type(tmp_path):
    model = tiny_llama(hidden=64, heads=2, kv_heads=2, ff=128, vocab=96, tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    s = qe.to_gguf(model, tmp_path / "tied.gguf", progress=False)
    assert "output.weight" not in {t.name for t in s.tensors} and any("tied" in n for n in s.notes)
    back, _ = load_llama_gguf(tmp_path / "tied.gguf")
    assert back.config.tie_word_embeddings and back.lm_head.weight is back.model.embed_tokens.weight
    s = qe.to_gguf(model, tmp_path / "untied.gguf", types={"output.weight": "Q8_0", "token_embd*": "F16"},
                   progress=False)
    by = {t.name: t.type for t in s.tensors}
    assert by["output.weight"] == "Q8_0" and by["token_embd.weight"] == "F16"


def test_llama3_rope_and_attention_bias(tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    model = tiny_llama(hidden=128, heads=2, kv_heads=1, ff=128, vocab=64, rope=rope, attention_bias=True)
    s = qe.to_gguf(model, tmp_path / "l3.gguf", default_type="F32", progress=False)
    tensors = gguf_py_tensors(tmp_path / "l3.gguf")
    # HF's llama3 inverse frequencies are llama.cpp's base frequencies divided by rope_freqs.
    head_dim = 64
    base = 1.0 / (500000.0 ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    hf = model.model.rotary_emb.inv_freq.double().numpy()
    np.testing.assert_allclose(base / tensors["rope_freqs.weight"][3], hf, rtol=1e-6)
    bq = model.state_dict()["model.layers.0.self_attn.q_proj.bias"]
    assert np.array_equal(tensors["blk.0.attn_q.bias"][3], permute_rows(bq, 2).numpy())
    assert "blk.0.attn_output.bias" in tensors and tensors["blk.0.attn_q.bias"][0] == "F32"
    assert s.architecture == "llama"


# ---- tokenizer -------------------------------------------------------------------------------------

def test_smollm2_tokenizer_keys_round_trip(tmp_path):
    """GGUF keys -> transformers tokenizer -> GGUF keys gives the original file's keys back."""
    from qat.export.from_gguf import smollm2_path

    _, tok = smollm2()
    original = qg.GGUFReader(smollm2_path()).metadata
    keys = {k: v for k, v, _, _ in tokenizer_metadata(tok, 49152)}
    for k in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
              "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
              "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
              "tokenizer.chat_template", "tokenizer.ggml.add_space_prefix"):
        assert keys[k] == original[k], k
    assert detect_pre_tokenizer(tok) == "smollm"


@pytest.mark.parametrize("kind,pre", [("gpt2", "gpt-2"), ("smollm", "smollm"), ("llama3", "llama-bpe")])
def test_trained_byte_level_tokenizers(kind, pre):
    tok = train_tokenizer(austen_text("northangerabbey")[:100000], 400, kind)
    keys = {k: (v, vt, et) for k, v, vt, et in tokenizer_metadata(tok, 512)}
    assert keys["tokenizer.ggml.model"][0] == "gpt2" and keys["tokenizer.ggml.pre"][0] == pre
    tokens = keys["tokenizer.ggml.tokens"][0]
    assert len(tokens) == 512 and tokens[400:402] == ["[PAD400]", "[PAD401]"]
    ttypes = keys["tokenizer.ggml.token_type"][0]
    assert ttypes[:3] == [3, 3, 3] and ttypes[3] == 1 and ttypes[500] == 5
    assert keys["tokenizer.ggml.token_type"][2] == "INT32" and keys["tokenizer.ggml.bos_token_id"][1] == "UINT32"
    assert keys["tokenizer.ggml.add_bos_token"][0] is False


def test_spm_tokenizer_keys():
    tok = train_tokenizer(austen_text("northangerabbey")[:100000], 600, "spm")
    keys = {k: v for k, v, _, _ in tokenizer_metadata(tok)}
    assert keys["tokenizer.ggml.model"] == "llama" and keys["tokenizer.ggml.add_space_prefix"] is True
    tokens, types, scores = keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.token_type"], keys["tokenizer.ggml.scores"]
    assert types[tokens.index("<0x0A>")] == 6 and types[tokens.index("<unk>")] == 2 and types[tokens.index("<s>")] == 3
    # Scores order merges as the merges list does: earlier merges score higher.
    merges = [m if isinstance(m, str) else " ".join(m) for m in
              json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]]
    first, later = merges[0].replace(" ", ""), merges[-1].replace(" ", "")
    assert scores[tokens.index(first)] > scores[tokens.index(later)]


def test_unknown_pre_tokenizer_needs_a_name():
    from tokenizers import pre_tokenizers

    tok = train_tokenizer(austen_text("persuasion")[:20000], 300, "gpt2")
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                                   pre_tokenizers.ByteLevel(add_prefix_space=False)])
    with pytest.raises(TokenizerExportError, match="tokenizer_pre"):
        tokenizer_metadata(tok)
    assert {k: v for k, v, _, _ in tokenizer_metadata(tok, pre="gpt-2")}["tokenizer.ggml.pre"] == "gpt-2"


# ---- generic containers -----------------------------------------------------------------------------

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40, 64)
        self.conv = nn.Conv2d(4, 8, 4)  # rows view [8, 64]
        self.fc = nn.Linear(64, 32)
        self.norm = nn.LayerNorm(32)
        self.register_buffer("steps", torch.tensor([3, -7, 2**40], dtype=torch.int64))
        self.register_buffer("mask", torch.tensor([True, False]))
        deep = nn.Linear(32, 32)
        for i in range(6):
            deep = nn.Sequential(deep)
        self.a_rather_long_submodule_name_for_testing_the_limit = deep


def test_generic_container(tmp_path):
    net = Net()
    path = tmp_path / "net.gguf"
    s = qe.to_gguf(net, path, types={"fc.weight": "Q8_0"}, default_type="Q4_0", progress=False,
                   metadata={"user.note": "hello"})
    meta = gguf_py_metadata(path)
    assert meta["general.architecture"] == ("STRING", "qat") and meta["user.note"] == ("STRING", "hello")
    records = json.loads(meta["qat.tensors"][1])
    by_source = {r["source"]: r for r in records}
    assert list(by_source) == list(net.state_dict())
    tensors = gguf_py_tensors(path)
    sd = net.state_dict()
    for r in records:
        assert len(r["name"].encode()) <= 63 and r["name"] in tensors
        assert r["shape"] == list(sd[r["source"]].shape)
    long = [r for r in records if r["source"] != r["name"]]
    assert long and all(r["source"].startswith("a_rather_long") for r in long)
    assert by_source["fc.weight"]["type"] == "Q8_0" and by_source["embed.weight"]["type"] == "Q4_0"
    conv = tensors["conv.weight"]
    assert conv[0] == "Q4_0" and conv[1] == (8, 64)  # matrices are stored as their rows view
    assert np.array_equal(conv[3], qg.dequantize(qg.quantize(sd["conv.weight"].reshape(8, 64), "Q4_0"),
                                                 "Q4_0", (8, 64)).numpy())
    assert tensors["steps"][0] == "I64" and np.frombuffer(tensors["steps"][2], np.int64).tolist() == [3, -7, 2**40]
    assert tensors["mask"][0] == "I8" and tensors["norm.bias"][0] == "F32"
    assert np.array_equal(tensors["norm.weight"][3], sd["norm.weight"].numpy())
    assert {t.type for t in s.tensors if t.source.startswith("a_rather")} == {"Q4_0", "F32"}


def test_generic_container_from_a_trained_quantizer(tmp_path):
    net = Net()
    net.fc.weight_quantizer = ShiftedGGUFQuantizer("Q4_1")
    s = qe.to_gguf(net, tmp_path / "net.gguf", progress=False)
    by = {t.source: t for t in s.tensors}
    assert by["fc.weight"].type == "Q4_1" and by["fc.weight"].origin == "qat"
    assert by["embed.weight"].type == "F32" and by["embed.weight"].origin == "float"  # prepared model: float stays
    expected = net.fc.weight_quantizer.quantize_weight(net.fc.weight.detach()).data.numpy().tobytes()
    assert qg.GGUFReader(tmp_path / "net.gguf").tensor_bytes("fc.weight") == expected


# ---- errors and CLI -----------------------------------------------------------------------------------

def test_errors(tmp_path):
    model = tiny_llama(hidden=64, heads=2, kv_heads=2, ff=64, vocab=32)
    with pytest.raises(TypeError, match="nn.Module"):
        qe.to_gguf({"w": torch.zeros(2)}, tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="unknown GGUF tensor type"):
        qe.to_gguf(model, tmp_path / "x.gguf", default_type="Q9_9")
    with pytest.raises(TypeError, match="types="):
        qe.to_gguf(model, tmp_path / "x.gguf", types="Q4_K")
    with pytest.raises(TypeError, match="qat.Plan"):
        qe.to_gguf(model, tmp_path / "x.gguf", plan={"rules": []})
    with pytest.raises(TokenizerExportError, match="fast"):
        qe.to_gguf(model, tmp_path / "x.gguf", tokenizer=object(), progress=False)
    with pytest.raises(ValueError, match="only for llama"):
        qe.to_gguf(Net(), tmp_path / "x.gguf", tokenizer=object(), progress=False)
    model.model.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="no place for: model.extra.weight"):
        qe.to_gguf(model, tmp_path / "x.gguf", progress=False)
    assert not (tmp_path / "x.gguf").exists()


def test_cli_export(tmp_path, capsys):
    from qat.__main__ import main

    src = tmp_path / "src.gguf"
    qe.to_gguf(tiny_llama(hidden=256, heads=4, kv_heads=2, ff=256, vocab=64), src, default_type="F32", progress=False)
    out = tmp_path / "out.gguf"
    rc = main(["export", "--model", str(src), "--out", str(out), "--type", "blk.0.*=Q8_0", "--default-type", "Q5_K",
               "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0 and "by type" in text and "blk.*.attn_q" in text and "bits per weight" in text
    types = {t.name: t.type for t in qg.GGUFReader(out).tensors}
    assert types["blk.0.ffn_up.weight"] == "Q8_0" and types["blk.1.ffn_up.weight"] == "Q5_K"
    rc = main(["export", "--model", str(src), "--out", str(out), "--type", "nonsense"])
    assert rc == 1 and "GLOB=TYPE" in capsys.readouterr().err


# ---- trained with qat.prepare / qat.convert ------------------------------------------------------------

def _train_a_little(model, vocab, steps=2):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for _ in range(steps):
        ids = torch.randint(vocab, (2, 16))
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_qat_llama_ships_what_it_trained(tmp_path):
    """prepare with GGUF specs -> train -> to_gguf: every weight is its GGUFWeight's bytes, the file
    decodes (qat's reader, gguf-py) to exactly the QAT forward's weights, a model loaded from the
    file computes the QAT model's logits bit for bit, and convert() exports the same bytes."""
    import qat

    plan = qat.Plan([qat.Rule(pattern="model.embed_tokens", weight=qat.gguf("Q8_0")),
                     qat.Rule(pattern="lm_head", weight=qat.gguf("Q6_K")),
                     qat.Rule(pattern="*.mlp.down_proj", weight=qat.gguf("Q5_K")),
                     qat.Rule(pattern="model.layers.1.self_attn.*", weight=qat.gguf("IQ4_NL")),
                     qat.Rule(type="Linear", weight=qat.gguf("Q4_K"))])
    model = _train_a_little(qat.prepare(tiny_llama(hidden=256, heads=4, kv_heads=2, ff=512, vocab=256), plan), 256)
    path = tmp_path / "qat.gguf"
    s = qe.to_gguf(model, path, progress=False)
    assert {t.origin for t in s.tensors if t.type != "F32"} == {"qat"}
    by = {t.source: t for t in s.tensors}
    assert by["model.layers.0.mlp.down_proj.weight"].type == "Q5_K" and by["lm_head.weight"].type == "Q6_K"
    assert by["model.layers.1.self_attn.q_proj.weight"].type == "IQ4_NL"
    ours, theirs = qg.GGUFReader(path), gguf_py_tensors(path)
    heads = {"q_proj": 4, "k_proj": 2}
    for name, m in model.named_modules():
        if getattr(m, "weight_quantizer", None) is None:
            continue
        stored = m.weight_quantizer.quantize_weight(m.weight.detach())
        t = by[name + ".weight"]
        data = stored.data.numpy().reshape(m.weight.shape[0], -1)
        w = m.quant_weight().detach()
        h = heads.get(name.rsplit(".", 1)[-1], 0)
        if h:
            data, w = permute_rows(data, h), permute_rows(w, h)
        assert ours.tensor_bytes(t.name) == data.tobytes(), name
        assert torch.equal(ours.tensor(t.name), w), name
        assert np.array_equal(theirs[t.name][3], w.numpy()), name
    assert qg.GGUFReader(path).metadata["qat.plan"].count("pattern:") == 2 + 2 * 7
    back, _ = load_llama_gguf(path)
    ids = torch.randint(256, (1, 40))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)
    converted = qat.convert(model)
    qe.to_gguf(converted, tmp_path / "converted.gguf", progress=False)
    conv = qg.GGUFReader(tmp_path / "converted.gguf")
    assert [t.name for t in conv.tensors] == [t.name for t in ours.tensors]
    for t in ours.tensors:
        assert conv.tensor_bytes(t.name) == ours.tensor_bytes(t.name), t.name


def test_qat_tied_head(tmp_path):
    """Tied embeddings: a head trained with its own quantizer ships as output.weight; a float head
    next to a trained embedding ships in F32 (what the QAT forward used), not as token_embd."""
    import qat

    base = tiny_llama(hidden=64, heads=2, kv_heads=2, ff=128, vocab=128, tie=True)
    plan = qat.Plan([qat.Rule(pattern="model.embed_tokens", weight=qat.gguf("Q8_0")),
                     qat.Rule(pattern="lm_head", weight=qat.gguf("Q4_0"))])
    s = qe.to_gguf(qat.prepare(base, plan), tmp_path / "a.gguf", progress=False)
    by = {t.name: t for t in s.tensors}
    assert by["token_embd.weight"].type == "Q8_0" and by["output.weight"].type == "Q4_0"
    plan = qat.Plan([qat.Rule(pattern="model.embed_tokens", weight=qat.gguf("Q8_0"))])
    prepared = qat.prepare(base, plan)
    s = qe.to_gguf(prepared, tmp_path / "b.gguf", progress=False)
    by = {t.name: t for t in s.tensors}
    assert by["output.weight"].type == "F32" and by["output.weight"].origin == "float"
    back, _ = load_llama_gguf(tmp_path / "b.gguf")
    ids = torch.randint(128, (1, 16))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, prepared(ids).logits)


def test_plan_types_for_a_float_model(tmp_path):
    """A plan given to to_gguf picks the types of an unprepared model through the reference
    quantizer; skip rules and unmatched modules stay F32."""
    import qat

    model = tiny_llama(hidden=256, heads=4, kv_heads=2, ff=256, vocab=64)
    plan = qat.Plan([qat.Rule(pattern="model.layers.0.*", skip=True),
                     qat.Rule(pattern="*.mlp.*", weight=qat.gguf("Q3_K")),
                     qat.Rule(pattern="lm_head", weight=qat.gguf("Q8_0"))])
    s = qe.to_gguf(model, tmp_path / "p.gguf", plan=plan, progress=False)
    by = {t.source: t for t in s.tensors}
    assert by["model.layers.1.mlp.up_proj.weight"].type == "Q3_K" and by["lm_head.weight"].type == "Q8_0"
    assert by["model.layers.0.mlp.up_proj.weight"].type == "F32" and by["model.layers.0.mlp.up_proj.weight"].origin == "plan"
    assert by["model.layers.1.self_attn.q_proj.weight"].type == "F32"
    assert by["model.layers.1.mlp.up_proj.weight"].origin == "plan"
    r = qg.GGUFReader(tmp_path / "p.gguf")
    w = model.state_dict()["model.layers.1.mlp.up_proj.weight"]
    assert r.tensor_bytes("blk.1.ffn_up.weight") == qg.quantize(w, "Q3_K")
    assert qat.Plan.from_yaml(r.metadata["qat.plan"]) == plan
    with pytest.raises(ValueError, match="Q4_K quantizes blocks of 256"):
        qe.to_gguf(tiny_llama(hidden=64, heads=2, kv_heads=2, ff=64, vocab=32), tmp_path / "x.gguf",
                   plan=qat.Plan([qat.Rule(type="Linear", weight=qat.gguf("Q4_K"))]), progress=False)


def test_generic_container_of_a_qat_model(tmp_path):
    """A non-llama QAT model: GGUF-spec weights as their GGUF bytes, integer-spec weights as their
    codes and scales, the plan in qat.plan."""
    import qat

    net = Net()
    plan = qat.Plan([qat.Rule(pattern="fc", weight=qat.gguf("Q4_1")),
                     qat.Rule(pattern="conv", weight=qat.QuantSpec(bits=4, granularity="channel")),
                     qat.Rule(pattern="embed", weight=qat.gguf("Q8_0"))])
    prepared = qat.prepare(net, plan)
    path = tmp_path / "net.gguf"
    s = qe.to_gguf(prepared, path, progress=False)
    by = {t.source: t for t in s.tensors}
    assert by["fc.weight"].type == "Q4_1" and by["embed.weight"].type == "Q8_0"
    stored = prepared.conv.weight_quantizer.quantize_weight(prepared.conv._rows(prepared.conv.weight.detach()))
    assert by["conv.quantized_weight.codes"].type == "I8" and by["conv.quantized_weight.scale"].type == "F32"
    tensors = gguf_py_tensors(path)
    assert np.array_equal(tensors["conv.quantized_weight.codes"][3], stored.codes.numpy())
    assert np.array_equal(tensors["conv.quantized_weight.scale"][3].reshape(-1), stored.scale.numpy().reshape(-1))
    meta = gguf_py_metadata(path)
    assert qat.Plan.from_yaml(meta["qat.plan"][1]) == qat.Plan([qat.Rule(pattern=n, weight=r.weight)
                                                               for n, r in (("embed", plan.rules[2]),
                                                                            ("conv", plan.rules[1]),
                                                                            ("fc", plan.rules[0]))])
    fc = prepared.fc.weight_quantizer.quantize_weight(prepared.fc.weight.detach())
    assert qg.GGUFReader(path).tensor_bytes("fc.weight") == fc.data.numpy().tobytes()
