"""
The whole study in one command: base eval, mild and stress SFT, OPD from each SFT teacher, RL, the evals
and state drift of every run, and the report with the paper's Table 2 beside ours.

    python study.py --tiny                          # offline, CPU, a few minutes: every stage on a tiny model
    python study.py --lab                           # the lab: a world and a base of our own, CPU, 35-100 minutes
    python study.py                                 # the real study: Qwen/Qwen3-0.6B-Base, one GPU
    python study.py --data-dir ../shared/data --seeds 0 1 2 --ablation
    python study.py --lab --sweep                   # each objective over a grid of strengths: the frontier

--lab first writes a synthetic world (lab/world.py) and pretrains a small Qwen3 on it (lab/pretrain.py), then runs
the same stages on them, with the presets below scaled to the lab, three seeds by default (docs/lab.md).

Each stage is one command of this project, printed before it runs, so any stage can be re-run by hand.
A stage is skipped when its output exists, was made by the same command (results/stages.json records
them) and is newer than what it was made from: an interrupted study continues where it stopped (a training
run that was cut resumes with --resume), a second run does no work, and a rerun with other flags redoes the
stages they change (a trainer refuses, in one line, to resume a run with flags that define another run).
Ctrl-C or SIGTERM stops the running stage at the end of its step, saved. Outputs: checkpoints in
ckpt/<run> (ckpt/tiny_study/<run> with --tiny, ckpt/lab/worldN/<run> with --lab), results in
results/<run>/{eval,drift}.json, the report in results/report.md with its plots, and the seconds each stage
took in stage_seconds.json.
"""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from evals import write_atomically
from infrastructure import flags
from infrastructure.checkpoint import (DEFAULT_MODEL, CheckpointError, check_writable, hold_lock, recover_directory,
                                       release_lock)
from infrastructure.resume import finished

ROOT = Path(__file__).resolve().parent
TINY_DATA = ROOT / "data" / "tiny"

# Small step counts for --tiny: the numbers mean nothing, every stage runs in seconds on a CPU.
TINY = {
    "sft": ["--steps", "4", "--batch-size", "8", "--heldout", "8", "--eval-every", "2"],
    "opd": ["--steps", "3", "--batch-size", "4", "--max-new-tokens", "32", "--continuation-tokens", "8",
            "--heldout", "8", "--eval-every", "3"],
    "rl": ["--steps", "3", "--batch-size", "4", "--samples-per-prompt", "4", "--max-new-tokens", "32",
           "--heldout", "8", "--eval-every", "3", "--reward", "digit"],  # a reward that varies on a random model
    "drift": ["--prompts", "8", "--max-new-tokens", "32"],
}

# The lab's presets: the paper's relationships at the lab's scale (a 1M-parameter base pretrained at lr 2e-3,
# hidden size 128, 1,000 training problems), strong enough that each run moves the base measurably. Mild SFT:
# three epochs, small adapters, the rate of light training; stress SFT: five epochs, three times the rate, four
# times the rank; OPD and RL: light, at the mild rate, RL for enough steps that its sampled reward can rise.
# Lab solutions are short, so rollouts stop at 96 new tokens. Mild SFT was one epoch until the last development
# run (it learned the gold style but not the skill; docs/lab/calibration/log.md); frozen with world c6.
LAB = {
    "sft_mild": ["--epochs", "3", "--lr", "1e-3", "--lora-rank", "8", "--lora-alpha", "16", "--heldout", "50",
                 "--eval-every", "10"],
    "sft_stress": ["--epochs", "5", "--lr", "3e-3", "--lora-rank", "32", "--lora-alpha", "64", "--heldout", "50",
                   "--eval-every", "25"],
    "opd": ["--steps", "30", "--lr", "1e-3", "--lora-rank", "8", "--lora-alpha", "16", "--max-new-tokens", "96"],
    "rl": ["--steps", "80", "--lr", "1e-3", "--lora-rank", "8", "--lora-alpha", "16", "--max-new-tokens", "96",
           "--heldout", "64", "--eval-every", "20"],
    "drift": ["--max-new-tokens", "96"],
    "world": [], "pretrain": [],  # lab/world.py's and lab/pretrain.py's own defaults are the lab's (tests shrink them)
}

