"""
The study's report: the paper's Table 2 with our numbers beside the paper's, and two plots.

    python -m evals.report results/base results/sft_mild results/sft_stress results/opd_sft_stress \\
        results/opd_sft_mild results/rl --out results/report.md

Each argument is a run's results folder, named after the run, holding eval.json (python -m evals) and,
except for the base model, drift.json (python -m evals.drift). The first folder named `base` (or
--base) is the reference for forgetting and retention, computed as the paper defines them on
TruthfulQA (MC1) and MMLU only: forgetting = mean over the two of (base - post), retention = mean of
(post / base). GSM8K is the flexible-extract score. Writes the Markdown report, benchmarks.png (the
three benchmarks per run, ours as bars with standard errors, the paper's as black diamonds) and
training_curves.png (each run's metrics.jsonl).
"""
import argparse
import json
import re
import sys
from pathlib import Path

from checkpoint import CheckpointError, check_writable

# The paper's Table 2 (arXiv 2605.22731): GSM8K, TruthfulQA, MMLU, MMD drift, forgetting, retention
PAPER = {
    "base": ("Base", 0.448, 0.300, 0.436, None, None, None),
    "sft_mild": ("Mild SFT", 0.512, 0.295, 0.444, 0.00956, -0.0015, 1.0008),
    "sft_stress": ("Stress SFT", 0.420, 0.245, 0.364, 0.01093, 0.0635, 0.8258),
    "opd_sft_mild": ("OPD from mild SFT", 0.512, 0.290, 0.434, 0.01470, 0.0060, 0.9810),
    "opd_sft_stress": ("OPD from stress SFT", 0.466, 0.275, 0.430, 0.01092, 0.0155, 0.9515),
    "rl": ("On-policy RL", 0.472, 0.290, 0.442, 0.01098, 0.0020, 0.9902),
}
BENCHMARKS = [("gsm8k", "flexible", "GSM8K"), ("truthfulqa", "mc1", "TruthfulQA MC1"), ("mmlu", "accuracy", "MMLU")]


def paper_name(run: str) -> str:
    """The paper's row for one of our runs: seeds and tiny prefixes do not change which row it is."""
    return re.sub(r"_seed\d+$", "", run.removeprefix("tiny_"))


def forgetting_and_retention(base: tuple, post: tuple) -> tuple:
    """(TruthfulQA, MMLU) scores -> (mean of base - post, mean of post / base), the paper's definitions.
    Retention is None when a base score is 0 (a ratio to nothing)."""
    forgetting = sum(b - p for b, p in zip(base, post)) / len(base)
    retention = sum(p / b for b, p in zip(base, post)) / len(base) if all(base) else None
    return forgetting, retention

# -----------------------------------------------------------------------------
# Reading the runs: every file is checked before anything is written, and a bad one is named


class ReportError(ValueError):
    """A results file the report cannot use; the message names it."""


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # missing, unreadable, not UTF-8, not JSON
        raise ReportError(f"{path}: cannot read it as JSON ({type(error).__name__})") from None


def read_run(folder: Path) -> dict:
    path = folder / "eval.json"
    evaluation = read_json(path)
    if not (isinstance(evaluation, dict) and isinstance(evaluation.get("model"), str)
            and isinstance(evaluation.get("summary"), dict) and isinstance(evaluation.get("protocol"), dict)
            and {"shots", "limit", "data"} <= set(evaluation["protocol"])):
        raise ReportError(f"{path}: not a results file of python -m evals (model, protocol and summary expected)")
    summary = evaluation["summary"]
    try:
        scores = {task: (float(summary[task][metric]), float(summary[task][metric + "_stderr"]))
                  for task, metric, _ in BENCHMARKS if task in summary}
    except (KeyError, TypeError, ValueError) as error:
        raise ReportError(f"{path}: a score is missing or not a number ({error})") from None
    drift_file, drift = folder / "drift.json", None
    if drift_file.exists():
        drift = read_json(drift_file)
        drift = drift.get("distances") if isinstance(drift, dict) else None
        if not isinstance(drift, dict) or not isinstance(drift.get("mmd2"), (int, float)):
            raise ReportError(f"{drift_file}: not a results file of python -m evals.drift (distances.mmd2 expected)")
    return {"name": folder.name, "model": evaluation["model"], "protocol": evaluation["protocol"], "scores": scores,
            "mmd": drift["mmd2"] if drift else None, "drift": drift, "metrics": read_metrics(evaluation["model"])}


def read_metrics(model: str) -> list:
    """The training log beside a run's checkpoint (none for the base model or a hub id)."""
    path = Path(model) / "metrics.jsonl"
    if not path.is_file():
        return []
    try:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except ValueError as error:
        raise ReportError(f"{path}: corrupt training log ({type(error).__name__})") from None
    if not all(isinstance(record, dict) and "step" in record for record in records):
        raise ReportError(f"{path}: corrupt training log (records without a step)")
    return records


