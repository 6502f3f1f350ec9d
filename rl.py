"""
On-policy RL with a group-relative exact-answer reward (a minimal GRPO: REINFORCE with a group baseline).

State source: current-policy trajectories. Every prefix the loss touches was written by the model
being trained, sampled fresh at each step, so training lands on the states the policy visits.
Signal: the exact-answer reward of evals/gsm8k.py (1 when the final number is right, else 0), the
same grader the evaluation uses.
Per-token loss: -A log p(own token | own state), A = the reward minus its group's mean reward.

    python rl.py                                    # -> ckpt/rl, from Qwen/Qwen3-0.6B-Base, LoRA
    python rl.py --model ckpt/tiny --data-dir ../shared/data --max-steps 3 --out ckpt/tiny_rl
    torchrun --nproc_per_node=8 rl.py               # 8 GPUs: each rank samples and trains on 1/8 of the prompts

The algorithm, each step:
  1. draw P prompts from GSM8K train and sample G completions of each (temperature 1, one prefill
     per prompt, per-prompt seeds);
  2. reward r = 1 if the answer is right (flexible-extract by default, --reward strict for `#### N`);
  3. advantage A = r - mean(r of the group), divided by the group's std with --scale-rewards; a group
     whose rewards are all equal has A = 0 and is not even run through the model;
  4. loss = -(1 / N) sum over completion tokens of A log p(token), N the number of completion tokens
     sampled this step: its gradient is REINFORCE with the group mean as baseline, exactly on-policy
     (one update per batch of samples, so no importance ratio and nothing to clip).
Optionally, a KL leash (--kl-coef beta): + beta * k3 per token, k3 = e^d - d - 1 with d = log p_start - log p_now,
an estimate of KL(now || start) that is never negative; it applies to every sampled sequence.
Where it departs from textbook GRPO (DeepSeekMath): no std division by default (Dr. GRPO's finding
that it biases towards easy and hard questions), token-level normalisation over the whole batch
instead of per sequence, one update per batch (no PPO clip), and no KL term by default.
"""
import argparse
import time

import torch

import distributed
import training
from evals import gsm8k
from model import Qwen3, lora_disabled

PRESET = dict(lr=2e-5, lora_rank=32, lora_alpha=64, warmup_steps=5)

# -----------------------------------------------------------------------------
# Rewards, advantages and the policy-gradient loss


def reward(completion, answer: str, kind: str) -> float:
    """The GSM8K grader's exact-answer check, as the evaluation scores it (`flexible` or `strict`). `digit` is
    a toy for random models, 1 when the completion starts with a digit: it gives `study.py --tiny` rewards
    that vary, so that the update runs (a random model never gets a GSM8K answer right)."""
    if kind == "digit":
        return float(completion.text.lstrip()[:1].isdigit())
    return gsm8k.score(completion.text, answer)[kind]


def group_advantages(rewards: list, group_size: int, scale: bool) -> list:
    """reward - group mean (/ group std with `scale`), for consecutive groups of `group_size`."""
    advantages = []
    for start in range(0, len(rewards), group_size):
        group = torch.tensor(rewards[start:start + group_size], dtype=torch.float64)
        centred = group - group.mean()
        if scale:
            centred = centred / (group.std() + 1e-6) if len(group) > 1 else centred
        advantages += centred.tolist()
    return advantages


