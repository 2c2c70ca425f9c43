"""Seeded partitioning of positions: split sizes, stratified allocation, permutations.

The functions work on integer positions only, so they are easy to test and the
:class:`~dspex_lab.data.Dataset` methods stay thin.
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from collections.abc import Sequence
from fractions import Fraction

import numpy

from dspex_lab.errors import DatasetError

__all__ = [
    "allocate",
    "largest_remainder",
    "make_generator",
    "normalize_fractions",
    "partition",
]

_FRACTION_TOLERANCE = 1e-9
# Floats like 0.6 are not exactly 3/5 in binary; snapping to a nearby rational with
# a bounded denominator removes that noise before the exact quota arithmetic.
_MAX_DENOMINATOR = 10**9


def make_generator(seed: int) -> numpy.random.Generator:
    """Return a fresh generator for an explicit seed, after checking the seed.

    Args:
        seed: a non-negative integer.

    Returns:
        A ``numpy.random.Generator`` seeded with ``seed``.

    Raises:
        TypeError: the seed is not an integer.
        DatasetError: the seed is negative.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise DatasetError(f"seed must be non-negative, got {seed}")
    return numpy.random.default_rng(int(seed))


def normalize_fractions(fractions: Sequence[float]) -> tuple[Fraction, ...]:
    """Check split fractions and return them as exact rationals summing to one.

    Args:
        fractions: one fraction per part, each in ``[0, 1]``, summing to 1 within 1e-9.

    Returns:
        The fractions as :class:`fractions.Fraction`, rescaled to sum exactly to 1.

    Raises:
        DatasetError: no fractions, a fraction outside ``[0, 1]`` or not a number, or a sum not 1.
    """
    if not fractions:
        raise DatasetError("split needs at least one fraction, e.g. split(0.8, 0.2, seed=0)")
    exact = []
    for fraction in fractions:
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
            raise DatasetError(f"split fractions must be numbers, got {fraction!r}")
        if not math.isfinite(float(fraction)) or not 0 <= fraction <= 1:
            raise DatasetError(f"split fractions must be in [0, 1], got {fraction!r}")
        rational = fraction if isinstance(fraction, numbers.Rational) else Fraction(float(fraction))
        exact.append(Fraction(rational).limit_denominator(_MAX_DENOMINATOR))
    total = math.fsum(float(fraction) for fraction in fractions)
    if abs(total - 1.0) > _FRACTION_TOLERANCE:
        raise DatasetError(f"split fractions must sum to 1, got {list(fractions)} (sum {total!r})")
    exact_total = sum(exact, Fraction(0))
    return tuple(fraction / exact_total for fraction in exact)


def largest_remainder(total: int, fractions: Sequence[Fraction]) -> list[int]:
    """Divide ``total`` items into parts proportional to ``fractions`` (Hamilton's method).

    Each part gets the floor of its quota; the leftover items go to the parts with
    the largest fractional remainders, ties to the earlier part.

    Args:
        total: the number of items.
        fractions: exact fractions summing to 1.

    Returns:
        The part sizes, summing to ``total``.
    """
    return allocate([total], fractions)[0]


