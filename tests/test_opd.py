"""opd.py: what each mode trains on, its KL against direct computation, refusal of mismatched vocabularies,
and distillation that moves a fresh student towards a teacher trained here."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import opd
import rl
import training
from infrastructure.checkpoint import load_tokenizer
from model import Qwen3
from sample import generate
from tools.tiny import write_tiny

ROOT = Path(__file__).resolve().parents[1]
TOY_PROMPTS = ["Question: how many?\nAnswer:", "Ann has", "Bob buys 3", "The answer is"]


def starts_with_digit(completion) -> float:
    return rl.reward(completion, "", "digit")  # the toy reward the teacher was trained on


@pytest.fixture(scope="module")
def digit_teacher(tmp_path_factory, tiny_checkpoint):
    """A tiny teacher trained here (RL on the toy task) to start its answers with a digit."""
    folder = tmp_path_factory.mktemp("teacher")
    args = rl.parse_args(["--model", str(tiny_checkpoint), "--out", str(folder / "teacher"), "--lr", "3e-2",
                          "--lora-rank", "0", "--max-new-tokens", "3", "--samples-per-prompt", "8", "--warmup-steps", "0",
                          "--reward", "digit"])
    run = training.Run(args, total_steps=30)
    examples = [{"prompt": run.tokenizer.encode(text).ids, "answer": ""} for text in TOY_PROMPTS]
    while run.step < 30:
        rl.rl_step(run, examples, reference=None)
    run.save()
    return folder / "teacher"


def digit_rate(model, tokenizer, prompts, seed=123) -> float:
    completions = generate(model, prompts, max_new_tokens=3, temperature=1.0, n=32, seed=seed, tokenizer=tokenizer)
    return sum(map(starts_with_digit, completions)) / len(completions)


def student_run(tmp_path, tiny_checkpoint, teacher, *flags):
    args = opd.parse_args(["--teacher", str(teacher), "--student", str(tiny_checkpoint), "--out", str(tmp_path / "s"),
                           "--max-new-tokens", "3", "--batch-size", "4", *flags])
    run = training.Run(args, total_steps=25)
    loaded = opd.load_teacher(args.teacher, run.model, run.tokenizer, run.device)
    return args, run, loaded


def test_cut_points_include_the_empty_prefix():
    assert opd.cut_points(10, 4) == [0, 2, 5, 7]
    assert opd.cut_points(3, 4) == [0, 1, 2]
    assert opd.cut_points(0, 4) == [0]


def test_flags_left_unset_take_the_preset():
    args = opd.parse_args(["--teacher", "ckpt/teacher"])
    assert {name: getattr(args, name) for name in opd.PRESET} == opd.PRESET


def test_continuation_loss_covers_exactly_the_teacher_tokens(tmp_path, tiny_checkpoint, digit_teacher):
    args, run, teacher = student_run(tmp_path, tiny_checkpoint, digit_teacher, "--cuts", "2",
                                     "--continuation-tokens", "4")
    prompts = [run.tokenizer.encode(text).ids for text in TOY_PROMPTS[:2]]
    rollouts = [[7, 8, 9, 10], [11, 12], [7, 5, 5, 5]]  # two rollouts of the first prompt share its bare state
    sequences = opd.continuation_sequences(run, teacher, prompts + prompts[:1], rollouts)
    expected_prefixes = [prompts[0], prompts[0] + [7, 8], prompts[1], prompts[1] + [11], prompts[0] + [7, 5]]
    assert len(sequences) == 5  # each state once
    for sequence, prefix in zip(sequences, expected_prefixes):
        taught = generate(teacher, [prefix], max_new_tokens=4, eos_token_id=-1)[0].tokens  # the teacher, greedy
        assert sequence["state"] == prefix and sequence["targets"] == taught and len(taught) == 4


def test_sampled_reverse_kl_estimate_averages_to_the_exact_kl(tmp_path, tiny_checkpoint, digit_teacher):
    args, run, teacher = student_run(tmp_path, tiny_checkpoint, digit_teacher, "--mode", "reverse_kl")
    prompt = run.tokenizer.encode(TOY_PROMPTS[0]).ids
    run.model.eval()
    samples = generate(run.model, [prompt], max_new_tokens=1, temperature=1.0, n=4000, seed=0, eos_token_id=-1)
    sequences = opd.teacher_logprob_sequences(run, teacher, [prompt] * 4000, [s.tokens for s in samples])
    batches = training.make_batches(sequences, 200_000)
    total = 0.0
    with torch.no_grad():
        for batch in batches:
            total += opd.token_losses(run, batch, teacher)[1]["teacher_kl"]
        student = torch.log_softmax(run.model(torch.tensor([prompt]))[0, -1], -1)
        teacher_logprobs = torch.log_softmax(teacher(torch.tensor([prompt]))[0, -1], -1)
    exact = (student.exp() * (student - teacher_logprobs)).sum().item()
    estimate = total / 4000
    assert exact > 0.5  # the teacher is far from the student
    assert estimate == pytest.approx(exact, rel=0.1)


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_full_kl_equals_direct_computation(tmp_path, tiny_checkpoint, digit_teacher, direction):
    args, run, teacher = student_run(tmp_path, tiny_checkpoint, digit_teacher, "--mode", "full_kl")
    sequences = [training.sequence(state=[5, 6], targets=[7, 8, 9]), training.sequence(state=[10], targets=[11, 12])]
    batch = training.make_batches(sequences, 100)[0]
    ours = opd.chunked_kl(run, teacher, batch, direction, chunk_size=2)
    direct = []
    for sequence in sequences:
        ids = torch.tensor([(sequence["state"] + sequence["targets"])[:-1]])
        with torch.no_grad():
            p_s = torch.softmax(run.model(ids)[0], -1)
            p_t = torch.softmax(teacher(ids)[0], -1)
        first = len(sequence["state"]) - 1  # the state before the first target token
        for s, t in zip(p_s[first:], p_t[first:]):
            if direction == "reverse":
                direct.append(sum(a * (math.log(a) - math.log(b)) for a, b in zip(s.tolist(), t.tolist())))
            else:
                direct.append(sum(b * (math.log(b) - math.log(a)) for a, b in zip(s.tolist(), t.tolist())))
    # batch order is shortest first: the 3-token sequence, then the 5-token one
    direct = direct[3:] + direct[:3]
    assert ours.tolist() == pytest.approx(direct, abs=1e-5)
    ours.sum().backward()  # chunks are recomputed in backward: the gradient exists
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in run.parameters)


def test_mismatched_vocabulary_is_refused(tmp_path, tiny_checkpoint):
    other = write_tiny(tmp_path / "other", vocab_size=400)
    (tmp_path / "data" / "gsm8k").mkdir(parents=True)
    (tmp_path / "data" / "gsm8k" / "train.jsonl").write_text('{"question": "1 + 1?", "answer": "#### 2"}\n' * 16)
    result = subprocess.run([sys.executable, "opd.py", "--teacher", str(other), "--student", str(tiny_checkpoint),
                             "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data"), "--batch-size", "4"],
                            cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "vocabulary size 400" in result.stderr and not (tmp_path / "out").exists()
    student = Qwen3.from_pretrained(tiny_checkpoint)
    with pytest.raises(ValueError, match="vocabulary size 400"):
        opd.load_teacher(other, student, load_tokenizer(student), "cpu")
    same_size = write_tiny(tmp_path / "same_size", seed=1)  # same size, but retrain a different tokenizer
    tokenizer = load_tokenizer(same_size)
    tokenizer.add_tokens(["<|different|>"])
    tokenizer.save(str(same_size / "tokenizer.json"))
    with pytest.raises(ValueError, match="different tokenizer"):
        opd.load_teacher(same_size, student, load_tokenizer(student), "cpu")


@pytest.mark.parametrize("mode", ["continuation", "reverse_kl", "full_kl"])
def test_teacher_in_bf16_with_a_float32_student(tmp_path, tiny_checkpoint, digit_teacher, mode):
    """--teacher-dtype bfloat16 halves the teacher's memory; every mode still runs a step against it."""
    args = opd.parse_args(["--teacher", str(digit_teacher), "--student", str(tiny_checkpoint), "--out",
                           str(tmp_path / "s"), "--max-new-tokens", "3", "--mode", mode, "--teacher-dtype", "bfloat16"])
    run = training.Run(args, total_steps=1)
    teacher = opd.load_teacher(args.teacher, run.model, run.tokenizer, run.device,
                               opd.DTYPES[args.teacher_dtype])
    assert teacher.model.embed_tokens.weight.dtype == torch.bfloat16
    assert run.model.model.embed_tokens.weight.dtype == torch.float32
    stats = opd.opd_step(run, [run.tokenizer.encode(text).ids for text in TOY_PROMPTS], teacher)
    assert math.isfinite(stats["loss"]) and stats["grad_norm"] > 0


