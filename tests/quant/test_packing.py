"""Bit packing, the documented nibble order, and layout converters."""

from __future__ import annotations

import pytest
import torch

from llmref.quant import from_bnb_4bit, pack_codes, quantize, to_bnb_4bit, unpack_codes
from llmref.quant.packing import packed_nbytes
from tests.quant.helpers import randn


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 7, 8, 33, 256])
def test_pack_unpack_round_trip(bits, n):
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(n))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(n, bits)
    assert torch.equal(unpack_codes(packed, bits, n), codes.to(torch.uint8))


def test_documented_nibble_and_bit_order():
    # 4-bit: element 2j in the low nibble of byte j, element 2j+1 in the high nibble
    assert pack_codes(torch.tensor([0x1, 0xA, 0x3, 0x4]), 4).tolist() == [0xA1, 0x43]
    # 2-bit: element i at bits 2i..2i+1 of its byte
    assert pack_codes(torch.tensor([1, 2, 3, 0, 3]), 2).tolist() == [0b00111001, 0b11]
    # 6-bit: a little-endian bit stream, 4 codes in 3 bytes
    stream = 1 | (2 << 6) | (3 << 12) | (63 << 18)
    assert pack_codes(torch.tensor([1, 2, 3, 63]), 6).tolist() == list(stream.to_bytes(3, "little"))


def test_pack_errors():
    with pytest.raises(ValueError, match="codes must lie in"):
        pack_codes(torch.tensor([16]), 4)
    with pytest.raises(ValueError, match="codes must lie in"):
        pack_codes(torch.tensor([-1]), 4)
    with pytest.raises(TypeError, match="integer tensor"):
        pack_codes(torch.tensor([1.0]), 4)
    with pytest.raises(ValueError, match="bits must be between 1 and 8"):
        pack_codes(torch.tensor([1]), 9)
    with pytest.raises(TypeError, match=r"torch\.uint8"):
        unpack_codes(torch.tensor([1], dtype=torch.int32), 4, 2)
    with pytest.raises(ValueError, match="fewer than"):
        unpack_codes(torch.tensor([1], dtype=torch.uint8), 4, 3)


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
def test_bnb_layout_round_trip(fmt):
    x = randn(6, 128)
    qt = quantize(x, fmt, group_size=32)
    packed, absmax = to_bnb_4bit(qt)
    assert packed.shape == (384, 1)
    codes = unpack_codes(qt["codes"], 4, 768)
    # bitsandbytes puts element 2j in the high nibble
    assert torch.equal(packed[:, 0] >> 4, codes[0::2]) and torch.equal(
        packed[:, 0] & 15, codes[1::2]
    )
    back = from_bnb_4bit(packed, absmax, (6, 128), quant_type=fmt, blocksize=32)
    assert back.equal(qt)


def test_bnb_converter_errors():
    qt = quantize(randn(2, 64), "nf4")
    with pytest.raises(ValueError, match="'nf4' or 'fp4'"):
        to_bnb_4bit(quantize(randn(2, 64), "int4"))
    packed, absmax = to_bnb_4bit(qt)
    with pytest.raises(ValueError, match="quant_type"):
        from_bnb_4bit(packed, absmax, (2, 64), quant_type="int4")
    with pytest.raises(ValueError, match="expected 64 packed bytes"):
        from_bnb_4bit(packed[:10], absmax, (2, 64))
    with pytest.raises(ValueError, match="multiple of blocksize"):
        from_bnb_4bit(packed, absmax, (4, 32))
    # double-quantized tensors export their reconstructed absmax
    dq = quantize(randn(2, 64), "nf4", double_quant=True)
    assert to_bnb_4bit(dq)[1].dtype == torch.float32
