"""A configurable decoder-only language model built from llmref's attention and position modules."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .._checks import check_tensor
from ..cache.base import KVCache
from ..position import RotaryEmbedding
from ..position.rope import _rotate
from .blocks import DecoderBlock, MoE
from .config import DecoderConfig

__all__ = ["DecoderLM"]


def _renumbers_positions(cache: KVCache) -> bool:
    """Whether the cache counts positions inside itself (the sink cache), not in the stream."""
    return type(cache).next_position is not KVCache.next_position


class _PaddedCache(KVCache):
    """A view of a layer's cache that also masks out padding keys.

    Layers build their mask from ``cache.attention_mask(T)`` after the update;
    this view ANDs it with ``key_padding[b, key_positions[j]]`` (True = real
    token), so any cache kind whose key positions index the token stream works
    with left- (or any) padding.
    """

    def __init__(self, cache: KVCache, key_padding: torch.Tensor) -> None:
        # no super().__init__(): every attribute is the wrapped cache's
        self._cache = cache
        self._key_padding = key_padding

    @property
    def stores(self) -> str:
        return self._cache.stores

    @stores.setter
    def stores(self, value: str) -> None:
        raise AttributeError("stores is the wrapped cache's")

    @property
    def seen_tokens(self) -> int:
        return self._cache.seen_tokens

    @seen_tokens.setter
    def seen_tokens(self, value: int) -> None:
        self._cache.seen_tokens = value

    @property
    def key_positions(self) -> torch.Tensor:
        return self._cache.key_positions

    @key_positions.setter
    def key_positions(self, value: torch.Tensor) -> None:
        self._cache.key_positions = value

    @property
    def next_position(self) -> int:
        return self._cache.next_position

    def positions_for(self, T: int) -> torch.Tensor:
        return self._cache.positions_for(T)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._cache.update(k, v)

    def attention_mask(self, T: int, *, window: int | None = None) -> torch.Tensor:
        allowed = self._cache.attention_mask(T, window=window)
        keys = self._cache.key_positions.to(self._key_padding.device)
        if keys.ndim == 1:
            real = self._key_padding[:, keys]
        else:  # per-sequence positions (paged), -1 = no key
            real = self._key_padding.gather(1, keys.clamp(min=0)) & (keys >= 0)
        return allowed & real[:, None, None, :].to(allowed.device)

    def __len__(self) -> int:
        return len(self._cache)

    def reset(self) -> None:
        self._cache.reset()

    @property
    def nbytes(self) -> int:
        return self._cache.nbytes


class DecoderLM(nn.Module):
    """A decoder-only transformer language model (Llama, Mistral, Qwen2, DeepSeek style).

    Token embedding, ``n_layers`` pre-norm :class:`~llmref.models.DecoderBlock`
    s (attention per layer by name, with RoPE, ALiBi or no position encoding;
    SwiGLU or mixture-of-experts MLP), a final RMSNorm and a linear output
    head, optionally tied to the embedding.

    Parameters
    ----------
    config : DecoderConfig
        The architecture.
    device, dtype : optional
        Where and in which dtype to create the parameters.

    Attributes
    ----------
    config : DecoderConfig
    embed : torch.nn.Embedding
        ``vocab_size x d_model`` token embedding.
    layers : torch.nn.ModuleList
        The :class:`~llmref.models.DecoderBlock` s.
    norm : torch.nn.RMSNorm
        Final norm.
    lm_head : torch.nn.Linear
        ``d_model -> vocab_size``, no bias; its weight *is* ``embed.weight``
        when ``config.tie_embeddings``.
    rope : llmref.position.RotaryEmbedding or None
        Rotary embedding of the MHA-family layers (shared by them).
    mla_rope : llmref.position.RotaryEmbedding or None
        Rotary embedding of the MLA layers (over ``qk_rope_head_dim``).
    alibi : llmref.position.AlibiBias or None
        ALiBi bias of the MHA-family layers (``position="alibi"``).

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`~llmref.models.DecoderConfig`.

    Notes
    -----
    With token embeddings :math:`x^{(0)} = E[\\text{ids}]`, each block adds to the
    *residual stream*:

    .. math::

        h^{(l)} = x^{(l-1)} + \\operatorname{Attn}\\bigl(\\operatorname{RMSNorm}(x^{(l-1)})\\bigr),
        \\qquad
        x^{(l)} = h^{(l)} + \\operatorname{MLP}\\bigl(\\operatorname{RMSNorm}(h^{(l)})\\bigr),

    and the logits are :math:`W_{out} \\operatorname{RMSNorm}(x^{(L)})`. Weights
    are initialised from :math:`\\mathcal{N}(0, \\sigma^2)` with
    :math:`\\sigma` = ``config.init_std`` (norms at one, biases at zero), as
    transformers does.

    References
    ----------
    :cite:t:`touvron2023llama2`, :cite:t:`xiong2020layer`

    Examples
    --------
    >>> import torch
    >>> from llmref.models import DecoderConfig, DecoderLM
    >>> cfg = DecoderConfig(vocab_size=100, d_model=64, n_layers=2, n_heads=4,
    ...                     n_kv_heads=2, d_ff=128, attention="gqa")
    >>> model = DecoderLM(cfg)
    >>> ids = torch.randint(0, 100, (2, 7))
    >>> model(ids).shape
    torch.Size([2, 7, 100])
    >>> mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])  # left padding
    >>> model(ids, attention_mask=mask).shape
    torch.Size([2, 7, 100])
    """

    def __init__(
        self,
        config: DecoderConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, DecoderConfig):
            raise TypeError(f"config must be a DecoderConfig, got {type(config).__name__}")
        self.config = config
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.embed = nn.Embedding(config.vocab_size, config.d_model, **kw)
        self.rope, self.mla_rope, self.alibi = _position_modules(config, device)
        self.layers = nn.ModuleList(
            DecoderBlock(
                config,
                i,
                rope=self.mla_rope if config.layer(i).attention == "mla" else self.rope,
                position_bias=self.alibi,
                **kw,
            )
            for i in range(config.n_layers)
        )
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps, **kw)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise weights from ``N(0, init_std^2)``, biases to zero, norms to one.

        Returns
        -------
        None
        """
        std = self.config.init_std
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(module.weight, std=std)
                    if isinstance(module, nn.Linear) and module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.RMSNorm) and module.weight is not None:
                    nn.init.ones_(module.weight)
                elif isinstance(module, MoE):
                    nn.init.normal_(module.gate_up_proj, std=std)
                    nn.init.normal_(module.down_proj, std=std)
                    if module.e_score_correction_bias is not None:
                        module.e_score_correction_bias.zero_()
        if self.config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        caches: Sequence[KVCache] | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final (normalised) residual stream: :meth:`forward` without the output head.

        Parameters
        ----------
        input_ids, attention_mask, caches, position_ids
            As :meth:`forward`.

        Returns
        -------
        torch.Tensor
            Shape ``(B, T, d_model)``.
        """
        ids = self._check_ids(input_ids)
        B, T = ids.shape
        caches = self._check_caches(caches)
        past = 0 if caches is None else caches[0].seen_tokens
        padding = self._check_attention_mask(attention_mask, B, past + T, caches)
        if position_ids is not None:
            check_tensor("position_ids", position_ids)
            if position_ids.shape[-1] != T or position_ids.ndim not in (1, 2):
                raise ValueError(
                    f"position_ids must be (T,) or (B, T) with T={T}, got shape "
                    f"{tuple(position_ids.shape)}"
                )
        mask = None
        if padding is not None:
            if position_ids is None:  # positions count real tokens only
                position_ids = (padding.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            if caches is None:
                mask = padding[:, None, None, :]
            else:
                caches = [_PaddedCache(c, padding) for c in caches]
        elif position_ids is None:
            # One positions tensor for every layer, so that they share one cos/sin lookup
            # (see _RotaryEmbedding); caches of mixed kinds may number positions differently.
            if caches is None:
                position_ids = torch.arange(T, device=ids.device)
            elif len({type(c) for c in caches}) == 1:
                position_ids = caches[0].positions_for(T).to(ids.device)
                if position_ids.ndim == 2 and position_ids.shape[0] != B:  # paged caches
                    raise ValueError(
                        f"input_ids has batch size {B} but the caches hold "
                        f"{position_ids.shape[0]} sequences"
                    )
        for rope in (self.rope, self.mla_rope):
            if isinstance(rope, _RotaryEmbedding):
                rope.forget()
        x = self.embed(ids)
        for i, layer in enumerate(self.layers):
            x = layer(
                x,
                mask=mask,
                position_ids=position_ids,
                cache=None if caches is None else caches[i],
            )
        return self.norm(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        caches: Sequence[KVCache] | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits for every position.

        Parameters
        ----------
        input_ids : torch.Tensor
            Integer token ids ``(B, T)``, each in ``[0, vocab_size)``.
        attention_mask : torch.Tensor, optional
            Padding mask, ``1``/``True`` = real token, ``0``/``False`` = padding,
            of shape ``(B, past + T)`` where ``past`` is the number of tokens
            already in ``caches`` (transformers' convention). Padding tokens are
            never attended to and positions count real tokens only, so a
            left-padded sequence computes exactly what it computes alone.
        caches : sequence of llmref.cache.KVCache, optional
            One cache per layer (see :func:`~llmref.models.make_caches`): the
            new tokens' keys and values are stored and the queries attend to
            everything cached. MLA layers need a cache that stores latents
            (:class:`~llmref.cache.LatentCache`), the others one that stores
            keys and values.
        position_ids : torch.Tensor, optional
            Positions ``(T,)`` or ``(B, T)`` of the new tokens; default: from
            ``attention_mask`` if given, else from the caches, else ``0..T-1``.

        Returns
        -------
        torch.Tensor
            Logits ``(B, T, vocab_size)`` in the model's dtype.

        Raises
        ------
        TypeError
            If ``input_ids`` is not an integer tensor, or a cache is not a
            :class:`~llmref.cache.KVCache` or stores the wrong thing for its
            layer's attention kind.
        ValueError
            If shapes disagree (batch, length, number of caches), a token id
            is out of range, or padding is combined with a cache that
            renumbers positions (the sink cache).
        """
        h = self.hidden_states(
            input_ids, attention_mask=attention_mask, caches=caches, position_ids=position_ids
        )
        return self.lm_head(h)

    # -- checks ----------------------------------------------------------------------------

    def _check_ids(self, input_ids: object) -> torch.Tensor:
        check_tensor("input_ids", input_ids, ndim=2)
        assert isinstance(input_ids, torch.Tensor)
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.numel():
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(
                    f"input_ids must be in [0, vocab_size={self.config.vocab_size}), got values "
                    f"in [{low}, {high}]"
                )
        return input_ids

    def _check_caches(self, caches: Sequence[KVCache] | None) -> list[KVCache] | None:
        if caches is None:
            return None
        if not isinstance(caches, Sequence) or len(caches) != self.config.n_layers:
            n = len(caches) if isinstance(caches, Sequence) else type(caches).__name__
            raise ValueError(
                f"caches must be a sequence of one KVCache per layer "
                f"(n_layers={self.config.n_layers}), got {n}"
            )
        for i, cache in enumerate(caches):
            if not isinstance(cache, KVCache):
                raise TypeError(f"caches[{i}] must be a KVCache, got {type(cache).__name__}")
            kind = self.config.layer(i).attention
            need = "latent" if kind == "mla" else "kv"
            if cache.stores != need:
                hint = "llmref.cache.LatentCache" if need == "latent" else "e.g. DynamicCache"
                raise TypeError(
                    f"caches[{i}] is a {type(cache).__name__}, which stores {cache.stores!r}, "
                    f"but layer {i} uses {kind!r} attention, which needs a cache that stores "
                    f"{need!r} ({hint})"
                )
        seen = {c.seen_tokens for c in caches}
        if len(seen) > 1:
            raise ValueError(f"caches must all have seen the same tokens, got {sorted(seen)}")
        return list(caches)

    def _check_attention_mask(
        self, attention_mask: object, B: int, length: int, caches: list[KVCache] | None
    ) -> torch.Tensor | None:
        """The padding mask as bool ``(B, length)``, or None when there is no padding."""
        if attention_mask is None:
            return None
        check_tensor("attention_mask", attention_mask, ndim=2)
        assert isinstance(attention_mask, torch.Tensor)
        if tuple(attention_mask.shape) != (B, length):
            raise ValueError(
                f"attention_mask must be (B, past + T) = {(B, length)} (1 = real token), got "
                f"{tuple(attention_mask.shape)}"
            )
        padding = attention_mask.to(torch.bool)
        if attention_mask.dtype != torch.bool and not torch.equal(
            padding.to(attention_mask.dtype), attention_mask
        ):
            raise ValueError("attention_mask must hold only 0 and 1 (or False and True)")
        if bool(padding.all()):
            return None
        if caches is not None and any(_renumbers_positions(c) for c in caches):
            raise ValueError(
                "padding (zeros in attention_mask) cannot be combined with a cache that "
                "renumbers positions (the sink cache); generate such sequences one at a time"
            )
        return padding.to(self.embed.weight.device)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"vocab_size={c.vocab_size}, d_model={c.d_model}, n_layers={c.n_layers}, "
            f"position={c.position!r}, tie_embeddings={c.tie_embeddings}"
        )


