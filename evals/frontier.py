"""
The frontier of a sweep: what each objective buys (main-task accuracy) for what it costs (retention), and which
drift predicts the forgetting, over many strengths of each objective ("RL's Razor", arXiv 2509.04259, asks the
same of SFT against RL). The computations and the sweep's three verdicts, decided by rules fixed before any
sweep ran (the same rules for the lab and for a GPU sweep):

1. RL's front against SFT's. Each objective's Pareto front over its settings' seed-mean points (main-task
   accuracy, retention); RL's retention minus SFT's at GRID accuracies spread over the range both fronts reach
   (linear interpolation along each front). A bootstrap over seeds (the same draw of seeds for every run)
   redraws both fronts; an accuracy is tested when both fronts of at least 95% of the draws reach it (a draw's
   front may end short of the mean's). "not comparable" when the tested accuracies span less than NARROWEST,
   "above" when the 95% interval lies above 0 at every tested accuracy, "below" when below 0 at every one, else
   "inconclusive". (With two seeds there are three distinct draws: the interval spans seed 0's difference,
   seed 1's and their mean's.)
2. Which drift measure predicts forgetting. A paired bootstrap over runs of Spearman(forgetting, MMD) minus
   Spearman(forgetting, forward KL), signed (more drift, more forgetting): "MMD" when its 95% interval lies above
   0, "forward KL" when below, else "inconclusive".
3. OPD's side. Quadratics of forgetting against forward KL fitted on RL's runs and on SFT's; OPD's runs' mean
   absolute residual from each, with a bootstrap-over-OPD-runs 95% interval (the fits taken as exact, and
   extended beyond the forward KLs they were fitted on where OPD's lie outside): the curve with the smaller
   residual when the two intervals do not overlap, else "inconclusive".
"""
import numpy as np

GRID, NARROWEST, RESAMPLES, LEVEL = 21, 0.05, 2000, 0.95


def pareto_front(points) -> np.ndarray:
    """(n, 2) points of (accuracy, retention), both better when higher -> the points no other point dominates
    (at least as good on both, better on one), one of each duplicate, in increasing accuracy: (m, 2)."""
    points = np.unique(np.asarray(points, dtype=float).reshape(-1, 2), axis=0)  # sorted by accuracy
    keep = [not np.any(np.all(points >= point, axis=1) & np.any(points > point, axis=1)) for point in points]
    return points[keep]


def along(front: np.ndarray, accuracy) -> np.ndarray:
    """Retention along a front (straight lines between its points) at each accuracy; NaN outside its range."""
    accuracy = np.asarray(accuracy, dtype=float)
    inside = (accuracy >= front[0, 0]) & (accuracy <= front[-1, 0])
    return np.where(inside, np.interp(accuracy, front[:, 0], front[:, 1]), np.nan)


def shared_range(first: np.ndarray, second: np.ndarray) -> tuple:
    """The accuracies both fronts reach: (low, high), high < low when none."""
    return max(first[0, 0], second[0, 0]), min(first[-1, 0], second[-1, 0])


def spearman(x, y) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks (ties get their mean rank); NaN when
    either side is constant."""
    def ranks(values):
        values = np.asarray(values, dtype=float)
        result = np.empty(len(values))
        result[values.argsort(kind="stable")] = np.arange(len(values))
        for value in np.unique(values):
            result[values == value] = result[values == value].mean()
        return result
    a, b = ranks(x), ranks(y)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def quadratic_fit(x, y) -> dict:
    """Least squares y = a + b x + c x^2 -> {"coefficients": (a, b, c), "r2": 1 - residual / total sum of
    squares, "points": n}; a line when only two x are distinct, None under two."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    distinct = len(np.unique(x))
    if distinct < 2:
        return None
    coefficients = np.polyfit(x, y, min(2, distinct - 1))[::-1]  # polyfit gives the highest power first
    coefficients = np.pad(coefficients, (0, 3 - len(coefficients)))
    residual = y - curve(coefficients, x)
    total = ((y - y.mean()) ** 2).sum()
    r2 = float(1 - (residual ** 2).sum() / total) if total > 0 else float("nan")
    return {"coefficients": tuple(float(c) for c in coefficients), "r2": r2, "points": len(x)}


def curve(coefficients, x) -> np.ndarray:
    a, b, c = coefficients
    x = np.asarray(x, dtype=float)
    return a + b * x + c * x * x


