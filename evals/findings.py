"""
The paper's three findings, decided from a study's numbers by rules fixed before any run (the report's
"Findings" section; the same rules for the lab and for the real study):

1. Mild SFT helps the main task and forgets little; stress SFT forgets. Reproduced when the mild run's paired
   GSM8K gain is shown (below), its forgetting (mean over seeds) is below 0.02, and stress SFT's forgetting is at
   least 0.05 and at least three times mild's.
2. OPD from the stress teacher beats that teacher on all three benchmarks, in every seed (the student of seed s
   against the teacher of seed s).
3. Light on-policy RL improves the main task and keeps the rest: its paired GSM8K gain is shown and its
   retention (mean over seeds) is at least 0.98.

A paired gain: for each test item, the mean over seeds of (run correct - base correct), one number per item;
its 95% t-interval over the items. The gain is shown when the interval lies above 0 and every seed's own gain
is positive, refuted when the interval lies below 0, open otherwise. Each finding is "reproduced" when all its
conditions hold, "not reproduced" when a gain is refuted or a point condition (forgetting, retention, a mean
over seeds below the teacher) fails, and "inconclusive" otherwise.
"""
import math
from statistics import NormalDist

import numpy as np

MILD_FORGETTING, STRESS_FORGETTING, STRESS_OVER_MILD, RL_RETENTION = 0.02, 0.05, 3.0, 0.98


T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262)  # 1-9 degrees of freedom, from tables


def t_quantile(probability: float, freedom: int) -> float:
    """Student's t quantile by the Cornish-Fisher expansion around the normal's (Abramowitz & Stegun 26.7.5):
    within 0.001 of the exact value from 10 degrees of freedom on, the item counts a study has; below 10, the
    expansion is too small, so the 97.5% quantile comes from the table."""
    if freedom < 10 and probability == 0.975:
        return T_975[freedom - 1]
    z = NormalDist().inv_cdf(probability)
    v = float(freedom)
    return (z + (z ** 3 + z) / (4 * v) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * v ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * v ** 3))


def paired_gain(base: list, seeds: list) -> dict:
    """base: (items,) 0/1 correctness of the base; seeds: (seeds, items) of the run. The per-item mean over seeds
    of (run - base), its mean, the 95% t-interval over items, each seed's own gain, and the verdict on the gain."""
    base, seeds = np.asarray(base, dtype=float), np.asarray(seeds, dtype=float)
    differences = seeds.mean(0) - base  # (items,)
    count = len(differences)
    half = t_quantile(0.975, count - 1) * differences.std(ddof=1) / math.sqrt(count) if count > 1 else math.inf
    mean = float(differences.mean())
    per_seed = [float(gain) for gain in seeds.mean(1) - base.mean()]
    low, high = mean - half, mean + half
    status = "shown" if low > 0 and min(per_seed) > 0 else "refuted" if high < 0 else "open"
    return {"gain": mean, "interval": (low, high), "seeds": per_seed, "items": count, "status": status}


def describe_gain(gain: dict) -> str:
    seeds = ", ".join(f"{value:+.3f}" for value in gain["seeds"])
    low, high = gain["interval"]
    return (f"GSM8K gain {gain['gain']:+.3f} (95% t-interval over {gain['items']} items {low:+.3f} to {high:+.3f}; "
            f"per seed {seeds}): {gain['status']}")


def decide(conditions: list, refuted: bool) -> str:
    """conditions: (holds, decisive) pairs; a failed decisive one, or a refuted gain, is 'not reproduced'."""
    if all(holds for holds, _ in conditions):
        return "reproduced"
    if refuted or any(not holds and decisive for holds, decisive in conditions):
        return "not reproduced"
    return "inconclusive"


def mild_sft(gain: dict, mild_forgetting: list, stress_forgetting: list) -> tuple:
    """Finding 1 -> (verdict, the numbers in words)."""
    mild, stress = float(np.mean(mild_forgetting)), float(np.mean(stress_forgetting))
    strong = stress >= STRESS_FORGETTING and stress >= STRESS_OVER_MILD * mild
    verdict = decide([(gain["status"] == "shown", False), (mild < MILD_FORGETTING, True), (strong, True)],
                     gain["status"] == "refuted")
    return verdict, (f"mild SFT: {describe_gain(gain)}; forgetting {mild:.4f} (must be below {MILD_FORGETTING}). "
                     f"Stress SFT: forgetting {stress:.4f} (must be at least {STRESS_FORGETTING} and "
                     f"{STRESS_OVER_MILD:g} x mild's)")


def opd_beats_teacher(students: list, teachers: list, tasks: list) -> tuple:
    """Finding 2. students, teachers: per seed, {task: score}, the teacher of seed s at index s."""
    if not students or len(students) != len(teachers):
        raise ValueError("one teacher per student seed, and at least one seed")
    wins = [all(student[task] > teacher[task] for task in tasks) for student, teacher in zip(students, teachers)]
    means = {task: (np.mean([s[task] for s in students]), np.mean([t[task] for t in teachers])) for task in tasks}
    below = [task for task, (student, teacher) in means.items() if student <= teacher]
    verdict = decide([(all(wins), False), (not below, True)], refuted=False)
    scores = "; ".join(f"{task} {student:.3f} against {teacher:.3f}" for task, (student, teacher) in means.items())
    return verdict, (f"the student beats its teacher on all {len(tasks)} benchmarks in {sum(wins)} of {len(wins)} "
                     f"seeds (means: {scores})")


def rl_improves(gain: dict, retention: list) -> tuple:
    """Finding 3."""
    kept = float(np.mean(retention))
    verdict = decide([(gain["status"] == "shown", False), (kept >= RL_RETENTION, True)], gain["status"] == "refuted")
    return verdict, f"RL: {describe_gain(gain)}; retention {kept:.4f} (must be at least {RL_RETENTION})"
