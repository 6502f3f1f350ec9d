"""What the tools write, and what they refuse to touch: one writer per folder (a lock held by a real process),
a tool's own earlier output is rewritten while anything else is refused, a full disk or a read-only folder is one
line and nothing half-written, signals and odd text are one line."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sft
import study
import training
from evals import __main__ as evaluate, report
from lab import world as lab_world
from tools import tiny

ROOT = Path(__file__).resolve().parents[1]
ITEMS = [{"question": f"Ann has {a} pens and gets {b} more. How many?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
         for a in range(2, 12) for b in (3, 5, 7, 9)]  # 40 items


def write_data(folder: Path) -> Path:
    (folder / "gsm8k").mkdir(parents=True)
    for split in ("train", "test"):
        (folder / "gsm8k" / f"{split}.jsonl").write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    return folder


def files_of(folder: Path) -> dict:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def one_line(stderr: str) -> bool:
    return stderr.count("\n") == 1 and stderr.startswith(("error: ", "interrupted"))


def run_python(*arguments, **options) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *map(str, arguments)], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=300, **options)

# -----------------------------------------------------------------------------
# One writer per folder


@pytest.fixture
def holder(tmp_path):
    """A real process that takes the lock of a path and holds it until it is killed."""
    processes = []

    def hold(path: Path) -> subprocess.Popen:
        code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from infrastructure.checkpoint import hold_lock; "
                f"hold_lock({str(path)!r}); print('held', flush=True); time.sleep(120)")
        process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "held"
        processes.append(process)
        return process
    yield hold
    for process in processes:
        process.kill()
        process.wait()


def test_a_second_run_on_the_same_folder_is_refused_and_deletes_nothing(tmp_path, tiny_checkpoint, holder, capsys):
    out, data = tmp_path / "run", write_data(tmp_path / "data")
    first = holder(out)
    staging = tmp_path / f".run.staging-{first.pid}"  # the first run's save in progress
    (staging / "resume").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit:
        training.run_main(lambda: sft.main(["--model", str(tiny_checkpoint), "--data-dir", str(data), "--out", str(out),
                                            "--steps", "1", "--batch-size", "4", "--heldout", "0"]))
    stderr = capsys.readouterr().err + str(exit.value.code) + "\n"
    assert exit.value.code != 0 and one_line(stderr.strip() + "\n")
    assert f"is being written by another run (process {first.pid})" in stderr
    assert staging.is_dir() and not out.exists()  # the first run's files are untouched


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path, tiny_checkpoint, holder):
    out, data = tmp_path / "run", write_data(tmp_path / "data")
    first = holder(out)
    first.kill()  # kill -9: no chance to release anything
    first.wait()
    assert (tmp_path / ".run.lock").exists()
    sft.main(["--model", str(tiny_checkpoint), "--data-dir", str(data), "--out", str(out), "--steps", "1",
              "--batch-size", "4", "--heldout", "0"])
    assert (out / "model.safetensors").exists() and not (tmp_path / ".run.lock").exists()  # taken, then given back


def test_a_second_study_on_the_same_results_is_refused(tmp_path, holder, capsys):
    first = holder(tmp_path / "results")
    code = study.main(["--tiny", "--ckpt-dir", str(tmp_path / "ckpt"), "--results-dir", str(tmp_path / "results")])
    stderr = capsys.readouterr().err
    assert code == 1 and one_line(stderr) and f"(process {first.pid})" in stderr
    assert not (tmp_path / "ckpt").exists()

# -----------------------------------------------------------------------------
# A tool rewrites its own earlier output, and nothing else


def test_evals_rewrites_its_own_results_and_an_older_results_file_but_refuses_other_json(tmp_path, tiny_checkpoint,
                                                                                      capsys):
    data, out = write_data(tmp_path / "data"), tmp_path / "eval.json"
    flags = [str(tiny_checkpoint), "--tasks", "gsm8k", "--data-dir", str(data), "--limit", "2", "--out", str(out)]
    assert evaluate.main(flags) == 0
    assert json.loads(out.read_text())["written_by"] == "python -m evals"
    assert evaluate.main(flags) == 0  # a rerun over its own file
    older = json.loads(out.read_text())
    del older["written_by"]  # a results file from before the marker: known by its keys
    out.write_text(json.dumps(older))
    assert evaluate.main(flags) == 0
    out.write_text(json.dumps({"model": "x", "weights": [1, 2]}))  # some other JSON
    before = out.read_bytes()
    capsys.readouterr()
    assert evaluate.main(flags) == 1 and "was not written by this tool" in capsys.readouterr().err
    assert out.read_bytes() == before


def write_run(folder: Path, name: str, mc1: float) -> Path:
    protocol = {"shots": 0, "limit": None, "data": "x", "device": "cpu", "dtype": "float32"}
    (folder / name).mkdir(parents=True)
    (folder / name / "eval.json").write_text(json.dumps({"model": name, "protocol": protocol, "summary": {
        "truthfulqa": {"mc1": mc1, "mc1_stderr": 0.05}, "mmlu": {"accuracy": 0.5, "accuracy_stderr": 0.05}}}))
    return folder / name


def test_report_rewrites_its_own_report_and_plots_and_refuses_a_foreign_plot(tmp_path, capsys):
    runs = [str(write_run(tmp_path / "results", name, mc1)) for name, mc1 in (("base", 0.5), ("sft_mild", 0.4))]
    out = tmp_path / "results" / "report.md"
    assert report.main(runs + ["--out", str(out)]) == 0
    assert out.read_text().splitlines()[0] == report.MARKER
    assert b"python -m evals.report" in (tmp_path / "results" / "benchmarks.png").read_bytes()[:4096]
    assert report.main(runs + ["--out", str(out)]) == 0  # its own report and plots
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "benchmarks.png").write_bytes(b"\x89PNG a picture of someone else's")
    capsys.readouterr()
    assert report.main(runs + ["--out", str(elsewhere / "report.md")]) == 1
    assert "benchmarks.png exists and was not written by this tool" in capsys.readouterr().err
    assert sorted(path.name for path in elsewhere.iterdir()) == ["benchmarks.png"]

# -----------------------------------------------------------------------------
# A full disk and a read-only folder: one line naming the path, nothing half-written


@pytest.fixture
def mounted(tmp_path):
    """mount(options) -> a small tmpfs folder; skipped where this machine does not let the tests mount one."""
    mounts = []

    def mount(options: str) -> Path:
        folder = tmp_path / f"mount{len(mounts)}"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small filesystem here ({result.stderr.decode().strip() or 'not permitted'})")
        mounts.append(folder)
        return folder
    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path, leave: int):
    """Fill the filesystem of `folder` but for about `leave` bytes (an earlier filler's space counts as free)."""
    (folder / "filler").unlink(missing_ok=True)
    free = shutil.disk_usage(folder).free
    (folder / "filler").write_bytes(b"\0" * max(0, free - leave))


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, tiny_checkpoint, mounted, capsys):
    disk = mounted("size=1m")
    data = write_data(tmp_path / "data")
    fill(disk, 200_000)  # the tiny checkpoint's save (with the optimizer's state) needs more than this
    with pytest.raises(SystemExit) as exit:
        training.run_main(lambda: sft.main(["--model", str(tiny_checkpoint), "--data-dir", str(data), "--out",
                                            str(disk / "run"), "--steps", "1", "--batch-size", "4", "--heldout", "0",
                                            "--lora-rank", "0"]))
    assert f"cannot write {disk / 'run'}: the disk is full" in str(exit.value.code)
    assert sorted(path.name for path in disk.iterdir()) == ["filler"]  # no staging folder, no lock file
    for name, main, argv in [
            ("world", lab_world.main, ["--world-seed", "0", "--out", str(disk / "world"), "--train", "40", "--test", "10"]),
            ("tiny", tiny.main, [str(disk / "tiny")]),
            ("evals", evaluate.main, [str(tiny_checkpoint), "--tasks", "gsm8k", "--data-dir", str(data), "--limit", "1",
                                      "--out", str(disk / "eval.json")])]:
        fill(disk, 300 if name == "evals" else 20_000)
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
        except Exception as error:  # tiny's __main__ prints CheckpointError as one line
            code = f"error: {error}"
        err = capsys.readouterr().err  # the eval's progress bar comes first, on lines of its own
        message = code if isinstance(code, str) else err.strip().splitlines()[-1]
        assert "the disk is full" in message and "\n" not in message and "Traceback" not in err, (name, message)
        assert sorted(path.name for path in disk.iterdir()) == ["filler"], name


