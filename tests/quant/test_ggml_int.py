"""ggml blocks as llmref integers (exact), the GGUF container's stored view, and the renames."""

from __future__ import annotations

import warnings

import pytest
import torch

import llmref.models
import llmref.quant
from llmref.quant import (
    dequantize,
    from_ggml_blocks,
    ggml_to_int,
    quantize,
    read_gguf,
    to_ggml_blocks,
)
from llmref.testing import assert_identical


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fmts", [("q4_0",), ("q4_1",), ("q8_0",), ("q4_0", "q4_1", "q4_0")])
def test_ggml_to_int_dequantizes_to_the_same_bits(fmts):
    parts = [quantize(_randn(3 + i, 96, seed=i), f) for i, f in enumerate(fmts)]
    both = ggml_to_int(parts)
    assert both.fmt == ("int8" if fmts == ("q8_0",) else "int4")
    assert both.options["group_size"] == 32
    # d*q and -8*d are exact in float32, so the sums equal ggml's d*(q-8) and d*q+m bit for bit.
    assert_identical(dequantize(both), torch.cat([dequantize(p) for p in parts]))


def test_ggml_to_int_reorders_rows():
    a, b = quantize(_randn(4, 64), "q4_1"), quantize(_randn(2, 64, seed=1), "q4_0")
    order = torch.tensor([2, 0, 3, 1])
    both = ggml_to_int([a, b], row_order=[order, None])
    assert_identical(dequantize(both), torch.cat([dequantize(a)[order], dequantize(b)]))


def test_ggml_to_int_refuses_what_is_not_one_integer_format():
    q4, q8 = quantize(_randn(2, 64), "q4_0"), quantize(_randn(2, 64), "q8_0")
    with pytest.raises(ValueError, match="one code width"):
        ggml_to_int([q4, q8])
    with pytest.raises(ValueError, match="q4_k"):
        ggml_to_int([quantize(_randn(2, 256), "q4_k")])
    with pytest.raises(ValueError, match="at least one"):
        ggml_to_int([])
    with pytest.raises(ValueError, match="equal columns"):
        ggml_to_int([q4, quantize(_randn(2, 96), "q4_0")])
    with pytest.raises(ValueError, match="row_order must have 1"):
        ggml_to_int([q4], row_order=[None, None])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        ggml_to_int([q4], row_order=[torch.tensor([0, 1, 2])])


def test_gguf_file_blocks_are_the_stored_bytes(tmp_path):
    gguf = pytest.importorskip("gguf")
    x = _randn(4, 64).numpy()
    path = tmp_path / "blocks.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    packed = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q4_1)
    w.add_tensor("w", packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q4_1)
    w.add_tensor("f", x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = read_gguf(path)
    qt = f.blocks("w")
    assert qt.fmt == "q4_1" and tuple(qt.shape) == (4, 64)
    assert_identical(to_ggml_blocks(qt), torch.from_numpy(packed))
    assert_identical(f.tensor("w"), dequantize(qt))
    with pytest.raises(ValueError, match=r"blocks\.gguf: tensor .f. is stored as f32"):
        f.blocks("f")


def test_renamed_functions_warn_with_their_replacement():
    with pytest.warns(DeprecationWarning, match="llmref.quant.to_ggml_blocks"):
        assert llmref.quant.to_gguf is to_ggml_blocks
    with pytest.warns(DeprecationWarning, match="llmref.quant.from_ggml_blocks"):
        assert llmref.quant.from_gguf is from_ggml_blocks
    with pytest.warns(DeprecationWarning, match="llmref.quant.read_gguf"):
        assert llmref.models.read_gguf is read_gguf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert llmref.models.from_gguf is not None  # the model loader keeps its name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        llmref.quant.nope  # noqa: B018
