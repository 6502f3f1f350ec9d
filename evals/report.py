"""
The study's report: per run the mean and spread over seeds, its change from the base beside the paper's, the
paper's three findings decided by fixed rules (evals/findings.py), the states the models reach, and three plots.

    python -m evals.report results/base results/sft_mild results/sft_stress results/opd_sft_stress \\
        results/opd_sft_mild results/rl --out results/report.md

Each argument is a run's results folder, named after the run, holding eval.json (python -m evals) and,
except for the base model, drift.json (python -m evals.drift). The first folder named `base` (or
--base) is the reference for forgetting and retention, computed as the paper defines them on
TruthfulQA (MC1) and MMLU only: forgetting = mean over the two of (base - post), retention = mean of
(post / base). GSM8K is the flexible-extract score. Runs named RUN_seedN are seeds of RUN: the report
gives their mean and spread beside each run's own standard error, and every seed in an appendix. Writes the
Markdown report, benchmarks.png (each run's change from the base per benchmark, ours as bars, the paper's as
black diamonds), training_curves.png (each run's metrics.jsonl) and drift_vs_forgetting.png (forgetting
against each drift measure on a log axis over every run and seed, with Spearman's rank correlation).
"""
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from evals import findings, gsm8k, write_atomically
from evals.frontier import spearman
from infrastructure import flags
from infrastructure.checkpoint import CheckpointError, check_writable, guard_output

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
    broken = [task for task, values in scores.items() if not all(map(math.isfinite, values))]
    if broken:  # a diverged model's scores, or a damaged file: a mean over them would be NaN too
        raise ReportError(f"{path}: the {broken[0]} score or its standard error is not a finite number")
    items = (evaluation.get("tasks") or {}).get("gsm8k", {}).get("items")
    if items is not None and not (isinstance(items, list) and all(
            isinstance(r, dict) and {"id", "prediction", "reference"} <= set(r)
            and isinstance(r.get("correct"), dict) and r["correct"].get("flexible") in (0, 1) for r in items)):
        raise ReportError(f"{path}: its GSM8K items are not python -m evals records (id, prediction, correct)")
    drift_file, drift, losses = folder / "drift.json", None, None
    if drift_file.exists():
        content = read_json(drift_file)
        drift = content.get("distances") if isinstance(content, dict) else None
        if not isinstance(drift, dict) or not isinstance(drift.get("mmd2"), (int, float)):
            raise ReportError(f"{drift_file}: not a results file of python -m evals.drift (distances.mmd2 expected)")
        losses = content.get("losses")  # older drift files have none
        if losses is not None and not (isinstance(losses, dict) and all(
                isinstance(pair, dict) and set(pair) == {"base", "model"} for pair in losses.values())):
            raise ReportError(f"{drift_file}: its losses are not python -m evals.drift's (base and model per kind)")
        numbers = list(drift.values()) + [v for pair in (losses or {}).values() for v in pair.values()]
        if not all(math.isfinite(value) for value in numbers if isinstance(value, (int, float))):
            raise ReportError(f"{drift_file}: a distance or a loss is not a finite number")
    return {"name": folder.name, "model": evaluation["model"], "protocol": evaluation["protocol"], "scores": scores,
            "items": items, "drift": drift, "losses": losses, "metrics": read_metrics(evaluation["model"]),
            "drift_warning": content.get("warning") if drift_file.exists() else None}


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


def groups(runs: list) -> dict:
    """Runs by name without their seed suffix, in the order given: {name: [run of each seed]}."""
    grouped = {}
    for run in runs:
        grouped.setdefault(paper_name(run["name"]), []).append(run)
    return grouped


