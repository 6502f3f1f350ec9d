"""
Speed, side by side in one run: our sampler against transformers' `generate`, and a training step
(forward + backward) against transformers' forward + backward, on the same random-weight checkpoint.

    python -m tools.bench --shape small --batch 8                  # CPU, a small checkpoint
    python -m tools.bench --shape 0.6b --batch 8 --new-tokens 32   # CPU, the Qwen3-0.6B shape
    python -m tools.bench --shape 0.6b --batch 1 64 --compile      # CUDA: bf16, compiled decode step

Greedy decoding, the same prompts and lengths for both; prefill time is the time to the first token,
decode tokens/s counts the tokens after it. Random weights are a fair stand-in for speed.
"""
import tempfile
import time

import torch

from infrastructure import flags
from model import Config, Qwen3, default_dtype, token_logprobs
from sample import generate

SHAPES = {  # hidden, layers, heads, kv heads, head_dim, intermediate, vocab
    "tiny": (64, 2, 4, 2, 32, 128, 512),  # python -m tools.tiny
    "small": (256, 4, 8, 4, 32, 768, 32000),
    "0.6b": (1024, 28, 16, 8, 128, 3072, 151936),  # Qwen3-0.6B-Base
}


def random_checkpoint(shape: str, directory, vocab_size=None, eos_token_id=None, dtype=torch.float32, device="cpu"):
    """A random-weight Qwen3 of `shape` (another vocabulary size if given), saved in `dtype` (HF layout)."""
    hidden, layers, heads, kv_heads, head_dim, intermediate, vocab = SHAPES[shape]
    config = Config(vocab_size=vocab_size or vocab, hidden_size=hidden, intermediate_size=intermediate,
                    num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                    head_dim=head_dim, tie_word_embeddings=True, bos_token_id=eos_token_id,
                    eos_token_id=eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3(config)
    for name, parameter in model.named_parameters():
        if not name.endswith("norm.weight"):
            torch.nn.init.normal_(parameter, std=0.02)
    model.save_pretrained(directory, dtype=dtype)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(function, device):
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - started


def bench_sampling(ours, theirs, batch, prompt_length, new_tokens, compile, device, repeats):
    prompts = torch.randint(0, ours.config.vocab_size, (batch, prompt_length), generator=torch.Generator().manual_seed(0))
    ids = prompts.tolist()

    def our_run(tokens):
        return lambda: generate(ours, ids, max_new_tokens=tokens, eos_token_id=-1, compile=compile)

    def their_run(tokens):
        inputs = prompts.to(device)
        return lambda: theirs.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=tokens,
                                       min_new_tokens=tokens, do_sample=False, pad_token_id=0)
    rows = {}
    for name, run in [("ours", our_run), ("transformers", their_run)]:
        with torch.no_grad():
            if compile and name == "ours":
                print(f"  compile (first call): {timed(run(new_tokens), device):.1f} s")
            run(2)()  # warm up
            prefill = min(timed(run(1), device) for _ in range(repeats))  # best of: this machine is noisy
            total = min(timed(run(new_tokens), device) for _ in range(repeats))
        rows[name] = (batch * prompt_length / prefill, batch * (new_tokens - 1) / max(total - prefill, 1e-9))
    return rows


def bench_training(ours, theirs, batch, length, device, repeats):
    """Tokens/s of one forward + backward with a next-token loss on every position."""
    ids = torch.randint(0, ours.config.vocab_size, (batch, length), device=device)

    def our_step():
        hidden = ours(ids[:, :-1], return_hidden=True).flatten(0, 1)
        (-token_logprobs(ours, hidden, ids[:, 1:].flatten()).mean()).backward()

    def their_step():
        theirs(ids, labels=ids).loss.backward()
    rows = {}
    for name, step in [("ours", our_step), ("transformers", their_step)]:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
        with autocast:
            step()  # warm up
            seconds = min(timed(step, device) for _ in range(repeats))
        rows[name] = batch * length / seconds
    return rows


def parse_args(argv=None):
    parser = flags.parser(__doc__)
    parser.add_argument("--shape", choices=SHAPES, default="small")
    parser.add_argument("--batch", type=flags.count(1), nargs="+", default=[8])
    parser.add_argument("--prompt-length", type=flags.count(1), default=64)
    parser.add_argument("--new-tokens", type=flags.count(2), default=64)
    parser.add_argument("--train-batch", type=flags.count(1), default=8, help="sequences in the training step")
    parser.add_argument("--train-length", type=flags.count(2), default=256, help="sequence length of the training step")
    parser.add_argument("--compile", action="store_true", help="compile our decode step (CUDA)")
    parser.add_argument("--repeats", type=flags.count(1), default=3, help="timings are the best of this many runs")
    parser.add_argument("--skip-training", action="store_true")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from transformers import AutoModelForCausalLM
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = default_dtype(device)
    print(f"device {device}, dtype {dtype}, shape {args.shape}, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as directory:
        random_checkpoint(args.shape, directory)
        ours = Qwen3.from_pretrained(directory, device=device, dtype=dtype)
        theirs = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).to(device).eval()
    print("| batch | prompt | new | prefill tok/s ours | transformers | decode tok/s ours | transformers | decode ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in args.batch:
        rows = bench_sampling(ours, theirs, batch, args.prompt_length, args.new_tokens, args.compile, device,
                              args.repeats)
        (our_prefill, our_decode), (their_prefill, their_decode) = rows["ours"], rows["transformers"]
        print(f"| {batch} | {args.prompt_length} | {args.new_tokens} | {our_prefill:.0f} | {their_prefill:.0f} | "
              f"{our_decode:.1f} | {their_decode:.1f} | {our_decode / their_decode:.2f}x |", flush=True)
    if not args.skip_training:
        ours.train()  # full fine-tuning on both sides: every weight gets a gradient
        theirs.train()
        batch = args.train_batch
        rows = bench_training(ours, theirs, batch, args.train_length, device, args.repeats)
        print(f"\ntraining step, batch {batch} x {args.train_length}: ours {rows['ours']:.0f} tok/s, "
              f"transformers {rows['transformers']:.0f} tok/s, ratio {rows['ours'] / rows['transformers']:.2f}x")
        if device.type == "cuda":
            print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
