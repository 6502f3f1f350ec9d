"""
The whole study in one command: base eval, mild and stress SFT, OPD from each SFT teacher, RL, the evals
and state drift of every run, and the report with the paper's Table 2 beside ours.

    python study.py --tiny                          # offline, CPU, a few minutes: every stage on a tiny model
    python study.py                                 # the real study: Qwen/Qwen3-0.6B-Base, one GPU
    python study.py --data-dir ../shared/data --seeds 0 1 2 --ablation

Each stage is one command of this project, printed before it runs, so any stage can be re-run by hand.
A stage whose output already exists is skipped: an interrupted study continues where it stopped, and a
second run does no work. Outputs: checkpoints in ckpt/<run> (ckpt/tiny_study/<run> with --tiny), results in
results/<run>/{eval,drift}.json, the report in results/report.md with benchmarks.png and training_curves.png.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from checkpoint import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parent
TINY_DATA = ROOT / "data" / "tiny"

# Small step counts for --tiny: the numbers mean nothing, every stage runs in seconds on a CPU.
TINY = {
    "sft": ["--max-steps", "4", "--batch-size", "8", "--heldout", "8", "--eval-every", "2"],
    "opd": ["--max-steps", "3", "--prompts-per-step", "4", "--max-new-tokens", "32", "--continuation-tokens", "8"],
    "rl": ["--max-steps", "3", "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "32",
           "--eval-items", "8", "--eval-every", "3"],
    "drift": ["--prompts", "8", "--max-new-tokens", "32"],
}


def training_runs(args, seed: int) -> list:
    """(run name, script and flags) of the training runs of one seed, in the order they depend on each other."""
    suffix = "" if seed == 0 else f"_seed{seed}"
    common = ["--model", args.model, "--seed", str(seed)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    tiny = TINY if args.tiny else {}
    common_sampling = common + (["--compile"] if args.compile else [])

    def checkpoint(name):
        return str(args.ckpt_dir / (name + suffix))
    runs = [("sft_mild", ["sft.py", "--preset", "mild", *common, *tiny.get("sft", [])]),
            ("sft_stress", ["sft.py", "--preset", "stress", *common, *tiny.get("sft", [])]),
            ("opd_sft_stress", ["opd.py", "--teacher", checkpoint("sft_stress"), *common_sampling,
                                *tiny.get("opd", [])]),
            ("opd_sft_mild", ["opd.py", "--teacher", checkpoint("sft_mild"), *common_sampling, *tiny.get("opd", [])]),
            ("rl", ["rl.py", *common_sampling, *tiny.get("rl", [])])]
    if args.ablation:  # the one-step full-vocabulary KL the paper reports collapsing
        runs.append(("opd_sft_stress_full_kl", ["opd.py", "--teacher", checkpoint("sft_stress"), "--mode", "full_kl",
                                                *common_sampling, *tiny.get("opd", [])]))
    return [(name + suffix, command + ["--out", checkpoint(name)]) for name, command in runs]


def stages(args) -> list:
    """(description, output that marks it done, command) of every stage, in order."""
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    evals = [*data, "--shots", str(args.shots)] + (["--limit", str(args.limit)] if args.limit else [])
    evals += ["--compile"] if args.compile else []
    results = args.results_dir
    todo = [("evaluate the base model", results / "base" / "eval.json",
             ["-m", "evals", args.model, *evals, "--out", str(results / "base" / "eval.json")])]
    runs = [run for seed in args.seeds for run in training_runs(args, seed)]
    for name, command in runs:
        todo.append((f"train {name}", args.ckpt_dir / name / "config.json", command))
    for name, _ in runs:
        checkpoint = str(args.ckpt_dir / name)
        todo.append((f"evaluate {name}", results / name / "eval.json",
                     ["-m", "evals", checkpoint, *evals, "--out", str(results / name / "eval.json")]))
        todo.append((f"state drift of {name}", results / name / "drift.json",
                     ["-m", "evals.drift", "--base", args.model, "--model", checkpoint, *data, "--shots", str(args.shots),
                      *(TINY["drift"] if args.tiny else []), "--out", str(results / name / "drift.json")]))
    folders = [str(results / "base")] + [str(results / name) for name, _ in runs]
    todo.append(("report", results / "report.md", ["-m", "evals.report", *folders, "--out", str(results / "report.md")]))
    return todo


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"the base model (default {DEFAULT_MODEL}; with --tiny, a tiny random one)")
    parser.add_argument("--data-dir", help="local data (default: the hub; with --tiny, data/tiny)")
    parser.add_argument("--limit", type=int, help="evaluate N items per task (default: all; 8 with --tiny)")
    parser.add_argument("--shots", type=int, default=0, help="few-shot exemplars in evals and drift")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="repeat the training runs per seed")
    parser.add_argument("--ablation", action="store_true", help="add OPD with the one-step full-vocabulary KL")
    parser.add_argument("--compile", action="store_true", help="compile the decode step in rl, opd, GSM8K evals (GPU)")
    parser.add_argument("--tiny", action="store_true", help="the whole pipeline on a tiny random model, offline")
    parser.add_argument("--ckpt-dir", type=Path, help="where checkpoints go (default ckpt, or ckpt/tiny_study)")
    parser.add_argument("--results-dir", type=Path, help="where results go (default results, or results/tiny_study)")
    args = parser.parse_args(argv)
    place = "tiny_study" if args.tiny else ""
    args.ckpt_dir = args.ckpt_dir or Path("ckpt") / place
    args.results_dir = args.results_dir or Path("results") / place
    if args.tiny:
        args.model = args.model or str(args.ckpt_dir / "base")
        args.data_dir = args.data_dir or str(TINY_DATA)
        args.limit = args.limit or 8
    args.model = args.model or DEFAULT_MODEL
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tiny and not Path(args.model).exists():
        print(f"$ python model.py --write-tiny {args.model}", flush=True)
        subprocess.run([sys.executable, str(ROOT / "model.py"), "--write-tiny", args.model], check=True)
    plan = stages(args)
    # `python -m evals` from any directory: the project's modules on the path, paths as the user gave them
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    for number, (description, output, command) in enumerate(plan, start=1):
        if output.exists() and not (description == "report" and stale(output, plan)):
            print(f"[{number}/{len(plan)}] {description}: done ({output} exists)", flush=True)
            continue
        print(f"[{number}/{len(plan)}] {description}\n$ python {' '.join(command)}", flush=True)
        script = [str(ROOT / command[0])] + command[1:] if command[0].endswith(".py") else command
        if subprocess.run([sys.executable, *script], env=environment).returncode != 0:
            print(f"error: stage '{description}' failed; fix it and run the study again to continue", file=sys.stderr)
            return 1
    print(f"study finished in {time.perf_counter() - started:.0f} s: {args.results_dir / 'report.md'}")
    return 0


def stale(report: Path, plan: list) -> bool:
    """The report is redone only when some result it reads is newer than it."""
    return any(output.exists() and output.stat().st_mtime > report.stat().st_mtime
               for _, output, _ in plan if output.suffix == ".json")


if __name__ == "__main__":
    sys.exit(main())
