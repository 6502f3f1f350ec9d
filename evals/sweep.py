"""
A sweep's report: what each objective buys for what it costs, over a grid of strengths (`python study.py --sweep`
writes the runs and calls this), with the frontier's verdicts by the rules in evals/frontier.py.

    python -m evals.sweep --base results/base sft:e1_lr1e-3_r8:0:results/sweep/sft_e1_lr1e-3_r8 \\
        sft:sft_stress:0:results/sft_stress rl:rl:0:results/rl opd:opd_sft_stress:0:results/opd_sft_stress \\
        --stress sft_stress --out results/sweep/report.md      # and every other run of the grid

Each run is OBJECTIVE:SETTING:SEED:FOLDER (a folder with eval.json and drift.json); every objective needs runs,
on the same seeds. Writes the report, its two figures (frontier.png, drift_fits.png) and every number as
sweep.json beside it (undefined numbers as null), refusing to replace such files that it did not write.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from evals import frontier, write_atomically
from evals.report import ReportError, measures, read_run
from infrastructure.checkpoint import CheckpointError, check_writable

OBJECTIVES = ("sft", "rl", "opd")
TOOL = "python -m evals.sweep"
MARKER = f"<!-- written by {TOOL} -->"
PLOTS = ("frontier.png", "drift_fits.png")
DRIFTS = (("mmd", "MMD drift"), ("forward_kl", "forward KL / token"))


def parse_run(text: str) -> tuple:
    objective, setting, seed, folder = (text.split(":", 3) + [""] * 4)[:4]
    if objective not in OBJECTIVES or not setting or not seed.isdigit() or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: expected OBJECTIVE:SETTING:SEED:FOLDER with OBJECTIVE one of "
                                         f"{', '.join(OBJECTIVES)}")
    return objective, setting, int(seed), Path(folder)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="the base model's results folder")
    parser.add_argument("runs", nargs="+", type=parse_run, help="OBJECTIVE:SETTING:SEED:FOLDER of each run")
    parser.add_argument("--stress", nargs="*", default=[], help="settings of stress strength (left out of one fit)")
    parser.add_argument("--out", type=Path, required=True, help="the report's path (its figures go beside it)")
    return parser.parse_args(argv)


def disk_bytes(model: str):
    """The bytes of a checkpoint folder; None when it is not there (a path relative to another directory)."""
    folder = Path(model)
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else None


def check_outputs(out: Path):
    """Before reading anything: the report, its plots and sweep.json beside --out are replaced only when this tool
    wrote them."""
    check_writable(out)
    if out.is_dir():
        raise ReportError(f"--out {out} is a directory; name the report file, e.g. {out / 'report.md'}")
    if out.exists() and out.read_text(errors="replace").split("\n", 1)[0] != MARKER:
        raise ReportError(f"{out} exists and was not written by this tool: choose another --out")
    for plot in (out.parent / name for name in PLOTS):
        if plot.exists() and TOOL.encode() not in plot.read_bytes()[:4096]:
            raise ReportError(f"{plot} exists and was not written by this tool: choose another --out folder")
    numbers = out.parent / "sweep.json"
    if numbers.exists():
        try:
            ours = json.loads(numbers.read_text()).get("written_by") == TOOL
        except (ValueError, AttributeError, UnicodeDecodeError):
            ours = False
        if not ours:
            raise ReportError(f"{numbers} exists and was not written by this tool: choose another --out folder")


def check_grid(runs: list):
    """Every objective has runs, each (objective, setting, seed) once, and the same seeds everywhere."""
    seen = set()
    for objective, setting, seed, folder in runs:
        if (objective, setting, seed) in seen:
            raise ReportError(f"{objective}:{setting}:{seed} is given twice: each run counts once")
        seen.add((objective, setting, seed))
    seeds = {objective: sorted({seed for o, _, seed, _ in runs if o == objective}) for objective in OBJECTIVES}
    missing = [objective for objective, mine in seeds.items() if not mine]
    if missing:
        raise ReportError(f"no {missing[0]} runs: the frontier compares {', '.join(OBJECTIVES)}")
    if len({tuple(mine) for mine in seeds.values()}) > 1:
        raise ReportError(f"the objectives ran on different seeds ({seeds}): the bootstrap pairs them by seed")


def finite(value):
    """NaN and infinities as None, so that sweep.json is strict JSON."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def rows(args) -> tuple:
    """(one row per run: objective, setting, seed, GSM8K accuracy, retention, forgetting, both drifts, checkpoint
    bytes; the base's results); every file is read and checked before anything is written."""
    base = read_run(args.base)
    if "gsm8k" not in base["scores"]:
        raise ReportError(f"{args.base}: the base has no GSM8K score, the frontier's main task")
    table = []
    for objective, setting, seed, folder in args.runs:
        run = read_run(folder)
        row = measures(run, base)
        missing = [key for key in ("gsm8k", "retention", "mmd", "forward_kl") if row[key] is None]
        if missing:
            raise ReportError(f"{folder}: no {missing[0]} (eval.json with all three tasks and drift.json needed)")
        table.append({"objective": objective, "setting": setting, "seed": seed, "accuracy": row["gsm8k"],
                      "retention": row["retention"], "forgetting": row["forgetting"], "mmd": row["mmd"],
                      "forward_kl": row["forward_kl"], "stress": setting in args.stress,
                      "bytes": disk_bytes(run["model"])})
    return table, base


