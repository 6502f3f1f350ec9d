"""The report's Findings: the verdict rules (evals/findings.py) on made-up numbers with hand-computed answers,
and the report's Findings, change-from-base, side-by-side and loss sections end to end on written results."""
import json

import pytest

from evals import findings, gsm8k, report


@pytest.mark.parametrize("freedom, table", [(1, 12.706), (3, 3.182), (9, 2.262), (10, 2.228), (30, 2.042),
                                            (99, 1.984), (699, 1.963)])
def test_t_quantile_matches_the_table(freedom, table):
    assert findings.t_quantile(0.975, freedom) == pytest.approx(table, abs=1e-3)


def test_paired_gain_by_hand():
    """100 items, the base right on the first 50; each of 3 seeds also gets items 50-59 right: per-item
    differences are 1 on 10 items and 0 on 90, mean 0.1, variance 9/99, standard error 0.0301511, t(99) 1.9842."""
    base = [1] * 50 + [0] * 50
    seeds = [[1] * 60 + [0] * 40] * 3
    gain = findings.paired_gain(base, seeds)
    assert gain["gain"] == pytest.approx(0.1) and gain["seeds"] == pytest.approx([0.1] * 3)
    assert gain["interval"] == pytest.approx((0.1 - 0.059826, 0.1 + 0.059826), abs=2e-5)
    assert gain["status"] == "shown" and gain["items"] == 100
    assert findings.paired_gain(base, [[1 - c for c in seeds[0]]] * 2)["status"] == "open"  # flat: 50 vs 50 lost
    worse = findings.paired_gain(base, [[1] * 40 + [0] * 60] * 2)
    assert worse["status"] == "refuted" and worse["gain"] == pytest.approx(-0.1)
    # the interval lies above 0, but one seed's own gain is negative: not shown
    mixed = findings.paired_gain(base, [[1] * 70 + [0] * 30, [1] * 70 + [0] * 30, [1] * 49 + [0] * 51])
    assert mixed["interval"][0] > 0 and min(mixed["seeds"]) < 0 and mixed["status"] == "open"


def test_false_equations_and_the_gold_style():
    assert not gsm8k.false_equation("5 * 4 = <<5*4=20>>20 apples. 77 / 7 = 11. 12 - 5 = 7.")
    for slip in ("5 * 4 = <<5*4=20>>21", "161 - 84 = 87.", "98 / 8 = 12", "then 6 + 7 = 14 and 2 * 3 = 6"):
        assert gsm8k.false_equation(slip), slip
    for unread in ("3.5 + 2 = 5.5", "1,200 - 200 = 900", "x = 5", "10 - 4 = -6",  # not whole-number equations
                   "2 + 3 + 4 = 9", "10 - 2 - 3 = 5", "3 * 4 + 2 = <<3*4+2=14>>14", "50 * 2 / 4 = 25",  # chains
                   "1/2 * 20 = 10", "1/2 = 50%", "3/4 = 75 percent"):
        assert not gsm8k.false_equation(unread), unread
    assert gsm8k.gold_style("2 + 2 = <<2+2=4>>4") and gsm8k.gold_style("#### 4") and not gsm8k.gold_style("2 + 2 = 4.")


def gain(status):
    return {"gain": 0.05, "interval": (0.01, 0.09), "seeds": [0.05], "items": 700, "status": status}


@pytest.mark.parametrize("status, mild, stress, verdict", [
    ("shown", [0.01, 0.0, 0.005], [0.2, 0.3], "reproduced"),
    ("shown", [0.01, 0.0, 0.005], [0.04, 0.04], "not reproduced"),     # stress forgets too little
    ("shown", [0.01, 0.01], [0.025, 0.06], "not reproduced"),          # 0.0425: under 0.05
    ("shown", [0.03, 0.03], [0.3, 0.3], "not reproduced"),             # mild forgets 0.03
    ("shown", [0.019, 0.019], [0.055, 0.055], "not reproduced"),       # stress under 3 x mild's 0.057
    ("refuted", [0.0], [0.3], "not reproduced"),
    ("open", [0.0], [0.3], "inconclusive"),
])
def test_mild_sft_verdicts(status, mild, stress, verdict):
    assert findings.mild_sft(gain(status), mild, stress)[0] == verdict


@pytest.mark.parametrize("status, retention, verdict", [
    ("shown", [0.99, 0.985], "reproduced"), ("shown", [0.99, 0.96], "not reproduced"),
    ("refuted", [1.0], "not reproduced"), ("open", [1.0], "inconclusive"), ("open", [0.9], "not reproduced")])
def test_rl_verdicts(status, retention, verdict):
    assert findings.rl_improves(gain(status), retention)[0] == verdict


def test_opd_verdicts():
    tasks = ["gsm8k", "truthfulqa", "mmlu"]
    teachers = [dict(gsm8k=0.1, truthfulqa=0.3, mmlu=0.3)] * 2
    better = [dict(gsm8k=0.4, truthfulqa=0.5, mmlu=0.4)] * 2
    verdict, numbers = findings.opd_beats_teacher(better, teachers, tasks)
    assert verdict == "reproduced" and "in 2 of 2 seeds" in numbers
    one_seed_ties = [better[0], dict(gsm8k=0.4, truthfulqa=0.5, mmlu=0.3)]  # MMLU's mean still above the teacher's
    assert findings.opd_beats_teacher(one_seed_ties, teachers, tasks)[0] == "inconclusive"
    below = [dict(gsm8k=0.4, truthfulqa=0.2, mmlu=0.4)] * 2
    assert findings.opd_beats_teacher(below, teachers, tasks)[0] == "not reproduced"