# The sweep (--sweep, docs/lab.md): each objective from barely moving the model to overwriting it, on the study's
# base and two seeds, every run evaluated and measured like the study's. A setting is (name, flags): the
# flags go after those of the study's run of that objective (SWEPT; the later flag wins); a setting without flags
# is the study's own run, trained once. The settings marked stress-strength are left out of one forgetting fit.
# Frozen before the first sweep ran. SFT from one epoch at the mild rate to five at ten times it in the lab (its
# development runs put gains and forgetting across that range; twenty times on a GPU, where the mild rate is ours
# and low); RL and OPD their steps and rate around the study's.
SWEPT = {"sft": "sft_mild", "rl": "rl", "opd": "opd_sft_stress"}  # OPD continues from the stress teacher
SWEEP_SEEDS = 2  # at least


def sft_setting(epochs, lr, rank):
    return f"e{epochs}_lr{lr}_r{rank}", ["--epochs", str(epochs), "--lr", lr, "--lora-rank", str(rank),
                                         "--lora-alpha", str(2 * rank)]


SWEEP_LAB = {
    "sft": [sft_setting(1, "1e-3", 8), ("sft_mild", None), sft_setting(1, "3e-3", 8), sft_setting(3, "2e-3", 16),
            ("sft_stress", None), sft_setting(5, "1e-2", 32)],
    "rl": [("s20", ["--steps", "20"]), ("s40", ["--steps", "40"]), ("rl", None),
           ("s40_lr3e-3", ["--steps", "40", "--lr", "3e-3"])],
    "opd": [("s10", ["--steps", "10"]), ("opd_sft_stress", None), ("s30_lr3e-3", ["--steps", "30", "--lr", "3e-3"])],
}
SWEEP = {  # the real study's, around its presets (a GPU)
    "sft": [("sft_mild", None), sft_setting(3, "5e-5", 16), sft_setting(1, "2e-4", 16), sft_setting(3, "2e-4", 32),
            ("sft_stress", None), sft_setting(5, "1e-3", 64)],
    "rl": [("s50", ["--steps", "50"]), ("rl", None), ("s50_lr1e-4", ["--steps", "50", "--lr", "1e-4"]),
           ("s100_lr1e-4", ["--steps", "100", "--lr", "1e-4"])],
    "opd": [("s30", ["--steps", "30"]), ("opd_sft_stress", None), ("s200", ["--steps", "200"])],
}
STRESS_STRENGTH = {"sft_stress", "e5_lr1e-2_r32", "e5_lr1e-3_r64"}


