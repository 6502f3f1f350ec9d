"""
Pretrain a small Qwen3 from scratch on a lab world's corpus (lab/world.py): the lab's base model.

    python -m lab.world --world-seed 0 --out ckpt/lab/world0/world
    python -m lab.pretrain --world ckpt/lab/world0/world --out ckpt/lab/world0/base     # 10-50 minutes, 2 CPU cores
    python -m evals ckpt/lab/world0/base --data-dir ckpt/lab/world0/world

Why it exists: the paper's lesson is about whose states a model is trained on, and a base model's own
states come from pretraining. Here that is visible: the corpus solves most word problems in one style
("12 * 6 = 72. 72 + 23 = 95. The answer is 95."), so that is what this base writes, while SFT's gold
solutions (the world's gsm8k/train.jsonl) are written in GSM8K's style, which the corpus holds more rarely:
states the base can read but does not visit.

Full training (no LoRA) with training.py's Run: AdamW, warmup + cosine decay, clipping, atomic save. The
corpus is tokenized once, documents joined by <|endoftext|>, cut into fixed-length sequences, and every
token carries the loss. Run starts from a checkpoint directory, so the random initial model is written
first (with the world's tokenizer) into a folder beside --out. Ctrl-C saves; --resume continues.
"""
import math
import shutil
import sys
from pathlib import Path

import torch
import torch.nn as nn

import training
from evals import check_data_tokenizer
from infrastructure import flags
from infrastructure.checkpoint import DEFAULT_MODEL, atomic_directory, load_tokenizer, release_lock
from infrastructure.resume import check_output, check_same_run, finished
from lab.world import EOT, read_marker
from model import Config, Qwen3

# The lab's base (our choice, sized on the development worlds before any post-training ran): 0.92M parameters
# (the flags' defaults), the 4.7M-token corpus seen twice, about 1,150 steps of 32 x 256 tokens: 9 minutes at
# 17-18k tokens/s on 2 CPU cores, 30 at the 5.8k of a slower day. On world 0 it scores GSM8K 0.47 (flexible),
# TruthfulQA MC1 0.52 and MMLU 0.36: every benchmark off its ceiling and floor (docs/lab.md).
PRESET = dict(epochs=2.0, batch_size=32, lr=2e-3, warmup_steps=50, lora_rank=0)

# -----------------------------------------------------------------------------
# Data: the corpus as fixed-length sequences of tokens, the loss on every token


def corpus_sequences(world: Path, tokenizer, length: int) -> torch.Tensor:
    """The world's documents, each after an end-of-text token, as one token stream cut into rows of
    `length` + 1 tokens (inputs are the first `length`, targets the last `length`): (N, length + 1)."""
    documents = (world / "corpus.txt").read_text(encoding="utf-8").split(EOT)
    eos = tokenizer.token_to_id(EOT)
    pieces = []
    for start in range(0, len(documents), 1000):  # in chunks: a tokenizers Encoding holds much more than its ids
        for encoding in tokenizer.encode_batch(documents[start:start + 1000], add_special_tokens=False):
            pieces.append(torch.tensor([eos] + encoding.ids, dtype=torch.int32))
    stream = torch.cat(pieces)
    rows = len(stream) // (length + 1)
    return stream[:rows * (length + 1)].view(rows, length + 1)


# -----------------------------------------------------------------------------
# The random initial checkpoint


