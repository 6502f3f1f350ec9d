"""The sweep's frontier (evals/frontier.py): Pareto fronts, interpolation along them, the quadratic fit and its
R^2, Spearman's correlation, and each verdict's outcomes, on made-up numbers with answers computed by hand."""
import math

import numpy as np
import pytest

from evals import frontier


def test_pareto_front_by_hand():
    """(0.55, 0.70) loses to (0.60, 0.80), which loses to (0.60, 0.85); (0.40, 0.90) loses to (0.40, 0.95) and to
    (0.50, 0.90); a duplicate counts once."""
    points = [(0.5, 0.9), (0.6, 0.8), (0.55, 0.7), (0.6, 0.85), (0.4, 0.95), (0.4, 0.9), (0.5, 0.9)]
    front = frontier.pareto_front(points)
    assert front.tolist() == [[0.4, 0.95], [0.5, 0.9], [0.6, 0.85]]
    assert frontier.pareto_front([(0.3, 0.3)]).tolist() == [[0.3, 0.3]]
    # straight lines between the front's points, nothing outside its accuracies
    values = frontier.along(front, [0.3, 0.4, 0.45, 0.55, 0.6, 0.61])
    assert np.isnan(values[0]) and np.isnan(values[-1])
    assert values[1:5] == pytest.approx([0.95, 0.925, 0.875, 0.85])
    assert frontier.shared_range(front, np.array([[0.45, 1.0], [0.7, 0.5]])) == (0.45, 0.6)


def test_quadratic_fit_and_r2_by_hand():
    exact = frontier.quadratic_fit([0, 1, 2, 3], [1 + 2 * x + 3 * x * x for x in range(4)])
    assert exact["coefficients"] == pytest.approx((1, 2, 3)) and exact["r2"] == pytest.approx(1)
    # y = 0 1 0 1 at x = 0..3: the orthogonal quadratic's projection is 0, the line 0.2 + 0.2 x; residuals
    # -0.2 0.6 -0.6 0.2 (sum of squares 0.8) against a total of 1.0: R^2 = 0.2
    fit = frontier.quadratic_fit([0, 1, 2, 3], [0, 1, 0, 1])
    assert fit["coefficients"] == pytest.approx((0.2, 0.2, 0), abs=1e-12) and fit["r2"] == pytest.approx(0.2)
    assert frontier.quadratic_fit([1, 1, 2, 2], [0, 1, 2, 3])["coefficients"] == pytest.approx((-1.5, 2, 0))
    assert frontier.quadratic_fit([1, 1], [0, 1]) is None
    assert math.isnan(frontier.quadratic_fit([1, 2, 3], [5, 5, 5])["r2"])


def test_spearman_by_hand():
    assert frontier.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert frontier.spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10))  # ties: mean ranks
    assert frontier.spearman([1, 2, 3], [3, 2, 1]) == -1
    assert math.isnan(frontier.spearman([1, 1, 1], [1, 2, 3]))


def sweep(retentions: list, accuracies=(0.5, 0.6, 0.7)) -> np.ndarray:
    """(settings, seeds, 2): setting i of seed s at (accuracies[i], retentions[s][i])."""
    return np.array([[(accuracy, seed[i]) for seed in retentions] for i, accuracy in enumerate(accuracies)])


