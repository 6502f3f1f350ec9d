"""
What lets a training run stop and go on: the files a save writes beside the checkpoint (args.json,
progress.json, metrics.jsonl, resume/state.pt), the check that a resumed run is the run that was saved, and
stopping cleanly on Ctrl-C or SIGTERM (a cluster's pre-emption), and run_main, which turns what stopped a run
into one line and an exit status. training.Run uses these; a reader of the trainers can skip this file.

    python sft.py --preset stress                   # Ctrl-C: finishes the step, saves, says how to resume
    python sft.py --preset stress --resume          # continues exactly where it stopped
"""
import json
import random
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from infrastructure.checkpoint import (CheckpointError, check_writable, guard_output, hold_lock, recover_directory,
                                       release_lock)
from infrastructure.distributed import gather, is_main


class TrainingError(RuntimeError):
    """A run that must stop (NaN loss, unusable output directory); the message is one line."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM: the run saved what it had (or says what is left) and exits with `exit_code`. A
    BaseException, as KeyboardInterrupt is, so that no `except Exception` on the way swallows it."""
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# Flags that cannot change what a run computes (beyond float rounding, and LoRA dropout's draws for
# --micro-batch-tokens): --resume may differ in these, and only these, from args.json. The others define the
# run: resuming with another --lr, --seed or --model would train a different model.
RESUMABLE_CHANGES = {"out", "resume", "save_every", "device", "compile", "sample_batch_size", "micro_batch_tokens",
                     "gradient_checkpointing", "eval_every"}

# -----------------------------------------------------------------------------
# Before the run: is --out usable, and is a resumed run the one that was saved?


def check_output(args) -> Path:
    """Take --out's lock (one writer per folder), refuse an --out that is or holds one of the run's inputs, tidy a
    save killed midway, then refuse an --out the run could not write or must not replace; returns the resume
    state's path. Under torchrun rank 0 locks and tidies, and every rank hears its answer."""
    out = Path(args.out)
    check_writable(out)
    refusal = None
    if is_main():
        try:
            guard_output(out, [args.model, getattr(args, "teacher", None), args.data_dir, getattr(args, "world", None)])
            hold_lock(out)  # before anything is tidied: a second run must not touch the first's files
            recover_directory(out)  # the previous version back, half-written ones gone
        except (CheckpointError, OSError) as error:
            refusal = str(error)
    refusal = gather([refusal])[0]
    try:
        if refusal:
            raise TrainingError(refusal)
        return check_folder(args, out)
    except BaseException:
        release_lock(out)  # refused: nothing of this run is left behind, its lock file included
        raise


def check_folder(args, out: Path) -> Path:
    """Refuse an --out that is a file, an --out holding another run, a --resume with nothing or something else
    there; returns the resume state's path."""
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} is a file, not a directory")
    resume_file = out / "resume" / "state.pt"
    if args.resume and not resume_file.exists():
        raise TrainingError(f"--resume: {resume_file} does not exist")
    if args.resume:
        check_same_run(args, out / "args.json")
    if not args.resume and out.exists() and any(out.iterdir()):
        raise TrainingError(f"{out} already exists: pass --resume to continue it, or another --out")
    return resume_file


