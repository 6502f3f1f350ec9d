"""rl.py: advantages, the policy-gradient loss against REINFORCE computed directly, KL and clipping, learning."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import rl
import training
from model import Qwen3, add_lora, lora_disabled
from sample import Completion

ROOT = Path(__file__).resolve().parents[1]


def test_group_advantages_on_hand_made_groups():
    assert rl.group_advantages([1, 0, 0, 1], 4, scale=False) == pytest.approx([0.5, -0.5, -0.5, 0.5])
    assert rl.group_advantages([1, 0, 0, 0, 1, 1, 1, 1], 4, scale=False) == pytest.approx(
        [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    std = (4 * 0.25 / 3) ** 0.5  # sample std of [1, 0, 0, 1]
    assert rl.group_advantages([1, 0, 0, 1], 4, scale=True) == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std], rel=1e-5)
    assert rl.group_advantages([0, 0, 0], 3, scale=True) == [0, 0, 0]  # all equal: nothing, even scaled


def test_flags_left_unset_take_the_preset_and_a_short_dataset_is_refused():
    args = rl.parse_args([])
    assert {name: getattr(args, name) for name in rl.PRESET} == rl.PRESET
    with pytest.raises(ValueError, match="fewer than one step's 16"):
        training.examples_of_step(0, 5, 16, seed=0)


@pytest.fixture
def hand_made(tiny_checkpoint):
    """A model with random LoRA adapters and two groups of two completions: one informative, one all-equal."""
    model = Qwen3.from_pretrained(tiny_checkpoint)
    add_lora(model, rank=4, alpha=8)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # a non-trivial starting adapter
    prompts = [[5, 6, 7], [8, 9]]
    completions = [Completion([10, 11, 12], None, "length"), Completion([13, 14], None, "eos"),
                   Completion([15], None, "eos"), Completion([16, 17, 18, 19], None, "length")]
    rewards = [1.0, 0.0, 1.0, 1.0]
    return model, prompts, completions, rewards


def gradients(model, loss):
    parameters = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, parameters, allow_unused=True, retain_graph=True)


def sequence_logprob(model, prompt, completion):
    """sum_t log p(y_t | prompt, y_<t), from a full forward and log_softmax over the whole vocabulary."""
    ids = torch.tensor([prompt + completion])
    logprobs = torch.log_softmax(model(ids[:, :-1])[0], -1)
    positions = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)
    return logprobs[positions, torch.tensor(completion)]


def test_loss_gradient_equals_reinforce_computed_directly(hand_made):
    model, prompts, completions, rewards = hand_made
    advantages = rl.group_advantages(rewards, 2, scale=False)
    assert advantages == [0.5, -0.5, 0.0, 0.0]
    sequences = rl.advantage_sequences(prompts, completions, advantages, 2, keep_all=False)
    assert len(sequences) == 2  # the all-equal group is not run at all
    total_tokens = sum(len(c.tokens) for c in completions)  # the normaliser: every sampled token, all groups
    batches = training.make_batches(sequences, 100)
    run = SimpleNamespace(model=model, args=SimpleNamespace(kl_coef=0.0))
    ours = gradients(model, sum(rl.token_losses(run, batch, None)[0].sum() for batch in batches) / total_tokens)
    # REINFORCE with the group baseline: -(1/N) sum_i A_i sum_t grad log p(y_it), all sequences
    direct = -sum(a * sequence_logprob(model, prompts[i // 2], c.tokens).sum()
                  for i, (c, a) in enumerate(zip(completions, advantages))) / total_tokens
    for a, b in zip(ours, gradients(model, direct)):
        assert torch.allclose(a, b, atol=1e-6)
    assert any(g.abs().max() > 1e-4 for g in ours)


def test_all_equal_groups_give_zero_gradient(hand_made):
    model, prompts, completions, _ = hand_made
    advantages = rl.group_advantages([1.0, 1.0, 0.0, 0.0], 2, scale=True)
    assert rl.advantage_sequences(prompts, completions, advantages, 2, keep_all=False) == []
    # and even when run through the loss, a zero advantage gives a zero gradient
    sequence = training.sequence(state=prompts[0], targets=completions[0].tokens, advantage=[0.0] * 3)
    run = SimpleNamespace(model=model, args=SimpleNamespace(kl_coef=0.0))
    losses, _ = rl.token_losses(run, training.make_batches([sequence], 100)[0], None)
    assert all(g is None or g.abs().max() == 0 for g in gradients(model, losses.sum()))


def test_kl_penalty_against_direct_computation(hand_made):
    model, prompts, completions, rewards = hand_made
    sequences = rl.advantage_sequences(prompts, completions, rl.group_advantages(rewards, 2, False), 2, keep_all=False)
    batch = training.make_batches(sequences, 100)[0]
    run = SimpleNamespace(model=model, args=SimpleNamespace(lora_rank=4, kl_coef=0.3))
    # KL: the reference is the model without its adapters
    losses, logged = rl.token_losses(run, batch, rl.starting_model(run))
    loss = losses.sum() / 5
    now = torch.cat([sequence_logprob(model, prompts[0], completions[i].tokens) for i in (0, 1)])
    with torch.no_grad(), lora_disabled(model):
        start = torch.cat([sequence_logprob(model, prompts[0], completions[i].tokens) for i in (0, 1)])
    advantage = torch.tensor([0.5] * 3 + [-0.5] * 2)
    k3 = torch.exp(start - now) - (start - now) - 1
    # the batch is ordered shortest first: completion 1 (2 tokens) then completion 0 (3 tokens)
    order = torch.tensor([3, 4, 0, 1, 2])
    direct = (-(advantage * now)[order] + 0.3 * k3[order]).sum() / 5
    assert loss.item() == pytest.approx(direct.item(), abs=1e-5)
    assert logged["kl"] / 5 == pytest.approx(k3.mean().item(), abs=1e-6) and k3.mean() > 1e-3
    for a, b in zip(gradients(model, loss), gradients(model, direct)):
        assert torch.allclose(a, b, atol=1e-6)


def test_kl_leash_holds_every_sequence_to_the_starting_model(tmp_path, tiny_checkpoint, monkeypatch):
    """--kl-coef > 0: groups whose rewards all agree still get the KL term (their advantage is 0, their KL is
    not, so a step where every group agrees still updates), and with full fine-tuning the reference is --model
    loaded again, not the live (say resumed) model."""
    args = rl.parse_args(["--model", str(tiny_checkpoint), "--out", str(tmp_path / "kl"), "--lora-rank", "0",
                          "--kl-coef", "1.0", "--max-new-tokens", "4", "--samples-per-prompt", "4", "--warmup-steps", "0",
                          "--lr", "1e-2"])
    run = training.Run(args, total_steps=2)
    torch.manual_seed(0)
    with torch.no_grad():  # as after --resume: the live model is no longer the starting one
        for parameter in run.model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    start = rl.starting_model(run)
    prompts = [run.tokenizer.encode(text).ids for text in ["Question: how many?\nAnswer:", "Ann has"]]
    sequence = training.sequence(state=prompts[0], targets=[5, 6, 7], advantage=[0.0] * 3)
    batch = training.make_batches([sequence], 100)[0]
    loaded = Qwen3.from_pretrained(tiny_checkpoint)
    with torch.no_grad():
        reference = rl.reference_logprobs(start, batch)
        assert torch.allclose(reference, training.target_logprobs(loaded, batch), atol=1e-6)
        assert not torch.allclose(reference, training.target_logprobs(run.model, batch), atol=1e-3)
    before = [parameter.clone() for parameter in run.model.parameters()]
    monkeypatch.setattr(rl, "reward", lambda completion, answer, kind: 1.0)  # every group agrees
    stats = rl.rl_step(run, [{"prompt": prompt, "answer": ""} for prompt in prompts], start)
    assert stats["all_equal_groups"] == 1 and stats["kl"] > 0 and run.step == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters()))  # the KL's update ran


def test_mean_reward_rises_on_a_toy_verifiable_task(tmp_path, tiny_checkpoint):
    """Reward 1 when the completion starts with a digit: RL, not GSM8K, on a tiny random model."""
    args = rl.parse_args(["--model", str(tiny_checkpoint), "--out", str(tmp_path / "toy"), "--lr", "3e-2",
                          "--lora-rank", "0", "--max-new-tokens", "3", "--samples-per-prompt", "8", "--warmup-steps", "0",
                          "--reward", "digit"])
    run = training.Run(args, total_steps=30)
    prompts = [run.tokenizer.encode(text).ids for text in ["Question: how many?\nAnswer:", "Ann has", "Bob buys 3",
                                                            "The answer is"]]
    examples = [{"prompt": prompt, "answer": ""} for prompt in prompts]
    rewards = [rl.rl_step(run, examples, reference=None)["reward"] for _ in range(30)]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.5 and last > 0.8 and last > first + 0.3, rewards


@pytest.mark.slow
def test_compiled_sampling_follows_the_training(tmp_path, tiny_checkpoint):
    """--compile: rl_step decodes with the compiled step, and after training steps have changed the weights
    in place, the compiled step still gives what eager decoding of the current weights gives."""
    from infrastructure import compiled
    args = rl.parse_args(["--model", str(tiny_checkpoint), "--out", str(tmp_path / "toy"), "--lr", "3e-2",
                          "--lora-rank", "0", "--max-new-tokens", "3", "--samples-per-prompt", "8", "--warmup-steps", "0",
                          "--compile", "--reward", "digit"])
    run = training.Run(args, total_steps=3)
    prompts = [run.tokenizer.encode(text).ids for text in ["Question: how many?\nAnswer:", "The answer is"]]
    stats = [rl.rl_step(run, [{"prompt": prompt, "answer": ""} for prompt in prompts], reference=None)
             for _ in range(2)]
    assert "loss" in stats[0] and run.model in compiled.COMPILED  # compiled rollouts, then the weights changed
    # greedy, in the rows' shape the rollouts compiled (a new shape would compile afresh from the new weights)
    fast = run.sample(prompts, n=8, max_new_tokens=8, eos_token_id=-1, compile=True)
    run.model.eval()
    for index, completion in enumerate(fast):
        prompt = prompts[index // 8]
        with torch.no_grad():  # a full forward of the current weights: each compiled token is its argmax
            logits = run.model(torch.tensor([prompt + completion.tokens[:-1]]))[0, len(prompt) - 1:]  # (8, V)
        for token, row in zip(completion.tokens, logits):
            first, second = row.topk(2).values.tolist()
            if first - second < 1e-3:  # a near-tie may go either way, and what follows with it
                break
            assert token == row.argmax().item()


def test_cli_runs_offline_on_real_data(tmp_path, tiny_checkpoint, data_dir):
    out = tmp_path / "rl"
    result = subprocess.run([sys.executable, "rl.py", "--model", str(tiny_checkpoint), "--data-dir", str(data_dir),
                             "--steps", "3", "--out", str(out), "--batch-size", "2", "--samples-per-prompt", "4",
                             "--max-new-tokens", "16", "--heldout", "4", "--eval-every", "3", "--kl-coef", "0.1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and "heldout_accuracy" in metrics[-1]
    assert {"reward", "all_equal_groups", "completion_length", "truncated", "sampling_s", "train_s"} <= set(metrics[0])
    assert Qwen3.from_pretrained(out).config.vocab_size == 512