def allocate(stratum_sizes: Sequence[int], fractions: Sequence[Fraction]) -> list[list[int]]:
    """Divide each stratum among the parts, keeping both margins exact.

    Part sizes equal ``largest_remainder(sum(stratum_sizes), fractions)``, so a
    stratified split has the same sizes as an unstratified one. Each stratum's
    count in a part is the floor or the ceiling of its quota whenever such an
    allocation exists (it is a bipartite matching, solved by a greedy pass on the
    largest remainders followed by augmenting paths).

    Args:
        stratum_sizes: the number of items in each stratum.
        fractions: exact fractions summing to 1, one per part.

    Returns:
        ``counts[stratum][part]``.
    """
    part_count = len(fractions)
    quotas = [[size * fraction for fraction in fractions] for size in stratum_sizes]
    counts = [[math.floor(quota) for quota in row] for row in quotas]
    remainders = [
        [quota - floor for quota, floor in zip(row, count_row, strict=True)]
        for row, count_row in zip(quotas, counts, strict=True)
    ]

    part_totals = _hamilton(sum(stratum_sizes), fractions)
    row_need = [size - sum(row) for size, row in zip(stratum_sizes, counts, strict=True)]
    column_need = [part_totals[part] - sum(row[part] for row in counts) for part in range(part_count)]

    # extra[s][j] is 1 when stratum s gets its quota's ceiling in part j; only cells
    # with a positive remainder may, so every count stays within floor..ceiling.
    extra = [[0] * part_count for _ in stratum_sizes]
    cells = sorted(
        (
            (stratum, part)
            for stratum in range(len(stratum_sizes))
            for part in range(part_count)
            if remainders[stratum][part] > 0
        ),
        key=lambda cell: (-remainders[cell[0]][cell[1]], cell[0], cell[1]),
    )
    for stratum, part in cells:
        if row_need[stratum] > 0 and column_need[part] > 0:
            extra[stratum][part] = 1
            row_need[stratum] -= 1
            column_need[part] -= 1

    for stratum in range(len(stratum_sizes)):
        while row_need[stratum] > 0 and _augment(stratum, remainders, extra, column_need):
            row_need[stratum] -= 1

    for stratum, row in enumerate(counts):
        for part in range(part_count):
            row[part] += extra[stratum][part]
    # Only reached if no floor/ceiling allocation exists: keep the margins exact anyway.
    for stratum, row in enumerate(counts):
        for part in range(part_count):
            moved = min(row_need[stratum], column_need[part])
            row[part] += moved
            row_need[stratum] -= moved
            column_need[part] -= moved
    return counts


def _hamilton(total: int, fractions: Sequence[Fraction]) -> list[int]:
    quotas = [total * fraction for fraction in fractions]
    sizes = [math.floor(quota) for quota in quotas]
    order = sorted(range(len(fractions)), key=lambda part: (-(quotas[part] - sizes[part]), part))
    for part in order[: total - sum(sizes)]:
        sizes[part] += 1
    return sizes


def _augment(
    start: int,
    remainders: list[list[Fraction]],
    extra: list[list[int]],
    column_need: list[int],
) -> bool:
    """Find an alternating path from ``start`` to a part that still needs items and flip it."""
    part_count = len(column_need)
    column_parent: dict[int, int] = {}
    row_parent: dict[int, int | None] = {start: None}
    queue = deque([start])
    while queue:
        stratum = queue.popleft()
        for part in range(part_count):
            if part in column_parent or extra[stratum][part] or remainders[stratum][part] <= 0:
                continue
            column_parent[part] = stratum
            if column_need[part] > 0:
                column: int | None = part
                while column is not None:
                    row = column_parent[column]
                    extra[row][column] = 1
                    previous = row_parent[row]
                    if previous is not None:
                        extra[row][previous] = 0
                    column = previous
                column_need[part] -= 1
                return True
            for other, other_row in enumerate(extra):
                if other_row[part] and other not in row_parent:
                    row_parent[other] = part
                    queue.append(other)
    return False


def partition(
    strata: Sequence[Sequence[int]],
    fractions: Sequence[Fraction],
    *,
    generator: numpy.random.Generator,
) -> list[list[int]]:
    """Randomly partition positions into parts, stratum by stratum.

    Args:
        strata: the positions of each stratum (one stratum for an unstratified split),
            in a deterministic order.
        fractions: exact fractions summing to 1, one per part.
        generator: the seeded generator; each stratum is permuted in turn.

    Returns:
        The positions of each part, sorted ascending so a part keeps the dataset's order.
    """
    counts = allocate([len(stratum) for stratum in strata], fractions)
    parts: list[list[int]] = [[] for _ in fractions]
    for stratum, stratum_counts in zip(strata, counts, strict=True):
        shuffled = [stratum[position] for position in generator.permutation(len(stratum))]
        start = 0
        for part, count in enumerate(stratum_counts):
            parts[part].extend(shuffled[start : start + count])
            start += count
    return [sorted(part) for part in parts]