def check_same_run(args, saved_file: Path):
    """--resume: refuse flags that define another run than the one saved (see RESUMABLE_CHANGES)."""
    try:
        saved = json.loads(saved_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TrainingError(f"{saved_file}: cannot read the saved flags ({type(error).__name__})") from None
    if not isinstance(saved, dict):
        raise TrainingError(f"{saved_file}: not the flags of a run (a JSON object expected)")
    unknown = sorted((set(saved) ^ set(vars(args))) - RESUMABLE_CHANGES)  # flags only one of the two versions has
    if unknown:
        raise TrainingError(f"--resume: {saved_file} was saved by another version of this trainer (its flags differ: "
                            f"--{unknown[0].replace('_', '-')}); train it again, in another --out")
    changed = [f"--{name.replace('_', '-')} {value} (saved: {saved[name]})" for name, value in vars(args).items()
               if name in saved and name not in RESUMABLE_CHANGES and saved[name] != value]
    if changed:
        raise TrainingError(f"--resume with other flags than {saved_file}: {', '.join(changed)}; "
                            f"use the saved flags, or another --out for a new run")

# -----------------------------------------------------------------------------
# What a save writes beside the checkpoint, and what --resume reads back


def write_state(run, folder: Path):
    """args.json, progress.json, metrics.jsonl and resume/state.pt (the trainable weights, AdamW, the RNGs)."""
    (folder / "args.json").write_text(json.dumps(vars(run.args), indent=2) + "\n")
    write_progress(folder, run.step, run.total_steps)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in run.metrics))
    (folder / "resume").mkdir()
    trainable = {name: p.detach() for name, p in run.model.named_parameters() if p.requires_grad}
    torch.save({"step": run.step, "trainable": trainable, "optimizer": run.optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
               folder / "resume" / "state.pt")


def write_progress(folder: Path, step: int, total_steps: int):
    """progress.json: how far the run in `folder` got; `finished` reads it."""
    (folder / "progress.json").write_text(json.dumps(
        {"step": step, "total_steps": total_steps, "finished": step >= total_steps}) + "\n")


def finished(folder: Path) -> bool:
    """Whether the run saved in `folder` ran all its steps. Unreadable: not finished (resuming it will say
    what the folder holds)."""
    try:
        return json.loads((Path(folder) / "progress.json").read_text()).get("finished") is True
    except (OSError, ValueError, AttributeError):
        return False


def read_state(run, resume_file: Path):
    """Put the saved trainable weights, optimizer, RNGs, step and metrics into `run`."""
    try:
        state = torch.load(resume_file, map_location=run.device, weights_only=False)
    except Exception as error:  # truncated, or not a torch file
        raise TrainingError(f"{resume_file}: cannot read the resume state ({type(error).__name__})") from None
    if not isinstance(state, dict) or not {"step", "trainable", "optimizer"} <= set(state):
        raise TrainingError(f"{resume_file}: not a resume state written by this project")
    parameters = dict(run.model.named_parameters())
    for name, value in state["trainable"].items():
        if name not in parameters or parameters[name].shape != value.shape:
            raise TrainingError(f"{resume_file}: {name} does not fit this model (different --lora-rank?)")
        with torch.no_grad():
            parameters[name].copy_(value)
    run.optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"].cpu())
    random.setstate(state["python_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    run.step = state["step"]
    metrics_file = resume_file.parents[1] / "metrics.jsonl"
    if metrics_file.exists():
        try:
            run.metrics = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        except ValueError:
            raise TrainingError(f"{metrics_file}: corrupt training log") from None
    if run.step >= run.total_steps and is_main() and not (resume_file.parents[1] / "progress.json").exists():
        write_progress(resume_file.parents[1], run.step, run.total_steps)  # saved before progress.json existed

# -----------------------------------------------------------------------------
# Ctrl-C and SIGTERM: finish the step, save, say how to resume


class StopOnSignal:
    """While active, SIGINT and SIGTERM ask the run to stop after its current step (Run.log checks `requested`);
    a second Ctrl-C seconds later stops at once. The same signal twice within 2 seconds is one request: a
    scheduler signals every process of a job, and study.py forwards the signal to its stage too."""
    def __init__(self, run):
        self.run, self.requested, self.signalled_at, self.previous = run, None, 0.0, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread
            for number in (signal.SIGINT, signal.SIGTERM):
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def __exit__(self, *exception):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}
        return False

    def handle(self, number, frame):
        if self.requested is not None and time.monotonic() - self.signalled_at < 2:
            return
        if self.requested is not None:  # a second Ctrl-C: stop now, the last save stays as it is
            raise Interrupted(f"stopped at once during step {self.run.step + 1}; {self.hint()}", 128 + number)
        self.requested, self.signalled_at = number, time.monotonic()
        self.run.write(f"{signal.Signals(number).name}: stopping after step {self.run.step + 1} to save "
                       "(send it again to stop at once)")

    def hint(self) -> str:
        if self.run.saved_step is None:
            return "nothing was saved; run the command again to start over"
        return f"{self.run.out} holds step {self.run.saved_step}: run the same command with --resume to continue"

    def stop(self):
        """After the save of the step a signal asked to stop at: leave with the line that says how to resume."""
        raise Interrupted(f"interrupted at step {self.run.step}/{self.run.total_steps}: {self.hint()}",
                          128 + (self.requested or signal.SIGTERM))


def run_main(main):
    """Run a trainer's main(); expected failures become one `error:` line and exit status 1, an interrupt
    one line and 130 (SIGINT) or 143 (SIGTERM)."""
    try:
        main()
    except (TrainingError, CheckpointError, ValueError) as error:
        sys.exit(f"error: {error}")
    except OSError as error:  # a file or folder the run could not read or write: the path, in one line
        sys.exit(f"error: {error.filename + ': ' if error.filename else ''}{error.strerror or error}")
    except Interrupted as interrupt:
        print(interrupt, file=sys.stderr)
        sys.exit(interrupt.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before training started (loading data or the model)
        print("interrupted before the first step: nothing was saved", file=sys.stderr)
        sys.exit(130)
