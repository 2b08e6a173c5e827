"""``SamplingConfig``: every sampling setting in one frozen, self-validating dataclass."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._checks import check_int
from ._args import check_filter_value, check_interval

__all__ = ["SamplingConfig"]


@dataclass(frozen=True)
class SamplingConfig:
    """How to turn next-token logits into a distribution to sample from.

    Field names are those of transformers' ``GenerationConfig`` (and vLLM's
    ``SamplingParams`` for the presence and frequency penalties); a value that
    transformers treats as "off" (``top_k=0``, ``top_p=1.0``,
    ``typical_p=1.0``, ``epsilon_cutoff=0.0``, ``eta_cutoff=0.0``) is off here
    too. Unlike ``GenerationConfig``, whose ``top_k`` defaults to 50, every
    rule is off by default. :func:`~llmref.inference.process_logits` applies
    a config.

    Parameters
    ----------
    temperature : float, default 1.0
        Divides the logits (> 0).
    top_k : int, optional
        :func:`~llmref.inference.top_k_filter` (>= 0; 0 is off).
    top_p : float, optional
        :func:`~llmref.inference.top_p_filter`, in ``(0, 1]``.
    min_p : float, optional
        :func:`~llmref.inference.min_p_filter`, in ``[0, 1]``.
    typical_p : float, optional
        :func:`~llmref.inference.typical_filter`, in ``(0, 1]``.
    epsilon_cutoff : float, optional
        :func:`~llmref.inference.epsilon_filter`, in ``[0, 1)``.
    eta_cutoff : float, optional
        :func:`~llmref.inference.eta_filter`, in ``[0, 1)``.
    repetition_penalty : float, default 1.0
        :func:`~llmref.inference.repetition_penalty` (> 0; 1 is off).
    presence_penalty, frequency_penalty : float, default 0.0
        :func:`~llmref.inference.presence_frequency_penalty`, in ``[-2, 2]``.
    min_tokens_to_keep : int, default 1
        Passed to every truncation rule.
    filter_value : float, default -inf
        What the truncation rules set removed tokens to.

    Raises
    ------
    TypeError
        If a field has the wrong type.
    ValueError
        If a value is out of its range (the message names the field).

    Examples
    --------
    >>> from llmref.inference import SamplingConfig
    >>> SamplingConfig(temperature=0.7, top_p=0.9).top_p
    0.9
    >>> SamplingConfig(top_p=1.5)
    Traceback (most recent call last):
    ...
    ValueError: top_p must be in (0, 1], got 1.5
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    epsilon_cutoff: float | None = None
    eta_cutoff: float | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens_to_keep: int = 1
    filter_value: float = -math.inf

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        inf = math.inf
        try:
            put(
                "temperature",
                check_interval(
                    "temperature", self.temperature, 0.0, inf, open_low=True, open_high=True
                ),
            )
        except ValueError:
            raise ValueError(
                f"temperature must be a finite number > 0, got {self.temperature}; for greedy "
                "decoding take the argmax instead of sampling"
            ) from None
        if self.top_k is not None:
            put("top_k", check_int("top_k", self.top_k, minimum=0))
        ranges = {  # name: (low, high, open_low, open_high)
            "top_p": (0.0, 1.0, True, False),
            "min_p": (0.0, 1.0, False, False),
            "typical_p": (0.0, 1.0, True, False),
            "epsilon_cutoff": (0.0, 1.0, False, True),
            "eta_cutoff": (0.0, 1.0, False, True),
        }
        for name, (low, high, open_low, open_high) in ranges.items():
            value = getattr(self, name)
            if value is not None:
                put(
                    name,
                    check_interval(name, value, low, high, open_low=open_low, open_high=open_high),
                )
        put(
            "repetition_penalty",
            check_interval(
                "repetition_penalty",
                self.repetition_penalty,
                0.0,
                inf,
                open_low=True,
                open_high=True,
            ),
        )
        for name in ("presence_penalty", "frequency_penalty"):
            put(
                name,
                check_interval(
                    name, getattr(self, name), -2.0, 2.0, open_low=False, open_high=False
                ),
            )
        put(
            "min_tokens_to_keep",
            check_int("min_tokens_to_keep", self.min_tokens_to_keep, minimum=1),
        )
        put("filter_value", check_filter_value(self.filter_value))
