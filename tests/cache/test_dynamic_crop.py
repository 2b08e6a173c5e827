"""DynamicCache.crop: dropping the newest tokens leaves the cache that never saw them."""

from __future__ import annotations

import pytest
import torch

from llmref.cache import DynamicCache
from llmref.testing import assert_identical


def _kv(T: int, B: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 2, T, 4, generator=g), torch.randn(B, 2, T, 4, generator=g)


@pytest.mark.parametrize("lengths", [None, torch.tensor([5, 3])])
def test_crop_then_update_equals_never_having_seen_the_dropped_tokens(lengths):
    k0, v0 = _kv(5)
    k1, v1 = _kv(3, seed=1)  # tokens that get dropped (rejected draft tokens)
    k2, v2 = _kv(2, seed=2)
    cropped, fresh = DynamicCache(), DynamicCache()
    cropped.update(k0, v0, lengths=lengths)
    cropped.update(k1, v1)
    cropped.crop(6)  # keep the prompt and one of the three
    fresh.update(k0, v0, lengths=lengths)
    fresh.update(k1[:, :, :1], v1[:, :, :1])
    assert len(cropped) == len(fresh) == 6
    assert cropped.seen_tokens == fresh.seen_tokens == 6
    assert_identical(cropped.positions_for(2, batch_size=2), fresh.positions_for(2, batch_size=2))
    got, want = cropped.update(k2, v2), fresh.update(k2, v2)
    assert_identical(got[0], want[0])
    assert_identical(got[1], want[1])
    assert_identical(cropped.key_positions, fresh.key_positions)


def test_crop_to_zero_and_to_full_length():
    cache = DynamicCache()
    k, v = _kv(4)
    cache.update(k, v)
    cache.crop(4)
    assert len(cache) == 4 and cache.key_positions.tolist() == [[0, 1, 2, 3]] * 2
    cache.crop(0)
    assert len(cache) == 0 and cache.seen_tokens == 0
    out_k, _ = cache.update(k, v)
    assert_identical(out_k, k)


def test_crop_bad_input():
    cache = DynamicCache()
    k, v = _kv(4)
    cache.update(k, v, lengths=torch.tensor([4, 2]))
    with pytest.raises(TypeError, match="length must be an int, got float"):
        cache.crop(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="length must be >= 0, got -1"):
        cache.crop(-1)
    with pytest.raises(ValueError, match="length must be <= the 4 tokens held, got 5"):
        cache.crop(5)
    with pytest.raises(ValueError, match="length must keep every padding slot"):
        cache.crop(1)  # row 1's first two slots are padding
