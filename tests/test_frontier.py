"""The sweep's frontier (evals/frontier.py): Pareto fronts, interpolation along them, the quadratic fit and its
R^2, Spearman's correlation, and each verdict's outcomes, on made-up numbers with answers computed by hand."""
import json
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


def write_results(folder, gsm8k, truthfulqa, mmlu, mmd=None, kl=None):
    """A run's eval.json (and drift.json) as python -m evals and evals.drift write them, scores only."""
    protocol = {"shots": 0, "limit": None, "data": "x", "device": "cpu", "dtype": "float32"}
    summary = {"gsm8k": {"flexible": gsm8k, "flexible_stderr": 0.02}, "truthfulqa": {"mc1": truthfulqa,
               "mc1_stderr": 0.02}, "mmlu": {"accuracy": mmlu, "accuracy_stderr": 0.02}}
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps({"model": str(folder), "protocol": protocol, "summary": summary}))
    if mmd is not None:
        (folder / "drift.json").write_text(json.dumps({"distances": {"mmd2": mmd, "forward_kl_per_token": kl}}))
    return folder


def test_the_sweep_report_from_written_results(tmp_path):
    """Two seeds of 3 SFT, 2 RL and 2 OPD settings with made-up scores: RL keeps retention 0.05 above SFT's front
    at every accuracy both reach (above); forgetting rises with the forward KL (RL and OPD 0.12 per nat, SFT 0.06)
    and not with the MMD; OPD lies on RL's forgetting curve and 0.03 and 0.06 off SFT's. The
    report, its figures and sweep.json; a bad run, a missing seed or a foreign --out in one line."""
    from evals import sweep
    base = write_results(tmp_path / "base", 0.5, 0.6, 0.6)
    runs, number = [], 0
    # (objective, setting, GSM8K, retention, forward KL); forgetting = 0.6 * (1 - retention) on both tasks
    for objective, setting, accuracy, kept, kl in (("sft", "a", 0.5, 0.9, 1.0), ("sft", "b", 0.6, 0.8, 2.0),
                                                   ("sft", "c", 0.7, 0.7, 3.0), ("rl", "a", 0.5, 0.95, 0.25),
                                                   ("rl", "b", 0.7, 0.75, 1.25), ("opd", "a", 0.45, 0.9, 0.5),
                                                   ("opd", "b", 0.45, 0.8, 1.0)):
        for seed in (0, 1):
            number += 1
            score = 0.6 * kept
            folder = write_results(tmp_path / f"{objective}_{setting}_{seed}", accuracy, score, score,
                                   mmd=1 / number, kl=kl)
            runs.append(f"{objective}:{setting}:{seed}:{folder}")
    out = tmp_path / "sweep" / "report.md"
    assert sweep.main(["--base", str(base), *runs, "--stress", "c", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| sft | c (stress) | 2 | 0.700 | 0.7000 | 0.1800 |" in text
    assert ("1. RL's front against SFT's: **above** (GSM8K range both fronts reach 0.500 to 0.700, tested 0.500 to 0.700; "
            "RL's retention minus SFT's from +0.0500 to +0.0500; with 2 seeds the bootstrap has 3 distinct draws).") in text
    assert "2. Which drift predicts forgetting: **forward KL**" in text
    numbers = json.loads((tmp_path / "sweep" / "sweep.json").read_text(), parse_constant=strict)
    assert len(numbers["runs"]) == 14 and numbers["verdicts"]["fronts"][0] == "above"
    side = numbers["verdicts"]["opd_side"]
    assert side[0] == "RL" and side[1]["RL"]["residual"] == pytest.approx(0, abs=1e-9)
    assert side[1]["SFT"]["residual"] == pytest.approx((0.03 + 0.06) / 2)
    for figure in ("frontier.png", "drift_fits.png"):
        assert (tmp_path / "sweep" / figure).read_bytes()[:4] == b"\x89PNG"
    assert sweep.main(["--base", str(base), *runs, "--out", str(out)]) == 0  # its own outputs: rewritten


def test_the_sweep_report_refuses_bad_grids_and_foreign_files_in_one_line(tmp_path, capsys):
    from evals import sweep
    base = write_results(tmp_path / "base", 0.5, 0.6, 0.6)
    runs = [f"{objective}:a:{seed}:" + str(write_results(tmp_path / f"{objective}{seed}", 0.5 + 0.1 * seed, 0.5,
                                                           0.5 - 0.1 * seed, mmd=0.01, kl=0.1 + seed))
            for objective in ("sft", "rl", "opd") for seed in (0, 1)]
    out = tmp_path / "sweep" / "report.md"
    for bad, message in ((runs[:-2], "no opd runs"), (runs + [runs[0]], "sft:a:0 is given twice"),
                         (runs[:-1], "the objectives ran on different seeds")):
        assert sweep.main(["--base", str(base), *bad, "--out", str(out)]) == 1
        error = capsys.readouterr().err
        assert error.startswith("error: ") and message in error and error.count("\n") == 1
    assert not out.parent.exists()
    # every run at one MMD: its correlation is undefined, null in a strict JSON file
    assert sweep.main(["--base", str(base), *runs, "--out", str(out)]) == 0
    numbers = json.loads((out.parent / "sweep.json").read_text(), parse_constant=strict)
    assert numbers["verdicts"]["drift"][1]["mmd"] is None and numbers["fits"]["mmd"]["spearman"] is None
    for name in ("report.md", "frontier.png", "drift_fits.png", "sweep.json"):  # none of them this tool's
        folder = tmp_path / f"other_{name}"
        folder.mkdir()
        (folder / name).write_text("mine\n")
        assert sweep.main(["--base", str(base), *runs, "--out", str(folder / "report.md")]) == 1
        assert (folder / name).read_text() == "mine\n" and len(list(folder.iterdir())) == 1
        assert "was not written by this tool" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.parse_args(["--base", str(base), "ppo:a:0:x", "--out", str(out)])


def strict(constant):
    raise ValueError(f"{constant} in a JSON file")