def table(runs: list, base: dict) -> str:
    lines = ["| run | source | GSM8K | TruthfulQA | MMLU | MMD drift | forgetting | retention |",
             "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        cells = []
        for task, _, _ in BENCHMARKS:
            value = run["scores"].get(task)
            cells.append(f"{value[0]:.3f} ± {value[1]:.3f}" if value else "-")
        retained = [task for task in ("truthfulqa", "mmlu") if task in run["scores"] and task in base["scores"]]
        if run is not base and len(retained) == 2:
            forgetting, retention = forgetting_and_retention(tuple(base["scores"][t][0] for t in retained),
                                                             tuple(run["scores"][t][0] for t in retained))
            tail = [f"{run['mmd']:.5f}" if run["mmd"] is not None else "-", f"{forgetting:.4f}",
                    f"{retention:.4f}" if retention is not None else "- (a base score is 0)"]
        else:
            tail = ["-", "-", "-"]
        lines.append(f"| {run['name']} | ours | " + " | ".join(cells + tail) + " |")
        paper = PAPER.get(paper_name(run["name"]))
        if paper:
            numbers = [f"{v:.3f}" for v in paper[1:4]] + ["-" if v is None else f"{v:.{digits}f}"
                                                           for v, digits in zip(paper[4:], (5, 4, 4))]
            lines.append(f"| {paper[0]} | paper | " + " | ".join(numbers) + " |")
    return "\n".join(lines)

# -----------------------------------------------------------------------------
# Plots


def plot_benchmarks(runs: list, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(runs)), 4.5))
    width = 0.8 / len(BENCHMARKS)
    for k, (task, _, label) in enumerate(BENCHMARKS):
        xs = [i + (k - 1) * width for i in range(len(runs))]
        values = [run["scores"].get(task, (0, 0)) for run in runs]
        axis.bar(xs, [v[0] for v in values], width, yerr=[v[1] for v in values], capsize=3, label=f"{label} (ours)")
        paper = [PAPER.get(paper_name(run["name"])) for run in runs]
        px = [x for x, p in zip(xs, paper) if p]
        axis.scatter(px, [p[1 + k] for p in paper if p], marker="D", color="black", zorder=3,
                     label="paper" if k == 0 else None)
    axis.set_xticks(range(len(runs)), [run["name"] for run in runs], rotation=20, ha="right")
    axis.set_ylabel("score")
    axis.set_title("Benchmarks per run: ours (bars, ± 1 standard error) and the paper's (diamonds)")
    axis.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_training_curves(runs: list, path: Path) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curves = [(run["name"], run["metrics"]) for run in runs if run["metrics"]]
    if not curves:
        return False
    columns = min(3, len(curves))
    rows = -(-len(curves) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.4 * rows), squeeze=False)
    for axis in axes.flat[len(curves):]:
        axis.set_visible(False)
    for axis, (name, records) in zip(axes.flat, curves):
        for metric in ("loss", "heldout_loss", "reward", "teacher_kl", "heldout_accuracy"):
            points = [(r["step"], r[metric]) for r in records if metric in r]
            if points:
                axis.plot(*zip(*points), marker="." if len(points) < 30 else None, label=metric)
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="results folders, one per run, named after the run")
    parser.add_argument("--base", default="base", help="the run that forgetting and retention compare with")
    parser.add_argument("--out", default="results/report.md")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if out.is_dir():
            raise ReportError(f"--out {out} is a directory; name the report file, e.g. {out / 'report.md'}")
        check_writable(out)
        runs = [read_run(Path(folder)) for folder in args.runs]
    except (ReportError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    base = next((run for run in runs if run["name"] == args.base), None)
    if base is None:
        print(f"error: no run named {args.base!r} among {[run['name'] for run in runs]}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    protocol = base["protocol"]
    lines = ["# Post-training is about states: our runs beside the paper's Table 2", "",
             table(runs, base), "",
             f"Protocol: {protocol['shots']}-shot GSM8K and MMLU, TruthfulQA MC1 with the six-pair preamble; "
             f"items per task: {protocol['limit'] or 'all'}; data: {protocol['data']}; "
             f"{protocol.get('device', '')} {protocol.get('dtype', '')}. Scores ± one standard error. MMD drift: squared MMD of "
             "lexical prefix-state features against the base model's rollouts (see evals/drift.py).",
             "", "![benchmarks](benchmarks.png)"]
    plot_benchmarks(runs, out.parent / "benchmarks.png")
    if plot_training_curves(runs, out.parent / "training_curves.png"):
        lines.append("![training curves](training_curves.png)")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:4]))
    print(f"\nwrote {out}, {out.parent / 'benchmarks.png'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # results are written whole at the end, so nothing was
        print("interrupted: nothing was written", file=sys.stderr)
        sys.exit(130)
