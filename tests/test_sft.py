"""sft.py and the shared training module: the masked loss, overfitting, checkpoints, resume, bad input."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import sft
import training
from infrastructure.checkpoint import load_tokenizer
from model import Config, Qwen3

ROOT = Path(__file__).resolve().parents[1]
ITEMS = [{"question": f"Ann has {a} pens and gets {b} more. How many?",
          "answer": f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}"} for a, b in [(3, 4), (10, 5), (7, 8), (21, 2)]]


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    model = Qwen3.from_pretrained(tiny_checkpoint)
    return model, load_tokenizer(model)


def write_gsm8k(folder: Path, items) -> Path:
    (folder / "gsm8k").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        (folder / "gsm8k" / f"{split}.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    return folder


def test_prompt_tokens_carry_no_loss_and_get_no_gradient(tiny):
    model, tokenizer = tiny
    sequences = sft.dataset_sequences(ITEMS[:2], tokenizer, model.config.eos_token_id, 4096)
    for item, sequence in zip(ITEMS, sequences):
        assert sequence["state"] == tokenizer.encode("Question: " + item["question"] + "\nAnswer:").ids
        assert tokenizer.decode(sequence["targets"][:-1]) == " " + item["answer"]
        assert sequence["targets"][-1] == model.config.eos_token_id
    batch = training.make_batches(sequences, 10_000)[0]
    captured = {}
    handle = model.model.norm.register_forward_hook(lambda m, i, out: captured.setdefault("hidden", out))
    try:
        loss = sft.token_losses(SimpleNamespace(model=model), batch, None)[0].sum()
        gradient = torch.autograd.grad(loss, captured["hidden"])[0]  # (B, T, H): final states, one per position
    finally:
        handle.remove()
    per_position = gradient.abs().sum(-1)
    assert (per_position[~batch.mask] == 0).all()  # prompt and padding positions: no gradient at all
    assert (per_position[batch.mask] > 0).all()


def test_the_logged_loss_is_the_mean_cross_entropy_of_the_gold_tokens(tmp_path, tiny_checkpoint, tiny):
    """One step over several micro-batches: training.Run.train_step's normaliser makes the loss the mean over the
    step's gold tokens, which a full forward of each sequence alone and F.cross_entropy give by hand."""
    model, tokenizer = tiny
    data = write_gsm8k(tmp_path / "data", ITEMS)
    sft.main(["--model", str(tiny_checkpoint), "--data-dir", str(data), "--out", str(tmp_path / "out"),
              "--steps", "1", "--batch-size", "4", "--heldout", "0", "--micro-batch-tokens", "120"])
    logged = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
    sequences = sft.dataset_sequences(ITEMS, tokenizer, model.config.eos_token_id, 4096)
    assert len(training.make_batches(sequences, 120)) > 1  # several micro-batches
    losses, count = [], 0
    with torch.no_grad():
        for item in ITEMS:
            prompt = tokenizer.encode("Question: " + item["question"] + "\nAnswer:").ids
            gold = tokenizer.encode(" " + item["answer"]).ids + [model.config.eos_token_id]
            ids = torch.tensor(prompt + gold)
            logits = model(ids[None, :-1])[0]
            targets = torch.cat([torch.full((len(prompt) - 1,), -100), torch.tensor(gold)])
            losses.append(F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum"))
            count += len(gold)
    assert logged["target_tokens"] == count
    assert logged["loss"] == pytest.approx((sum(losses) / count).item(), abs=1e-5)


def test_tiny_model_overfits_a_handful_of_examples(tmp_path, tiny_checkpoint):
    data = write_gsm8k(tmp_path / "data", ITEMS * 10)
    sft.main(["--model", str(tiny_checkpoint), "--data-dir", str(data), "--out", str(tmp_path / "out"),
              "--lora-rank", "0", "--lr", "3e-3", "--epochs", "8", "--batch-size", "8", "--warmup-steps", "2",
              "--heldout", "0"])
    losses = [m["loss"] for m in map(json.loads, (tmp_path / "out" / "metrics.jsonl").read_text().splitlines())]
    assert len(losses) == 40
    assert losses[-1] < 0.5 * losses[0]


def test_saved_checkpoint_loads_in_transformers_and_ours(tmp_path, tiny_checkpoint, tiny):
    from transformers import AutoModelForCausalLM
    data = write_gsm8k(tmp_path / "data", ITEMS * 4)
    out = tmp_path / "out"
    sft.main(["--preset", "stress", "--model", str(tiny_checkpoint), "--data-dir", str(data), "--out", str(out),
              "--steps", "3", "--batch-size", "4", "--lr", "1e-2"])
    ours, theirs = Qwen3.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([load_tokenizer(out).encode("Question: Ann has 3 pens\nAnswer:").ids])
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max() <= 1e-4
        assert (ours(ids) - tiny[0](ids)).abs().max() > 1e-3  # training changed the model
    args = json.loads((out / "args.json").read_text())
    assert args["lora_rank"] == 64 and args["lr"] == 1e-2 and args["steps"] == 3  # preset, then the flags
    assert args["epochs"] is None  # --steps sets the run's length: the preset's epochs are not used


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path, tiny_checkpoint, monkeypatch):
    data = write_gsm8k(tmp_path / "data", ITEMS * 4)
    common = ["--model", str(tiny_checkpoint), "--data-dir", str(data), "--steps", "4", "--batch-size", "4",
              "--lr", "1e-2", "--lora-dropout", "0.1", "--save-every", "2", "--heldout", "0"]
    sft.main(common + ["--out", str(tmp_path / "whole")])

    original = training.Run.train_step

    def interrupted(self, *args, **kwargs):
        if self.step == 3:
            raise KeyboardInterrupt  # the power goes off during step 4
        return original(self, *args, **kwargs)
    monkeypatch.setattr(training.Run, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sft.main(common + ["--out", str(tmp_path / "split")])
    assert json.loads((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
    monkeypatch.setattr(training.Run, "train_step", original)
    sft.main(common + ["--out", str(tmp_path / "split"), "--resume"])

    whole, split = Qwen3.from_pretrained(tmp_path / "whole"), Qwen3.from_pretrained(tmp_path / "split")
    for (name, a), (_, b) in zip(whole.named_parameters(), split.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_ctrl_c_finishes_the_step_saves_and_the_resumed_run_ends_as_an_uninterrupted_one(tmp_path, tiny_checkpoint,
                                                                                         monkeypatch):
    data = write_gsm8k(tmp_path / "data", ITEMS * 4)
    common = ["--model", str(tiny_checkpoint), "--data-dir", str(data), "--steps", "4", "--batch-size", "4",
              "--lr", "1e-2", "--lora-dropout", "0.1", "--save-every", "0", "--heldout", "0"]
    sft.main(common + ["--out", str(tmp_path / "whole")])
    original, handler = training.Run.train_step, signal.getsignal(signal.SIGINT)

    def interrupted(self, *args, **kwargs):
        if self.step == 1:  # Ctrl-C in the middle of step 2, delivered twice (as a scheduler and study.py may)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(training.Run, "train_step", interrupted)
    with pytest.raises(training.Interrupted) as interrupt:
        sft.main(common + ["--out", str(tmp_path / "split")])
    assert interrupt.value.exit_code == 130 and "interrupted at step 2/4" in str(interrupt.value)
    assert "with --resume to continue" in str(interrupt.value)
    assert json.loads((tmp_path / "split" / "progress.json").read_text()) == {"step": 2, "total_steps": 4,
                                                                             "finished": False}
    assert signal.getsignal(signal.SIGINT) is handler  # the run gave Ctrl-C back
    monkeypatch.setattr(training.Run, "train_step", original)
    sft.main(common + ["--out", str(tmp_path / "split"), "--resume"])
    whole, split = Qwen3.from_pretrained(tmp_path / "whole"), Qwen3.from_pretrained(tmp_path / "split")
    for (name, a), (_, b) in zip(whole.named_parameters(), split.named_parameters()):
        assert torch.equal(a, b), name
    # a finished run resumed (here with --save-every changed, which cannot change the result) does nothing
    stamps = {path: path.stat().st_mtime_ns for path in (tmp_path / "split").rglob("*")}
    sft.main(common + ["--out", str(tmp_path / "split"), "--resume", "--save-every", "1"])
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "split").rglob("*")} == stamps


def test_a_second_ctrl_c_stops_at_once(tmp_path, tiny_checkpoint, monkeypatch):
    data = write_gsm8k(tmp_path / "data", ITEMS * 4)
    original = training.Run.train_step

    def impatient(self, *args, **kwargs):
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)
            self.stopper.signalled_at -= 10  # the second Ctrl-C comes seconds later
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(training.Run, "train_step", impatient)
    with pytest.raises(training.Interrupted, match="stopped at once during step 2; nothing was saved"):
        sft.main(["--model", str(tiny_checkpoint), "--data-dir", str(data), "--out", str(tmp_path / "out"),
                  "--steps", "4", "--batch-size", "4", "--heldout", "0", "--save-every", "0"])
    assert not (tmp_path / "out").exists()


def test_resume_state_is_saved_every_50_steps_by_default(tmp_path, tiny_checkpoint, monkeypatch):
    data = write_gsm8k(tmp_path / "data", ITEMS * 2)
    original = training.Run.train_step

    def power_cut(self, *args, **kwargs):
        if self.step == 52:
            raise KeyboardInterrupt  # no chance to save
        return original(self, *args, **kwargs)
    monkeypatch.setattr(training.Run, "train_step", power_cut)
    with pytest.raises(KeyboardInterrupt):
        sft.main(["--model", str(tiny_checkpoint), "--data-dir", str(data), "--out", str(tmp_path / "out"),
                  "--steps", "60", "--epochs", "100", "--batch-size", "2", "--heldout", "0"])
    assert json.loads((tmp_path / "out" / "progress.json").read_text())["step"] == 50
    assert (tmp_path / "out" / "resume" / "state.pt").exists()


def test_sigterm_saves_and_says_how_to_resume(tmp_path, tiny_checkpoint):
    """A cluster's pre-emption: SIGTERM ends the step, saves, and exits 143 with one line on how to resume."""
    data = write_gsm8k(tmp_path / "data", ITEMS * 4)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "sft.py", "--model", str(tiny_checkpoint), "--data-dir", str(data),
                                "--out", str(out), "--epochs", "100000", "--batch-size", "4", "--heldout", "0"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("step 1/"):
            process.send_signal(signal.SIGTERM)
            break
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted at step ")
    assert f"{out} holds step" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert not json.loads((out / "progress.json").read_text())["finished"]


def test_nan_weights_are_never_saved(tmp_path, tiny_checkpoint, monkeypatch):
    """A finite loss and gradient can still leave NaN weights (an infinite step): the save refuses them."""
    data = write_gsm8k(tmp_path / "data", ITEMS * 4)
    original = training.Run.train_step

    def diverging(self, *args, **kwargs):
        stats = original(self, *args, **kwargs)
        with torch.no_grad():
            self.parameters[0].fill_(float("nan"))
        return stats
    monkeypatch.setattr(training.Run, "train_step", diverging)
    with pytest.raises(training.TrainingError, match="NaN or infinite .*stopped before saving"):
        sft.main(["--model", str(tiny_checkpoint), "--data-dir", str(data), "--out", str(tmp_path / "out"),
                  "--steps", "1", "--batch-size", "4", "--heldout", "0"])
    assert not (tmp_path / "out").exists()


def test_nan_loss_stops_before_saving(tmp_path, tiny_checkpoint, monkeypatch):
    data = write_gsm8k(tmp_path / "data", ITEMS * 4)
    monkeypatch.setattr(sft, "token_losses", lambda run, batch, reference: (torch.tensor([float("nan")]), {}))
    with pytest.raises(training.TrainingError, match="loss is nan"):
        sft.main(["--model", str(tiny_checkpoint), "--data-dir", str(data), "--out", str(tmp_path / "out"),
                  "--steps", "2", "--batch-size", "4"])
    assert not (tmp_path / "out").exists()


def run_cli(*arguments):
    return subprocess.run([sys.executable, "sft.py", *map(str, arguments)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_cli_on_real_data_and_bad_input(tmp_path, tiny_checkpoint, data_dir):
    out = tmp_path / "stress"
    result = run_cli("--preset", "stress", "--model", tiny_checkpoint, "--data-dir", data_dir, "--steps", "5",
                     "--out", out)
    assert result.returncode == 0, result.stderr
    assert "step 5/5" in result.stdout and (out / "model.safetensors").exists()
    before = sorted(p.name for p in out.iterdir())
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    for arguments, message in [
        (["--model", tiny_checkpoint, "--out", out, "--data-dir", data_dir], "already exists"),
        (["--model", tmp_path / "nothing", "--out", tmp_path / "x", "--data-dir", data_dir], "not a checkpoint"),
        (["--model", tiny_checkpoint, "--out", tmp_path / "x", "--data-dir", tmp_path], "gsm8k/train.jsonl"),
        (["--model", tiny_checkpoint, "--out", tmp_path / "y", "--resume", "--data-dir", data_dir], "does not exist"),
    ]:
        bad = run_cli(*arguments)
        assert bad.returncode != 0 and message in bad.stderr and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert sorted(p.name for p in out.iterdir()) == before and (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_real_vocabulary_size_on_a_small_model(tmp_path, data_dir):
    """The real 151,936-token vocabulary and Qwen tokenizer: the chunked loss keeps memory small."""
    config = Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
                    bos_token_id=151643, eos_token_id=151643)
    torch.manual_seed(0)
    model = Qwen3(config)
    model.source = data_dir / "qwen_tokenizer"
    model.save_pretrained(tmp_path / "qwen_shape")
    result = run_cli("--preset", "stress", "--model", tmp_path / "qwen_shape", "--data-dir", data_dir,
                     "--steps", "2", "--batch-size", "8", "--limit", "400", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert Qwen3.from_pretrained(tmp_path / "out").config.vocab_size == 151936


def test_the_optimizer_receives_the_clipped_gradient_and_the_log_the_unclipped_norm(tmp_path, tiny_checkpoint,
                                                                                      monkeypatch):
    """--grad-clip 0.001 on a loss whose gradient norm is far above it: at optimizer.step the gradient's norm is
    0.001, and metrics.jsonl logs the norm before clipping."""
    norms = []
    real_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        gradients = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gradients])).item())
        return real_step(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    data = write_gsm8k(tmp_path / "data", ITEMS)
    sft.main(["--model", str(tiny_checkpoint), "--data-dir", str(data), "--out", str(tmp_path / "out"),
              "--steps", "1", "--batch-size", "4", "--heldout", "0", "--grad-clip", "0.001"])
    logged = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
    assert logged["grad_norm"] > 0.01  # the unclipped norm, ten times the clip at least
    assert norms == [pytest.approx(0.001, rel=1e-3)]
