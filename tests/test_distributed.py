"""Data-parallel runs under torchrun (2 CPU processes, gloo) against one process with the same global batch.

After one optimizer step the weights must be equal, and so must the logged loss and gradient norm: Adam's
first step moves each weight by about lr * sign(gradient), so equal weights alone would not catch a
gradient that is off by a constant factor (DDP's average over ranks instead of the sum); the gradient
norm does. (Where a gradient is as small as Adam's epsilon, lr * g / (|g| + eps) magnifies the float
rounding of g: full fine-tuning uses a learning rate of 1e-3 to stay well under the 1e-5 tolerance.)
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from infrastructure import distributed
import training

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [f"Ann has {a} pens and gets {b} more. How many?" for a in range(2, 9) for b in (3, 5)]  # 14 items


def launch(processes: int, *arguments) -> subprocess.CompletedProcess:
    """`python ARGUMENTS` in one process, or `torchrun --nproc_per_node=PROCESSES ARGUMENTS`: on CPU, one thread
    per process, so that the two runs do the same arithmetic (gloo; torchrun sets OMP_NUM_THREADS=1 itself)."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, *launcher, *map(str, arguments)], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def write_gsm8k(folder: Path, answers) -> Path:
    (folder / "gsm8k").mkdir(parents=True)
    lines = "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in zip(QUESTIONS, answers))
    for split in ("train", "test"):
        (folder / "gsm8k" / f"{split}.jsonl").write_text(lines)
    return folder


def compare_runs(one: Path, two: Path, start: Path, names: list) -> dict:
    """The saved weights and the named metrics of two runs are equal; the weights moved from `start`."""
    first, second, initial = (load_file(folder / "model.safetensors") for folder in (one, two, start))
    assert first.keys() == second.keys()
    for name in first:
        assert torch.allclose(first[name], second[name], rtol=0, atol=1e-5), name
    assert max((first[name] - initial[name]).abs().max().item() for name in first) > 5e-4  # the step did something
    metrics_one, metrics_two = (json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
                                for folder in (one, two))
    for name in names:
        assert metrics_two[name] == pytest.approx(metrics_one[name], rel=1e-5, abs=1e-7), name
    return metrics_one


def test_shard_gather_and_all_sum_in_one_process():
    items = list(range(7))
    assert distributed.shard(items) == items and distributed.gather(items) == items
    assert distributed.all_sum(3) == 3 and distributed.world_size() == 1 and distributed.is_main()


