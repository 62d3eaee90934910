"""Experiment bucketing, pure Python (no C extension), identical to the server's.

murmur3 x86 32-bit, seed 0, of UTF-8 `experiment_id + "/" + unit_id`, modulo 10,000.
Lets a client predict or log a user's variant without a round trip.
"""

from __future__ import annotations

from collections.abc import Sequence

BUCKETS = 10_000
_MASK = 0xFFFFFFFF


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86 32-bit, unsigned."""
    c1, c2 = 0xCC9E2D51, 0x1B873593
    h = seed & _MASK
    tail_start = len(data) - len(data) % 4
    for i in range(0, tail_start, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * c1) & _MASK
        k = ((k << 15) | (k >> 17)) & _MASK
        k = (k * c2) & _MASK
        h ^= k
        h = ((h << 13) | (h >> 19)) & _MASK
        h = (h * 5 + 0xE6546B64) & _MASK
    tail = data[tail_start:]
    if tail:
        k = int.from_bytes(tail, "little")
        k = (k * c1) & _MASK
        k = ((k << 15) | (k >> 17)) & _MASK
        k = (k * c2) & _MASK
        h ^= k
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    h ^= h >> 16
    return h


def bucket_of(experiment_id: str, unit_id: str) -> int:
    """The unit's bucket in [0, 10000)."""
    return murmur3_32(f"{experiment_id}/{unit_id}".encode()) % BUCKETS


def assign_variant(experiment_id: str, unit_id: str, weights: Sequence[int]) -> int:
    """Index of the variant whose cumulative range (weights in percent) holds the bucket."""
    bucket = bucket_of(experiment_id, unit_id)
    upper = 0
    for index, weight in enumerate(weights):
        upper += weight * 100
        if bucket < upper:
            return index
    return len(weights) - 1