def test_a_read_only_folder_is_refused_before_any_work(tmp_path, tiny_checkpoint, mounted, capsys):
    folder = mounted("size=64k,ro")
    for name, main, argv in [("world", lab_world.main, ["--world-seed", "0", "--out", str(folder / "world")]),
                             ("tiny", tiny.main, [str(folder / "tiny")]),
                             ("sft", lambda argv: training.run_main(lambda: sft.main(argv)),
                              ["--model", str(tiny_checkpoint), "--data-dir", str(write_data(tmp_path / "data")),
                               "--out", str(folder / "run"), "--batch-size", "4"])]:
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
        except Exception as error:
            code = f"error: {error}"
        assert isinstance(code, str) and f"{folder} is not writable" in code and "\n" not in code, (name, code)
    assert list(folder.iterdir()) == []

# -----------------------------------------------------------------------------
# Signals and odd text


def test_sigint_while_python_m_evals_loads_is_one_line(tmp_path, tiny_checkpoint):
    data = write_data(tmp_path / "data")
    process = subprocess.Popen([sys.executable, "-m", "evals", str(tiny_checkpoint), "--data-dir", str(data), "--out",
                                str(tmp_path / "e.json")], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # Python has started; the modules (torch among them) are still loading
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 130 and "Traceback" not in stderr
    assert stderr.endswith("interrupted: nothing was written\n") and not (tmp_path / "e.json").exists()


def test_sigterm_to_the_world_writer_is_one_line_and_leaves_nothing(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "lab.world", "--world-seed", "0", "--out", str(tmp_path / "w"),
                                "--corpus-problems", "300000"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / ".w.lock").exists() and time.monotonic() < deadline:  # the lock: generation starts
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 143 and stderr == f"interrupted: {tmp_path / 'w'} was not written\n"
    assert list(tmp_path.iterdir()) == []


def test_a_prompt_that_is_not_utf8_is_one_line(tiny_checkpoint):
    result = subprocess.run([sys.executable.encode(), b"sample.py", b"--model", str(tiny_checkpoint).encode(),
                             b"--prompt", b"\xff\xfe"], cwd=ROOT, capture_output=True, timeout=120)
    assert result.returncode == 1 and result.stderr == b"error: --prompt is not valid UTF-8 text\n"


def test_a_capped_heldout_is_said_in_the_first_line(tmp_path, tiny_checkpoint, capsys):
    data = write_data(tmp_path / "data")  # 40 items: at most 4 held out
    sft.main(["--model", str(tiny_checkpoint), "--data-dir", str(data), "--out", str(tmp_path / "run"), "--steps", "1",
              "--batch-size", "4", "--heldout", "100"])
    first = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("sft"))
    assert "36 training items, 4 held out (--heldout 100: at most a tenth of the items)" in first
