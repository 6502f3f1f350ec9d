"""
Supervised fine-tuning on dataset states.

State source: dataset trajectories. Every prefix the loss is computed on is a GSM8K question followed
by part of its gold solution, written by people, never by the model being trained.
Signal: the gold tokens: the solution and the end-of-text token (the question carries no loss; question
and solution are tokenized separately, so the split between state and targets is exact).
Per-token loss: -log p(gold token | question + gold prefix), averaged over the step's gold tokens.

    python sft.py --preset mild       # -> ckpt/sft_mild: short, low learning rate (our choice)
    python sft.py --preset stress     # -> ckpt/sft_stress: the paper's 5 epochs, lr 5e-4, LoRA r64 a128
    python sft.py --preset stress --model ckpt/tiny --data-dir ../shared/data --max-steps 5 --out ckpt/tiny_sft
    torchrun --nproc_per_node=8 sft.py --preset stress   # 8 GPUs: each rank takes 1/8 of every batch

The stress run is the paper's first finding (retention falls when the learner is pushed far on
states it will not visit itself) and the degraded teacher of opd.py.
"""
import argparse
import math
import random

import torch

import distributed
import training
from evals import gsm8k

PRESETS = {
    # ours: the paper gives no mild settings. One epoch at a low learning rate, small adapters.
    "mild": dict(epochs=1, lr=5e-5, lora_rank=16, lora_alpha=32, warmup_steps=10),
    # the paper's stress run: 5 epochs, learning rate 5e-4, LoRA rank 64, alpha 128
    "stress": dict(epochs=5, lr=5e-4, lora_rank=64, lora_alpha=128, warmup_steps=10),
}

# -----------------------------------------------------------------------------
# Data and objective: the question is the state, the gold solution the targets


def dataset_sequences(items: list, tokenizer, eos: int, context: int) -> list:
    """One training sequence per GSM8K item: the question as the state, its gold solution + end of text as targets."""
    prompts = tokenizer.encode_batch([gsm8k.prompt(item["question"]) for item in items], add_special_tokens=False)
    golds = tokenizer.encode_batch([gsm8k.target(item["answer"]) for item in items], add_special_tokens=False)
    sequences = []
    for prompt, gold in zip(prompts, golds):
        if len(prompt.ids) + len(gold.ids) + 1 > context:
            raise ValueError(f"a training example of {len(prompt.ids) + len(gold.ids) + 1} tokens exceeds the "
                             f"model's context of {context}")
        sequences.append(training.sequence(state=prompt.ids, targets=gold.ids + [eos]))
    return sequences


def token_losses(run, batch):
    """-log p(gold token | dataset state), per target: (N,)."""
    return -training.target_logprobs(run.model, batch)


def split_heldout(items: list, heldout: int, seed: int):
    """A fixed slice of train kept out of training, for the held-out loss: (train, held-out)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order[heldout:]], [items[i] for i in order[:heldout]]


@torch.no_grad()
def heldout_loss(run, batches: list) -> float:
    """The mean of token_losses over the held-out targets (every rank's, under torchrun)."""
    run.model.eval()
    with run.autocast():
        total = sum(token_losses(run, batch).sum().item() for batch in batches)
    run.model.train()
    return distributed.all_sum(total) / max(1, distributed.all_sum(sum(batch.mask.sum().item() for batch in batches)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="mild")
    parser.add_argument("--epochs", type=float, help="passes over the training data")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per optimizer step")
    parser.add_argument("--heldout", type=int, default=200, help="train items kept out for the held-out loss")
    parser.add_argument("--eval-every", type=int, default=50, help="held-out loss every N steps")
    training.add_arguments(parser, out=None)
    args = parser.parse_args(argv)
    training.apply_preset(args, {**PRESETS[args.preset], "out": f"ckpt/sft_{args.preset}"})
    training.check_at_least(args, 1, "batch_size", "eval_every")
    training.check_at_least(args, 0, "heldout")
    if not 0 < args.epochs < math.inf:
        raise ValueError(f"--epochs must be positive and finite, got {args.epochs}")

    items = gsm8k.load("train", args.data_dir)[:args.limit]
    train_items, heldout_items = split_heldout(items, min(args.heldout, len(items) // 10), args.seed)
    args.batch_size = min(args.batch_size, len(train_items))
    total_steps = math.floor(args.epochs * (len(train_items) // args.batch_size))
    total_steps = min(total_steps, args.max_steps or total_steps)
    if total_steps < 1:
        raise ValueError(f"no training steps: {len(train_items)} examples, batch size {args.batch_size}")

    with training.Run(args, total_steps) as run:
        eos, context = run.model.config.eos_token_id, run.model.config.max_position_embeddings
        train = dataset_sequences(train_items, run.tokenizer, eos, context)
        heldout = training.make_batches(distributed.shard(dataset_sequences(heldout_items, run.tokenizer, eos, context)),
                                        args.micro_batch_tokens, run.device)
        run.write(f"sft ({args.preset}): {len(train)} examples, {len(heldout_items)} held out, "
                  f"{total_steps} steps of {args.batch_size} sequences, lr {args.lr}, "
                  f"LoRA rank {args.lora_rank or 'none (full fine-tuning)'}")
        while run.step < total_steps:
            sequences = [train[i] for i in training.examples_of_step(run.step, len(train), args.batch_size, args.seed)]
            sequences = distributed.shard(sequences)  # under torchrun: this rank's share of the batch
            batches = training.make_batches(sequences, args.micro_batch_tokens, run.device)
            stats = run.train_step(batches, lambda batch: token_losses(run, batch))
            if heldout_items and (run.step % args.eval_every == 0 or run.step == total_steps):
                stats["heldout_loss"] = heldout_loss(run, heldout)
            run.log(stats)
        run.save()


if __name__ == "__main__":
    training.run_main(main)
