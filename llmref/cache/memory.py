"""How many bytes a KV cache needs per token, for a model config and a cache kind."""

from __future__ import annotations

from typing import Any

import torch

from ._registry import CACHES

__all__ = ["kv_bytes_per_token"]

_NAMES = {  # llmref name -> Hugging Face transformers config name
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "d_model": "hidden_size",
}


def _get(config: Any, name: str) -> Any:
    for key in (name, _NAMES.get(name)):
        if key is None:
            continue
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if value is not None:
            return value
    return None


def kv_bytes_per_token(
    config: Any,
    kind: str = "dynamic",
    *,
    dtype: torch.dtype = torch.float16,
    bits: int = 2,
    group_size: int = 32,
) -> int:
    """Bytes of KV cache one token costs across all layers of a model.

    Parameters
    ----------
    config : object or dict
        Model sizes, by llmref names (``n_layers``, ``n_heads``, ``n_kv_heads``,
        ``head_dim``, ``d_model``) or Hugging Face names (``num_hidden_layers``,
        ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``,
        ``hidden_size``); for MLA also ``kv_lora_rank`` and ``qk_rope_head_dim``.
        ``n_kv_heads`` defaults to ``n_heads`` and ``head_dim`` to
        ``d_model // n_heads``.
    kind : str, default "dynamic"
        A name in :data:`CACHES`. Dense kinds (dynamic, static, paged,
        sliding_window, sink) store ``2 * n_kv_heads * head_dim`` numbers per
        layer (sliding-window and sink caches just hold fewer tokens);
        ``"latent"`` stores ``kv_lora_rank + qk_rope_head_dim``;
        ``"quantized"`` (KIVI) stores ``bits`` per number plus float32 scale and
        offset per key channel per ``group_size`` tokens and per value token.
    dtype : torch.dtype, default torch.float16
        Element type of the stored (full-precision) numbers.
    bits, group_size : int
        Settings of the ``"quantized"`` kind.

    Returns
    -------
    int
        Bytes per token (rounded up to a whole byte for ``"quantized"``).

    Raises
    ------
    ValueError
        If ``kind`` is unknown or a size the kind needs is missing.

    Examples
    --------
    >>> llama2_7b = {"n_layers": 32, "n_heads": 32, "head_dim": 128}
    >>> kv_bytes_per_token(llama2_7b)  # fp16, MHA
    524288
    >>> llama3_8b = {"num_hidden_layers": 32, "num_attention_heads": 32,
    ...              "num_key_value_heads": 8, "hidden_size": 4096}
    >>> kv_bytes_per_token(llama3_8b, dtype=torch.bfloat16)  # GQA: 4x less
    131072
    >>> deepseek_v2 = {"n_layers": 60, "kv_lora_rank": 512, "qk_rope_head_dim": 64}
    >>> kv_bytes_per_token(deepseek_v2, "latent", dtype=torch.bfloat16)
    69120
    """
    if kind not in CACHES:
        raise ValueError(f"kind must be one of {', '.join(map(repr, CACHES))}, got {kind!r}")
    n_layers = _get(config, "n_layers")
    if n_layers is None:
        raise ValueError("config must give n_layers (or num_hidden_layers)")
    size = torch.empty(0, dtype=dtype).element_size()
    if kind == "latent":
        rank, rope = _get(config, "kv_lora_rank"), _get(config, "qk_rope_head_dim")
        if rank is None or rope is None:
            raise ValueError("the latent cache needs kv_lora_rank and qk_rope_head_dim in config")
        return int(n_layers * (rank + rope) * size)
    n_heads = _get(config, "n_heads")
    n_kv = _get(config, "n_kv_heads") or n_heads
    head_dim = _get(config, "head_dim")
    if head_dim is None and _get(config, "d_model") is not None and n_heads:
        head_dim = _get(config, "d_model") // n_heads
    if n_kv is None or head_dim is None:
        raise ValueError("config must give n_kv_heads (or n_heads) and head_dim (or d_model)")
    if kind == "quantized":
        per_layer = n_kv * (2 * head_dim * bits / 8 + 8 * head_dim / group_size + 8)
        return int(-(-n_layers * per_layer // 1))
    return int(2 * n_layers * n_kv * head_dim * size)