@pytest.mark.parametrize("mode", ["continuation", "reverse_kl", "full_kl"])
def test_each_mode_moves_the_student_towards_the_teacher(tmp_path, tiny_checkpoint, digit_teacher, mode):
    args, run, teacher = student_run(tmp_path, tiny_checkpoint, digit_teacher, "--mode", mode, "--lr", "3e-2",
                                     "--lora-rank", "0", "--warmup-steps", "0", "--cuts", "2",
                                     "--continuation-tokens", "3", "--samples-per-prompt", "64")
    prompts = [run.tokenizer.encode(text).ids for text in TOY_PROMPTS]
    teacher_rate = digit_rate(teacher, run.tokenizer, prompts)
    before = digit_rate(run.model, run.tokenizer, prompts)
    kls = []
    while run.step < 25:
        stats = opd.opd_step(run, prompts, teacher)
        kls.append(stats.get("teacher_kl"))
    run.model.eval()
    after = digit_rate(run.model, run.tokenizer, prompts)
    assert teacher_rate > 0.9 and before < 0.5
    assert after > before + 0.3, (before, after)
    if mode != "continuation":
        assert sum(kls[-5:]) / 5 < 0.5 * sum(kls[:5]) / 5, kls


@pytest.mark.parametrize("mode", ["continuation", "reverse_kl", "full_kl"])
def test_cli_runs_offline_on_real_data(tmp_path, tiny_checkpoint, data_dir, mode):
    out = tmp_path / mode
    result = subprocess.run([sys.executable, "opd.py", "--teacher", str(tiny_checkpoint), "--student",
                             str(tiny_checkpoint), "--data-dir", str(data_dir), "--steps", "3", "--mode", mode,
                             "--out", str(out), "--batch-size", "2", "--max-new-tokens", "16"]
                            + ["--compile"] * (mode == "continuation"),  # student and teacher decode compiled
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "step 3/3" in result.stdout and (out / "model.safetensors").exists()