def rollout_sequences(prompts: list, completions: list, advantages: list, group_size: int,
                      keep_all: bool = False) -> list:
    """Training sequences: the prompt is the state, the policy's own completion the targets, each with its advantage.

    Without a KL term (`keep_all` False), completions with zero advantage (the groups whose rewards are
    all equal) are left out: their gradient is zero, so they would cost a forward and a backward for nothing.
    """
    sequences = []
    for index, (completion, advantage) in enumerate(zip(completions, advantages)):
        if (advantage == 0 and not keep_all) or not completion.tokens:
            continue
        prompt = prompts[index // group_size]
        sequences.append(training.sequence(state=prompt, targets=completion.tokens,
                                           advantage=[advantage] * len(completion.tokens)))
    return sequences


def token_losses(run, batch, kl_coef: float = 0.0, reference=None, totals=None):
    """-A log p(own token | own state) per target (N,), + kl_coef * k3 against `reference` (the starting model's
    log-probs) when kl_coef > 0; `totals` collects the k3 sum and count, for the log."""
    logprobs = training.target_logprobs(run.model, batch)  # (N,)
    losses = -batch.columns["advantage"] * logprobs
    if kl_coef:  # the optional leash
        difference = reference(batch) - logprobs
        kl = torch.exp(difference) - difference - 1  # k3: unbiased for KL(now || start), always >= 0
        losses = losses + kl_coef * kl
        totals["kl"] += kl.detach().sum().item()
        totals["tokens"] += len(kl)
    return losses


def reference_function(run):
    """log-probs under the frozen starting model: the adapters switched off, or --model loaded again for full
    tuning (after --resume the live model is no longer the starting one)."""
    frozen = None if run.args.lora_rank else Qwen3.from_pretrained(
        run.args.model, device=run.device, dtype=torch.float32).eval().requires_grad_(False)

    @torch.no_grad()
    def reference(batch):
        if frozen is not None:
            return training.target_logprobs(frozen, batch)
        with lora_disabled(run.model):
            return training.target_logprobs(run.model, batch)
    return reference

# -----------------------------------------------------------------------------
# One step: sample, reward, update


def rl_step(run, prompts: list, reward_of, args, reference=None) -> dict:
    """Sample G completions of each prompt, reward them with reward_of(index, completion), update.
    Under torchrun `prompts` are this rank's share of the step's; the statistics cover every rank's."""
    started = time.perf_counter()
    completions = run.sample(prompts, n=args.group_size, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, stop=gsm8k.STOP, batch_size=args.sample_batch_size,
                             compile=args.compile)
    sampling_s = time.perf_counter() - started
    rewards = [reward_of(i // args.group_size, c) for i, c in enumerate(completions)]
    advantages = group_advantages(rewards, args.group_size, args.scale_rewards)
    sequences = rollout_sequences(prompts, completions, advantages, args.group_size, keep_all=args.kl_coef > 0)
    batches = training.make_batches(sequences, args.micro_batch_tokens, run.device)
    # every rank's samples (a rank holds whole groups): the token count N of the loss, and the statistics
    rewards, lengths = distributed.gather(rewards), distributed.gather([len(c.tokens) for c in completions])
    truncated = distributed.all_sum(sum(c.finish_reason == "length" for c in completions))
    groups = [rewards[i:i + args.group_size] for i in range(0, len(rewards), args.group_size)]
    stats = {"reward": sum(rewards) / len(rewards),
             "all_equal_groups": sum(len(set(g)) == 1 for g in groups) / len(groups),
             "completion_length": sum(lengths) / len(lengths), "max_length": max(lengths),
             "truncated": truncated / len(lengths), "sampling_tokens_per_s": sum(lengths) / sampling_s}
    if distributed.all_sum(len(batches)):  # some rank has a group whose rewards differ (or a KL term to apply)
        totals = {"kl": 0.0, "tokens": 0}
        stats.update(run.train_step(batches, lambda batch: token_losses(run, batch, args.kl_coef, reference, totals),
                                    normaliser=max(1, sum(lengths))))  # loss, lr, grad_norm, tokens/s, ...
        if args.kl_coef:
            stats["kl"] = distributed.all_sum(totals["kl"]) / distributed.all_sum(totals["tokens"])
    else:  # nothing to learn from: every group agreed; the step still counts
        run.step += 1
    stats.update(sampling_s=sampling_s, train_s=time.perf_counter() - started - sampling_s)
    return stats


def greedy_accuracy(run, items: list, args) -> float:
    """Flexible-extract accuracy of greedy completions on a held-out slice of train, as the GSM8K eval scores it
    (each rank a share under torchrun)."""
    run.model.eval()
    result = gsm8k.evaluate(run.model, run.tokenizer, items, batch_size=args.sample_batch_size, progress=False,
                            compile=args.compile)
    run.model.train()
    return result["summary"]["flexible"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps, each on fresh samples")
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--reward", choices=["flexible", "strict", "digit"], default="flexible",
                        help="GSM8K answer extraction; digit: a toy for random models (see `reward`)")
    parser.add_argument("--scale-rewards", action="store_true", help="divide advantages by the group std")
    parser.add_argument("--kl-coef", type=float, default=0.0, help="k3 KL penalty to the starting model")
    parser.add_argument("--sample-batch-size", type=int, default=128, help="rows decoded together")
    parser.add_argument("--compile", action="store_true", help="compile the decode step (CUDA graphs on a GPU)")
    parser.add_argument("--eval-every", type=int, default=25, help="greedy accuracy on held-out train items")
    parser.add_argument("--eval-items", type=int, default=64)
    training.add_arguments(parser, out="ckpt/rl")
    args = training.apply_preset(parser.parse_args(argv), PRESET)
    training.check_at_least(args, 1, "steps", "prompts_per_step", "group_size", "max_new_tokens",
                            "sample_batch_size", "eval_every")
    training.check_at_least(args, 0, "eval_items", "kl_coef")
    if args.temperature != 1:  # samples from p^(1/T) with gradients of log p: an off-policy estimate of neither
        raise ValueError(f"--temperature {args.temperature}: rl.py samples at temperature 1, the policy it trains")
    return args


def main(argv=None):
    args = parse_args(argv)
    items = gsm8k.load("train", args.data_dir)[:args.limit]
    heldout, train = items[:args.eval_items], items[args.eval_items:]  # the held-out slice comes first
    if len(train) < args.prompts_per_step:
        raise ValueError(f"{len(train)} training prompts, fewer than --prompts-per-step {args.prompts_per_step}")
    total_steps = min(args.steps, args.max_steps or args.steps)
    with training.Run(args, total_steps) as run:
        reference = reference_function(run) if args.kl_coef else None
        run.write(f"rl: {total_steps} steps of {args.prompts_per_step} prompts x {args.group_size} samples, "
                  f"lr {args.lr}, LoRA rank {args.lora_rank or 'none (full fine-tuning)'}")
        while run.step < total_steps:
            chosen = [train[i] for i in training.examples_of_step(run.step, len(train), args.prompts_per_step,
                                                                  args.seed)]
            chosen = distributed.shard(chosen)  # under torchrun: this rank's prompts
            prompts = [run.tokenizer.encode(gsm8k.prompt(item["question"])).ids for item in chosen]
            stats = rl_step(run, prompts, lambda i, c: reward(c, chosen[i]["answer"], args.reward), args, reference)
            if heldout and (run.step % args.eval_every == 0 or run.step == total_steps):
                stats["heldout_accuracy"] = greedy_accuracy(run, heldout, args)
            run.log(stats)
        run.save()


if __name__ == "__main__":
    training.run_main(main)
