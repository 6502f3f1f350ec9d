"""Every command in README.md, docs/*.md and the modules' docstrings parses with the flags of the script it names, and the ones that run on
a CPU without a download (on the tiny checkpoint, or on the lab's paths) run: what the docs tell a reader to type
works."""
import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import opd
import rl
import sample
import sft
import study
from evals import __main__ as evaluate, drift, report, sweep
from lab import pretrain, world
from tools import bench, gpu_check, tiny

ROOT = Path(__file__).resolve().parents[1]
PARSERS = {"sft.py": sft.parse_args, "rl.py": rl.parse_args, "opd.py": opd.parse_args, "sample.py": sample.parse_args,
           "study.py": study.parse_args, "evals": evaluate.parse_args, "evals.drift": drift.parse_args,
           "evals.report": report.parse_args, "evals.sweep": sweep.parse_args,
           "lab.world": world.parse_args, "lab.pretrain": pretrain.parse_args,
           "tools.tiny": tiny.parse_args, "tools.bench": bench.parse_args, "tools.gpu_check": gpu_check.parse_args}
# a command in a code block (4 spaces; to the end of the line) or in `backticks` (to the closing tick, across lines)
COMMAND = re.compile(r"^ {4}(?:\S+=\S+ )*((?:torchrun [^\n]*?|)python [^\n]*)|`((?:torchrun [^`]*?|)python [^`]*)`",
                     re.MULTILINE)


def documented_commands() -> list:
    """(where, script, argv, processes) of every `python SCRIPT ...` command in the docs (each side of a `&&` is one); a
    trailing # comment is not part of it, and torchrun's own flags are dropped."""
    found = []
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    sources += [path for folder in ("", "evals", "lab", "tools", "infrastructure") for path in sorted((ROOT / folder).glob("*.py"))]
    for path in sources:
        text = path.read_text()
        if path.suffix == ".py":  # a module's docstring: how to run it
            text = ast.get_docstring(ast.parse(text), clean=False) or ""
        text = re.sub(r"\\\n\s*", " ", text)  # a command continued on the next line
        for match in COMMAND.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            for part in (match.group(1) or match.group(2)).split("&&"):
                words = shlex.split(part, comments=True)
                processes = 1
                if words[0] == "torchrun":
                    processes = int(next(w for w in words if w.startswith("--nproc_per_node=")).split("=")[1])
                    words = words[next(i for i, w in enumerate(words) if w.endswith(".py") or w == "-m"):]
                elif words[0] == "python":
                    words = words[1:]
                else:  # pip, and the like
                    continue
                script, argv = (words[1], words[2:]) if words[0] == "-m" else (words[0], words[1:])
                if script != "pytest":
                    found.append((f"{path.relative_to(ROOT)}:{line}", script, argv, processes))
    return found


COMMANDS = documented_commands()


def test_the_docs_hold_commands_of_every_entry_point():
    assert len(COMMANDS) > 40
    assert {command[1] for command in COMMANDS} >= {"sft.py", "rl.py", "opd.py", "sample.py", "study.py", "evals",
                                                     "evals.drift", "evals.report", "lab.world", "tools.tiny"}


@pytest.mark.parametrize("where, script, argv, processes", COMMANDS, ids=[command[0] for command in COMMANDS])
def test_every_documented_command_parses(where, script, argv, processes):
    assert script in PARSERS, f"{where}: python {script}: not an entry point of this project"
    if argv:  # (a bare `python -m evals` in a sentence names the program: its name is what there is to check)
        PARSERS[script](argv)  # argparse exits on an unknown flag; the scripts' checks raise ValueError

# -----------------------------------------------------------------------------
# The commands that run on a CPU without a download: those on the tiny checkpoint and on the lab's paths, run
# as documented, with the paths pointing at a tiny checkpoint and a small lab world and base, and flags appended
# that shrink the work (argparse: the last value wins)

SHRINK = {"sft.py": ["--steps", "1", "--batch-size", "2", "--heldout", "0"],
          "rl.py": ["--steps", "1", "--batch-size", "2", "--samples-per-prompt", "2", "--max-new-tokens", "8",
                    "--heldout", "0"],
          "opd.py": ["--steps", "1", "--batch-size", "2", "--max-new-tokens", "8", "--continuation-tokens", "4",
                     "--heldout", "0"],
          "evals": ["--limit", "2"], "evals.drift": ["--prompts", "2", "--max-new-tokens", "8"],
          "sample.py": ["--max-new-tokens", "4"], "tools.tiny": []}
RUNNABLE = [command for command in COMMANDS
            if any(a.startswith(("ckpt/tiny", "ckpt/lab/")) for a in command[2]) and "--compile" not in command[2]]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny checkpoint, and a small lab world and base (the lab tests' sizes)."""
    from test_lab import PRETRAIN_SMALL, SMALL_FLAGS
    from tools.tiny import write_tiny
    root = tmp_path_factory.mktemp("docs")
    write_tiny(root / "tiny")
    world.main(["--world-seed", "0", "--out", str(root / "world"), *SMALL_FLAGS])
    pretrain.main(["--world", str(root / "world"), "--out", str(root / "base"), *PRETRAIN_SMALL])
    return root


def test_some_documented_commands_run_on_a_cpu():
    assert len(RUNNABLE) >= 5 and {"sample.py", "lab.world", "lab.pretrain"} <= {command[1] for command in RUNNABLE}


@pytest.mark.slow
@pytest.mark.parametrize("where, script, argv, processes", RUNNABLE, ids=[command[0] for command in RUNNABLE])
def test_documented_cpu_commands_run(where, script, argv, processes, built, data_dir, tmp_path):
    """Run in a fresh folder whose ckpt/ holds what the command reads (the tiny checkpoint, or for lab paths the
    small world and base) and nothing it writes; ../shared/data is the real data."""
    from test_lab import PRETRAIN_SMALL, SMALL_FLAGS
    project = tmp_path / "project"
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(data_dir)
    written = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out"} | ({argv[0]} if script == "tools.tiny" else set())
    for value in argv:
        if value.startswith("ckpt/") and value not in written:
            source = built / ("world" if value.endswith("/world") else "base" if value.startswith("ckpt/lab/") else "tiny")
            (project / value).parent.mkdir(parents=True, exist_ok=True)
            if not (project / value).exists():
                (project / value).symlink_to(source)
    project.mkdir(exist_ok=True)
    extra = {"lab.world": SMALL_FLAGS, "lab.pretrain": PRETRAIN_SMALL}.get(script, SHRINK.get(script, []))
    if script.endswith(".py"):
        command = [str(ROOT / script)]
    else:
        command = ["-m", script]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    result = subprocess.run([sys.executable, *launcher, *command, *argv, *extra], cwd=project, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, f"{where}: {result.stderr[-2000:]}"