def test_fronts_verdict_outcomes():
    sft = sweep([[0.9, 0.8, 0.7]] * 2)
    verdict, numbers = frontier.fronts_verdict(sweep([[0.95, 0.85, 0.75]] * 2), sft)
    assert verdict == "above" and numbers["range"] == pytest.approx((0.5, 0.7))
    assert numbers["difference"] == pytest.approx([0.05] * frontier.GRID)
    assert numbers["low"] == pytest.approx([0.05] * frontier.GRID)
    assert frontier.fronts_verdict(sweep([[0.85, 0.75, 0.65]] * 2), sft)[0] == "below"
    # seed 0 puts RL 0.05 above SFT, seed 1 0.03 below: the mean is above, a draw of seed 1 twice is below
    verdict, numbers = frontier.fronts_verdict(sweep([[0.95, 0.85, 0.75], [0.87, 0.77, 0.67]]), sft)
    assert verdict == "inconclusive" and numbers["difference"] == pytest.approx([0.01] * frontier.GRID)
    # the seeds' accuracies differ by 0.008: a draw of one seed twice ends its fronts short of the mean's ends,
    # so those ends are not tested; RL stays 0.05 above SFT wherever both fronts of the draws reach
    jittered_sft, jittered_rl = sft.copy(), sweep([[0.95, 0.85, 0.75]] * 2)
    for points in (jittered_sft, jittered_rl):
        points[:, 0, 0] -= 0.004
        points[:, 1, 0] += 0.004
    verdict, numbers = frontier.fronts_verdict(jittered_rl, jittered_sft)
    assert verdict == "above" and not numbers["tested"][0] and not numbers["tested"][-1]
    assert numbers["tested_range"][0] > 0.5 and numbers["tested_range"][1] < 0.7
    with pytest.raises(ValueError, match="the same seeds"):
        frontier.fronts_verdict(sweep([[0.95, 0.85, 0.75]] * 3), sft)
    # crossing fronts: above at low accuracy, below at high
    assert frontier.fronts_verdict(sweep([[0.95, 0.8, 0.65]] * 2), sft)[0] == "inconclusive"
    # RL reaches 0.50-0.54 only: a shared range of 0.04
    narrow = sweep([[0.95, 0.94]] * 2, accuracies=(0.5, 0.54))
    assert frontier.fronts_verdict(narrow, sft) == ("not comparable", {"range": pytest.approx((0.5, 0.54))})


def test_drift_verdict_outcomes():
    forgetting = [0.0, 0.01, 0.02, 0.03, 0.05, 0.08, 0.13, 0.21]
    rising, falling = list(range(8)), list(range(8, 0, -1))
    verdict, numbers = frontier.drift_verdict(forgetting, rising, falling)
    assert verdict == "MMD" and numbers["mmd"] == 1 and numbers["forward_kl"] == -1
    assert numbers["interval"] == pytest.approx((2, 2))
    assert frontier.drift_verdict(forgetting, falling, rising)[0] == "forward KL"
    assert frontier.drift_verdict(forgetting, rising, rising)[0] == "inconclusive"


def test_opd_side_verdict_outcomes():
    """RL forgets 0.1 per nat of forward KL, SFT 0.3: OPD runs on RL's line have residual 0 from it and
    (0.2 + 0.4) / 2 = 0.3 from SFT's."""
    kl = np.arange(4.0)
    rl, sft = np.stack([kl, 0.1 * kl], 1), np.stack([kl, 0.3 * kl], 1)
    verdict, numbers = frontier.opd_side_verdict(rl, sft, [(1, 0.1), (2, 0.2)])
    assert verdict == "RL"
    assert numbers["RL"]["residual"] == pytest.approx(0, abs=1e-12) and numbers["SFT"]["residual"] == pytest.approx(0.3)
    assert numbers["RL"]["fit"]["coefficients"] == pytest.approx((0, 0.1, 0), abs=1e-12)
    assert frontier.opd_side_verdict(rl, sft, [(1, 0.3), (2, 0.6)])[0] == "SFT"
    assert frontier.opd_side_verdict(rl, sft, [(1, 0.2), (2, 0.4)])[0] == "inconclusive"  # halfway: equal
    assert frontier.opd_side_verdict([(1, 0.1), (1, 0.2)], sft, [(1, 0.1)]) == (
        "inconclusive", {"reason": "each curve needs runs at two forward KLs at least"})
    # every draw's correlation undefined (forgetting the same in every run): no interval, no verdict
    assert frontier.drift_verdict([0.1] * 4, [1, 2, 3, 4], [4, 3, 2, 1])[0] == "inconclusive"
