"""State drift metrics, the report's forgetting and retention, and the --tiny study end to end."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evals import drift, report

ROOT = Path(__file__).resolve().parents[1]


def test_mmd_is_zero_on_itself_symmetric_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    assert drift.mmd2(x, x) == pytest.approx(0, abs=1e-12)
    shifted = [drift.mmd2(x, rng.normal(size=(60, 5)) + np.array([shift, 0, 0, 0, 0])) for shift in (0, 0.5, 1, 2, 4)]
    assert all(a < b for a, b in zip(shifted, shifted[1:])), shifted
    y = rng.normal(size=(40, 5)) + 1
    assert drift.mmd2(x, y) == pytest.approx(drift.mmd2(y, x), abs=1e-12)


def test_mmd_on_hand_made_cases():
    # x = {0}, y = {1}: the one pooled squared distance is 1, so the bandwidth is 1 and k(0, 1) = exp(-1/2)
    assert drift.mmd2(np.array([[0.0]]), np.array([[1.0]])) == pytest.approx(2 - 2 * math.exp(-0.5), abs=1e-12)
    # x = {0, 1}, y = {3}: pooled squared distances 1, 9, 4 (each twice), median 4, bandwidth 2, k = exp(-d / 8)
    kxx = (2 + 2 * math.exp(-1 / 8)) / 4
    kxy = (math.exp(-9 / 8) + math.exp(-4 / 8)) / 2
    assert drift.mmd2(np.array([[0.0], [1.0]]), np.array([[3.0]])) == pytest.approx(kxx + 1 - 2 * kxy, abs=1e-12)


def test_sliced_wasserstein_centroid_and_jaccard_on_hand_made_cases():
    # in one dimension every direction is +1 or -1: the distance is the 1-D Wasserstein-1, here a shift of 5
    assert drift.sliced_wasserstein(np.array([[0.0], [1.0], [2.0]]), np.array([[5.0], [6.0], [7.0]])) == pytest.approx(5)
    assert drift.sliced_wasserstein(np.array([[0.0], [4.0]]), np.array([[0.0], [4.0]])) == 0
    # two point masses 3 apart in 2-D: the mean |cos| of a uniform direction is 2 / pi
    far = drift.sliced_wasserstein(np.zeros((4, 2)), np.tile([3.0, 0.0], (4, 1)), projections=20000)
    assert far == pytest.approx(3 * 2 / np.pi, rel=0.02)
    assert drift.centroid_distance(np.array([[0.0, 0], [2, 0]]), np.array([[1.0, 3], [1, 5]])) == pytest.approx(4)
    assert drift.jaccard_distance(["a b c"], ["b c d"]) == pytest.approx(1 - 2 / 4)
    assert drift.jaccard_distance(["The cat."], ["the CAT ."]) == 0


def test_lexical_features():
    matrix = drift.features(["the cat sat", "the cat sat", "a dog ran far", ""], buckets=64)
    assert np.allclose(np.linalg.norm(matrix[:3], axis=1), 1) and not matrix[3].any()
    assert np.array_equal(matrix[0], matrix[1]) and matrix[0] @ matrix[2] < 0.5
    assert np.count_nonzero(drift.features(["x y"], 4096)) == 3  # two unigrams and one bigram


def test_forgetting_and_retention_reproduce_the_papers_table():
    _, _, base_truthfulqa, base_mmlu, *_ = report.PAPER["base"]
    for run, (_, _, truthfulqa, mmlu, _, forgetting, retention) in report.PAPER.items():
        if run == "base":
            continue
        ours = report.forgetting_and_retention((base_truthfulqa, base_mmlu), (truthfulqa, mmlu))
        assert round(ours[0], 4) == forgetting and round(ours[1], 4) == retention, run


def run_study(*arguments):
    return subprocess.run([sys.executable, str(ROOT / "study.py"), *map(str, arguments)], capture_output=True,
                          text=True, timeout=1200)


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resumable(tmp_path):
    ckpt, results = tmp_path / "ckpt", tmp_path / "results"
    first = run_study("--tiny", "--ckpt-dir", ckpt, "--results-dir", results)
    assert first.returncode == 0, first.stderr[-3000:]
    report_text = (results / "report.md").read_text()
    for row in ("| base | ours |", "| sft_stress | ours |", "| Stress SFT | paper | 0.420 | 0.245 | 0.364 |",
                "| opd_sft_stress | ours |", "| opd_sft_mild | ours |", "| rl | ours |"):
        assert row in report_text
    for png in ("benchmarks.png", "training_curves.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drift_result = json.loads((results / "sft_stress" / "drift.json").read_text())
    assert set(drift_result["distances"]) == {"mmd2", "centroid", "sliced_wasserstein", "jaccard"}
    outputs = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()}
    second = run_study("--tiny", "--ckpt-dir", ckpt, "--results-dir", results)
    assert second.returncode == 0 and "$ python" not in second.stdout  # no stage ran again
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()} == outputs



def test_compile_reaches_the_stages_that_sample():
    """study.py --compile: rl, opd and the evals decode with the compiled step; SFT and drift do not sample so."""
    import study
    stages = {description: command for description, _, command in study.stages(study.parse_args(["--tiny", "--compile"]))}
    compiled = {description for description, command in stages.items() if "--compile" in command}
    assert compiled == {"evaluate the base model", "train opd_sft_stress", "train opd_sft_mild", "train rl",
                        *(f"evaluate {run}" for run in ("sft_mild", "sft_stress", "opd_sft_stress", "opd_sft_mild", "rl"))}
    assert not any("--compile" in command for _, _, command in study.stages(study.parse_args(["--tiny"])))
