"""Agreement between scorers: Krippendorff's alpha, Cohen's kappa and Fleiss' kappa.

Plain functions over plain data, so they can be checked against hand computations without Django.
A rating table is a list of units (the items), each a list of the values the scorers gave it; `None`
marks a scorer who did not score that unit. A result of `None` means the figure is undefined for this
data (too few pairable values, or no variation at all, where agreement is not a meaningful number).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from itertools import permutations

LEVELS = ("nominal", "ordinal", "interval")


def krippendorff_alpha(units: Sequence[Sequence], level: str = "interval") -> float | None:
    """Krippendorff's alpha = 1 - D_o / D_e over the coincidence matrix (Krippendorff 2011).

    Units with fewer than two values are not pairable and are left out; missing values are allowed.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}")
    # Coincidences: each ordered pair of values within a unit, weighted 1 / (m_u - 1).
    coincidence: Counter = Counter()
    for unit in units:
        values = [value for value in unit if value is not None]
        m = len(values)
        if m < 2:
            continue
        for a, b in permutations(values, 2):
            coincidence[(a, b)] += 1 / (m - 1)
    if not coincidence:
        return None
    totals: Counter = Counter()
    for (a, _b), weight in coincidence.items():
        totals[a] += weight
    n = sum(totals.values())
    if n <= 1:
        return None
    delta = _distance(level, totals)
    observed = sum(weight * delta(a, b) for (a, b), weight in coincidence.items())
    expected = sum(totals[a] * totals[b] * delta(a, b) for a in totals for b in totals) / (n - 1)
    if expected == 0:
        return None
    return 1 - observed / expected


def _distance(level: str, totals: Counter):
    if level == "nominal":
        return lambda a, b: 0.0 if a == b else 1.0
    if level == "interval":
        return lambda a, b: float(a - b) ** 2
    # Ordinal: the squared sum of the marginals between the two ranks, minus half of each end.
    ranks = sorted(totals)
    index = {value: i for i, value in enumerate(ranks)}

    def ordinal(a, b):
        if a == b:
            return 0.0
        low, high = sorted((index[a], index[b]))
        between = sum(totals[ranks[i]] for i in range(low, high + 1))
        return (between - (totals[ranks[low]] + totals[ranks[high]]) / 2) ** 2

    return ordinal


def cohen_kappa(pairs: Sequence[tuple[Hashable, Hashable]]) -> float | None:
    """Cohen's kappa for two raters: each pair is (rater 1's category, rater 2's category) on one item."""
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(1 for a, b in pairs if a == b) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in first) / (n * n)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa: one row per item, one column per category, each cell the raters who chose it.

    Every row must hold the same number of ratings (at least two).
    """
    if not counts:
        return None
    raters = sum(counts[0])
    if raters < 2 or any(sum(row) != raters for row in counts):
        raise ValueError("Fleiss' kappa needs the same number of ratings (two or more) for every item")
    items = len(counts)
    agreement = [(sum(c * c for c in row) - raters) / (raters * (raters - 1)) for row in counts]
    p_bar = sum(agreement) / items
    shares = [sum(row[j] for row in counts) / (items * raters) for j in range(len(counts[0]))]
    p_e = sum(p * p for p in shares)
    if p_e == 1:
        return None
    return (p_bar - p_e) / (1 - p_e)


def category_counts(units: Sequence[Sequence[Hashable]], categories: Sequence[Hashable]) -> list[list[int]]:
    """Fleiss' table from the values each item received."""
    return [[Counter(unit)[category] for category in categories] for unit in units]
