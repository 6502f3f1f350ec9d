"""
The study's report: the paper's Table 2 with our numbers beside the paper's, the mean and spread over seeds,
and three plots.

    python -m evals.report results/base results/sft_mild results/sft_stress results/opd_sft_stress \\
        results/opd_sft_mild results/rl --out results/report.md

Each argument is a run's results folder, named after the run, holding eval.json (python -m evals) and,
except for the base model, drift.json (python -m evals.drift). The first folder named `base` (or
--base) is the reference for forgetting and retention, computed as the paper defines them on
TruthfulQA (MC1) and MMLU only: forgetting = mean over the two of (base - post), retention = mean of
(post / base). GSM8K is the flexible-extract score. Runs named RUN_seedN are seeds of RUN: the report
gives their mean and spread beside each run's own standard error. Writes the Markdown report,
benchmarks.png (the three benchmarks per run, ours as bars with standard errors, the paper's as black
diamonds), training_curves.png (each run's metrics.jsonl) and drift_vs_forgetting.png (forgetting against
each drift measure over every run and seed, with Spearman's rank correlation).
"""
import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from infrastructure.checkpoint import CheckpointError, check_writable

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


def measures(run: dict, base: dict) -> dict:
    """A run's row: the three scores, its drift and, against the base, forgetting and retention (None when missing)."""
    row = {task: run["scores"].get(task, (None,))[0] for task, _, _ in BENCHMARKS}
    drift = run["drift"] or {}
    row.update(mmd=drift.get("mmd2"), forward_kl=drift.get("forward_kl_per_token"), forgetting=None, retention=None)
    retained = [task for task in ("truthfulqa", "mmlu") if task in run["scores"] and task in base["scores"]]
    if run is not base and len(retained) == 2:
        row["forgetting"], row["retention"] = forgetting_and_retention(
            tuple(base["scores"][t][0] for t in retained), tuple(run["scores"][t][0] for t in retained))
    return row


COLUMNS = [("gsm8k", 3), ("truthfulqa", 3), ("mmlu", 3), ("mmd", 5), ("forward_kl", 4), ("forgetting", 4),
           ("retention", 4)]
HEADER = ["| run | source | GSM8K | TruthfulQA | MMLU | MMD drift | forward KL / token | forgetting | retention |",
          "|---|---|---|---|---|---|---|---|---|"]


def paper_row(name: str) -> list:
    paper = PAPER.get(paper_name(name))
    if not paper:
        return []
    numbers = [f"{v:.3f}" for v in paper[1:4]] + ["-" if paper[4] is None else f"{paper[4]:.5f}", "-"]
    numbers += ["-" if v is None else f"{v:.4f}" for v in paper[5:]]
    return [f"| {paper[0]} | paper | " + " | ".join(numbers) + " |"]


def table(runs: list, base: dict) -> str:
    """Every run: its scores ± one standard error, its drift, forgetting and retention; the paper's row below."""
    lines = list(HEADER)
    for run in runs:
        row = measures(run, base)
        cells = [f"{run['scores'][task][0]:.3f} ± {run['scores'][task][1]:.3f}" if task in run["scores"] else "-"
                 for task, _, _ in BENCHMARKS]
        cells += ["-" if row[name] is None else f"{row[name]:.{digits}f}" for name, digits in COLUMNS[3:]]
        if row["retention"] is None and row["forgetting"] is not None:
            cells[-1] = "- (a base score is 0)"
        lines.append(f"| {run['name']} | ours | " + " | ".join(cells) + " |")
        lines += paper_row(run["name"])
    return "\n".join(lines)


def seed_table(runs: list, base: dict) -> str:
    """Runs with several seeds: the mean ± the standard deviation over seeds (n seeds), and the mean of the
    runs' own standard errors, to set the spread against."""
    groups = {}
    for run in runs:
        groups.setdefault(paper_name(run["name"]), []).append(run)
    lines = list(HEADER)
    for name, group in groups.items():
        if len(group) < 2:
            continue
        rows = [measures(run, base) for run in group]
        cells = []
        for column, digits in COLUMNS:
            values = np.array([row[column] for row in rows if row[column] is not None], dtype=float)
            cells.append(f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else "-")
        for index, (task, _, _) in enumerate(BENCHMARKS):
            errors = [run["scores"][task][1] for run in group if task in run["scores"]]
            cells[index] += f" (se {np.mean(errors):.3f})" if errors else ""
        lines.append(f"| {name} ({len(group)} seeds) | ours | " + " | ".join(cells) + " |")
        lines += paper_row(name)
    return "\n".join(lines) if len(lines) > 2 else ""