class _RotaryEmbedding(RotaryEmbedding):
    """A :class:`~llmref.position.RotaryEmbedding` that prepares its cos/sin tables once per
    positions tensor: the queries and keys of every layer of one forward pass share them.

    :class:`DecoderLM` passes one positions tensor to every layer and calls :meth:`forget`
    at the start of each forward pass. The first rotation with new positions goes through
    :func:`~llmref.position.apply_rope` (which checks the shapes); the following ones,
    on the same positions, repeat its arithmetic without the per-call checks (about a
    fifth of a small model's decoding step), so the results are bit for bit those of the
    parent class (tested).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.forget()

    def forget(self) -> None:
        """Drop the tables of the last positions."""
        self._positions: torch.Tensor | None = None
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor | None = None, *, offset: int = 0
    ) -> torch.Tensor:
        if position_ids is None:
            return super().forward(x, position_ids, offset=offset)
        tables = self._tables
        if position_ids is self._positions and tables is not None and self._fits(x, tables[0]):
            cos, sin = tables
            d = cos.shape[-1]
            rot = x if d == x.shape[-1] else x[..., :d]
            out = (rot * cos) + (_rotate(rot, self.layout) * sin)
            if d != x.shape[-1]:
                out = torch.cat((out, x[..., d:].to(out.dtype)), dim=-1)
            return out.to(x.dtype)
        out = super().forward(x, position_ids, offset=offset)  # checks everything
        cos, sin = self.cos_sin(position_ids)
        cos, sin = cos.to(x.device), sin.to(x.device)
        if x.ndim == 4 and cos.ndim == 3:  # (B, T, d) -> (B, 1, T, d), as apply_rope does
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        self._positions, self._tables = position_ids, (cos, sin)
        return out

    def _fits(self, x: torch.Tensor, cos: torch.Tensor) -> bool:
        """Whether the prepared tables broadcast to ``x`` as they did to the checked call."""
        return (
            x.ndim == 4
            and x.shape[-2] == cos.shape[-2]
            and x.shape[-1] >= cos.shape[-1]
            and (cos.ndim < 4 or cos.shape[0] == x.shape[0])
            and x.device == cos.device
        )


def _position_modules(
    config: DecoderConfig, device: torch.device | str | None
) -> tuple[nn.Module | None, nn.Module | None, nn.Module | None]:
    """Rotary embeddings of the MHA-family and MLA layers, and the ALiBi bias (or None)."""
    from ..position import AlibiBias

    if config.position == "alibi":
        return None, None, AlibiBias(config.n_heads).to(device)
    if config.position != "rope":
        return None, None, None

    def make(dim: int) -> nn.Module:
        return _RotaryEmbedding(
            dim,
            base=config.rope_theta,
            rope_type=config.rope_type,
            max_position_embeddings=config.max_position_embeddings,
            layout=config.rope_layout,
            device=device,
            **config.rope_parameters,
        )

    kinds = set(config.attention)
    rope = make(config.head_dim) if kinds - {"mla"} else None  # type: ignore[arg-type]
    mla_rope = None
    if "mla" in kinds:
        assert config.mla is not None
        mla_rope = make(config.mla.qk_rope_head_dim)
    return rope, mla_rope, None


def empty_model(
    config: DecoderConfig,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> DecoderLM:
    """A :class:`DecoderLM` with uninitialised parameters, for loaders that fill every weight.

    Skips the random initialisation (seconds for a 100M-parameter model); the
    position modules, whose buffers are derived, are built as usual.
    """
    with _no_init():
        model = DecoderLM(config, device=device, dtype=dtype)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    return model


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s fill functions no-ops while modules are built.

    Parameters keep whatever their fresh storage holds; the caller overwrites
    every one of them. (transformers' loaders do the same.)
    """
    names = ("normal_", "uniform_", "kaiming_uniform_", "zeros_", "ones_", "trunc_normal_")
    saved = {name: getattr(nn.init, name) for name in names}

    def skip(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor

    try:
        for name in names:
            setattr(nn.init, name, skip)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)
