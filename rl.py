"""
On-policy RL with a group-relative exact-answer reward (a minimal GRPO: REINFORCE with a group baseline).

State source: current-policy trajectories. Every prefix the loss touches was written by the model
being trained, sampled fresh at each step, so training lands on the states the policy visits.
Signal: the exact-answer reward of evals/gsm8k.py (1 when the final number is right, else 0), the
same grader the evaluation uses.
Per-token loss: -A log p(own token | own state), A = the reward minus its group's mean reward.

    python rl.py                                    # -> ckpt/rl, from Qwen/Qwen3-0.6B-Base, LoRA
    python rl.py --model ckpt/tiny --data-dir ../shared/data --steps 3 --out ckpt/tiny_rl
    torchrun --nproc_per_node=8 rl.py               # 8 GPUs: each rank samples and trains on 1/8 of the prompts

The algorithm, each step:
  1. draw P prompts from GSM8K train (--batch-size) and sample G completions of each
     (--samples-per-prompt; temperature 1, one prefill per prompt, per-prompt seeds);
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
import time

import torch

import training
from evals import gsm8k
from infrastructure import distributed, flags
from model import Qwen3, lora_disabled

PRESET = dict(steps=100, batch_size=16, samples_per_prompt=8, lr=2e-5, lora_rank=32, lora_alpha=64, warmup_steps=5,
              heldout=64, eval_every=25)

# -----------------------------------------------------------------------------
# Signal: rewards and advantages


def reward(completion, answer: str, kind: str) -> float:
    """The GSM8K grader's exact-answer check, as the evaluation scores it (`flexible` or `strict`). `digit` is
    a toy for random models, 1 when the completion starts with a digit: it gives `study.py --tiny` rewards
    that vary, so that the update runs (a random model never gets a GSM8K answer right)."""
    if kind == "digit":
        return float(completion.text.lstrip()[:1].isdigit())
    return gsm8k.grade(completion.text, answer)[kind]


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

def advantage_sequences(prompts: list, completions: list, advantages: list, group_size: int, keep_all: bool) -> list:
    """Training sequences on the policy's own trajectories: each completion after its prompt, every token with its
    completion's advantage. A completion whose advantage is 0 (its group's rewards all agree) has no gradient and
    is left out, unless the KL leash applies to it (`keep_all`)."""
    kept = [i for i, advantage in enumerate(advantages) if advantage != 0 or keep_all]
    return training.rollout_sequences([prompts[i // group_size] for i in kept], [completions[i].tokens for i in kept],
                                      advantage=[[advantages[i]] * len(completions[i].tokens) for i in kept])


# -----------------------------------------------------------------------------
# The loss: REINFORCE with the group baseline, and the optional KL leash to the starting model


def starting_model(run) -> Qwen3:
    """The reference the KL leash holds the policy to, the starting model: with LoRA, the policy itself with its
    adapters switched off (reference_logprobs does that); in full fine-tuning, --model loaded again (after
    --resume the live weights are no longer the starting ones)."""
    if run.args.lora_rank:
        return run.model
    return Qwen3.from_pretrained(run.args.model, device=run.device, dtype=torch.float32).eval().requires_grad_(False)


@torch.no_grad()
def reference_logprobs(start: Qwen3, batch) -> torch.Tensor:
    with lora_disabled(start):  # a model without adapters is left as it is
        return training.target_logprobs(start, batch)


def token_losses(run, batch, reference):
    """-A log p(own token | own state) per target (N,), + --kl-coef x k3 against the starting model `reference`
    when --kl-coef > 0, whose sum is logged as `kl`."""
    logprobs = training.target_logprobs(run.model, batch)  # (N,)
    losses = -batch.columns["advantage"] * logprobs
    if not run.args.kl_coef:
        return losses, {}
    difference = reference_logprobs(reference, batch) - logprobs
    kl = torch.exp(difference) - difference - 1  # k3: unbiased for KL(now || start), always >= 0
    return losses + run.args.kl_coef * kl, {"kl": kl.detach().sum().item()}

# -----------------------------------------------------------------------------
# One step: sample, reward, update


def rl_step(run, examples: list, reference) -> dict:
    """Sample G completions of each example's prompt, reward them against its answer, update. Under torchrun
    `examples` are this rank's share of the step's; the statistics cover every rank's."""
    args, started = run.args, time.perf_counter()
    group = args.samples_per_prompt
    completions = run.sample([example["prompt"] for example in examples], n=group, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, stop=gsm8k.STOP, batch_size=args.sample_batch_size,
                             compile=args.compile)
    sampling_s = time.perf_counter() - started
    rewards = [reward(c, examples[i // group]["answer"], args.reward) for i, c in enumerate(completions)]
    advantages = group_advantages(rewards, group, args.scale_rewards)
    sequences = advantage_sequences([example["prompt"] for example in examples], completions, advantages, group,
                                    keep_all=args.kl_coef > 0)
    batches = training.make_batches(sequences, args.micro_batch_tokens, run.device)
    # every rank's samples (a rank holds whole groups): the statistics, and N, the normaliser
    rewards, lengths = distributed.gather(rewards), distributed.gather([len(c.tokens) for c in completions])
    truncated = distributed.all_sum(sum(c.finish_reason == "length" for c in completions))
    groups = [rewards[i:i + group] for i in range(0, len(rewards), group)]
    stats = {"reward": sum(rewards) / len(rewards),
             "all_equal_groups": sum(len(set(g)) == 1 for g in groups) / len(groups),
             "completion_length": sum(lengths) / len(lengths), "max_length": max(lengths),
             "truncated": truncated / len(lengths), "sampling_tokens_per_s": sum(lengths) / sampling_s}
    # N = every token sampled this step, zero-advantage groups' included: loss = -(1/N) sum A log p
    return {**stats, **run.train_step(batches, token_losses, reference, normaliser=max(1, sum(lengths))),
            "sampling_s": sampling_s}


def parse_args(argv=None):
    parser = training.parser(__doc__)
    training.add_sampling_arguments(parser)
    parser.add_argument("--reward", choices=["flexible", "strict", "digit"], default="flexible",
                        help="GSM8K answer extraction; digit: a toy for random models (see `reward`)")
    parser.add_argument("--scale-rewards", action="store_true", help="divide advantages by the group std")
    parser.add_argument("--kl-coef", type=flags.number(at_least=0), default=0.0,
                        help="k3 KL penalty to the starting model (0: none)")
    args = training.finish_args(parser.parse_args(argv), PRESET, out="ckpt/rl")
    if args.temperature != 1:  # samples from p^(1/T) with gradients of log p: an off-policy estimate of neither
        raise ValueError(f"--temperature {args.temperature}: rl.py samples at temperature 1, the policy it trains")
    return args


def main(argv=None):
    args = parse_args(argv)
    train_items, heldout_items = training.split_heldout(gsm8k.load("train", args.data_dir)[:args.limit], args.heldout,
                                                        args.seed)
    with training.Run(args, training.total_steps(args, len(train_items))) as run:
        train = [{"prompt": prompt, "answer": item["answer"]}  # the states come from sampling these prompts
                 for prompt, item in zip(training.encode_prompts(run.tokenizer, train_items), train_items)]
        reference = starting_model(run) if args.kl_coef else None
        run.write(f"rl: {training.describe_split(args, train_items, heldout_items)}, {run.total_steps} steps of "
                  f"{args.batch_size} prompts x {args.samples_per_prompt} samples, lr {args.lr}, LoRA rank "
                  f"{args.lora_rank or 'none (full fine-tuning)'}")
        while run.step < run.total_steps:
            stats = rl_step(run, run.step_examples(train), reference)
            if heldout_items and run.evaluation_due():
                stats["heldout_accuracy"] = training.heldout_accuracy(run, heldout_items)
            run.log(stats)
        run.save()


if __name__ == "__main__":
    training.run_main(main)