def spearman(x, y) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks (ties get their mean rank)."""
    def ranks(values):
        values = np.asarray(values, dtype=float)
        order = values.argsort(kind="stable")
        result = np.empty(len(values))
        result[order] = np.arange(len(values))
        for value in np.unique(values):
            result[values == value] = result[values == value].mean()
        return result
    a, b = ranks(x), ranks(y)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def drift_and_forgetting(runs: list, base: dict) -> list:
    """(run, MMD, forward KL per token, forgetting) of every run with a drift and a forgetting."""
    rows = [(run["name"], measures(run, base)) for run in runs if run is not base]
    return [(name, row["mmd"], row["forward_kl"], row["forgetting"]) for name, row in rows
            if row["mmd"] is not None and row["forgetting"] is not None]

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


def plot_drift_and_forgetting(points: list, path: Path) -> bool:
    """Forgetting against each drift measure, one point per run and seed, each run in its colour."""
    if len(points) < 3:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    names = list(dict.fromkeys(paper_name(name) for name, *_ in points))
    colours = {name: plt.cm.tab10(i % 10) for i, name in enumerate(names)}
    for axis, index, label in ((axes[0], 1, "MMD drift (lexical prefix states)"),
                               (axes[1], 2, "forward KL(base || post) per token (nats)")):
        for name in names:
            mine = [point for point in points if paper_name(point[0]) == name]
            axis.scatter([p[index] for p in mine], [p[3] for p in mine], color=colours[name], label=name)
        rho = spearman([p[index] for p in points], [p[3] for p in points])
        axis.set_title(f"Spearman rank correlation {rho:.2f} ({len(points)} runs)")
        axis.set_xlabel(label)
        axis.set_ylabel("forgetting (TruthfulQA, MMLU)")
        axis.axhline(0, color="grey", linewidth=0.5)
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m evals.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="results folders, one per run, named after the run")
    parser.add_argument("--base", default="base", help="the run that forgetting and retention compare with")
    parser.add_argument("--out", default="results/report.md")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
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
    lines = ["# Post-training is about states: our runs beside the paper's Table 2", "", table(runs, base), "",
             f"Protocol: {protocol['shots']}-shot GSM8K and MMLU, TruthfulQA MC1 with the six-pair preamble; "
             f"items per task: {protocol['limit'] or 'all'}; data: {protocol['data']}; "
             f"{protocol.get('device', '')} {protocol.get('dtype', '')}. Scores ± one standard error. MMD drift: "
             "squared MMD of lexical prefix-state features against the base model's rollouts; forward KL: "
             "log p_base - log p_post of the base's own samples, per token (see evals/drift.py)."]
    seeds = seed_table(runs, base)
    if seeds:
        lines += ["", "## Mean over seeds", "", seeds, "",
                  "Each cell: the mean ± the standard deviation over seeds; (se ...) is the mean of the runs' own "
                  "standard errors, the noise of one evaluation."]
    points = drift_and_forgetting(runs, base)
    if len(points) >= 3:
        lines += ["", "## Which drift predicts forgetting", "",
                  f"Spearman's rank correlation with forgetting over {len(points)} runs: MMD drift "
                  f"{spearman([p[1] for p in points], [p[3] for p in points]):.2f}, forward KL "
                  f"{spearman([p[2] for p in points], [p[3] for p in points]):.2f}.", "",
                  "![drift and forgetting](drift_vs_forgetting.png)"]
    lines += ["", "![benchmarks](benchmarks.png)"]
    plot_benchmarks(runs, out.parent / "benchmarks.png")
    plot_drift_and_forgetting(points, out.parent / "drift_vs_forgetting.png")
    if plot_training_curves(runs, out.parent / "training_curves.png"):
        lines.append("![training curves](training_curves.png)")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out} and its plots in {out.parent}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # results are written whole at the end, so nothing was
        print("interrupted: nothing was written", file=sys.stderr)
        sys.exit(130)