PROTOCOL = {"shots": 0, "limit": None, "data": "x", "device": "cpu", "dtype": "float32"}


def write_run(root, name, correct, truthfulqa, mmlu, mmd=None, losses=None):
    """A results folder: eval.json with GSM8K items (item i right when correct[i]) and, for a trained run, drift.json."""
    items = [{"id": f"test/{i}", "question": f"What is {i} + {i}?", "prediction": f"{name} says {i} + {i} = {2 * i + c - 1}",
              "reference": str(2 * i), "correct": {"flexible": c, "strict": c}} for i, c in enumerate(correct)]
    accuracy = sum(correct) / len(correct)
    summary = {"gsm8k": {"flexible": accuracy, "flexible_stderr": 0.01},
               "truthfulqa": {"mc1": truthfulqa, "mc1_stderr": 0.01}, "mmlu": {"accuracy": mmlu, "accuracy_stderr": 0.01}}
    (root / name).mkdir()
    (root / name / "eval.json").write_text(json.dumps({"model": name, "protocol": PROTOCOL, "summary": summary,
                                                        "tasks": {"gsm8k": {"items": items}}}))
    if mmd is not None:
        (root / name / "drift.json").write_text(json.dumps({"distances": {"mmd2": mmd, "forward_kl_per_token": mmd * 10},
                                                            "losses": losses}))
    return str(root / name)


def test_the_report_decides_the_findings_and_shows_the_states(tmp_path):
    """Made-up runs over 100 items: mild SFT gains 0.1 with no forgetting and stress forgets 0.2 (reproduced);
    every OPD student beats its teacher (reproduced); RL gains but keeps 0.9 (not reproduced)."""
    base = [1] * 50 + [0] * 50
    gained, lost = [1] * 60 + [0] * 40, [0] * 90 + [1] * 10
    losses = {"gold": {"base": 1.25, "model": 0.5}, "base_samples": {"base": 0.25, "model": 0.375}}
    folders = [write_run(tmp_path, "base", base, 0.5, 0.5)]
    for suffix in ("", "_seed1", "_seed2"):
        folders += [write_run(tmp_path, "sft_mild" + suffix, gained, 0.5, 0.5, 0.001, losses),
                    write_run(tmp_path, "sft_stress" + suffix, lost, 0.3, 0.3, 0.02, losses),
                    write_run(tmp_path, "opd_sft_stress" + suffix, base, 0.5, 0.4, 0.002, losses),
                    write_run(tmp_path, "rl" + suffix, gained, 0.45, 0.45, 0.001, losses)]
    assert report.main(folders + ["--out", str(tmp_path / "out" / "report.md")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    lines = text.splitlines()
    finding = {number: next(line for line in lines if line.startswith(f"{number}. ")) for number in (1, 2, 3)}
    assert "**reproduced**" in finding[1] and "GSM8K gain +0.100" in finding[1] and "forgetting 0.0000" in finding[1]
    assert "**reproduced**" in finding[2] and "in 3 of 3 seeds" in finding[2]
    assert "**not reproduced**" in finding[3] and "retention 0.9000" in finding[3]
    # the change table: mild +0.100 on GSM8K beside the paper's +0.064 (0.512 - 0.448), signs as the paper's
    assert "| sft_mild | +0.100 | +0.064 | +0.000 | -0.005 | +0.000 | +0.008 |" in text
    assert "| sft_stress | 3 | 0.100 ± 0.000 (se 0.010) | 0.300 ± 0.000 (se 0.010) |" in text
    # side by side: items 0 and 1, the base and each run's first seed only
    assert "### Test item 0" in text and "### Test item 1" in text and "### Test item 2" not in text
    assert "Question: What is 1 + 1? Answer: 2" in text
    assert "**sft_stress** (wrong):" in text and "sft_stress says 0 + 0 = -1" in text
    assert "**sft_stress_seed1**" not in text and "sft_stress_seed1 says" not in text
    # how each model writes: no gold markers; every wrong answer states a false equation but sft_stress's item 0
    # ("0 + 0 = -1" is no `a op b = c` of whole numbers): 89 of 90
    assert "| base | 0.000 | 1.000 | 1.250 | 0.250 |" in text
    assert "| sft_mild | 0.000 ± 0.000 | 1.000 ± 0.000 | 0.500 ± 0.000 | 0.375 ± 0.000 |" in text
    assert "| sft_stress | 0.000 ± 0.000 | 0.989 ± 0.000 |" in text
    assert text.index("## Findings") < text.index("## Appendix: every run and seed") < text.index("| sft_stress_seed2 |")
    assert (tmp_path / "out" / "benchmarks.png").read_bytes()[:4] == b"\x89PNG"


def test_a_finding_without_its_runs_is_not_decided(tmp_path):
    folders = [write_run(tmp_path, "base", [1, 0, 1, 0], 0.5, 0.5), write_run(tmp_path, "rl", [1, 1, 1, 0], 0.5, 0.5, 0.001)]
    assert report.main(folders + ["--out", str(tmp_path / "report.md")]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "1. Mild SFT on dataset states helps the main task with little forgetting; stress SFT forgets: " \
           "**not decided** (no sft_mild runs)." in text
    assert "3. Light on-policy RL improves the main task and keeps retention: **inconclusive**" in text  # 3 items of 4
