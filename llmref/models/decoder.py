"""A configurable decoder-only language model built from llmref's attention and position modules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._checks import check_tensor
from ..attention.masking import cache_mask_mods, layer_mask, positions_mask
from ..cache import CACHES, KVCache, spec_of
from ..position import RotaryEmbedding
from .attention_kinds import ATTENTION_KINDS
from .blocks import DecoderBlock, MoE
from .config import DecoderConfig

__all__ = ["DecoderLM"]


@dataclass(frozen=True)
class _LayerInputs:
    """What one forward hands a layer, built once for all layers that share it."""

    mask: torch.Tensor | None
    is_causal: bool
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None


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
                rope=getattr(self, ATTENTION_KINDS[config.layer(i).attention].rope),
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
        caches = None if caches is None else list(caches)
        if torch.compiler.is_compiling():  # checked eagerly; a traced forward assumes padding
            padding = None if attention_mask is None else attention_mask.to(torch.bool)
        else:
            padding = self._check_inputs(input_ids, attention_mask, caches, position_ids)
        B, T = input_ids.shape
        device = self.embed.weight.device
        lengths = None
        if padding is not None and caches is not None:
            lengths = padding[:, padding.shape[1] - T :].sum(-1)
        inputs = self._layer_inputs(B, T, padding, lengths, caches, position_ids, device)
        x = self.embed(input_ids.to(device))
        for i, layer in enumerate(self.layers):
            step = inputs[i]
            x = layer(
                x,
                mask=step.mask,
                is_causal=step.is_causal,
                position_embeddings=step.position_embeddings,
                cache=None if caches is None else caches[i],
                lengths=lengths,
            )
        return self.norm(x)

    def _layer_inputs(
        self,
        B: int,
        T: int,
        padding: torch.Tensor | None,
        lengths: torch.Tensor | None,
        caches: list[KVCache] | None,
        position_ids: torch.Tensor | None,
        device: torch.device,
    ) -> list[_LayerInputs]:
        """Each layer's mask and RoPE tables, computed once per group of layers sharing them."""
        queries = None  # sequence positions of the new tokens, -1 = padding (no cache)
        if caches is None and padding is not None:
            queries = torch.where(padding, padding.long().cumsum(-1) - 1, -1)
        if position_ids is None:
            if caches is not None:
                source = next(
                    (c for c in caches if _renumbers(c)), caches[0]
                )  # the sink cache numbers positions itself
                position_ids = source.positions_for(T, batch_size=B, lengths=lengths)
            elif queries is not None:
                position_ids = queries.clamp(min=0)
            else:
                position_ids = torch.arange(T)
        tables: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}
        for name, rope in (("rope", self.rope), ("mla_rope", self.mla_rope)):
            tables[name] = None
            if isinstance(rope, RotaryEmbedding):
                seq_len = None
                if rope.needs_seq_len and not torch.compiler.is_compiling():
                    seq_len = int(position_ids.max()) + 1 if position_ids.numel() else 0
                cos, sin = rope.position_embeddings(position_ids.to(device), seq_len=seq_len)
                if cos.ndim == 3:  # (B, T, d) -> (B, 1, T, d): one table for every head
                    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
                tables[name] = (cos, sin)
        masks: dict[Any, tuple[torch.Tensor | None, bool]] = {}
        out = []
        for i in range(self.config.n_layers):
            spec = self.config.layer(i)
            cache = None if caches is None else caches[i]
            key = (spec.window, _mask_group(cache))
            if key not in masks:
                if queries is not None:  # padding without a cache: keys are the new tokens
                    mods = cache_mask_mods(None, window=spec.window)
                    dense = positions_mask(queries, queries, mask_mods=mods)
                    masks[key] = (dense.to(device), False)
                else:
                    mask, is_causal = layer_mask(
                        T, cache=cache, window=spec.window, batch_size=B, lengths=lengths
                    )
                    masks[key] = (None if mask is None else mask.to(device), is_causal)
            mask, is_causal = masks[key]
            out.append(
                _LayerInputs(
                    mask=mask,
                    is_causal=is_causal,
                    position_embeddings=tables[ATTENTION_KINDS[spec.attention].rope],
                )
            )
        return out

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
            left-padded sequence computes what it computes alone (to rounding).
            With caches, each call's padding must come first in its row (left
            padding); the caches are told each row's real tokens and report
            positions per row, so every cache kind works with it.
        caches : sequence of llmref.cache.KVCache, optional
            One cache per layer (see :func:`~llmref.models.make_caches`): the
            new tokens' keys and values are stored and the queries attend to
            everything cached. MLA layers need a cache that stores latents
            (:class:`~llmref.cache.LatentCache`), the others one that stores
            keys and values.
        position_ids : torch.Tensor, optional
            RoPE positions ``(T,)`` or ``(B, T)`` of the new tokens; default:
            from the caches (:meth:`~llmref.cache.KVCache.positions_for`), else
            from ``attention_mask``, else ``0..T-1``. Masks follow the token
            order, not these.

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
            is out of range, padding is not on the left with caches, or caches
            that renumber positions (the sink cache) are mixed with others.

        Notes
        -----
        One forward builds each layer's attention mask and the RoPE cos/sin
        tables once, before the layers run (layers sharing a window and a cache
        kind share the mask): the mask from the ``mask_mod`` s of
        :mod:`llmref.attention.masks` evaluated on the queries' positions and the
        positions the caches report (:func:`~llmref.attention.masking.layer_mask`;
        the kernels' ``is_causal`` fast path where nothing else applies), the
        tables from the position ids. Checks that need host values run once per
        call, before that, and are skipped when the forward is traced by
        :func:`torch.compile`, which then captures the whole forward of a dense
        model (and a decoding step through a cache whose spec says ``traces``)
        as one graph; a mixture-of-experts layer's data-dependent expert loop
        breaks the graph.
        """
        h = self.hidden_states(
            input_ids, attention_mask=attention_mask, caches=caches, position_ids=position_ids
        )
        return self.lm_head(h)

    # -- checks (host values: once per call, before the layers; skipped when traced) ------

    def _check_inputs(
        self,
        input_ids: object,
        attention_mask: object,
        caches: list[KVCache] | None,
        position_ids: object,
    ) -> torch.Tensor | None:
        """Check every input; return the padding mask (bool, ``(B, past + T)``) or None."""
        ids = self._check_ids(input_ids)
        B, T = ids.shape
        self._check_caches(caches)
        held = {c.next_positions.shape[0] for c in caches or ()} - {1}
        if held and held != {B}:
            raise ValueError(
                f"input_ids has batch size {B} but the caches hold {held.pop()} sequences"
            )
        past = 0 if caches is None else caches[0].seen_tokens
        padding = self._check_attention_mask(attention_mask, B, past + T, T, caches)
        if position_ids is not None:
            check_tensor("position_ids", position_ids)
            assert isinstance(position_ids, torch.Tensor)
            if position_ids.shape[-1] != T or position_ids.ndim not in (1, 2):
                raise ValueError(
                    f"position_ids must be (T,) or (B, T) with T={T}, got shape "
                    f"{tuple(position_ids.shape)}"
                )
        return padding

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
            need = ATTENTION_KINDS[kind].stores
            if cache.stores != need:
                hint = "e.g. " + CACHES[ATTENTION_KINDS[kind].default_cache].fn.__name__
                raise TypeError(
                    f"caches[{i}] is a {type(cache).__name__}, which stores {cache.stores!r}, "
                    f"but layer {i} uses {kind!r} attention, which needs a cache that stores "
                    f"{need!r} ({hint})"
                )
        seen = {c.seen_tokens for c in caches}
        if len(seen) > 1:
            raise ValueError(f"caches must all have seen the same tokens, got {sorted(seen)}")
        groups = {_mask_group(c) for c in caches if _renumbers(c)}
        if groups and (len(groups) > 1 or not all(_renumbers(c) for c in caches)):
            raise ValueError(
                "caches that renumber positions (the sink cache) must be used, with the same "
                "settings, by every layer: the layers share one set of RoPE positions"
            )
        return list(caches)

    def _check_attention_mask(
        self,
        attention_mask: object,
        B: int,
        length: int,
        T: int,
        caches: list[KVCache] | None,
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
        new = padding[:, length - T :]
        if caches is not None and bool((new[:, :-1] & ~new[:, 1:]).any()):
            raise ValueError(
                "with caches, the padding of the new tokens must come first in each row (left "
                "padding: zeros before ones in attention_mask[:, past:])"
            )
        return padding.to(self.embed.weight.device)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"vocab_size={c.vocab_size}, d_model={c.d_model}, n_layers={c.n_layers}, "
            f"position={c.position!r}, tie_embeddings={c.tie_embeddings}"
        )


def _renumbers(cache: KVCache) -> bool:
    """Whether the cache kind declares RoPE positions of its own (the sink cache)."""
    spec = spec_of(cache)
    return spec is not None and spec.renumbers_positions


def _mask_group(cache: KVCache | None) -> tuple[Any, ...] | None:
    """Caches in lockstep whose masks agree: one class and the same declared rule settings."""
    if cache is None:
        return None
    spec = spec_of(cache)
    params = () if spec is None else tuple(getattr(cache, p) for p in spec.mask_params)
    return (type(cache), params)


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
        return RotaryEmbedding(
            dim,
            base=config.rope_theta,
            rope_type=config.rope_type,
            max_position_embeddings=config.max_position_embeddings,
            layout=config.rope_layout,
            device=device,
            **config.rope_parameters,
        )

    ropes: dict[str, nn.Module | None] = {"rope": None, "mla_rope": None}
    for name in dict.fromkeys(config.attention):
        spec = ATTENTION_KINDS[name]
        if ropes[spec.rope] is None:
            ropes[spec.rope] = make(spec.rope_dim(config))
    return ropes["rope"], ropes["mla_rope"], None


def empty_model(
    config: DecoderConfig,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> DecoderLM:
    """A :class:`DecoderLM` with uninitialised parameters, for loaders that fill every weight.

    The model is built on the meta device (no memory, no random initialisation:
    seconds saved on a 100M-parameter model), moved to ``device`` with
    :meth:`~torch.nn.Module.to_empty`, and then its *derived* buffers, which no
    checkpoint holds, are computed again: the RoPE frequencies, the ALiBi slopes,
    and the MoE routing-correction biases (zero until a loader fills them).
    """
    model = DecoderLM(config, device="meta", dtype=dtype)
    target = torch.device("cpu") if device is None else torch.device(device)
    model.to_empty(device=target)
    fresh = _position_modules(config, target)
    with torch.no_grad():
        for old, new in zip((model.rope, model.mla_rope, model.alibi), fresh, strict=True):
            if old is None or new is None:
                continue
            for buf, value in zip(old.buffers(), new.buffers(), strict=True):
                buf.copy_(value)
        for module in model.modules():
            if isinstance(module, MoE) and module.e_score_correction_bias is not None:
                module.e_score_correction_bias.zero_()
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    return model
