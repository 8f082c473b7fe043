"""Statistics over seeds: a row's mean with its 95% t-interval, and a row against the default, paired by seed.

The same seed gives two rows the same data order and the same base models, so their difference by seed removes the
spread the seed causes in both: the paired comparison separates rows that unpaired intervals cannot. Two tests of
the paired differences: Student's paired t-test, and the exact sign-flip test (every one of the 2**n sign patterns;
no normality assumed), both from scipy.
"""

import math
from dataclasses import dataclass

import numpy
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float | None  # None with one value: no interval
    high: float | None


@dataclass(frozen=True)
class PairedComparison:
    difference: Interval  # row minus default, by seed
    t_test_p: float | None  # None when it is undefined: fewer than two seeds, or the same difference for every seed
    sign_flip_p: float | None


def mean_interval(values: list[float]) -> Interval:
    """The mean and its 95% t-interval."""
    mean = float(numpy.mean(values))
    if len(values) < 2:
        return Interval(mean, None, None)
    half_width = stats.t.ppf((1 + CONFIDENCE) / 2, len(values) - 1) * stats.sem(values)
    return Interval(mean, mean - float(half_width), mean + float(half_width))


def paired_comparison(row: list[float], default: list[float]) -> PairedComparison:
    """`row` against `default`, both in seed order."""
    if len(row) != len(default):
        raise ValueError(f"paired values need the same seeds: {len(row)} against {len(default)}")
    differences = numpy.subtract(row, default)
    interval = mean_interval(list(differences))
    if len(differences) < 2 or numpy.ptp(differences) == 0:
        return PairedComparison(interval, None, None)
    t_test = stats.ttest_rel(row, default)
    sign_flip = stats.permutation_test((numpy.asarray(row), numpy.asarray(default)),
                                       lambda x, y: numpy.mean(x - y), permutation_type="samples",
                                       n_resamples=math.inf, alternative="two-sided")
    return PairedComparison(interval, float(t_test.pvalue), float(sign_flip.pvalue))


__all__ = ["CONFIDENCE", "Interval", "PairedComparison", "mean_interval", "paired_comparison"]