def mean_and_spread(values: list, digits: int) -> str:
    """The mean over seeds ± their standard deviation (one seed: the value alone); '-' when nothing is known."""
    values = [value for value in values if value is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


COLUMNS = [("gsm8k", 3), ("truthfulqa", 3), ("mmlu", 3), ("mmd", 5), ("forward_kl", 4), ("forgetting", 4),
           ("retention", 4)]
NAMES = "| GSM8K | TruthfulQA | MMLU | MMD drift | forward KL / token | forgetting | retention |"


def summary_table(runs: list, base: dict) -> str:
    """One row per run: each measure's mean ± standard deviation over its seeds, and the mean of the runs' own
    standard errors (se), the noise of one evaluation, to set the spread against."""
    lines = ["| run | seeds " + NAMES, "|---|---|---|---|---|---|---|---|---|"]
    for name, group in groups(runs).items():
        rows = [measures(run, base) for run in group]
        cells = [mean_and_spread([row[column] for row in rows], digits) for column, digits in COLUMNS]
        for index, (task, _, _) in enumerate(BENCHMARKS):
            errors = [run["scores"][task][1] for run in group if task in run["scores"]]
            cells[index] += f" (se {np.mean(errors):.3f})" if errors else ""
        if any(row["forgetting"] is not None and row["retention"] is None for row in rows):
            cells[-1] = "- (a base score is 0)"
        lines.append(f"| {name} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_change(name: str, index: int):
    """The paper's change from its base in column `index` of PAPER (1-3 the benchmarks), or None."""
    paper, paper_base = PAPER.get(name), PAPER["base"]
    return None if paper is None or name == "base" else paper[index] - paper_base[index]


def changes_by_run(runs: list, base: dict) -> dict:
    """{run: {benchmark: (each seed's change from the base, the paper's change from its base or None)}}."""
    return {name: {label: ([run["scores"][task][0] - base["scores"][task][0] for run in group
                            if task in run["scores"] and task in base["scores"]], paper_change(name, index))
                   for index, (task, _, label) in enumerate(BENCHMARKS, start=1)}
            for name, group in groups(runs).items() if name != base["name"]}


def change_table(runs: list, base: dict) -> str:
    """Each run's mean change from its base beside the paper's change from its base: two different worlds'
    absolute scores do not compare, the direction of a change does."""
    lines = ["| run | GSM8K change | paper | TruthfulQA change | paper | MMLU change | paper | forgetting | paper | "
             "retention | paper | signs as the paper's |", "|---|" + "---|" * 11]
    grouped = groups(runs)
    for name, benchmarks in changes_by_run(runs, base).items():
        group, cells, agree, compared = grouped[name], [], 0, 0
        for changes, paper in benchmarks.values():
            cells += [f"{np.mean(changes):+.3f}" if changes else "-", "-" if paper is None else f"{paper:+.3f}"]
            if changes and paper:
                compared += 1
                agree += np.sign(np.mean(changes)) == np.sign(paper)
        rows = [measures(run, base) for run in group]
        for column, index in (("forgetting", 5), ("retention", 6)):
            paper = PAPER.get(name)
            cells += [mean_and_spread([row[column] for row in rows], 4),
                      "-" if paper is None else f"{paper[index]:.4f}"]
        cells.append(f"{agree} of {compared}" if compared else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def seed_table(runs: list, base: dict) -> str:
    """Every run and seed: its scores ± one standard error, its drift, forgetting and retention."""
    lines = ["| run " + NAMES, "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        row = measures(run, base)
        cells = [f"{run['scores'][task][0]:.3f} ± {run['scores'][task][1]:.3f}" if task in run["scores"] else "-"
                 for task, _, _ in BENCHMARKS]
        cells += ["-" if row[name] is None else f"{row[name]:.{digits}f}" for name, digits in COLUMNS[3:]]
        if row["retention"] is None and row["forgetting"] is not None:
            cells[-1] = "- (a base score is 0)"
        lines.append(f"| {run['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_table() -> str:
    lines = ["| run " + NAMES.replace(" forward KL / token |", ""), "|---|---|---|---|---|---|---|"]
    for name, (title, *numbers) in PAPER.items():
        cells = [f"{v:.3f}" for v in numbers[:3]] + ["-" if v is None else f"{v:.{d}f}" for v, d in
                                                      zip(numbers[3:], (5, 4, 4))]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def drift_and_forgetting(runs: list, base: dict) -> list:
    """(run, MMD, forward KL per token or None, forgetting) of every run with a drift and a forgetting."""
    rows = [(run["name"], measures(run, base)) for run in runs if run is not base]
    return [(name, row["mmd"], row["forward_kl"], row["forgetting"]) for name, row in rows
            if row["mmd"] is not None and row["forgetting"] is not None]

# -----------------------------------------------------------------------------
# Findings, states and losses: what the runs did, beyond their scores


class Undecided(Exception):
    """A finding the report cannot decide; the message says what is missing."""


def correct_items(run: dict) -> tuple:
    """(item ids, 0/1 flexible-extract correctness) of a run's GSM8K items."""
    if not run.get("items"):
        raise Undecided(f"{run['name']} has no per-item GSM8K results")
    return tuple(r["id"] for r in run["items"]), [r["correct"]["flexible"] for r in run["items"]]


def gain_over_base(group: list, base: dict) -> dict:
    """findings.paired_gain of a run's seeds against the base, on the same GSM8K items."""
    ids, reference = correct_items(base)
    seeds = [correct_items(run) for run in group]
    if any(seed_ids != ids for seed_ids, _ in seeds):
        raise Undecided(f"{group[0]['name']}'s GSM8K items differ from the base's")
    return findings.paired_gain(reference, [correct for _, correct in seeds])


FINDINGS = [("Mild SFT on dataset states helps the main task with little forgetting; stress SFT forgets",
             ("sft_mild", "sft_stress")),
            ("OPD from the degraded stress teacher beats that teacher on all three benchmarks",
             ("opd_sft_stress", "sft_stress")),
            ("Light on-policy RL improves the main task and keeps retention", ("rl",))]


def decide_finding(number: int, grouped: dict, base: dict) -> tuple:
    """(verdict, its numbers in words) of finding `number` by evals/findings.py's rules; raises Undecided."""
    needed = FINDINGS[number - 1][1]
    missing = [name for name in needed if name not in grouped]
    if missing:
        raise Undecided(f"no {missing[0]} runs")

    def per_seed(name, column):
        values = [measures(run, base)[column] for run in grouped[name]]
        if None in values:
            raise Undecided(f"{name} has no {column} (TruthfulQA and MMLU scores of it and the base)")
        return values
    if number == 1:
        return findings.mild_sft(gain_over_base(grouped["sft_mild"], base), per_seed("sft_mild", "forgetting"),
                                 per_seed("sft_stress", "forgetting"))
    if number == 3:
        return findings.rl_improves(gain_over_base(grouped["rl"], base), per_seed("rl", "retention"))
    def seed(run):  # "" for the first seed, "_seed1" for the next
        return re.search(r"(_seed\d+)?$", run["name"]).group()
    teachers = {seed(run): run for run in grouped["sft_stress"]}
    pairs = [(run, teachers.get(seed(run))) for run in grouped["opd_sft_stress"]]
    if any(teacher is None for _, teacher in pairs):
        raise Undecided("a student without the stress SFT run of its seed")
    tasks = [task for task, _, _ in BENCHMARKS]
    if any(task not in run["scores"] for pair in pairs for run in pair for task in tasks):
        raise Undecided("a student or teacher without all three benchmarks")
    return findings.opd_beats_teacher([{t: student["scores"][t][0] for t in tasks} for student, _ in pairs],
                                      [{t: teacher["scores"][t][0] for t in tasks} for _, teacher in pairs], tasks)


def findings_section(runs: list, base: dict) -> list:
    """The paper's three findings, each 'reproduced', 'not reproduced' or 'inconclusive' with its numbers."""
    lines, grouped = [], groups(runs)
    for number, (title, _) in enumerate(FINDINGS, start=1):
        try:
            verdict, numbers = decide_finding(number, grouped, base)
            lines.append(f"{number}. {title}: **{verdict}**. {numbers}.")
        except Undecided as reason:
            lines.append(f"{number}. {title}: **not decided** ({reason}).")
    return lines


SIDE_BY_SIDE = (0, 1)  # the GSM8K test items shown side by side, fixed before any run


def side_by_side(runs: list) -> list:
    """The greedy solution of test items 0 and 1 by the base and each run's first seed: the states each reached."""
    firsts = [group[0] for group in groups(runs).values() if group[0].get("items")]
    lines = []
    for index in SIDE_BY_SIDE:
        records = [(run["name"], run["items"][index]) for run in firsts if len(run["items"]) > index]
        if not records:
            continue
        first = records[0][1]
        lines += [f"### Test item {index}", "", f"Question: {first.get('question', '(not in the results file)')} "
                  f"Answer: {first['reference']}", ""]
        for name, record in records:
            mark = "right" if record["correct"]["flexible"] else "wrong"
            lines += [f"**{name}** ({mark}):", "", "```", record["prediction"].strip(), "```", ""]
    return lines


def style_and_slips(run: dict) -> tuple:
    """(share of the greedy GSM8K solutions in the dataset's style, share of the wrong ones with a false
    equation), None where the run has no items (or no wrong answer)."""
    items = run.get("items") or []
    wrong = [r for r in items if not r["correct"]["flexible"]]
    style = sum(gsm8k.gold_style(r["prediction"]) for r in items) / len(items) if items else None
    slips = sum(gsm8k.false_equation(r["prediction"]) for r in wrong) / len(wrong) if wrong else None
    return style, slips


def states_table(runs: list, base: dict) -> str:
    """How each model writes, mean over seeds: the share of its greedy GSM8K solutions with the dataset's markers
    (`<<` or `####`), the share of its wrong answers that state a false equation (a slip of arithmetic rather
    than of method), and the loss per token (nats) of the gold solutions and of the base's own samples at
    temperature 1 (drift.json: how familiar the dataset's states and the base's states are to the model)."""
    lines = ["| model | solutions in the gold style | wrong answers with a false equation | gold solutions' loss "
             "| the base's samples' loss |", "|---|---|---|---|---|"]
    first_losses = next((run["losses"] for run in runs if run.get("losses")), None)
    for name, group in groups(runs).items():
        measured = [style_and_slips(run) for run in group]
        cells = [mean_and_spread([m[index] for m in measured], 3) for index in (0, 1)]
        if name == base["name"] and first_losses:  # the base's losses sit in every run's drift.json
            cells += [f"{first_losses[kind]['base']:.3f}" for kind in ("gold", "base_samples")]
        else:
            losses = [run["losses"] for run in group if run.get("losses")]
            cells += [mean_and_spread([l[kind]["model"] for l in losses], 3) for kind in ("gold", "base_samples")]
        if any(cell != "-" for cell in cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def parse_args(argv=None):
    parser = flags.parser(__doc__, prog="python -m evals.report")
    parser.add_argument("runs", nargs="+", help="results folders, one per run, named after the run")
    parser.add_argument("--base", default="base", help="the run that forgetting and retention compare with")
    parser.add_argument("--out", default="results/report.md")
    return parser.parse_args(argv)


MARKER = "<!-- written by python -m evals.report -->"  # the report's first line: how a rerun knows its own file
PLOTS = ("benchmarks.png", "drift_vs_forgetting.png", "training_curves.png")


def own_report(path: Path) -> bool:
    """A report this tool wrote: its marker line, or the title line reports had before the marker."""
    try:
        with open(path, encoding="utf-8") as file:
            first = file.readline().strip()
    except (OSError, UnicodeDecodeError):
        return False
    return first == MARKER or first.startswith("# Post-training is about states")


def check_outputs(out: Path, folders: list):
    """The report and its plots go to --out's folder: refuse, before reading anything, a folder that is one of
    the runs' (the plots would land among a run's results), a run given twice (its seeds would count twice), and
    a file there that this tool did not write."""
    if out.is_dir():
        raise ReportError(f"--out {out} is a directory; name the report file, e.g. {out / 'report.md'}")
    check_writable(out)
    names = [Path(folder).name for folder in folders]
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated:
        raise ReportError(f"the run {repeated} is given twice: each run (and each seed) counts once")
    target = out.parent.resolve()
    for folder in folders:
        source = Path(folder).resolve()
        if target == source or source in target.parents:
            raise ReportError(f"--out {out}: the report and its plots would go into the run folder {folder}; "
                              f"choose another --out")
    guard_output(out, own_output=own_report)
    for name in PLOTS:  # plots written by a report of ours carry its name; older ones sit beside our report
        plot = out.parent / name
        if plot.is_file() and not (b"python -m evals.report" in plot.read_bytes()[:4096] or own_report(out)):
            raise ReportError(f"{plot} exists and was not written by this tool: choose another --out folder")


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    try:
        check_outputs(out, args.runs)
        runs = [read_run(Path(folder)) for folder in args.runs]
    except (ReportError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    base = next((run for run in runs if run["name"] == args.base), None)
    if base is None:
        print(f"error: no run named {args.base!r} among {[run['name'] for run in runs]}", file=sys.stderr)
        return 1
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = report_lines(runs, base, out)
        write_atomically(out, "\n".join([MARKER] + lines) + "\n")
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    print(f"\nwrote {out} and its plots in {out.parent}")
    return 0


def report_lines(runs: list, base: dict, out: Path) -> list:
    """The report's Markdown lines; its plots are written beside `out` on the way."""
    from evals import figures  # matplotlib, imported only when a report is written
    protocol = base["protocol"]
    lines = ["# Post-training is about states: our runs and the paper's findings", "", summary_table(runs, base), "",
             "Each cell: the mean ± the standard deviation over seeds (one seed: its value); (se ...) is the mean of "
             "the runs' own standard errors, the noise of one evaluation. "
             f"Protocol: {protocol['shots']}-shot GSM8K and MMLU, TruthfulQA MC1 with the six-pair preamble; "
             f"items per task: {protocol['limit'] or 'all'}; data: {protocol['data']}; "
             f"{protocol.get('device', '')} {protocol.get('dtype', '')}. MMD drift: squared MMD of lexical "
             "prefix-state features against the base model's rollouts; forward KL: log p_base - log p_post of the "
             "base's own samples, per token (see evals/drift.py). Forgetting and retention: the paper's, over "
             "TruthfulQA and MMLU."]
    changes = change_table(runs, base)
    if changes:
        lines += ["", "## Change from the base, ours beside the paper's", "", changes, "",
                  "Two bases' absolute scores do not compare; the direction of each change does. The last column "
                  "counts the benchmarks whose change has the paper's sign.", ""]
        if figures.plot_changes(changes_by_run(runs, base), out.parent / "benchmarks.png"):
            lines.append("![change from the base](benchmarks.png)")
    lines += ["", "## Findings", "", "By the rules in evals/findings.py, fixed before the runs.", "",
              *findings_section(runs, base)]
    states = side_by_side(runs)
    if states:
        lines += ["", "## The states each model reaches", "",
                  "The greedy GSM8K solution of fixed test items by the base and by each run's first seed.", "",
                  *states]
    states_measures = states_table(runs, base)
    if states_measures:
        lines += ["", "## How each model writes", "", states_measures, "",
                  "Mean over seeds. The gold style: a calculator annotation `<<...>>` or a `#### N` line, the "
                  "dataset's markers. A false equation: `a op b = c` with a wrong c. Losses: nats per token under "
                  "each model, of the gold solutions and of the base's own samples at temperature 1, on the drift's "
                  "prompts."]
    points = drift_and_forgetting(runs, base)
    if len(points) >= 3:
        measured = [[p for p in points if p[index] is not None] for index in (1, 2)]  # older files lack the KL
        correlations = tuple(spearman([p[index] for p in mine], [p[3] for p in mine]) if len(mine) > 2 else
                             float("nan") for index, mine in zip((1, 2), measured))
        few = [run["name"] for run in runs if run.get("drift_warning")]
        lines += ["", "## Which drift predicts forgetting", "",
                  f"Spearman's rank correlation with forgetting: MMD drift {correlations[0]:.2f} over "
                  f"{len(measured[0])} runs, forward KL {correlations[1]:.2f} over {len(measured[1])} runs.", "",
                  *([f"The drift of {len(few)} runs ({', '.join(few)}) has fewer prefix states than evals/drift.py's "
                     "minimum: their MMD cannot be told from the noise floor.", ""] if few else []),
                  "![drift and forgetting](drift_vs_forgetting.png)"]
        figures.plot_drift_and_forgetting([(paper_name(p[0]), *p[1:]) for p in points], correlations,
                                          out.parent / "drift_vs_forgetting.png")
    if figures.plot_training_curves([(run["name"], run["metrics"]) for run in runs if run["metrics"]],
                                    out.parent / "training_curves.png"):
        lines += ["", "![training curves](training_curves.png)"]
    lines += ["", "## Appendix: every run and seed", "", seed_table(runs, base), "", "Scores ± one standard error.",
              "", "## Appendix: the paper's Table 2", "", paper_table()]
    return lines


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # results are written whole at the end, so nothing was
        print("interrupted: nothing was written", file=sys.stderr)
        sys.exit(130)
