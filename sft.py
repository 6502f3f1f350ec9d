"""
Supervised fine-tuning on dataset states.

State source: dataset trajectories. Every prefix the loss is computed on is a GSM8K question followed
by part of its gold solution, written by people, never by the model being trained.
Signal: the gold tokens: the solution and the end-of-text token (the question carries no loss; question
and solution are tokenized separately, so the split between state and targets is exact).
Per-token loss: -log p(gold token | question + gold prefix), averaged over the step's gold tokens.

    python sft.py --preset mild       # -> ckpt/sft_mild: short, low learning rate (our choice)
    python sft.py --preset stress     # -> ckpt/sft_stress: the paper's 5 epochs, lr 5e-4, LoRA r64 a128
    python sft.py --preset stress --model ckpt/tiny --data-dir ../shared/data --steps 5 --out ckpt/tiny_sft
    torchrun --nproc_per_node=8 sft.py --preset stress   # 8 GPUs: each rank takes 1/8 of every batch

The stress run is the paper's first finding (retention falls when the learner is pushed far on
states it will not visit itself) and the degraded teacher of opd.py.
"""
import torch

import training
from evals import gsm8k
from infrastructure import distributed

COMMON = dict(batch_size=32, warmup_steps=10, heldout=200, eval_every=50)
PRESETS = {
    # ours: the paper gives no mild settings. One epoch at a low learning rate, small adapters.
    "mild": dict(COMMON, epochs=1, lr=5e-5, lora_rank=16, lora_alpha=32),
    # the paper's stress run: 5 epochs, learning rate 5e-4, LoRA rank 64, alpha 128
    "stress": dict(COMMON, epochs=5, lr=5e-4, lora_rank=64, lora_alpha=128),
}

# -----------------------------------------------------------------------------
# States and signal: the question is the state, its gold solution the targets


def dataset_sequences(items: list, tokenizer, eos: int, context: int) -> list:
    """One training sequence per GSM8K item: the question as the state, its gold solution + end of text as targets."""
    golds = tokenizer.encode_batch([gsm8k.target(item["answer"]) for item in items], add_special_tokens=False)
    sequences = []
    for prompt, gold in zip(training.encode_prompts(tokenizer, items), golds):
        if len(prompt) + len(gold.ids) + 1 > context:
            raise ValueError(f"a training example of {len(prompt) + len(gold.ids) + 1} tokens exceeds the "
                             f"model's context of {context}")
        sequences.append(training.sequence(state=prompt, targets=gold.ids + [eos]))
    return sequences


def token_losses(run, batch, reference):
    """-log p(gold token | dataset state) per target (N,); nothing else to log. No `reference` model: the signal
    is in the data."""
    return -training.target_logprobs(run.model, batch), {}

# -----------------------------------------------------------------------------
# One step, and the held-out measure


def sft_step(run, examples: list, reference) -> dict:
    """One update on this step's dataset sequences (under torchrun, this rank's share of them)."""
    batches = training.make_batches(examples, run.args.micro_batch_tokens, run.device)
    return run.train_step(batches, token_losses, reference, normaliser=training.target_count(batches))


@torch.no_grad()
def heldout_loss(run, sequences: list) -> float:
    """The mean of token_losses over the held-out gold targets (every rank's share, under torchrun)."""
    batches = training.make_batches(distributed.shard(sequences), run.args.micro_batch_tokens, run.device)
    run.model.eval()
    with run.autocast():
        total = sum(token_losses(run, batch, reference=None)[0].sum().item() for batch in batches)
    run.model.train()
    return distributed.all_sum(total) / training.target_count(batches)


def parse_args(argv=None):
    parser = training.parser(__doc__)
    parser.add_argument("--preset", choices=PRESETS, default="mild")
    args = parser.parse_args(argv)
    return training.finish_args(args, PRESETS[args.preset], out=f"ckpt/sft_{args.preset}")


def main(argv=None):
    args = parse_args(argv)
    train_items, heldout_items = training.split_heldout(gsm8k.load("train", args.data_dir)[:args.limit], args.heldout,
                                                        args.seed)
    with training.Run(args, training.total_steps(args, len(train_items))) as run:
        eos, context = run.model.config.eos_token_id, run.model.config.max_position_embeddings
        train = dataset_sequences(train_items, run.tokenizer, eos, context)  # the states: dataset trajectories
        heldout = dataset_sequences(heldout_items, run.tokenizer, eos, context)
        reference = None  # the signal is in the data
        run.write(f"sft ({args.preset}): {training.describe_split(args, train_items, heldout_items)}, "
                  f"{run.total_steps} steps of {args.batch_size}, lr {args.lr}, LoRA rank "
                  f"{args.lora_rank or 'none (full fine-tuning)'}")
        while run.step < run.total_steps:
            stats = sft_step(run, run.step_examples(train), reference)
            if heldout_items and run.evaluation_due():
                stats["heldout_loss"] = heldout_loss(run, heldout)
            run.log(stats)
        run.save()


if __name__ == "__main__":
    training.run_main(main)
