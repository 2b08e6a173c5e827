"""Paged KV cache: fixed-size blocks from a shared pool, a block table per sequence."""

from __future__ import annotations

import torch

from .._checks import check_int, check_tensor
from ._registry import CACHES, CacheSpec
from .base import KVCache, compact_positions

__all__ = ["PagedCache"]


class PagedCache(KVCache):
    """Keys and values in fixed-size blocks allocated on demand from one pool (PagedAttention).

    Each row of the batch is a sequence with its own *block table* (the list of
    pool blocks holding its tokens, in order) and length; blocks come from a
    free list and return to it when a sequence is freed, so sequences of
    different lengths share memory without padding and a finished sequence's
    memory is reused at once. (That is what makes continuous batching — admitting
    new requests at every decoding step, a scheduling policy — cheap in memory;
    the cache itself only allocates blocks.) Memory is wasted only in each
    sequence's last, partly filled block.

    Parameters
    ----------
    n_blocks : int
        Blocks in the pool (>= 1).
    block_size : int
        Tokens per block (>= 1).

    Attributes
    ----------
    block_tables : list of list of int
        Pool block ids of each sequence, in token order.
    lengths : list of int
        Tokens held per sequence.
    free_blocks : list of int
        The free list.

    Raises
    ------
    TypeError, ValueError
        For sizes that are not ints >= 1.

    Notes
    -----
    :meth:`update` gathers each sequence's blocks into a dense ``(B, H_kv, S,
    D)`` tensor, right-padded to the longest sequence, and sets
    :attr:`key_positions` to ``(B, S)`` with ``-1`` on padding, from which the
    model's mask is per sequence. A fused kernel would read the blocks in place
    (its spec's ``layout`` is where a ``"block_table"`` variant would say so);
    gathering keeps this reference readable. Left padding is dropped (only the
    last ``lengths[b]`` tokens of row ``b`` are stored), so a padded row holds
    exactly the blocks it holds alone.

    References
    ----------
    :cite:t:`kwon2023vllm`

    Examples
    --------
    >>> import torch
    >>> from llmref.cache import PagedCache
    >>> cache = PagedCache(n_blocks=8, block_size=4)
    >>> k = torch.randn(2, 1, 6, 2)  # two sequences; the second has 3 real tokens
    >>> k_all, _ = cache.update(k, k, lengths=torch.tensor([6, 3]))
    >>> cache.lengths, cache.block_tables, len(cache.free_blocks)
    ([6, 3], [[0, 1], [2]], 5)
    >>> cache.free(0)  # sequence 0 finished: its blocks go back to the free list
    >>> cache.lengths, len(cache.free_blocks)
    ([0, 3], 7)
    """

    def __init__(self, n_blocks: int, block_size: int) -> None:
        super().__init__()
        self.n_blocks = check_int("n_blocks", n_blocks, minimum=1)
        self.block_size = check_int("block_size", block_size, minimum=1)
        self.free_blocks: list[int] = list(range(self.n_blocks - 1, -1, -1))
        self.block_tables: list[list[int]] = []
        self.lengths: list[int] = []
        self._k_pool: torch.Tensor | None = None
        self._v_pool: torch.Tensor | None = None

    @property
    def next_positions(self) -> torch.Tensor:
        """Position of each sequence's next token, shape ``(B,)``."""
        if not self.lengths:
            return super().next_positions
        return torch.tensor(self.lengths, dtype=torch.long)

    def next_key_positions(
        self, T: int, *, batch_size: int = 1, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Positions ``0 .. n_b - 1`` per row after the update, right-padded with ``-1``."""
        return compact_positions(self.lengths, T, batch_size, lengths)

    def update(
        self, k: torch.Tensor, v: torch.Tensor, *, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append each sequence's new tokens; return the dense, right-padded keys and values.

        Parameters
        ----------
        k : torch.Tensor
            Keys ``(B, H_kv, T, D)``; row ``b`` is sequence ``b``.
        v : torch.Tensor
            Values ``(B, H_kv, T, Dv)``.
        lengths : torch.Tensor, optional
            Real tokens per row, ``(B,)``, each ``<= T``: the last ``lengths[b]``
            of row ``b`` are stored (left padding, as in batched generation).
            Default: all ``T``.

        Returns
        -------
        k_all, v_all : torch.Tensor
            ``(B, H_kv, S, D)`` and ``(B, H_kv, S, Dv)`` with ``S`` the longest
            sequence; padding is zero and has position ``-1``.

        Raises
        ------
        ValueError
            If the batch size changes, ``lengths`` is out of range, or the
            pool has no free block left.
        """
        k, v = self._check_kv(k, v)
        B, H, T, _ = k.shape
        if self._k_pool is None or self._v_pool is None:
            self._k_pool = k.new_zeros(self.n_blocks, H, self.block_size, k.shape[3])
            self._v_pool = v.new_zeros(self.n_blocks, H, self.block_size, v.shape[3])
            self.block_tables = [[] for _ in range(B)]
            self.lengths = [0] * B
        if B != len(self.lengths):
            raise ValueError(f"batch size must stay {len(self.lengths)} sequences, got {B}")
        if lengths is None:
            new = [T] * B
        else:
            check_tensor("lengths", lengths, ndim=1)
            self.ragged = True
            new = [int(n) for n in lengths]
            if len(new) != B or any(not 0 <= n <= T for n in new):
                raise ValueError(f"lengths must be {B} ints in [0, {T}], got {new}")
        for b, n in enumerate(new):
            for i in range(T - n, T):
                self._append(b, k[b, :, i], v[b, :, i])
        self.seen_tokens += T
        return self._gather()

    def _append(self, b: int, k: torch.Tensor, v: torch.Tensor) -> None:
        assert self._k_pool is not None and self._v_pool is not None
        slot = self.lengths[b] % self.block_size
        if slot == 0:  # the sequence's last block is full (or it has none): take a free one
            if not self.free_blocks:
                raise ValueError(
                    f"paged cache is out of blocks: all {self.n_blocks} blocks of "
                    f"{self.block_size} tokens are in use"
                )
            self.block_tables[b].append(self.free_blocks.pop())
        block = self.block_tables[b][-1]
        self._k_pool[block, :, slot] = k
        self._v_pool[block, :, slot] = v
        self.lengths[b] += 1

    def _gather(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._k_pool is not None and self._v_pool is not None
        B, S = len(self.lengths), max(self.lengths)
        n_tab = -(-S // self.block_size)
        table = torch.tensor(
            [t + [0] * (n_tab - len(t)) for t in self.block_tables], dtype=torch.long
        )
        device = self._k_pool.device
        positions = torch.arange(n_tab * self.block_size, device=device)[:S]
        valid = positions < torch.tensor(self.lengths, device=device).unsqueeze(-1)
        self.key_positions = torch.where(valid, positions, -1)

        def gather(pool: torch.Tensor) -> torch.Tensor:
            blocks = pool[table.to(device)]  # (B, n_tab, H, block, D)
            dense = blocks.permute(0, 2, 1, 3, 4).reshape(B, pool.shape[1], -1, pool.shape[3])
            return dense[:, :, :S] * valid.view(B, 1, S, 1).to(pool.dtype)

        return gather(self._k_pool), gather(self._v_pool)

    def free(self, b: int) -> None:
        """Return sequence ``b``'s blocks to the free list and empty it (its row stays).

        Parameters
        ----------
        b : int
            Row of the sequence.
        """
        b = check_int("b", b, minimum=0)
        if b >= len(self.lengths):
            raise ValueError(f"b must be < {len(self.lengths)} (the batch size), got {b}")
        self.free_blocks.extend(reversed(self.block_tables[b]))
        self.block_tables[b] = []
        self.lengths[b] = 0
        self.ragged = True

    def __len__(self) -> int:
        return max(self.lengths, default=0)

    def reset(self) -> None:
        self.free_blocks = list(range(self.n_blocks - 1, -1, -1))
        self.block_tables = [[] for _ in self.lengths]
        self.lengths = [0] * len(self.lengths)
        self.seen_tokens = 0
        self.key_positions = torch.zeros(1, 0, dtype=torch.long)
        self.ragged = False

    @property
    def nbytes(self) -> int:
        pools = (self._k_pool, self._v_pool)
        return sum(t.numel() * t.element_size() for t in pools if t is not None)


CACHES.add(
    CacheSpec(
        name="paged",
        example=lambda: PagedCache(n_blocks=32, block_size=3),
        fn=PagedCache,
        paper="kwon2023vllm",
        third_party="vllm PagedAttention",
        traces=True,  # the block tables and free list are Python state: dynamo replays them
    )
)