@pytest.mark.slow
def test_sft_two_processes_equal_one(tmp_path, tiny_checkpoint):
    # 7 sequences, one per micro-batch: rank 0 runs 4 micro-batches, rank 1 runs 3 (gradients all-reduced once);
    # one held-out item (a tenth of 14): rank 1 has none and still joins the sum of the held-out loss
    data = write_gsm8k(tmp_path / "data", [f"{a} + {b} = {a + b}\n#### {a + b}" for a in range(2, 9) for b in (3, 5)])
    arguments = ["sft.py", "--model", tiny_checkpoint, "--data-dir", data, "--steps", "1", "--batch-size", "7",
                 "--micro-batch-tokens", "40", "--lora-rank", "0", "--lr", "1e-3", "--warmup-steps", "1",
                 "--heldout", "2", "--device", "cpu"]
    launch(1, *arguments, "--out", tmp_path / "one")
    result = launch(2, *arguments, "--out", tmp_path / "two")
    assert result.stdout.count("step 1/1") == 1  # only rank 0 prints
    compare_runs(tmp_path / "one", tmp_path / "two", tiny_checkpoint, ["loss", "grad_norm", "heldout_loss"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "one", "two"]  # no staging folder left behind


@pytest.mark.slow
def test_rl_two_processes_equal_one(tmp_path, tiny_checkpoint):
    # The reference "[invalid]" rewards completions with no number in them, so a random tiny model gets both
    # rewards within a group. Rank 1's prompts (every second prompt of the step, distributed.shard) get a
    # reference no completion can match: their groups all agree, so rank 1 has nothing to train on and joins
    # the all-reduce with zero gradients. Per-prompt seeds make each prompt's samples the same on either
    # rank; the loss is divided by the completion tokens of both ranks together.
    held_out, prompts = 1, 4  # (a tenth of the 14 items at most)
    train, _ = training.split_heldout(list(range(len(QUESTIONS))), held_out, seed=0)
    rank_one = [train[position] for position in training.examples_of_step(0, len(train), prompts, seed=0)[1::2]]
    answers = ["#### never" if index in rank_one else "#### [invalid]" for index in range(len(QUESTIONS))]
    data = write_gsm8k(tmp_path / "data", answers)
    arguments = ["rl.py", "--model", tiny_checkpoint, "--data-dir", data, "--steps", "1", "--batch-size",
                 prompts, "--samples-per-prompt", "4", "--max-new-tokens", "3", "--lora-rank", "4", "--lora-alpha", "8",
                 "--lr", "1e-2", "--warmup-steps", "1", "--kl-coef", "0.1", "--heldout", held_out, "--device", "cpu"]
    launch(1, *arguments, "--out", tmp_path / "one")
    launch(2, *arguments, "--out", tmp_path / "two")
    metrics = compare_runs(tmp_path / "one", tmp_path / "two", tiny_checkpoint,
                           ["reward", "all_equal_groups", "completion_length", "loss", "grad_norm", "kl",
                            "heldout_accuracy"])
    assert 0 < metrics["reward"] < 0.5 and 0.5 <= metrics["all_equal_groups"] < 1


@pytest.mark.slow
def test_evals_two_processes_write_the_same_results(tmp_path, tiny_checkpoint, data_dir):
    # 5 items in batches of 2: rank 0 runs batches 1 and 3, rank 1 batch 2, of every task
    arguments = ["-m", "evals", tiny_checkpoint, "--data-dir", data_dir, "--limit", "5", "--batch-size", "2",
                 "--shots", "1"]
    launch(1, *arguments, "--out", tmp_path / "one.json")
    result = launch(2, *arguments, "--out", tmp_path / "two.json")
    assert result.stdout.count("wrote") == 1
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    for results in (one, two):  # when it ran and how long it took: the only fields allowed to differ
        del results["created"]
        for summary in results["summary"].values():
            del summary["seconds"]
    assert one == two
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "two.json"]


BROADCAST_CHECK = """
import sys, torch
sys.path.insert(0, {root!r})
import sft, training
from infrastructure import distributed
load_policy, save = training.load_policy, training.Run.save

def perturbed(args, device):  # rank 1 starts from other weights than rank 0
    model, parameters = load_policy(args, device)
    if distributed.rank() == 1:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.01)
    return model, parameters

def save_every_rank(self):  # every rank's final weights, beside the checkpoint
    torch.save(self.model.state_dict(), f"{{self.out}}.rank{{distributed.rank()}}.pt")
    save(self)

training.load_policy, training.Run.save = perturbed, save_every_rank
if {skip_broadcast}:
    distributed.broadcast_parameters = lambda model: None
sft.main(sys.argv[1:])
"""


@pytest.mark.slow
@pytest.mark.parametrize("broadcast", [True, False])
def test_ranks_that_start_from_different_weights_end_equal(tmp_path, tiny_checkpoint, broadcast):
    """Rank 1 loads other weights than rank 0: the broadcast at the start makes them rank 0's, so after a step of
    all-reduced gradients both ranks hold the same weights. Without the broadcast (the control), they differ."""
    script = tmp_path / "check.py"
    script.write_text(BROADCAST_CHECK.format(root=str(ROOT), skip_broadcast=not broadcast))
    data = write_gsm8k(tmp_path / "data", [f"{a} + {b} = {a + b}\n#### {a + b}" for a in range(2, 9) for b in (3, 5)])
    launch(2, script, "--model", tiny_checkpoint, "--data-dir", data, "--steps", "1", "--batch-size", "4",
           "--lora-rank", "0", "--lr", "1e-3", "--heldout", "0", "--device", "cpu", "--out", tmp_path / "out")
    ranks = [torch.load(tmp_path / f"out.rank{rank}.pt") for rank in (0, 1)]
    equal = all(torch.equal(ranks[0][name], ranks[1][name]) for name in ranks[0])
    assert equal == broadcast
