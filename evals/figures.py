"""
The report's figures (python -m evals.report): each run's change from the base beside the paper's, forgetting
against both drift measures on log axes, and the training curves; and the sweep's (python -m evals.sweep): each
objective's Pareto front, and forgetting against drift with the fitted quadratic. Each is written whole and marked
as the report's, so that a rerun knows its own plots.
"""
import os
from pathlib import Path

import numpy as np

from infrastructure.checkpoint import CheckpointError, write_failure


def plot_changes(changes: dict, path: Path) -> bool:
    """changes: {run: {benchmark: (the seeds' changes from the base, the paper's change or None)}}. Ours as bars
    (mean over seeds ± their standard deviation), the paper's change from its base as black diamonds."""
    if not changes:
        return False
    plt = pyplot()
    names, labels = list(changes), list(next(iter(changes.values())))
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(names)), 4.5))
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        xs = [i + (k - (len(labels) - 1) / 2) * width for i in range(len(names))]
        ours = [changes[name][label][0] for name in names]
        axis.bar(xs, [np.mean(c) if c else 0 for c in ours], width, capsize=3, label=label,
                 yerr=[np.std(c, ddof=1) if len(c) > 1 else 0 for c in ours])
        paper = [(x, changes[name][label][1]) for x, name in zip(xs, names)]
        axis.scatter([x for x, v in paper if v is not None], [v for _, v in paper if v is not None], marker="D",
                     color="black", zorder=3, label="the paper's change" if k == 0 else None)
    axis.axhline(0, color="grey", linewidth=0.5)
    axis.set_xticks(range(len(names)), names, rotation=20, ha="right")
    axis.set_ylabel("change from the base")
    axis.set_title("Change from the base: ours (bars, mean ± sd over seeds) and the paper's (diamonds)")
    axis.legend(fontsize=8)
    save_figure(figure, path)
    return True


def plot_drift_and_forgetting(points: list, correlations: tuple, path: Path) -> bool:
    """points: (run without its seed, MMD, forward KL per token or None, forgetting), one per run and seed;
    correlations: Spearman's rank correlation of forgetting with each measure. Forgetting against each drift
    measure on a log axis (the runs span orders of magnitude), each run in its colour; a forward KL estimate at
    or below 0 sits on the linear part near 0."""
    if len(points) < 3:
        return False
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    names = list(dict.fromkeys(name for name, *_ in points))
    colours = {name: plt.cm.tab10(i % 10) for i, name in enumerate(names)}
    for axis, index, label, rho in ((axes[0], 1, "MMD drift (lexical prefix states)", correlations[0]),
                                    (axes[1], 2, "forward KL(base || post) per token (nats)", correlations[1])):
        for name in names:
            mine = [point for point in points if point[0] == name and point[index] is not None]
            axis.scatter([p[index] for p in mine], [p[3] for p in mine], color=colours[name], label=name)
        positive = [p[index] for p in points if p[index] is not None and p[index] > 0]
        axis.set_xscale("symlog", linthresh=min(positive) if positive else 1e-6)
        axis.set_title(f"Spearman rank correlation {rho:.2f} ({len(points)} runs)")
        axis.set_xlabel(label + ", log scale")
        axis.set_ylabel("forgetting (TruthfulQA, MMLU)")
        axis.axhline(0, color="grey", linewidth=0.5)
    axes[1].legend(fontsize=8)
    save_figure(figure, path)
    return True


def plot_training_curves(curves: list, path: Path) -> bool:
    """curves: (run, its metrics.jsonl records); the logged losses, reward, KL and held-out accuracy by step."""
    plt = pyplot()
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
    save_figure(figure, path)
    return True


def plot_frontier(grids: dict, base_accuracy: float, path: Path, tool: str):
    """grids: {objective: (settings, (settings, seeds, 2) array of (main-task accuracy, retention))}. Each setting's
    mean over seeds (bars: the seeds' standard deviation), each objective's Pareto front as a line, the base at
    retention 1."""
    from evals.frontier import pareto_front
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 5))
    for i, (objective, (settings, points)) in enumerate(grids.items()):
        colour, mean = plt.cm.tab10(i), points.mean(1)
        spread = points.std(1, ddof=1) if points.shape[1] > 1 else np.zeros_like(mean)
        axis.errorbar(mean[:, 0], mean[:, 1], xerr=spread[:, 0], yerr=spread[:, 1], fmt="o", color=colour,
                      capsize=2, label=objective)
        for setting, (x, y) in zip(settings, mean):
            axis.annotate(setting, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        front = pareto_front(mean)
        axis.plot(front[:, 0], front[:, 1], color=colour, linewidth=1.2)
    axis.scatter([base_accuracy], [1.0], marker="*", s=150, color="black", zorder=3, label="base")
    axis.set_xlabel("main task (GSM8K) accuracy")
    axis.set_ylabel("retention (TruthfulQA, MMLU; base = 1)")
    axis.set_title("Each objective's settings and Pareto front (mean over seeds)")
    axis.legend(fontsize=8)
    save_figure(figure, path, tool)


def plot_drift_fits(table: list, fits: dict, path: Path, tool: str):
    """table: one row per run (objective, forgetting, mmd, forward_kl); fits: per drift, its quadratic and
    Spearman's correlation. Forgetting against each drift on a log axis, each objective in its colour, the
    quadratic fitted over every run drawn."""
    from evals.frontier import curve
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    objectives = list(dict.fromkeys(row["objective"] for row in table))
    for axis, (key, label) in zip(axes, (("mmd", "MMD drift (lexical prefix states)"),
                                         ("forward_kl", "forward KL(base || post) per token (nats)"))):
        for i, objective in enumerate(objectives):
            mine = [row for row in table if row["objective"] == objective]
            axis.scatter([row[key] for row in mine], [row["forgetting"] for row in mine], color=plt.cm.tab10(i),
                         label=objective)
        drifts = np.array([row[key] for row in table])
        fit = fits[key]["quadratic"]
        if fit is not None:
            xs = np.linspace(drifts.min(), drifts.max(), 200)
            axis.plot(xs, curve(fit["coefficients"], xs), color="grey", linewidth=1,
                      label=f"quadratic, R^2 {fit['r2']:.2f}")
        positive = drifts[drifts > 0]
        axis.set_xscale("symlog", linthresh=positive.min() if len(positive) else 1e-6)
        axis.set_title(f"Spearman {fits[key]['spearman']:.2f} over {len(table)} runs")
        axis.set_xlabel(label + ", log scale")
        axis.set_ylabel("forgetting (TruthfulQA, MMLU)")
        axis.axhline(0, color="grey", linewidth=0.5)
        axis.legend(fontsize=8)
    save_figure(figure, path, tool)


def pyplot():
    """matplotlib's pyplot, drawing to files only (imported when a report is written, not when evals load)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(figure, path: Path, tool: str = "python -m evals.report"):
    """A plot laid out, written whole (to a temporary file, then renamed), marked as the tool's, and closed."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    figure.tight_layout()
    try:
        figure.savefig(temporary, dpi=120, metadata={"Software": tool})
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise CheckpointError(write_failure(path, error)) from None
    finally:
        pyplot().close(figure)