def grid(table: list, objective: str) -> tuple:
    """(settings in order, (settings, seeds, 2) array of (accuracy, retention)); every setting needs the same seeds."""
    mine = [row for row in table if row["objective"] == objective]
    settings = list(dict.fromkeys(row["setting"] for row in mine))
    seeds = sorted({row["seed"] for row in mine})
    points = np.full((len(settings), len(seeds), 2), np.nan)
    for row in mine:
        points[settings.index(row["setting"]), seeds.index(row["seed"])] = row["accuracy"], row["retention"]
    if np.isnan(points).any():
        raise ReportError(f"{objective}: every setting needs a run of each seed {seeds}")
    return settings, points


def fits(table: list) -> dict:
    """Forgetting against each drift over every run: a quadratic on the drift, on log10 of it (positive drifts
    only), and on the drift without the stress-strength runs; Spearman's correlation."""
    forgetting = np.array([row["forgetting"] for row in table])
    result = {}
    for key, _ in DRIFTS:
        drift = np.array([row[key] for row in table])
        positive, mild = drift > 0, np.array([not row["stress"] for row in table])
        result[key] = {"spearman": frontier.spearman(drift, forgetting),
                       "quadratic": frontier.quadratic_fit(drift, forgetting),
                       "quadratic_log": frontier.quadratic_fit(np.log10(drift[positive]), forgetting[positive]),
                       "quadratic_without_stress": frontier.quadratic_fit(drift[mild], forgetting[mild])}
    return result


