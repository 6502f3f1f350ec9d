"""State drift metrics, the report's forgetting and retention, and the --tiny study end to end."""
import json
import math
import os
import signal
import subprocess
import sys
import time
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
    # Ctrl-C while stress SFT trains: the stage finishes its step and saves, the study stops with one line
    study = subprocess.Popen([sys.executable, str(ROOT / "study.py"), "--tiny", "--ckpt-dir", str(ckpt),
                              "--results-dir", str(results)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stage = None
    for line in study.stdout:
        stage = line.strip() if line.startswith("[") else stage
        if "train sft_stress" in (stage or "") and line.startswith("step 1/4"):
            study.send_signal(signal.SIGINT)
            break
    _, stderr = study.communicate(timeout=600)
    assert study.returncode == 130 and stderr.strip().splitlines()[-1] == (
        "study interrupted during 'train sft_stress': run the same command again to continue"), stderr[-2000:]
    # saved where it stopped: after step 1 if the signal beat step 1's stop check (the check follows the line we
    # read by microseconds, and a busy CI machine can deschedule the trainer in between), else after step 2
    assert json.loads((ckpt / "sft_stress" / "progress.json").read_text())["step"] in (1, 2)
    first = run_study("--tiny", "--ckpt-dir", ckpt, "--results-dir", results)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "train sft_mild: done" in first.stdout and "--out " + str(ckpt / "sft_stress") + " --resume" in first.stdout
    report_text = (results / "report.md").read_text()
    for row in ("| base | 1 |", "| sft_stress | 1 |", "| Stress SFT | 0.420 | 0.245 | 0.364 |",
                "| opd_sft_stress | 1 |", "| opd_sft_mild | 1 |", "| rl | 1 |", "### Test item 1", "**sft_stress** ("):
        assert row in report_text
    for png in ("benchmarks.png", "training_curves.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drift_result = json.loads((results / "sft_stress" / "drift.json").read_text())
    assert set(drift_result["distances"]) == {"mmd2", "centroid", "sliced_wasserstein", "jaccard", "forward_kl",
                                              "forward_kl_per_token"}
    assert set(drift_result["losses"]) == {"gold", "base_samples"}
    assert "prefix states, fewer than 250" in drift_result["warning"]  # 8 prompts x 4 cuts at most: below the floor
    outputs = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()}
    second = run_study("--tiny", "--ckpt-dir", ckpt, "--results-dir", results)
    assert second.returncode == 0 and "$ python" not in second.stdout  # no stage ran again
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()} == outputs



def test_compile_reaches_the_stages_that_sample():
    """study.py --compile: rl, opd and the evals decode with the compiled step; SFT and drift do not sample so."""
    import study
    stages = {stage.description: stage.command for stage in study.stages(study.parse_args(["--tiny", "--compile"]))}
    compiled = {description for description, command in stages.items() if "--compile" in command}
    assert compiled == {"evaluate the base model", "train opd_sft_stress", "train opd_sft_mild", "train rl",
                        *(f"evaluate {run}" for run in ("sft_mild", "sft_stress", "opd_sft_stress", "opd_sft_mild", "rl"))}
    assert not any("--compile" in stage.command for stage in study.stages(study.parse_args(["--tiny"])))


def test_a_cut_stage_resumes_and_changed_flags_redo_what_they_change(tmp_path):
    """study.py's bookkeeping, on stand-in outputs: a stage is done when its output exists, was made by the same
    command and is newer than its inputs; a training run that was cut resumes; --limit redoes only the evals."""
    import study
    folders = ["--ckpt-dir", str(tmp_path / "ckpt"), "--results-dir", str(tmp_path / "results")]
    plan = study.stages(study.parse_args(["--tiny", "--limit", "8", *folders]))
    (tmp_path / "ckpt" / "base").mkdir(parents=True)
    (tmp_path / "ckpt" / "base" / "config.json").write_text("{}")
    for stage in plan:  # made in order, each after its inputs
        stage.output.parent.mkdir(parents=True, exist_ok=True)
        stage.output.write_text(json.dumps({"finished": True}) if stage.trains else "{}")
    recorded = {str(stage.output): stage.command for stage in plan}
    assert all(study.is_done(stage, recorded) for stage in plan)
    rl_stage = next(stage for stage in plan if stage.description == "train rl")
    assert study.command_to_run(rl_stage)[-1] == "--resume"  # its folder exists
    made = rl_stage.output.stat()
    rl_stage.output.write_text(json.dumps({"finished": False}))  # cut: saved at some step, not finished
    assert not study.is_done(rl_stage, recorded) and study.command_to_run(rl_stage)[-1] == "--resume"
    rl_stage.output.write_text(json.dumps({"finished": True}))
    os.utime(rl_stage.output, ns=(made.st_atime_ns, made.st_mtime_ns))  # as it was
    redo = [stage.description for stage in study.stages(study.parse_args(["--tiny", "--limit", "2", *folders]))
            if not study.is_done(stage, recorded)]
    assert redo == ["evaluate the base model"] + [f"evaluate {run}" for run in
                                                  ("sft_mild", "sft_stress", "opd_sft_stress", "opd_sft_mild", "rl")]
    # an input made after the output: stale (for a training run, study.py refuses rather than mixing two runs)
    time.sleep(0.05)  # past the file system's clock tick
    opd_stage = next(stage for stage in plan if stage.description == "train opd_sft_stress")
    teacher = next(stage for stage in plan if stage.description == "train sft_stress").output
    teacher.write_text(json.dumps({"finished": True}))
    assert study.changed_inputs(opd_stage) == [teacher] and not study.is_done(opd_stage, recorded)


def test_drift_draws_the_two_models_independently(tmp_path, tiny_checkpoint):
    """The same model on both sides: with shared random numbers its states would be identical (MMD 0); drawn
    independently they are two samples of one distribution."""
    from evals import drift
    (tmp_path / "data" / "gsm8k").mkdir(parents=True)
    items = [{"question": f"Ann has {n} pens. How many?", "answer": f"#### {n}"} for n in range(6)]
    (tmp_path / "data" / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    out = tmp_path / "drift.json"
    assert drift.main(["--base", str(tiny_checkpoint), "--model", str(tiny_checkpoint), "--data-dir",
                       str(tmp_path / "data"), "--prompts", "6", "--max-new-tokens", "8", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["distances"]["forward_kl"] == 0  # the same model scores the base's samples identically
    assert result["protocol"]["seeds"] == {"base": 0, "model": 1}
    assert result["protocol"]["dtypes"] == {"base": "float32", "model": "float32"}
    assert result["distances"]["mmd2"] > 0 and result["distances"]["jaccard"] > 0
    assert result["warning"].startswith(f"{min(result['protocol']['states'])} prefix states, fewer than 250")


def test_report_with_a_base_score_of_zero(tmp_path, capsys):
    from evals import report
    protocol = {"shots": 0, "limit": 8, "data": "x", "device": "cpu", "dtype": "float32"}
    for run, mc1 in [("base", 0.0), ("sft_mild", 0.25)]:
        summary = {"truthfulqa": {"mc1": mc1, "mc1_stderr": 0.1}, "mmlu": {"accuracy": 0.5, "accuracy_stderr": 0.1}}
        (tmp_path / run).mkdir()
        (tmp_path / run / "eval.json").write_text(json.dumps({"model": run, "protocol": protocol, "summary": summary}))
    assert report.main([str(tmp_path / "base"), str(tmp_path / "sft_mild"), "--out", str(tmp_path / "report.md")]) == 0
    row = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| sft_mild"))
    assert "-0.1250" in row and "- (a base score is 0)" in row


def test_a_corrupt_stage_record_is_one_line(tmp_path, capsys):
    import study
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "stages.json").write_text("{trunc")
    code = study.main(["--tiny", "--ckpt-dir", str(tmp_path / "ckpt"), "--results-dir", str(tmp_path / "results")])
    error = capsys.readouterr().err
    assert code == 1 and error.strip() == f"error: {tmp_path / 'results' / 'stages.json'} is corrupt; remove it, " \
                                          "and every stage runs again"


def test_forward_kl_is_the_base_samples_log_ratio(tmp_path, tiny_checkpoint):
    """forward_kl against a direct computation: full forwards and log_softmax of both models on the base's own
    samples (which generate draws with the drift's seed), averaged over prompts."""
    import torch
    from infrastructure.checkpoint import load_tokenizer
    from evals import drift, gsm8k
    from model import Qwen3
    from sample import generate
    (tmp_path / "data" / "gsm8k").mkdir(parents=True)
    items = [{"question": f"Bob has {n} cards. How many?", "answer": f"#### {n}"} for n in range(5)]
    (tmp_path / "data" / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    post = Qwen3.from_pretrained(tiny_checkpoint)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in post.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    post.save_pretrained(tmp_path / "post")
    out = tmp_path / "drift.json"
    assert drift.main(["--base", str(tiny_checkpoint), "--model", str(tmp_path / "post"), "--data-dir",
                       str(tmp_path / "data"), "--prompts", "5", "--max-new-tokens", "6", "--out", str(out)]) == 0
    base = Qwen3.from_pretrained(tiny_checkpoint)
    tokenizer = load_tokenizer(base)
    prompts = [tokenizer.encode(gsm8k.prompt(item["question"])).ids for item in items]
    samples = generate(base, prompts, max_new_tokens=6, temperature=1.0, seed=0, stop=gsm8k.STOP, tokenizer=tokenizer)

    def logprob(model, prompt, tokens):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + tokens]))[0, len(prompt) - 1:-1]
        return torch.log_softmax(logits, -1)[torch.arange(len(tokens)), tokens].sum().item()
    direct = [logprob(base, p, s.tokens) - logprob(post, p, s.tokens) for p, s in zip(prompts, samples)]
    result = json.loads(out.read_text())["distances"]
    assert result["forward_kl"] == pytest.approx(sum(direct) / len(direct), abs=1e-4) and result["forward_kl"] > 0
    assert result["forward_kl_per_token"] == pytest.approx(sum(direct) / sum(len(s.tokens) for s in samples), abs=1e-4)
    # the losses: per token, of the gold solutions and of the base's own samples, under each model
    golds = [tokenizer.encode(gsm8k.target(item["answer"]), add_special_tokens=False).ids for item in items]
    losses = json.loads(out.read_text())["losses"]
    for name, model in (("base", base), ("model", post)):
        gold = -sum(logprob(model, p, g) for p, g in zip(prompts, golds)) / sum(map(len, golds))
        own = -sum(logprob(model, p, s.tokens) for p, s in zip(prompts, samples)) / sum(len(s.tokens) for s in samples)
        assert losses["gold"][name] == pytest.approx(gold, abs=1e-4)
        assert losses["base_samples"][name] == pytest.approx(own, abs=1e-4)
    assert losses["gold"]["model"] != pytest.approx(losses["gold"]["base"], abs=1e-3)


def test_report_over_seeds_and_the_drift_forgetting_correlation(tmp_path):
    """Three seeds of two runs: the mean ± standard deviation over seeds, the rank correlation of forgetting with
    each drift measure (evals.frontier.spearman, tested in test_frontier.py), and its plot."""
    from evals import report
    protocol = {"shots": 0, "limit": None, "data": "x", "device": "cpu", "dtype": "float32"}

    def write_run(name, truthfulqa, mmlu, mmd=None, kl=None):
        summary = {"truthfulqa": {"mc1": truthfulqa, "mc1_stderr": 0.02}, "mmlu": {"accuracy": mmlu, "accuracy_stderr": 0.01}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps({"model": name, "protocol": protocol, "summary": summary}))
        if mmd is not None:
            (tmp_path / name / "drift.json").write_text(json.dumps({"distances": {"mmd2": mmd, "forward_kl_per_token": kl}}))
        return str(tmp_path / name)
    folders = [write_run("base", 0.6, 0.8)]
    for seed, suffix in enumerate(["", "_seed1", "_seed2"]):
        folders.append(write_run("sft_stress" + suffix, 0.4 + 0.02 * seed, 0.6, mmd=0.02 + 0.001 * seed, kl=0.5 + seed))
        folders.append(write_run("rl" + suffix, 0.6, 0.79 - 0.01 * seed, mmd=0.03 - 0.001 * seed, kl=0.01 * seed))
    assert report.main(folders + ["--out", str(tmp_path / "report.md")]) == 0
    text = (tmp_path / "report.md").read_text()
    # sft_stress: TruthfulQA 0.40, 0.42, 0.44 -> 0.420 ± 0.020; forgetting (0.2, 0.19, 0.18) -> mean 0.19
    assert "| sft_stress | 3 | - | 0.420 ± 0.020 (se 0.020) | 0.600 ± 0.000 (se 0.010) |" in text
    assert "| rl | 3 |" in text and "0.1900 ± 0.0100" in text
    # forgetting ranks rl seeds 0, 1, 2 then stress seeds 2, 1, 0; the MMD ranks them exactly the other way (-1);
    # the forward KL ranks rl 0, 1, 2, stress 0, 1, 2: rank differences 0, 0, 0, 2, 0, 2 give 1 - 6 * 8 / 210
    assert "MMD drift -1.00 over 6 runs, forward KL 0.77 over 6 runs" in text
    assert (tmp_path / "drift_vs_forgetting.png").read_bytes()[:4] == b"\x89PNG"


def test_forgetting_and_retention_leave_gsm8k_out(tmp_path):
    """Runs that have GSM8K scores too: forgetting and retention are the paper's averages over TruthfulQA and MMLU
    only; a GSM8K change (here a large one) must not enter them."""
    from evals import report
    protocol = {"shots": 0, "limit": None, "data": "x", "device": "cpu", "dtype": "float32"}
    for name, gsm8k, truthfulqa, mmlu in [("base", 0.2, 0.5, 0.8), ("rl", 0.9, 0.4, 0.6)]:
        summary = {"gsm8k": {"flexible": gsm8k, "flexible_stderr": 0.01},
                   "truthfulqa": {"mc1": truthfulqa, "mc1_stderr": 0.01},
                   "mmlu": {"accuracy": mmlu, "accuracy_stderr": 0.01}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps({"model": name, "protocol": protocol, "summary": summary}))
    base, run = report.read_run(tmp_path / "base"), report.read_run(tmp_path / "rl")
    row = report.measures(run, base)
    assert row["forgetting"] == pytest.approx(((0.5 - 0.4) + (0.8 - 0.6)) / 2)
    assert row["retention"] == pytest.approx((0.4 / 0.5 + 0.6 / 0.8) / 2)