def training_runs(args, seed: int) -> list:
    """(run name, script and flags) of the training runs of one seed, in the order they depend on each other."""
    suffix = "" if seed == 0 else f"_seed{seed}"
    common = ["--model", args.model, "--seed", str(seed)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    common_sampling = common + (["--compile"] if args.compile else [])

    def checkpoint(name):
        return str(args.ckpt_dir / (name + suffix))

    def scaled(name, script):  # the --tiny or --lab flags of a run (its own, else its script's)
        return args.scale.get(name, args.scale.get(script, []))
    runs = [("sft_mild", ["sft.py", "--preset", "mild", *common, *scaled("sft_mild", "sft")]),
            ("sft_stress", ["sft.py", "--preset", "stress", *common, *scaled("sft_stress", "sft")]),
            ("opd_sft_stress", ["opd.py", "--teacher", checkpoint("sft_stress"), *common_sampling,
                                *scaled("opd_sft_stress", "opd")]),
            ("opd_sft_mild", ["opd.py", "--teacher", checkpoint("sft_mild"), *common_sampling,
                              *scaled("opd_sft_mild", "opd")]),
            ("rl", ["rl.py", *common_sampling, *scaled("rl", "rl")])]
    if args.ablation:  # the one-step full-vocabulary KL the paper reports collapsing
        runs.append(("opd_sft_stress_full_kl", ["opd.py", "--teacher", checkpoint("sft_stress"), "--mode", "full_kl",
                                                *common_sampling, *scaled("opd_sft_stress_full_kl", "opd")]))
    return [(name + suffix, command + ["--out", checkpoint(name)]) for name, command in runs]


def sweep_runs(args) -> list:
    """(objective, setting, seed, run name, training command) of every setting and seed; a setting without flags is
    the study's run, under its study name."""
    grid = SWEEP_LAB if args.lab else SWEEP
    runs = []
    for seed in args.seeds:
        study, suffix = dict(training_runs(args, seed)), "" if seed == 0 else f"_seed{seed}"
        for objective, settings in grid.items():
            for setting, extra in settings:
                if extra is None:
                    runs.append((objective, setting, seed, setting + suffix, study[setting + suffix]))
                    continue
                name, command = f"sweep/{objective}_{setting}{suffix}", study[SWEPT[objective] + suffix]
                runs.append((objective, setting, seed, name,
                             command[:command.index("--out")] + extra + ["--out", str(args.ckpt_dir / name)]))
    return runs


def with_teachers(args, runs: list) -> list:
    """(name, command) runs, each preceded by the study's run it learns from (OPD's teacher) when not among them."""
    study = {str(args.ckpt_dir / name): (name, command) for seed in args.seeds for name, command in
             training_runs(args, seed)}
    ordered = {}
    for name, command in runs:
        if "--teacher" in command:
            ordered.setdefault(*study[command[command.index("--teacher") + 1]])
        ordered.setdefault(name, command)
    return list(ordered.items())


@dataclass
class Stage:
    description: str
    output: Path  # the file that marks it done: a results file, or a training run's progress.json
    command: list  # python arguments
    inputs: list = field(default_factory=list)  # files it is made from: newer ones make it stale

    @property
    def trains(self) -> bool:
        return self.output.name == "progress.json"


def stages(args) -> list:
    """Every stage of the study, in the order they depend on each other."""
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    # float32 for every model: on a GPU the base (saved in bf16) would otherwise be scored in bf16 and the
    # post-trained checkpoints (float32) in float32, and the forgetting column would hold a precision difference
    evals = [*data, "--shots", str(args.shots), "--dtype", "float32"] + (["--limit", str(args.limit)] if args.limit else [])
    evals += ["--compile"] if args.compile else []
    results = args.results_dir
    base = [Path(args.model) / "config.json"] if Path(args.model).is_dir() or args.tiny or args.lab else []
    todo = []
    if args.lab:  # the world, then the base model pretrained on it
        world = Path(args.data_dir) / "world.json"
        todo += [Stage("write the lab world", world, ["-m", "lab.world", "--world-seed", str(args.world_seed), "--out",
                                                      args.data_dir, *args.scale.get("world", [])]),
                 Stage("pretrain the lab's base model", Path(args.model) / "progress.json",
                       ["-m", "lab.pretrain", "--world", args.data_dir, "--out", args.model,
                        *args.scale.get("pretrain", [])], [world])]
        base = [Path(args.model) / "progress.json"]
    todo.append(Stage("evaluate the base model", results / "base" / "eval.json",
                      ["-m", "evals", args.model, *evals, "--out", str(results / "base" / "eval.json")], base))
    def train(name, command):
        teacher = command[command.index("--teacher") + 1] if "--teacher" in command else None
        return Stage(f"train {name}", args.ckpt_dir / name / "progress.json", command,
                     base + ([Path(teacher) / "progress.json"] if teacher else []))

    def measure(name):
        checkpoint, trained = str(args.ckpt_dir / name), [args.ckpt_dir / name / "progress.json"]
        return [Stage(f"evaluate {name}", results / name / "eval.json",
                      ["-m", "evals", checkpoint, *evals, "--out", str(results / name / "eval.json")], trained),
                Stage(f"state drift of {name}", results / name / "drift.json",
                      ["-m", "evals.drift", "--base", args.model, "--model", checkpoint, *data, "--shots",
                       str(args.shots), "--dtype", "float32", *args.scale.get("drift", []), "--out",
                       str(results / name / "drift.json")], base + trained)]

    def made_of(folders):
        return [folder / name for folder in folders for name in ("eval.json", "drift.json")]
    sweep = sweep_runs(args) if args.sweep else []
    runs = (with_teachers(args, [(name, command) for *_, name, command in sweep]) if args.sweep else
            [run for seed in args.seeds for run in training_runs(args, seed)])
    measured = [name for *_, name, _ in sweep] if args.sweep else [name for name, _ in runs]  # not a mere teacher
    todo += [train(name, command) for name, command in runs] + [stage for name in measured for stage in measure(name)]
    if args.sweep:  # its report over every setting and seed, with the frontier's verdicts
        named = [f"{objective}:{setting}:{seed}:{results / name}" for objective, setting, seed, name, _ in sweep]
        stress = sorted({setting for _, setting, *_ in sweep} & STRESS_STRENGTH)
        todo.append(Stage("sweep report", results / "sweep" / "report.md",
                          ["-m", "evals.sweep", "--base", str(results / "base"), *named, "--stress", *stress,
                           "--out", str(results / "sweep" / "report.md")],
                          made_of([results / "base"] + [results / name for *_, name, _ in sweep])))
        return todo
    folders = [results / "base"] + [results / name for name, _ in runs]
    todo.append(Stage("report", results / "report.md", ["-m", "evals.report", *map(str, folders), "--out",
                                                        str(results / "report.md")], made_of(folders)))
    return todo


def changed_inputs(stage: Stage) -> list:
    """What the stage's output was made from and has changed since (the output must exist)."""
    made = stage.output.stat().st_mtime
    return [path for path in stage.inputs if path.exists() and path.stat().st_mtime > made]


def is_done(stage: Stage, recorded: dict) -> bool:
    """Made by this very command, finished, and newer than everything it was made from."""
    if not stage.output.exists() or recorded.get(str(stage.output)) != stage.command:
        return False
    if stage.trains and not finished(stage.output.parent):
        return False
    return not changed_inputs(stage)


def command_to_run(stage: Stage) -> list:
    """The stage's command; a training run that exists already (cut, or made by other flags) is resumed, and
    its trainer finishes it, finds it finished, or refuses flags that define another run."""
    if stage.trains:
        recover_directory(stage.output.parent)  # a save killed between its two renames: the saved run comes back
    return stage.command + (["--resume"] if stage.trains and stage.output.parent.exists() else [])


def run_stage(stage: Stage, environment: dict) -> int:
    """Run a stage's command in its own process group, so that Ctrl-C reaches it once, from here: the study
    forwards SIGINT and SIGTERM and waits while the stage finishes its step and saves."""
    command = command_to_run(stage)
    print(f"$ python {' '.join(command)}", flush=True)
    script = [str(ROOT / command[0])] + command[1:] if command[0].endswith(".py") else command
    child = subprocess.Popen([sys.executable, *script], env=environment, start_new_session=True)

    def forward(number, frame):
        child.send_signal(number)
        forward.received = number
    forward.received = None
    # SIGHUP (the terminal closed) would end the study but not the stage, in its own session: stop it too
    previous = {number: signal.signal(number, forward) for number in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda number, frame: forward(signal.SIGTERM, frame))
    try:
        code = child.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 128 + forward.received if forward.received else code


def parse_args(argv=None):
    parser = flags.parser(__doc__)
    parser.add_argument("--model", help=f"the base model (default {DEFAULT_MODEL}; with --tiny, a tiny random one)")
    parser.add_argument("--data-dir", help="local data (default: the hub; with --tiny, data/tiny)")
    parser.add_argument("--limit", type=flags.count(1), help="evaluate N items per task (default: all; 8 with --tiny)")
    parser.add_argument("--shots", type=flags.count(0), default=0, help="few-shot exemplars in evals and drift")
    parser.add_argument("--seeds", type=flags.count(0), nargs="+", help="repeat the training runs per seed "
                                                                        "(default 0; --lab: 0 1 2)")
    parser.add_argument("--ablation", action="store_true", help="add OPD with the one-step full-vocabulary KL")
    parser.add_argument("--compile", action="store_true", help="compile the decode step in rl, opd, GSM8K evals (GPU)")
    parser.add_argument("--tiny", action="store_true", help="the whole pipeline on a tiny random model, offline")
    parser.add_argument("--lab", action="store_true", help="the study in a world and on a base model of our own")
    parser.add_argument("--sweep", action="store_true", help="each objective over a grid of strengths (the study's "
                                                             "runs reused), and the frontier: results/.../sweep/")
    parser.add_argument("--world-seed", type=flags.count(0), help="--lab: the world to generate (default 0)")
    parser.add_argument("--ckpt-dir", type=Path, help="where checkpoints go (default ckpt, ckpt/tiny_study, "
                                                      "ckpt/lab/worldN)")
    parser.add_argument("--results-dir", type=Path, help="where results go (default results, results/tiny_study, "
                                                         "results/lab/worldN)")
    args = parser.parse_args(argv)
    if args.seeds and len(set(args.seeds)) < len(args.seeds):
        parser.error(f"--seeds {' '.join(map(str, args.seeds))}: a seed given twice would count twice in the spread")
    if args.tiny and args.lab:
        parser.error("--tiny and --lab are two different studies: choose one")
    if args.sweep and (args.tiny or args.ablation):
        parser.error(f"--sweep runs the lab's or the real study's grid: leave out "
                     f"{'--tiny' if args.tiny else '--ablation'}")
    if args.world_seed is not None and not args.lab:
        parser.error("--world-seed chooses the lab's world: it needs --lab")
    args.world_seed = args.world_seed or 0
    if args.lab and (args.model or args.data_dir):
        parser.error("--lab makes its own world and base model (in --ckpt-dir): leave out --model and --data-dir")
    place = "tiny_study" if args.tiny else f"lab/world{args.world_seed}" if args.lab else ""
    args.ckpt_dir = args.ckpt_dir or Path("ckpt") / place
    args.results_dir = args.results_dir or Path("results") / place
    args.scale = TINY if args.tiny else LAB if args.lab else {}
    if args.tiny:
        args.model = args.model or str(args.ckpt_dir / "base")
        args.data_dir = args.data_dir or str(TINY_DATA)
        args.limit = 8 if args.limit is None else args.limit
    if args.lab:
        args.model, args.data_dir = str(args.ckpt_dir / "base"), str(args.ckpt_dir / "world")
    args.model = args.model or DEFAULT_MODEL
    args.seeds = args.seeds or ([0, 1] if args.sweep else [0, 1, 2] if args.lab else [0])
    if args.sweep and len(args.seeds) < SWEEP_SEEDS:
        parser.error(f"--sweep runs every setting with {SWEEP_SEEDS} seeds: give --seeds at least {SWEEP_SEEDS}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:  # one study per results folder: a second one is refused (its stages lock their own outputs)
        for folder in (args.ckpt_dir, args.results_dir):
            if folder.exists() and not folder.is_dir():
                raise CheckpointError(f"{folder}: cannot be created, it is a file")
            check_writable(folder)
        hold_lock(args.results_dir)
    except (CheckpointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        return run_stages(args)
    finally:
        release_lock(args.results_dir)


def run_stages(args) -> int:
    """Every stage in order: one done by the same command is skipped, the others run; 0, or the exit status."""
    # `python -m evals` from any directory: the project's modules on the path, paths as the user gave them
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if args.tiny and not Path(args.model).exists():
        print(f"$ python -m tools.tiny {args.model}", flush=True)
        if subprocess.run([sys.executable, "-m", "tools.tiny", args.model], env=environment).returncode != 0:
            print("error: the tiny base model could not be written (the line above says why)", file=sys.stderr)
            return 1
    plan = stages(args)
    manifest = args.results_dir / "stages.json"  # output -> the command that made it
    try:
        recorded = json.loads(manifest.read_text()) if manifest.exists() else {}
    except ValueError:
        print(f"error: {manifest} is corrupt; remove it, and every stage runs again", file=sys.stderr)
        return 1
    started = time.perf_counter()
    for number, stage in enumerate(plan, start=1):
        if is_done(stage, recorded):
            print(f"[{number}/{len(plan)}] {stage.description}: done ({stage.output})", flush=True)
            continue
        if stage.trains and stage.output.exists() and changed_inputs(stage):  # resuming would mix two runs
            print(f"error: {stage.output.parent} was trained before {changed_inputs(stage)[0]} changed; "
                  f"remove {stage.output.parent} to train it again", file=sys.stderr)
            return 1
        print(f"[{number}/{len(plan)}] {stage.description}", flush=True)
        stage_started = time.perf_counter()
        code = run_stage(stage, environment)
        seconds = time.perf_counter() - stage_started
        if code > 128:
            print(f"study interrupted during '{stage.description}': run the same command again to continue",
                  file=sys.stderr)
            return code
        if code != 0:
            print(f"error: stage '{stage.description}' failed; fix it and run the study again to continue",
                  file=sys.stderr)
            return 1
        recorded[str(stage.output)] = stage.command
        print(f"[{number}/{len(plan)}] {stage.description}: {seconds:.0f} s", flush=True)
        times = args.results_dir / "stage_seconds.json"  # the run that finished each stage (not one cut before it)
        try:
            write_atomically(manifest, recorded)
            timed = json.loads(times.read_text()) if times.exists() else {}
            write_atomically(times, {**timed, stage.description: round(seconds, 1)})
        except (CheckpointError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    report = args.results_dir / ("sweep" if args.sweep else "") / "report.md"
    print(f"study finished in {time.perf_counter() - started:.0f} s: {report}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # between stages: every stage's output is whole (each is written atomically)
        print("study interrupted between stages: run the same command again to continue", file=sys.stderr)
        sys.exit(130)
