"""
A tiny random Qwen3 and its tokenizer: every script runs offline on it in seconds, and the tests use it.

    python -m tools.tiny ckpt/tiny               # 2 layers, hidden 64, a 512-token byte-level BPE
    python sample.py --model ckpt/tiny --prompt "Question: 2 + 3?\\nAnswer:"

The tokenizer is trained here, with `tokenizers`, on GSM8K-shaped text, and the vocabulary size is the
tokenizer's. Its weights are random: what it writes means nothing, only the mechanics can be checked.
"""
import random
import sys
from pathlib import Path

import torch
import torch.nn as nn

from infrastructure import flags
from infrastructure.checkpoint import CheckpointError, atomic_directory, check_writable, write_failure
from model import Config, Qwen3


def tiny_corpus() -> list[str]:
    """GSM8K-shaped text for training the tiny tokenizer (any text still encodes: byte-level BPE)."""
    rng = random.Random(0)
    names, things = ["Ann", "Bob", "Cai", "Dee", "Eli"], ["apples", "pens", "books", "coins", "cards"]
    lines = []
    for _ in range(400):
        a, b, who, what = rng.randint(2, 99), rng.randint(2, 99), rng.choice(names), rng.choice(things)
        lines.append(f"Question: {who} has {a} {what} and buys {b} more. How many {what} does {who} have?\n"
                     f"Answer: {who} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {what}.\n#### {a + b}")
    return lines


def train_tiny_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained here on GSM8K-shaped text, with <|endoftext|> as its special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(tiny_corpus(), trainer)
    return tokenizer


def write_tiny(out_dir, vocab_size: int = 512, seed: int = 0, hidden_size: int = 64, layers: int = 2,
               max_position_embeddings: int = 32768):
    """A random-weight Qwen3 with a byte-level BPE tokenizer trained here (vocab = tokenizer size)."""
    tokenizer = train_tiny_tokenizer(vocab_size)
    eos = tokenizer.token_to_id("<|endoftext|>")
    config = Config(vocab_size=tokenizer.get_vocab_size(), hidden_size=hidden_size,
                    intermediate_size=2 * hidden_size, num_hidden_layers=layers, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
                    max_position_embeddings=max_position_embeddings, bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(seed)
    model = Qwen3(config)
    for name, parameter in model.named_parameters():
        if not name.endswith("norm.weight"):
            nn.init.normal_(parameter, std=0.02)
    with atomic_directory(out_dir) as staging:
        model.write_checkpoint(staging)
        tokenizer.save(str(staging / "tokenizer.json"))
    return Path(out_dir)


def parse_args(argv=None):
    parser = flags.parser(__doc__)
    parser.add_argument("out", help="the checkpoint directory to write (must not exist)")
    parser.add_argument("--seed", type=flags.count(0), default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if Path(args.out).exists():
        raise CheckpointError(f"{args.out} already exists: remove it or choose another directory")
    check_writable(args.out)
    try:
        path = write_tiny(args.out, seed=args.seed)
    except Exception as error:  # a full disk (safetensors raises its own error), ...: the staging folder is gone
        raise CheckpointError(write_failure(args.out, error)) from None
    print(f"wrote a tiny random Qwen3 checkpoint to {path}")


if __name__ == "__main__":
    try:
        main()
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit(130)
