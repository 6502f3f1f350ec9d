"""Bad input to every command: each case exits non-zero with one line that says what is wrong, and writes or
changes nothing. The commands run in-process (their main(argv)), as their `__main__` blocks run them."""
import json
import shutil
from pathlib import Path

import pytest

import opd
import rl
import sample
import sft
import study
import training
from lab import world as lab_world
from tools import tiny
from infrastructure.checkpoint import CheckpointError
from evals import __main__ as evaluate, drift, report

ITEM = {"question": "Ann has 2 pens and gets 3 more. How many?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"}


def outcome(main, argv, capsys) -> tuple:
    """(exit code, what the user sees on stderr) of main(argv) run as its command-line wrapper runs it."""
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    except (CheckpointError, ValueError) as error:  # sample.py's and tiny.py's __main__ blocks print these
        code = f"error: {error}"
    stderr = capsys.readouterr().err if capsys else ""
    if isinstance(code, str):  # sys.exit("error: ..."): Python prints the string and exits with status 1
        stderr, code = stderr + code + "\n", 1
    return code, stderr


def snapshot(folder: Path) -> dict:
    return {str(path): path.stat().st_mtime_ns for path in folder.rglob("*")}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_checkpoint):
    """A folder of good and bad inputs: data, checkpoints, a finished run, results folders."""
    root = tmp_path_factory.mktemp("bad_input")
    shutil.copytree(tiny_checkpoint, root / "tiny")
    lines = "".join(json.dumps(ITEM) + "\n" for _ in range(40))
    for name, text in [("data", lines), ("no_hashes", lines.replace("#### 5", "5"))]:
        (root / name / "gsm8k").mkdir(parents=True)
        for split in ("train", "test"):
            (root / name / "gsm8k" / f"{split}.jsonl").write_text(text)
    (root / "latin1" / "gsm8k").mkdir(parents=True)
    (root / "latin1" / "gsm8k" / "train.jsonl").write_bytes(json.dumps(ITEM).replace("Ann", "Ané").encode("latin-1"))
    (root / "latin1" / "gsm8k" / "test.jsonl").write_bytes(json.dumps(ITEM).encode())
    (root / "latin1" / "truthfulqa").mkdir()
    (root / "latin1" / "truthfulqa" / "mc_task.json").write_bytes('[{"question": "Où?"}]'.encode("latin-1"))
    (root / "latin1" / "mmlu" / "test").mkdir(parents=True)
    (root / "latin1" / "mmlu" / "test" / "misc_test.csv").write_bytes("Où?,a,b,c,d,A\n".encode("latin-1"))
    for name in ("list_config", "string_size", "bad_tokenizer"):
        shutil.copytree(tiny_checkpoint, root / name)
    (root / "list_config" / "config.json").write_text("[]")
    settings = json.loads((root / "string_size" / "config.json").read_text())
    (root / "string_size" / "config.json").write_text(json.dumps({**settings, "hidden_size": "64"}))
    (root / "bad_tokenizer" / "tokenizer.json").write_text("{not a tokenizer")
    code, stderr = outcome(lambda argv: training.run_main(lambda: sft.main(argv)),
                           defaults("sft", root) + ["--steps", "2", "--out", str(root / "done")], None)
    assert code is None, stderr
    shutil.copytree(root / "done", root / "bad_resume")
    (root / "bad_resume" / "resume" / "state.pt").write_bytes(b"not a torch file")
    (root / "afile").write_text("a file, not a folder")
    results = root / "results"
    protocol = {"shots": 0, "limit": 8, "data": "x", "device": "cpu", "dtype": "float32"}
    evaluation = {"model": str(root / "tiny"), "protocol": protocol,
                  "summary": {"truthfulqa": {"mc1": 0.5, "mc1_stderr": 0.1}}}
    for run, text in [("base", json.dumps(evaluation)), ("listed", "[1, 2]"),
                      ("nullsummary", json.dumps({**evaluation, "summary": None})),
                      ("noprotocol", json.dumps({**evaluation, "protocol": {"shots": 0}})), ("corrupt", "{"),
                      ("trained", json.dumps({**evaluation, "model": str(root / "broken_log")}))]:
        (results / run).mkdir(parents=True)
        (results / run / "eval.json").write_text(text)
    for run, text in [("other", json.dumps(evaluation)), ("nan_scores", json.dumps({**evaluation, "summary": {
            "truthfulqa": {"mc1": float("nan"), "mc1_stderr": float("nan")}}}))]:
        (results / run).mkdir(parents=True)
        (results / run / "eval.json").write_text(text)
    (root / "link_to_config.json").symlink_to(root / "tiny" / "config.json")
    (root / "hardlink_to_config.json").hardlink_to(root / "tiny" / "config.json")
    shutil.copytree(tiny_checkpoint, root / "teacher_copy" / "inner")
    (root / "broken_log").mkdir()
    (root / "broken_log" / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, trunc')
    return root


COMMANDS = {  # name -> main(argv) as its command-line wrapper runs it
    "sft": lambda argv: training.run_main(lambda: sft.main(argv)),
    "rl": lambda argv: training.run_main(lambda: rl.main(argv)),
    "opd": lambda argv: training.run_main(lambda: opd.main(argv)),
    "drift": drift.main, "sample": sample.main, "evals": evaluate.main, "report": report.main, "tiny": tiny.main,
    "world": lab_world.main, "study": study.main,
}


def defaults(command: str, world: Path) -> list:
    """Arguments that would make the command run, so that a case's own flags are the only thing wrong."""
    tiny, data, new = str(world / "tiny"), str(world / "data"), str(world / "new")
    return {"sft": ["--model", tiny, "--data-dir", data, "--out", new, "--batch-size", "4", "--heldout", "0"],
            "rl": ["--model", tiny, "--data-dir", data, "--out", new],
            "opd": ["--model", tiny, "--teacher", tiny, "--data-dir", data, "--out", new],
            "drift": ["--base", tiny, "--model", tiny, "--data-dir", data, "--out", new + ".json"],
            "sample": ["--model", tiny, "--prompt", "Question:"],
            "evals": [tiny, "--tasks", "gsm8k", "--data-dir", data, "--out", new + ".json"],
            "report": ["--out", str(world / "report.md")], "tiny": [], "world": [],
            "study": ["--ckpt-dir", str(world / "study_ckpt"), "--results-dir", str(world / "study_results")]}[command]


CASES = [  # (command, arguments with {w} for the folder, what the line must say)
    # one rule for numbers: every count and every other number checked as argparse reads it, naming the flag
    ("sft", ["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    ("sft", ["--limit", "0"], "argument --limit: must be at least 1"),
    ("sft", ["--eval-every", "0"], "argument --eval-every: must be at least 1"),
    ("sft", ["--steps", "0"], "argument --steps: must be at least 1"),
    ("sft", ["--steps", "2.5"], "argument --steps: expected a whole number, got '2.5'"),
    ("sft", ["--heldout", "-1"], "argument --heldout: must be at least 0"),
    ("sft", ["--lora-rank", "-1"], "argument --lora-rank: must be at least 0"),
    ("sft", ["--grad-clip", "0"], "argument --grad-clip: must be finite and above 0, got 0"),
    ("sft", ["--lr", "inf"], "argument --lr: must be finite and above 0, got inf"),
    ("sft", ["--lr", "nan"], "argument --lr: must be finite and above 0, got nan"),
    ("sft", ["--epochs", "inf"], "argument --epochs: must be finite and above 0"),
    ("sft", ["--lora-alpha", "0"], "argument --lora-alpha: must be finite and above 0"),
    ("sft", ["--lora-dropout", "nan"], "argument --lora-dropout: must be finite and at least 0 and below 1, got nan"),
    ("sft", ["--lora-dropout", "1"], "argument --lora-dropout: must be finite and at least 0 and below 1, got 1"),
    ("sft", ["--weight-decay", "-0.1"], "argument --weight-decay: must be finite and at least 0"),
    ("sft", ["--seed", "-1"], "argument --seed: must be at least 0, got -1"),
    ("sft", ["--device", "cuda"], "not available here"),
    ("sft", ["--device", "tpu9"], "unknown device 'tpu9'"),
    ("sft", ["--model", "{w}/list_config"], "list_config/config.json: expected a JSON object"),
    ("sft", ["--model", "{w}/string_size"], "hidden_size must be a positive integer, got '64'"),
    ("sft", ["--model", "{w}/bad_tokenizer"], "bad_tokenizer/tokenizer.json: not a valid tokenizer"),
    ("sft", ["--data-dir", "{w}/latin1"], "latin1/gsm8k/train.jsonl: not UTF-8 text"),
    ("sft", ["--data-dir", "{w}/no_hashes"], "no_hashes/gsm8k/train.jsonl:1: the answer has no final '#### N'"),
    ("evals", ["--tasks", "truthfulqa", "--data-dir", "{w}/latin1"], "latin1/truthfulqa/mc_task.json: not UTF-8"),
    ("evals", ["--tasks", "mmlu", "--data-dir", "{w}/latin1"], "latin1/mmlu/test/misc_test.csv: not UTF-8"),
    ("sft", ["--out", "{w}/afile"], "is a file, not a directory"),
    ("sft", ["--out", "{w}/afile/run"], "afile is a file"),
    ("sft", ["--out", "{w}/bad_resume", "--resume", "--steps", "2"], "cannot read the resume state"),
    ("sft", ["--out", "{w}/done", "--resume", "--steps", "2", "--lr", "0.1"],
     "--resume with other flags than"),
    ("sft", ["--out", "{w}/done", "--steps", "2"], "already exists: pass --resume"),
    ("rl", ["--batch-size", "0"], "argument --batch-size: must be at least 1"),
    ("rl", ["--samples-per-prompt", "0"], "argument --samples-per-prompt: must be at least 1"),
    ("rl", ["--eval-every", "0"], "argument --eval-every: must be at least 1"),
    ("rl", ["--steps", "-1"], "argument --steps: must be at least 1"),
    ("rl", ["--sample-batch-size", "0"], "argument --sample-batch-size: must be at least 1"),
    ("rl", ["--heldout", "-1"], "argument --heldout: must be at least 0"),
    ("rl", ["--kl-coef", "nan"], "argument --kl-coef: must be finite and at least 0, got nan"),
    ("rl", ["--temperature", "0.7"], "rl.py samples at temperature 1"),
    ("rl", ["--limit", "8"], "fewer than one step's --batch-size 16 (raise --limit, or lower --heldout"),
    ("opd", ["--samples-per-prompt", "0"], "argument --samples-per-prompt: must be at least 1"),
    ("opd", ["--batch-size", "0"], "argument --batch-size: must be at least 1"),
    ("opd", ["--cuts", "0"], "argument --cuts: must be at least 1"),
    ("opd", ["--continuation-tokens", "0"], "argument --continuation-tokens: must be at least 1"),
    ("opd", ["--temperature", "-1"], "argument --temperature: must be finite and at least 0"),
    ("opd", ["--temperature", "nan"], "argument --temperature: must be finite and at least 0, got nan"),
    ("opd", ["--teacher-temperature", "nan"], "argument --teacher-temperature: must be finite and at least 0"),
    ("opd", ["--teacher-temperature", "inf"], "argument --teacher-temperature: must be finite and at least 0"),
    ("opd", ["--mode", "reverse_kl", "--temperature", "0.5"],
     "reverse_kl samples at temperature 1"),
    ("drift", ["--features", "0"], "argument --features: must be at least 1"),
    ("drift", ["--projections", "0"], "argument --projections: must be at least 1"),
    ("drift", ["--prompts", "0"], "argument --prompts: must be at least 1"),
    ("drift", ["--out", "{w}/afile/drift.json"], "afile is a file"),
    ("sample", ["--n", "0"], "argument --n: must be at least 1, got 0"),
    ("sample", ["--max-new-tokens", "-5"], "argument --max-new-tokens: must be at least 1, got -5"),
    ("sample", ["--temperature", "-1"], "argument --temperature: must be finite and at least 0"),
    ("sample", ["--temperature", "nan"], "argument --temperature: must be finite and at least 0, got nan"),
    ("sample", ["--top-p", "0"], "argument --top-p: must be finite and above 0 and at most 1, got 0"),
    ("sample", ["--top-p", "nan"], "argument --top-p: must be finite and above 0 and at most 1, got nan"),
    ("sample", ["--top-k", "-1"], "argument --top-k: must be at least 0"),
    ("evals", ["--out", "{w}/afile/results.json"], "afile is a file"),
    ("evals", ["--limit", "-1"], "argument --limit: must be at least 1"),
    ("evals", ["--shots", "-1"], "argument --shots: must be at least 0"),
    ("evals", ["--out", "{w}/results"], "is a directory"),
    # never overwrite an input, nor a file the tool did not write
    ("evals", ["--out", "{w}/tiny/config.json"], "is, holds or lies inside this run's input"),
    ("evals", ["--out", "{w}/data/gsm8k/test.jsonl"], "is, holds or lies inside this run's input"),
    ("evals", ["--out", "{w}/afile"], "exists and was not written by this tool"),
    ("evals", ["--out", "{w}/link_to_config.json"], "is, holds or lies inside this run's input"),
    ("evals", ["--out", "{w}/tiny/../tiny/config.json"], "is, holds or lies inside this run's input"),
    ("evals", ["--out", "{w}/hardlink_to_config.json"], "is, holds or lies inside this run's input"),
    ("drift", ["--out", "{w}/tiny/drift.json"], "is, holds or lies inside this run's input"),
    ("drift", ["--out", "{w}/afile"], "exists and was not written by this tool"),
    ("sft", ["--out", "{w}/tiny/run"], "is, holds or lies inside this run's input"),
    ("sft", ["--out", "{w}"], "is, holds or lies inside this run's input"),
    ("sft", ["--out", "{w}/data/run"], "is, holds or lies inside this run's input"),
    ("opd", ["--out", "{w}/teacher_copy", "--teacher", "{w}/teacher_copy/inner"], "is, holds or lies inside"),
    ("report", ["{w}/results/base", "{w}/results/listed"], "listed/eval.json: not a results file"),
    ("report", ["{w}/results/base", "{w}/results/nullsummary"], "nullsummary/eval.json: not a results file"),
    ("report", ["{w}/results/base", "{w}/results/noprotocol"], "noprotocol/eval.json: not a results file"),
    ("report", ["{w}/results/base", "{w}/results/corrupt"], "corrupt/eval.json: cannot read it as JSON"),
    ("report", ["{w}/results/base", "{w}/results/trained"], "broken_log/metrics.jsonl: corrupt training log"),
    ("report", ["{w}/results/base", "--out", "{w}/results"], "is a directory"),
    ("report", ["{w}/results/base", "{w}/results/other", "--out", "{w}/results/base/eval.json"],
     "would go into the run folder"),
    ("report", ["{w}/results/base", "{w}/results/other", "--out", "{w}/results/base/report.md"],
     "would go into the run folder"),
    ("report", ["{w}/results/base", "{w}/results/other", "--out", "{w}/afile"], "was not written by this tool"),
    # honest statistics: a run counts once, a score is a number
    ("report", ["{w}/results/base", "{w}/results/other", "{w}/results/other"], "the run other is given twice"),
    ("report", ["{w}/results/base", "{w}/results/nan_scores"], "nan_scores/eval.json: the truthfulqa score"),
    ("tiny", ["{w}/done"], "done already exists"),
    ("tiny", ["{w}/done", "--seed", "-2"], "argument --seed: must be at least 0"),
    ("world", ["--world-seed", "0", "--out", "{w}/newworld", "--train", "0"], "argument --train: must be from 1 to"),
    ("world", ["--world-seed", "0", "--out", "{w}/newworld", "--vocab-size", "0"], "argument --vocab-size: must be from 300"),
    ("world", ["--world-seed", "0", "--out", "{w}/newworld", "--train", "1000000000000"],
     "argument --train: must be from 1 to 1000000, got 1000000000000"),
    ("world", ["--world-seed", "-1", "--out", "{w}/newworld"], "argument --world-seed: must be at least 0"),
    ("study", ["--tiny", "--limit", "0"], "argument --limit: must be at least 1, got 0"),
    ("study", ["--tiny", "--seeds", "0", "0"], "--seeds 0 0: a seed given twice"),
    ("study", ["--tiny", "--seeds", "-1"], "argument --seeds: must be at least 0, got -1"),
    ("study", ["--tiny", "--ckpt-dir", "{w}/afile"], "afile: cannot be created"),
]


@pytest.mark.parametrize("command, arguments, message", CASES, ids=[f"{c}:{' '.join(a)}" for c, a, _ in CASES])
def test_bad_input_is_one_line_and_writes_nothing(command, arguments, message, world, capsys):
    before = snapshot(world)
    argv = defaults(command, world) + [a.replace("{w}", str(world)) for a in arguments]
    code, stderr = outcome(COMMANDS[command], argv, capsys)
    assert code not in (0, None), stderr
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and message in stderr, stderr
    assert snapshot(world) == before  # nothing written, nothing changed


def test_an_unwritable_output_folder_is_refused_before_any_work(world, capsys, monkeypatch):
    """As root every folder is writable, so the check's answer is faked: os.access says no for the folder."""
    monkeypatch.setattr("infrastructure.checkpoint.os.access", lambda path, mode: Path(path) != world)
    for command in ("sft", "evals"):
        before = snapshot(world)
        code, stderr = outcome(COMMANDS[command], defaults(command, world), capsys)
        assert code == 1 and stderr.count("\n") == 1 and f"{world} is not writable" in stderr, stderr
        assert snapshot(world) == before
