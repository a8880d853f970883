"""How likely all in-memory checkpoints survive a simultaneous failure of k nodes.

When k of the N nodes fail at once, every checkpoint that still has a live holder is restored
from CPU memory; if every holder of some node's checkpoint failed, the whole job must roll back to
persistent storage. With the k failed nodes drawn uniformly among the C(N, k) subsets, the
*recovery probability* is the fraction of k-subsets that leave every checkpoint a live holder.

Three ways to compute it:

* **exact enumeration** (:func:`enumerate_probability`): try every k-subset. Works for any
  placement, explicit ones included, while C(N, k) stays in the millions.
* **exact counting** (:func:`counting_probability`): for group, ring and mixed placements (and
  their failure-domain aware variants, which only relabel nodes). A group of m nodes loses a
  checkpoint only when all m fail; a ring loses one when m consecutive nodes fail. Count the
  failure subsets each part survives, per number of failures in the part, and combine the parts
  by polynomial product (convolution). Python integers keep it exact for N = 10,000.
* **Monte Carlo** (:func:`monte_carlo_probability`): sample failure sets, optionally adding
  correlated failures of whole failure domains (racks), with a Wilson confidence interval.

The paper states, for group placement with m | N, the probability
1 - N*C(N-m, k-m) / (m*C(N, k)) (:func:`paper_closed_form`). It counts the subsets that lose one
given group and multiplies by the N/m groups; when k >= 2m two groups can be lost together, the
subsets are counted twice, and the expression is only a lower bound.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

from shared.placement import Placement

ENUMERATION_MAX_SUBSETS = 2_000_000
"""Largest C(N, k) that :func:`enumerate_probability` agrees to try."""

_CELLS_PER_CHUNK = 1 << 22  # bool cells (subsets x nodes x replicas) per vectorised chunk


@dataclass(frozen=True, slots=True)
class RecoveryProbability:
    """Probability that every checkpoint keeps at least one live holder.

    Attributes:
        probability: the probability (exact, or the Monte Carlo estimate), 0..1.
        method: "exact-enumeration", "exact-counting" or "monte-carlo".
        ci_low: lower end of the confidence interval; equals ``probability`` for exact methods.
        ci_high: upper end of the confidence interval; equals ``probability`` for exact methods.
        trials: Monte Carlo samples drawn; None for exact methods.
        closed_form: the paper's expression, for group placements (m | N); else None.
        closed_form_exact: True when the paper's expression is exact (k < 2m); otherwise it is
            only a lower bound.
    """

    probability: float
    method: str
    ci_low: float
    ci_high: float
    trials: int | None = None
    closed_form: float | None = None
    closed_form_exact: bool = False


def enumerate_surviving_subsets(placement: Placement, failures: int) -> int:
    """Number of k-subsets of failed nodes that every checkpoint survives, by trying them all.

    Raises:
        ValueError: if ``failures`` is outside 0..N, or C(N, k) exceeds
            ``ENUMERATION_MAX_SUBSETS``.
    """
    n, k = placement.nodes, _check_failures(placement, failures)
    total = math.comb(n, k)
    if total > ENUMERATION_MAX_SUBSETS:
        raise ValueError(
            f"enumeration tries C({n}, {k}) = {total} failure sets, more than "
            f"{ENUMERATION_MAX_SUBSETS}; use counting_probability or monte_carlo_probability"
        )
    if k == 0:
        return 1
    holders = np.asarray(placement.holders, dtype=np.intp)
    rows = max(1, _CELLS_PER_CHUNK // (n * placement.replicas))
    subsets = itertools.combinations(range(n), k)
    survived = 0
    while True:
        flat = itertools.chain.from_iterable(itertools.islice(subsets, rows))
        chunk = np.fromiter(flat, dtype=np.intp)
        if chunk.size == 0:
            return survived
        chunk = chunk.reshape(-1, k)
        failed = np.zeros((chunk.shape[0], n), dtype=bool)
        np.put_along_axis(failed, chunk, True, axis=1)
        survived += int(np.count_nonzero(~_any_lost(failed, holders)))


def enumerate_probability(placement: Placement, failures: int) -> float:
    """Recovery probability for ``failures`` (k) simultaneous failures, by enumeration.

    Raises:
        ValueError: as :func:`enumerate_surviving_subsets`.
    """
    count = enumerate_surviving_subsets(placement, failures)
    return float(Fraction(count, math.comb(placement.nodes, failures)))


def count_surviving_subsets(placement: Placement, failures: int) -> int:
    """Number of k-subsets of failed nodes that every checkpoint survives, by counting.

    Each entry of ``placement.groups`` is a ring of length L with window m (a group is the case
    L = m). The polynomial whose t-th coefficient counts the t-subsets that a part survives is
    found per kind of part; the parts' polynomials multiply.

    Raises:
        ValueError: for explicit placements, placements whose groups are not groups or rings,
            or ``failures`` outside 0..N.
    """
    k = _check_failures(placement, failures)
    kinds = Counter(len(part) for part in _ring_parts(placement))
    # Multiply every kind but the biggest as full coefficient lists; evaluate the biggest only at
    # the degrees needed for the coefficient of x^k (it may have thousands of terms).
    ordered = sorted(kinds.items(), key=lambda item: item[0] * item[1])
    length, count = ordered[-1]
    small = [1]
    for part_length, part_count in ordered[:-1]:
        coefficient = _coefficient_function(part_length, part_count, placement.replicas, k)
        small = _multiply(
            small, [coefficient(t) for t in range(min(k, part_length * part_count) + 1)], k
        )
    big = _coefficient_function(length, count, placement.replicas, k)
    return sum(c * big(k - t) for t, c in enumerate(small) if c and k - t <= length * count)


def counting_probability(placement: Placement, failures: int) -> float:
    """Recovery probability for ``failures`` (k) simultaneous failures, by exact counting.

    Works for group, ring and mixed placements, with or without failure domains, at any N.

    Raises:
        ValueError: as :func:`count_surviving_subsets`.
    """
    count = count_surviving_subsets(placement, failures)
    return float(Fraction(count, math.comb(placement.nodes, failures)))


def paper_closed_form(nodes: int, replicas: int, failures: int) -> float:
    """The paper's recovery probability for group placement: 1 - N*C(N-m,k-m) / (m*C(N,k)).

    1 for k < m; exact for m <= k < 2m; a lower bound (clipped at 0) for k >= 2m.

    Raises:
        ValueError: unless 1 <= m <= N, m divides N, and 0 <= k <= N.
    """
    if nodes < 1 or not 1 <= replicas <= nodes or nodes % replicas:
        raise ValueError(
            f"the closed form is for group placement: replicas must divide nodes and lie in "
            f"1..nodes; got nodes={nodes}, replicas={replicas}"
        )
    if not 0 <= failures <= nodes:
        raise ValueError(f"failures must be between 0 and nodes ({nodes}), got {failures}")
    if failures < replicas:
        return 1.0
    lost = Fraction(
        nodes * math.comb(nodes - replicas, failures - replicas),
        replicas * math.comb(nodes, failures),
    )
    return float(max(Fraction(0), 1 - lost))


def monte_carlo_probability(
    placement: Placement,
    failures: int,
    *,
    trials: int,
    rng: np.random.Generator,
    domains: Sequence[str] | None = None,
    domain_failures: int = 0,
    confidence: float = 0.95,
) -> RecoveryProbability:
    """Estimate the recovery probability by sampling failure sets.

    Each trial fails ``failures`` (k) nodes drawn uniformly without replacement and, in
    addition, every node of ``domain_failures`` distinct failure domains drawn uniformly (a
    correlated failure, e.g. a rack's switch). The two may overlap, so a trial fails between
    k and k + (nodes of the failed domains) nodes.

    Args:
        placement: the placement to evaluate.
        failures: k, independent node failures per trial, 0..N.
        trials: number of samples, at least 1.
        rng: the random generator (the only source of randomness).
        domains: failure domain name of each node, length N; needed when domain_failures > 0.
        domain_failures: whole domains failed per trial, 0..number of domains.
        confidence: level of the Wilson score interval, strictly between 0 and 1.

    Returns:
        The estimate with method "monte-carlo", its interval, and the paper's closed form for
        group placements without domain failures.

    Raises:
        ValueError: for bad k, trials, confidence, domains or domain_failures.
    """
    n, k = placement.nodes, _check_failures(placement, failures)
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    if domain_failures < 0:
        raise ValueError(f"domain_failures must be at least 0, got {domain_failures}")
    domain_of = np.zeros(n, dtype=np.intp)
    domain_count = 0
    if domain_failures:
        if domains is None or len(domains) != n:
            raise ValueError(
                f"domain_failures needs domains naming one failure domain per node ({n})"
            )
        names = {name: i for i, name in enumerate(dict.fromkeys(domains))}
        domain_of = np.array([names[d] for d in domains], dtype=np.intp)
        domain_count = len(names)
        if domain_failures > domain_count:
            raise ValueError(
                f"domain_failures must be between 0 and the number of domains "
                f"({domain_count}), got {domain_failures}"
            )
    holders = np.asarray(placement.holders, dtype=np.intp)
    rows = max(1, _CELLS_PER_CHUNK // (n * placement.replicas))
    survived = 0
    for start in range(0, trials, rows):
        size = min(rows, trials - start)
        failed = np.zeros((size, n), dtype=bool)
        index = np.arange(size)
        # Floyd's algorithm, one step for all trials at once: a uniform k-subset of 0..N-1.
        for j in range(n - k, n):
            pick = rng.integers(0, j + 1, size=size)
            pick = np.where(failed[index, pick], j, pick)
            failed[index, pick] = True
        if domain_failures:
            keys = rng.random((size, domain_count))
            chosen = np.argsort(keys, axis=1)[:, :domain_failures]
            hit = np.zeros((size, domain_count), dtype=bool)
            np.put_along_axis(hit, chosen, True, axis=1)
            failed |= hit[:, domain_of]
        survived += int(np.count_nonzero(~_any_lost(failed, holders)))
    low, high = _wilson(survived, trials, confidence)
    closed, exact = (None, False) if domain_failures else _closed_form_fields(placement, k)
    return RecoveryProbability(
        probability=survived / trials,
        method="monte-carlo",
        ci_low=low,
        ci_high=high,
        trials=trials,
        closed_form=closed,
        closed_form_exact=exact,
    )


def recovery_probability(
    placement: Placement,
    failures: int,
    *,
    rng: np.random.Generator | None = None,
    trials: int = 100_000,
    enumeration_limit: int = 200_000,
) -> RecoveryProbability:
    """Recovery probability by the best available method.

    Enumeration when C(N, k) <= ``enumeration_limit``; else exact counting when the placement
    is a group, ring or mixed one; else Monte Carlo with ``trials`` samples from ``rng``.

    Raises:
        ValueError: for bad k, or when Monte Carlo is needed and ``rng`` is None.
    """
    k = _check_failures(placement, failures)
    closed, exact = _closed_form_fields(placement, k)
    if math.comb(placement.nodes, k) <= min(enumeration_limit, ENUMERATION_MAX_SUBSETS):
        value, method = enumerate_probability(placement, k), "exact-enumeration"
    else:
        try:
            value, method = counting_probability(placement, k), "exact-counting"
        except _UnsupportedPlacement:
            if rng is None:
                raise ValueError(
                    f"C({placement.nodes}, {k}) failure sets exceed enumeration_limit "
                    f"({enumeration_limit}) and a {placement.strategy} placement cannot be "
                    "counted: pass rng for Monte Carlo, or raise enumeration_limit"
                ) from None
            return monte_carlo_probability(placement, k, trials=trials, rng=rng)
    return RecoveryProbability(value, method, value, value, None, closed, exact)


class _UnsupportedPlacement(ValueError):
    """The placement is not made of groups and rings, so counting does not apply."""


def _check_failures(placement: Placement, failures: int) -> int:
    if not 0 <= failures <= placement.nodes:
        raise ValueError(
            f"failures must be between 0 and nodes ({placement.nodes}), got {failures}"
        )
    return int(failures)


def _any_lost(failed: NDArray[np.bool_], holders: NDArray[np.intp]) -> NDArray[np.bool_]:
    """Per row of ``failed`` (subsets x nodes), whether some checkpoint lost all holders."""
    lost: NDArray[np.bool_] = np.any(np.all(failed[:, holders], axis=2), axis=1)
    return lost


def _wilson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def _closed_form_fields(placement: Placement, k: int) -> tuple[float | None, bool]:
    if placement.strategy != "group":
        return None, False
    value = paper_closed_form(placement.nodes, placement.replicas, k)
    return value, k < 2 * placement.replicas


def _ring_parts(placement: Placement) -> list[tuple[int, ...]]:
    """The placement's groups, checked to be rings: node at p is held by p..p+m-1 of its part."""
    if placement.strategy == "explicit":
        raise _UnsupportedPlacement(
            "counting applies to group, ring and mixed placements, not explicit ones; use "
            "enumerate_probability or monte_carlo_probability"
        )
    m = placement.replicas
    for part in placement.groups:
        length = len(part)
        for p, node in enumerate(part):
            expected = {part[(p + j) % length] for j in range(m)}
            if length < m or set(placement.holders[node]) != expected:
                raise _UnsupportedPlacement(
                    f"counting needs every group to be a group or ring; node {node}'s holders "
                    f"{placement.holders[node]} do not follow group {part}; use "
                    "enumerate_probability or monte_carlo_probability"
                )
    return list(placement.groups)


def _coefficient_function(length: int, count: int, replicas: int, k: int) -> Callable[[int], int]:
    """t -> number of t-subsets of ``count`` parts of ``length`` nodes that all parts survive."""
    m = replicas
    if length == m:
        return lambda t: _groups_surviving(count, m, t)
    if count == 1:
        return lambda t: _ring_surviving(length, m, t)
    single = [_ring_surviving(length, m, t) for t in range(min(k, length) + 1)]
    power = [1]
    for _ in range(count):  # only placements built by hand have several rings
        power = _multiply(power, single, k)
    return lambda t: power[t] if t < len(power) else 0


def _groups_surviving(groups: int, m: int, t: int) -> int:
    """t-subsets of ``groups`` groups of m nodes leaving no group wholly failed.

    Inclusion-exclusion over the j groups forced to fail: sum (-1)^j C(G,j) C(m(G-j), t-jm).
    """
    total = 0
    for j in range(min(groups, t // m) + 1):
        term = math.comb(groups, j) * math.comb(m * (groups - j), t - j * m)
        total += -term if j % 2 else term
    return total


def _ring_surviving(length: int, m: int, t: int) -> int:
    """t-subsets of an L-cycle with no run of m or more consecutive failed nodes.

    With z = L - t live nodes, the failed ones fall into z cyclic gaps of 0..m-1 each:
    a(z, t) = [x^t] (1 + ... + x^(m-1))^z ways once a live node is marked as the start. Each
    cyclic arrangement is counted once per live node and each of the L rotations of the start,
    so the count is L * a(z, t) / z.
    """
    if t > length:
        return 0
    live = length - t
    if live == 0:
        return 0
    ways = 0
    for j in range(min(live, t // m) + 1):
        term = math.comb(live, j) * math.comb(t - j * m + live - 1, live - 1)
        ways += -term if j % 2 else term
    quotient, remainder = divmod(length * ways, live)
    assert remainder == 0, "cyclic count must be an integer"
    return quotient


def _multiply(a: Sequence[int], b: Sequence[int], degree: int) -> list[int]:
    """Product of two integer polynomials, truncated after x^degree."""
    out = [0] * min(degree + 1, len(a) + len(b) - 1)
    for i, x in enumerate(a):
        if x:
            for j, y in enumerate(b[: len(out) - i]):
                out[i + j] += x * y
    return out
