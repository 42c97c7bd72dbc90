"""Bit-packing of integer codes: the documented layout, round trips at every width, bad input."""

import pytest
import torch

from qsr_plugin.export.packing import (
    pack,
    pack_signed,
    packed_size,
    unpack,
    unpack_signed,
)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("count", [1, 7, 8, 9, 1001])
def test_unsigned_round_trip_at_every_width(bits, count):
    generator = torch.Generator().manual_seed(bits * 1000 + count)
    fields = torch.randint(0, 2**bits, (count,), generator=generator)
    fields[0] = 2**bits - 1  # the extremes are always present
    fields[-1] = 0
    packed = pack(fields, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_size(count, bits) == -(-count * bits // 8)
    assert torch.equal(unpack(packed, bits, count).long(), fields)


@pytest.mark.parametrize("bits", range(2, 9))
def test_signed_round_trip_covers_the_whole_range(bits):
    codes = torch.arange(-(2 ** (bits - 1)), 2 ** (bits - 1)).repeat(3).reshape(3, -1)
    packed = pack_signed(codes, bits)
    assert torch.equal(
        unpack_signed(packed, bits, codes.numel()).reshape(codes.shape).long(), codes
    )


def test_two_bit_codes_pack_four_per_byte_lowest_bits_first():
    assert pack(torch.tensor([1, 2, 3, 0, 3]), 2).tolist() == [0b00_11_10_01, 0b11]


def test_four_bit_codes_pack_two_per_byte_first_in_the_low_nibble():
    assert pack(torch.tensor([0x3, 0xA, 0xF]), 4).tolist() == [0xA3, 0x0F]


def test_odd_widths_straddle_bytes_as_documented():
    # 3 bits: stream 100 010 110 (codes 1, 2, 3), LSB first.
    assert pack(torch.tensor([1, 2, 3]), 3).tolist() == [0b11010001, 0]
    # 6 bits: four codes fill three bytes exactly.
    codes = torch.tensor([0b000001, 0b000010, 0b000011, 0b111111])
    stream = sum(int(c) << (6 * i) for i, c in enumerate(codes))
    assert pack(codes, 6).tolist() == list(stream.to_bytes(3, "little"))
    # 5 and 7 bits: eight codes in five and seven bytes.
    for bits in (5, 7):
        codes = torch.arange(8) % (2**bits)
        stream = sum(int(c) << (bits * i) for i, c in enumerate(codes))
        assert pack(codes, bits).tolist() == list(stream.to_bytes(bits, "little"))


def test_signed_codes_are_stored_as_twos_complement():
    assert pack_signed(torch.tensor([-8, -1, 7, 0]), 4).tolist() == [0xF8, 0x07]


@pytest.mark.parametrize("bits", [1, 9, 4.0, True])
def test_bad_widths_are_refused(bits):
    with pytest.raises(ValueError, match=r"bits must be (an int )?in 2\.\.8, got"):
        pack(torch.tensor([0]), bits)


def test_out_of_range_values_are_refused():
    with pytest.raises(ValueError, match=r"values must lie in \[0, 3\] for 2 bits, got \[0, 4\]"):
        pack(torch.tensor([0, 4]), 2)
    with pytest.raises(ValueError, match=r"codes must lie in \[-2, 1\] for 2 bits, got \[-3, 1\]"):
        pack_signed(torch.tensor([-3, 1]), 2)
    with pytest.raises(ValueError, match="needs an integer tensor, got dtype torch.float32"):
        pack(torch.tensor([0.0]), 2)


def test_unpack_refuses_data_of_the_wrong_length_or_type():
    packed = pack(torch.arange(8) % 4, 2)
    with pytest.raises(
        ValueError, match="9 codes of 2 bits take 3 bytes, got 2; the data is trunc"
    ):
        unpack(packed, 2, 9)
    with pytest.raises(ValueError, match="needs a 1-D uint8 tensor, got torch.int64"):
        unpack(packed.long(), 2, 8)
