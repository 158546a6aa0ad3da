"""Issue 15's statistics on hand-made inputs with known answers: pass@k and TT-MV against direct
enumeration of every subset, the bootstrap against the binomial it must reproduce, exact ranking ties,
and the controls' σ histograms."""
import itertools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from randopt_hpc import population as pop
from randopt_hpc import select, stats, vote
from randopt_hpc.tasks.base import Example
from randopt_hpc.tasks.multi import Objective

# Six samples of four items: keys and whether each key is right ('' abstains).
KEYS = [["a", "x", "", "p"],
        ["b", "x", "m", "q"],
        ["a", "y", "m", ""],
        ["b", "y", "n", "p"],
        ["a", "x", "", "q"],
        ["c", "y", "n", "q"]]
RIGHT = {"a", "x", "n", "q"}
OK = np.array([[k in RIGHT for k in row] for row in KEYS])


def test_pass_at_k_is_the_share_of_k_subsets_with_a_right_sample():
    n = len(KEYS)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(range(n), k))
        direct = [np.mean([OK[list(s), t].any() for s in subsets]) for t in range(OK.shape[1])]
        assert stats.pass_at_k_items(OK, k) == pytest.approx(direct, abs=1e-12)
        assert stats.pass_at_k_curve(OK)[k - 1] == pytest.approx(np.mean(direct), abs=1e-12)
    with pytest.raises(ValueError):
        stats.pass_at_k_items(OK, n + 1)


def test_tt_mv_votes_disjoint_blocks_of_k_samples():
    for k in (1, 2, 3, 6):
        blocks = [range(b * k, (b + 1) * k) for b in range(len(KEYS) // k)]
        want = []
        for t in range(4):
            right = 0
            for block in blocks:
                counts = Counter(KEYS[s][t] for s in block if KEYS[s][t])
                if counts:   # the most votes; a tie goes to the key seen first in the block
                    top = max(counts.values())
                    winner = next(KEYS[s][t] for s in block if KEYS[s][t] and counts[KEYS[s][t]] == top)
                    right += winner in RIGHT
            want.append(right / len(blocks))
        assert stats.tt_mv_items(KEYS, OK, k).tolist() == pytest.approx(want)
    # k = 2: blocks (0,1) (2,3) (4,5); item 0 votes a|b -> a (first), a|b -> a, a|c -> a: all right
    assert stats.tt_mv_items(KEYS, OK, 2)[0] == 1.0


def test_bootstrap_interval_of_a_share_matches_the_binomial():
    # The bootstrap mean of T flags with c ones is Binomial(T, c/T)/T: its quantiles are known exactly.
    t, c = 200, 60
    flags = np.array([1.0] * c + [0.0] * (t - c))
    idx = stats.bootstrap_indices(t, draws=20000, seed=1)
    lo, hi = stats.interval(flags, idx)
    cdf = np.cumsum([math.comb(t, j) * 0.3 ** j * 0.7 ** (t - j) for j in range(t + 1)])
    q_lo, q_hi = np.searchsorted(cdf, 0.025) / t, np.searchsorted(cdf, 0.975) / t
    assert abs(lo - q_lo) <= 1.5 / t and abs(hi - q_hi) <= 1.5 / t
    # Paired: a − a is exactly 0 on every resample; a − (a with one item flipped) is exactly 1/T.
    same = stats.paired(flags, flags, idx)
    assert same == {"diff": 0.0, "low": 0.0, "high": 0.0}
    other = flags.copy()
    other[0] = 0.0
    d = stats.paired(flags, other, idx)
    assert d["diff"] == pytest.approx(1 / t) and d["low"] >= 0.0 and d["high"] <= 5 / t


def test_ranking_is_exact_on_equal_rewards_in_any_order():
    rewards = [1.1, 0.1, 0.0, 1.1, 0.1, 1.0, 0.0, 0.1, 1.1, 0.1]
    def objective_of(m):
        return Objective.of([Example(id=str(i), prompt="", messages=()) for i in range(m)], ["countdown_qa"])

    objective = objective_of(len(rewards))
    rng = np.random.default_rng(0)
    perms = [rewards] + [list(rng.permutation(rewards)) for _ in range(30)]
    floats = {sum(p) / len(p) for p in perms}
    assert len(floats) > 1                       # float sums do depend on the order...
    exact = {objective.exact(p) for p in perms}
    assert exact == {Fraction(47, 100)}          # ...integer sums do not
    # So equal rewards in another order tie, and ties go by index.
    scores = [objective.exact(p) for p in reversed(perms)]
    assert select.ranking(list(range(len(perms))), scores) == list(range(len(perms)))
    # Same decimal total from different rewards: 1.1 + 0.1 + 0.1 and thirteen times 0.1 in float differ.
    a, b = [1.1, 0.1, 0.1] + [0.0] * 10, [0.1] * 13
    assert sum(a) != sum(b) and objective_of(13).exact(a) == objective_of(13).exact(b)


@pytest.mark.parametrize("assignment", ["blocked", "random"])
def test_controls_are_spread_over_sigma_and_the_matched_one_copies_the_selected_histogram(assignment):
    n, k, sigmas = 128, 20, (0.01, 0.02)
    cands = pop.population(7, n, sigmas, assignment)
    sigma_of = [c.sigma for c in cands]
    control = select.control_order(n, 7)[:k]
    assert len(set(control)) == k and control != list(range(k))
    assert select.control_order(n, 7)[:k] == control                     # seeded
    assert select.control_order(n, 8)[:k] != control                      # another seed, another draw
    hist = Counter(sigma_of[i] for i in control)
    assert set(hist) == set(sigmas) and min(hist.values()) >= 5          # not a one-σ ensemble under blocked
    if assignment == "blocked":                                           # what the first K by index would be
        assert {sigma_of[i] for i in range(k)} == {0.01}
    selected = [i for i in range(n) if sigma_of[i] == 0.02][:15] + [i for i in range(n) if sigma_of[i] == 0.01][:5]
    matched = select.sigma_matched(selected, sigma_of, select.control_order(n, 7))
    assert len(set(matched)) == k
    for j in range(1, k + 1):                                             # the same histogram at every prefix
        assert Counter(sigma_of[i] for i in matched[:j]) == Counter(sigma_of[i] for i in selected[:j])
    assert matched[:5] == [i for i in select.control_order(n, 7) if sigma_of[i] == 0.02][:5]


def test_coverage_and_key_verdicts_feed_the_vote():
    assert stats.coverage_curve(OK).tolist() == [0.5, 0.75, 0.75, 1.0, 1.0, 1.0]
    assert vote.key_verdicts(KEYS, OK, None) == OK.tolist()