def write_initial_checkpoint(directory: Path, tokenizer, args) -> Config:
    """A random Qwen3 sized by the flags, with the world's tokenizer, in HF layout (Run loads it)."""
    eos = tokenizer.token_to_id(EOT)
    config = Config(vocab_size=tokenizer.get_vocab_size(), hidden_size=args.hidden_size,
                    intermediate_size=args.intermediate_size, num_hidden_layers=args.layers,
                    num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
                    rope_theta=10000.0, tie_word_embeddings=True, max_position_embeddings=args.context,
                    bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(args.seed)
    model = Qwen3(config)
    for name, parameter in model.named_parameters():
        if not name.endswith("norm.weight"):  # norms start at one
            nn.init.normal_(parameter, std=0.02)
    with atomic_directory(directory) as staging:
        model.write_checkpoint(staging)
        tokenizer.save(str(staging / "tokenizer.json"))
    return config


def token_losses(run, batch, reference):
    """-log p(next token) at every position after a sequence's first: the model's own pretraining loss."""
    return -training.target_logprobs(run.model, batch), {}


def parse_args(argv=None):
    parser = training.parser(__doc__)
    parser.add_argument("--world", required=True, help="a lab world folder written by lab/world.py")
    size = flags.count(1, 65536)
    parser.add_argument("--hidden-size", type=size, default=128)
    parser.add_argument("--layers", type=size, default=4)
    parser.add_argument("--heads", type=size, default=4)
    parser.add_argument("--kv-heads", type=size, default=2)
    parser.add_argument("--head-dim", type=size, default=32)
    parser.add_argument("--intermediate-size", type=size, default=384)
    parser.add_argument("--context", type=size, default=512, help="max_position_embeddings of the model")
    parser.add_argument("--sequence-length", type=size, default=256, help="tokens per training sequence")
    args = training.finish_args(parser.parse_args(argv), PRESET, out="ckpt/lab/world0/base")
    if args.model != DEFAULT_MODEL:
        raise ValueError("--model: pretraining starts from random weights, sized by --hidden-size, --layers, ...")
    if args.heads % args.kv_heads:
        raise ValueError(f"--heads must be a multiple of --kv-heads, got {args.heads} and {args.kv_heads}")
    if args.lora_rank:
        raise ValueError("pretraining trains every weight: --lora-rank must be 0")
    if args.sequence_length > args.context:
        raise ValueError(f"--sequence-length {args.sequence_length} exceeds --context {args.context}")
    if args.data_dir or args.limit or args.heldout or args.eval_every:
        raise ValueError("--data-dir, --limit, --heldout and --eval-every are the post-trainers' flags: pretraining "
                         "reads --world's corpus.txt")
    return args


def main(argv=None):
    args = parse_args(argv)
    world, out = Path(args.world), Path(args.out)
    if read_marker(world) is None:
        raise ValueError(f"--world {world}: not a lab world (no world.json with lab_world; see lab/world.py)")
    world_tokenizer = load_tokenizer(world)  # a world folder holds its tokenizer.json as a checkpoint does
    # Run starts from a checkpoint: the random initial model, at a fixed path beside --out so that --resume
    # names the same --model; every save copies its tokenizer, so it stays until the run is over.
    initial = out.parent / f".{out.name}.initial"
    args.model = str(initial)
    if (out / "tokenizer.json").is_file():  # a base of another world must not be resumed or kept for this one
        check_data_tokenizer(world, load_tokenizer(out))
    if finished(out) and not args.resume:
        check_same_run(args, out / "args.json")  # the same flags made it, or one line says which differ
        print(f"{out} already holds a finished base; nothing to do")
        return
    check_output(args)  # --out's lock, --out writable, not another run: before any work
    try:
        pretrain(args, world, world_tokenizer, initial)
    finally:
        shutil.rmtree(initial, ignore_errors=True)
        release_lock(out)


def pretrain(args, world: Path, world_tokenizer, initial: Path):
    """The corpus as sequences, the random initial model, and the run that trains it."""
    sequences = corpus_sequences(world, world_tokenizer, args.sequence_length)
    if len(sequences) < args.batch_size:
        raise ValueError(f"{world / 'corpus.txt'}: {len(sequences)} sequences of {args.sequence_length + 1} tokens, "
                         f"fewer than one step's --batch-size {args.batch_size}")
    steps = training.total_steps(args, len(sequences))
    config = write_initial_checkpoint(initial, world_tokenizer, args)
    with training.Run(args, steps) as run:
        parameters = sum(p.numel() for p in run.model.parameters())
        run.write(f"pretrain: {parameters / 1e6:.2f}M parameters, vocabulary {config.vocab_size}, "
                  f"{len(sequences)} sequences of {args.sequence_length} tokens "
                  f"({len(sequences) * args.sequence_length / 1e6:.2f}M tokens), {steps} steps of "
                  f"{args.batch_size} sequences, lr {args.lr}, threads {torch.get_num_threads()}")
        while run.step < run.total_steps:
            # the first token is the state, every later one a target: the model's own next-token loss
            rows = [training.sequence(state=row[:1].tolist(), targets=row[1:].tolist())
                    for row in run.step_examples(sequences)]
            batches = training.make_batches(rows, args.micro_batch_tokens, run.device)
            run.log(run.train_step(batches, token_losses, None, normaliser=training.target_count(batches)))
        run.save()

if __name__ == "__main__":
    training.run_main(main)