def number(value, digits=3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def range_text(low, high) -> str:
    return f"{low:.3f} to {high:.3f}" if high >= low else "none"


def signed(value) -> str:
    return "-" if math.isnan(value) else f"{value:+.2f}"


def describe_fit(fit) -> str:
    return "too few runs" if fit is None else f"R^2 {number(fit['r2'])} over {fit['points']} runs"


def report_lines(table: list, base: dict, verdicts: dict, fitted: dict, stress: list) -> list:
    lines = ["# The frontier: what each objective buys and what it costs", "",
             f"Base: GSM8K {base['scores']['gsm8k'][0]:.3f}. Mean over seeds per setting; retention and forgetting "
             "are the paper's, over TruthfulQA and MMLU; the drifts are measured on the main task's states.", "",
             "| objective | setting | seeds | GSM8K | retention | forgetting | MMD drift | forward KL / token |",
             "|---|---|---|---|---|---|---|---|"]
    for objective in OBJECTIVES:
        mine = [row for row in table if row["objective"] == objective]
        for setting in dict.fromkeys(row["setting"] for row in mine):
            runs = [row for row in mine if row["setting"] == setting]
            mean = {key: float(np.mean([row[key] for row in runs])) for key in
                    ("accuracy", "retention", "forgetting", "mmd", "forward_kl")}
            lines.append(f"| {objective} | {setting}{' (stress)' if setting in stress else ''} | {len(runs)} | "
                         f"{mean['accuracy']:.3f} | {mean['retention']:.4f} | {mean['forgetting']:.4f} | "
                         f"{mean['mmd']:.5f} | {mean['forward_kl']:.4f} |")
    front, drift, side = verdicts["fronts"], verdicts["drift"], verdicts["opd_side"]
    seeds = len({row["seed"] for row in table})
    lines += ["", "![the frontier](frontier.png)", "", "## Verdicts", "",
              "By the rules in evals/frontier.py, fixed before the sweep ran.", "",
              f"1. RL's front against SFT's: **{front[0]}** (GSM8K range both fronts reach "
              f"{range_text(*front[1]['range'])}"
              + (f", tested {range_text(*front[1]['tested_range'])}" if "tested_range" in front[1] else "")
              + (f"; RL's retention minus SFT's from {min(front[1]['difference']):+.4f} to "
                 f"{max(front[1]['difference']):+.4f}" if "difference" in front[1] else "")
              + (f"; with {seeds} seeds the bootstrap has 3 distinct draws" if seeds == 2 else "") + ").",
              f"2. Which drift predicts forgetting: **{drift[0]}** (Spearman MMD {number(drift[1]['mmd'], 2)}, "
              f"forward KL {number(drift[1]['forward_kl'], 2)}; their difference's 95% interval "
              f"{signed(drift[1]['interval'][0])} to {signed(drift[1]['interval'][1])}, {drift[1]['runs']} runs).",
              f"3. OPD's side: **{side[0]}** ("
              + (side[1]["reason"] if "reason" in side[1] else
                 f"mean absolute residual from RL's curve {side[1]['RL']['residual']:.4f}, 95% "
                 f"{side[1]['RL']['interval'][0]:.4f} to {side[1]['RL']['interval'][1]:.4f}; from SFT's "
                 f"{side[1]['SFT']['residual']:.4f}, {side[1]['SFT']['interval'][0]:.4f} to "
                 f"{side[1]['SFT']['interval'][1]:.4f}; mean absolute residuals, the fits taken as exact") + ").",
              "",
              "## Forgetting against drift", "", "| drift | Spearman | quadratic | on log drift | without stress |",
              "|---|---|---|---|---|"]
    for key, label in DRIFTS:
        fit = fitted[key]
        lines.append(f"| {label} | {number(fit['spearman'], 2)} | {describe_fit(fit['quadratic'])} | "
                     f"{describe_fit(fit['quadratic_log'])} | {describe_fit(fit['quadratic_without_stress'])} |")
    sizes = [row["bytes"] for row in table]
    lines += ["", "![forgetting against drift](drift_fits.png)", "",
              f"Checkpoints of these runs: {sum(size for size in sizes if size) / 1e6:.1f} MB"
              + (f" ({sizes.count(None)} not found from here, not counted)." if None in sizes else ".")]
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_outputs(args.out)
        check_grid(args.runs)
        table, base = rows(args)
        grids = {objective: grid(table, objective) for objective in OBJECTIVES}
        pick = {objective: np.array([(row["forward_kl"], row["forgetting"]) for row in table
                                     if row["objective"] == objective]) for objective in OBJECTIVES}
        verdicts = {"fronts": frontier.fronts_verdict(grids["rl"][1], grids["sft"][1]),
                    "drift": frontier.drift_verdict(*(np.array([row[key] for row in table])
                                                      for key in ("forgetting", "mmd", "forward_kl"))),
                    "opd_side": frontier.opd_side_verdict(pick["rl"], pick["sft"], pick["opd"])}
        fitted = fits(table)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        from evals import figures  # matplotlib, imported only when a report is written
        figures.plot_frontier(grids, base["scores"]["gsm8k"][0], args.out.parent / PLOTS[0], TOOL)
        figures.plot_drift_fits(table, fitted, args.out.parent / PLOTS[1], TOOL)
        lines = report_lines(table, base, verdicts, fitted, args.stress)
        write_atomically(args.out.parent / "sweep.json", finite({"written_by": TOOL, "runs": table,
                                                                "verdicts": verdicts, "fits": fitted}))
        write_atomically(args.out, "\n".join([MARKER] + lines) + "\n")
    except (ReportError, CheckpointError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    print(f"\nwrote {args.out}, its figures and sweep.json in {args.out.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