def interval(samples) -> tuple:
    """The central LEVEL percentile interval of the finite samples."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if not len(samples):  # e.g. every draw's correlation undefined (a constant side)
        return float("nan"), float("nan")
    tail = 50 * (1 - LEVEL)
    return float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))

# -----------------------------------------------------------------------------
# The verdicts


def fronts_verdict(rl, sft, seed: int = 0) -> tuple:
    """Verdict 1. rl, sft: (settings, seeds, 2) arrays of (accuracy, retention), the same seeds in both ->
    (verdict, numbers)."""
    rl, sft = np.asarray(rl, dtype=float), np.asarray(sft, dtype=float)
    if rl.shape[1] != sft.shape[1]:
        raise ValueError(f"RL has {rl.shape[1]} seeds and SFT {sft.shape[1]}: the fronts need the same seeds")
    low, high = shared_range(pareto_front(rl.mean(1)), pareto_front(sft.mean(1)))
    numbers = {"range": (float(low), float(high))}
    if high - low < NARROWEST:
        return "not comparable", numbers
    accuracies = np.linspace(low, high, GRID)

    def difference(rl_points, sft_points):
        return along(pareto_front(rl_points), accuracies) - along(pareto_front(sft_points), accuracies)
    random = np.random.default_rng(seed)
    draws = [random.integers(0, rl.shape[1], rl.shape[1]) for _ in range(RESAMPLES)]
    samples = np.array([difference(rl[:, draw].mean(1), sft[:, draw].mean(1)) for draw in draws])  # (RESAMPLES, GRID)
    tested = np.isfinite(samples).mean(0) >= LEVEL
    bounds = np.array([interval(column) for column in samples.T])  # (GRID, 2)
    numbers.update(accuracy=accuracies.tolist(), difference=difference(rl.mean(1), sft.mean(1)).tolist(),
                   low=bounds[:, 0].tolist(), high=bounds[:, 1].tolist(), tested=tested.tolist())
    if not tested.any() or np.ptp(accuracies[tested]) < NARROWEST:
        return "not comparable", numbers
    numbers["tested_range"] = (float(accuracies[tested].min()), float(accuracies[tested].max()))
    if (bounds[tested, 0] > 0).all():
        return "above", numbers
    if (bounds[tested, 1] < 0).all():
        return "below", numbers
    return "inconclusive", numbers


def drift_verdict(forgetting, mmd, forward_kl, seed: int = 0) -> tuple:
    """Verdict 2 over runs (one value per run in each list) -> (verdict, numbers)."""
    forgetting, mmd, forward_kl = (np.asarray(v, dtype=float) for v in (forgetting, mmd, forward_kl))
    random = np.random.default_rng(seed)
    draws = (random.integers(0, len(forgetting), len(forgetting)) for _ in range(RESAMPLES))
    samples = [spearman(forgetting[d], mmd[d]) - spearman(forgetting[d], forward_kl[d]) for d in draws]
    low, high = interval(samples)
    numbers = {"mmd": spearman(forgetting, mmd), "forward_kl": spearman(forgetting, forward_kl),
               "interval": (low, high), "runs": len(forgetting)}
    return ("MMD" if low > 0 else "forward KL" if high < 0 else "inconclusive"), numbers


def opd_side_verdict(rl, sft, opd, seed: int = 0) -> tuple:
    """Verdict 3. rl, sft, opd: (runs, 2) arrays of (forward KL, forgetting) -> (verdict, numbers)."""
    rl, sft, opd = (np.asarray(v, dtype=float) for v in (rl, sft, opd))
    fits = {"RL": quadratic_fit(rl[:, 0], rl[:, 1]), "SFT": quadratic_fit(sft[:, 0], sft[:, 1])}
    if None in fits.values():
        return "inconclusive", {"reason": "each curve needs runs at two forward KLs at least"}
    residuals = {side: np.abs(opd[:, 1] - curve(fit["coefficients"], opd[:, 0])) for side, fit in fits.items()}
    random = np.random.default_rng(seed)
    draws = [random.integers(0, len(opd), len(opd)) for _ in range(RESAMPLES)]
    numbers = {side: {"residual": float(values.mean()), "interval": interval([values[d].mean() for d in draws]),
                      "fit": fits[side]} for side, values in residuals.items()}
    (rl_low, rl_high), (sft_low, sft_high) = numbers["RL"]["interval"], numbers["SFT"]["interval"]
    return ("RL" if rl_high < sft_low else "SFT" if sft_high < rl_low else "inconclusive"), numbers
