"""Intervals of a study's numbers: means over seeds with Student's t, differences taken seed by
seed (a seed fixes a run's data order and backbone initialisation, so its two arms are a pair),
and the verdict rules `lrt study report` applies to a paired difference LRT - baseline:

1. *supported* if its 95% confidence interval lies below 0;
2. *not supported at this scale* if it lies above 0;
3. *equivalent within +-margin* if two one-sided tests at 5% reject both "difference <= -margin"
   and "difference >= +margin", that is, if its 90% confidence interval lies inside +-margin;
4. *inconclusive* otherwise.

The first rule that applies is the verdict, so a difference that is both significant and within
the margin counts as significant (the report shows the 90% interval beside it)."""

from __future__ import annotations

import math

# Student's t quantiles by degrees of freedom (past 30 the normal's, within 4% of t): the 97.5%
# one makes two-sided 95% intervals, the 95% one the 90% intervals of the two one-sided tests
T_975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    11: 2.201,
    12: 2.179,
    13: 2.160,
    14: 2.145,
    15: 2.131,
    16: 2.120,
    17: 2.110,
    18: 2.101,
    19: 2.093,
    20: 2.086,
    21: 2.080,
    22: 2.074,
    23: 2.069,
    24: 2.064,
    25: 2.060,
    26: 2.056,
    27: 2.052,
    28: 2.048,
    29: 2.045,
    30: 2.042,
}
T_95 = {
    1: 6.314,
    2: 2.920,
    3: 2.353,
    4: 2.132,
    5: 2.015,
    6: 1.943,
    7: 1.895,
    8: 1.860,
    9: 1.833,
    10: 1.812,
    11: 1.796,
    12: 1.782,
    13: 1.771,
    14: 1.761,
    15: 1.753,
    16: 1.746,
    17: 1.740,
    18: 1.734,
    19: 1.729,
    20: 1.725,
    21: 1.721,
    22: 1.717,
    23: 1.714,
    24: 1.711,
    25: 1.708,
    26: 1.706,
    27: 1.703,
    28: 1.701,
    29: 1.699,
    30: 1.697,
}
QUANTILES = {0.95: (T_975, 1.96), 0.90: (T_95, 1.645)}  # confidence level -> (t table, normal quantile)


def interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean, standard deviation and the half-width of the two-sided `level` confidence interval
    of the mean (Student's t with n - 1 degrees of freedom; infinite for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    table, normal = QUANTILES[level]
    t = table.get(n - 1, normal)
    return mean, std, (t * std / math.sqrt(n) if n > 1 else math.inf)


def paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    """a - b seed by seed, over the seeds both have."""
    return [a[seed] - b[seed] for seed in sorted(a.keys() & b.keys())]


def equivalent(differences: list[float], margin: float) -> bool:
    """Two one-sided tests at 5%: the 90% confidence interval lies inside +-margin."""
    mean, _, half = interval(differences, level=0.90)
    return -margin < mean - half and mean + half < margin


BELOW, ABOVE, EQUIVALENT, INCONCLUSIVE = "below", "above", "equivalent", "inconclusive"


def classify(differences: list[float], margin: float) -> str:
    """Where a paired difference lies by the module's rules: below 0, above 0, equivalent within
    +-margin, or inconclusive (always with fewer than two pairs)."""
    if len(differences) < 2:
        return INCONCLUSIVE
    mean, _, half = interval(differences)
    if mean + half < 0:
        return BELOW
    if mean - half > 0:
        return ABOVE
    return EQUIVALENT if equivalent(differences, margin) else INCONCLUSIVE


def verdict(differences: list[float], margin: float) -> str:
    """The verdict on a claim that LRT - baseline < 0, in the words of the module's rules."""
    return {
        BELOW: "supported",
        ABOVE: "not supported at this scale",
        EQUIVALENT: f"equivalent within ±{margin:g}",
        INCONCLUSIVE: "inconclusive",
    }[classify(differences, margin)]
