"""
What sft.py, rl.py and opd.py do identically, so that each of them holds only its objective: the flags they
share, the held-out split, the step count, training sequences (a state, then target tokens that carry a loss)
packed into batches, and the run: the policy (LoRA or full fine-tuning), AdamW with warmup and cosine decay,
the training step, logging, and checkpoints that --resume continues.

Every trainer's main has one shape:

    args = parse_args(argv)                               # these flags, the trainer's own, its preset
    items = gsm8k.load("train", args.data_dir)[:args.limit]
    train_items, heldout_items = training.split_heldout(items, args.heldout, args.seed)
    with training.Run(args, training.total_steps(args, len(train_items))) as run:   # or resumed from --out
        train = ...                                       # the items as the trainer's examples
        reference = ...                                   # the model the signal is measured against, if any
        while run.step < run.total_steps:
            stats = trainer_step(run, run.step_examples(train), reference)
            run.log(stats)                                # + a held-out measure every --eval-every steps
        run.save()

and every step ends in the same update, after building its training sequences:

    sequences = [training.sequence(state=prompt, targets=completion, advantage=[a] * len(completion))]
    batches = training.make_batches(sequences, args.micro_batch_tokens, run.device)
    stats = run.train_step(batches, token_losses, reference, normaliser)   # sum of token_losses / normaliser

`token_losses(run, batch, reference)` returns the per-target losses (N,) and the sums to log; `reference` is the
model the signal is measured against (RL's starting model, OPD's teacher; None for SFT). Ctrl-C or SIGTERM
inside the `with` finishes the step, saves, and says how to resume (infrastructure/resume.py). Under `torchrun
--nproc_per_node=N` each rank takes its share of a step's examples, the normaliser counts every rank's tokens,
and one all-reduce sums the gradients (infrastructure/distributed.py); one process never starts it. About 390
lines, over the 250 of its budget: it holds every flag, the held-out rule and the step count, so that the three
mains are one.
"""
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from evals import check_data_tokenizer, gsm8k
from infrastructure import distributed, flags
from infrastructure.checkpoint import DEFAULT_MODEL, atomic_directory, load_tokenizer, release_lock, write_failure
from infrastructure.resume import StopOnSignal, TrainingError, check_output, read_state, write_state
from infrastructure.resume import Interrupted, run_main  # noqa: F401 (the trainers' training.run_main, and tests')
from model import DTYPES, Qwen3, add_lora, default_dtype, token_logprobs
from sample import generate

# -----------------------------------------------------------------------------
# Flags, presets, the held-out split and the step count


def parser(description: str):
    """The flags every trainer has, each checked as it is parsed (infrastructure/flags.py). Flags left at None are
    filled from the trainer's preset (finish_args)."""
    parser = flags.parser(description)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="starting checkpoint: directory or hub id")
    parser.add_argument("--out", help="output checkpoint directory (default: ckpt/<run name>)")
    parser.add_argument("--data-dir", help="local data in the original formats (default: the hub)")
    parser.add_argument("--steps", type=flags.count(1), help="optimizer steps (default: the preset's, or --epochs)")
    parser.add_argument("--epochs", type=flags.number(above=0), help="passes over the training items, when --steps "
                        "is not given")
    parser.add_argument("--batch-size", type=flags.count(1), help="training items per optimizer step")
    parser.add_argument("--limit", type=flags.count(1), help="use only the first N training items")
    parser.add_argument("--heldout", type=flags.count(0), help="training items kept out, for the held-out measure "
                        "(0: none)")
    parser.add_argument("--eval-every", type=flags.count(1), help="the held-out measure every N steps, and at the end")
    parser.add_argument("--lr", type=flags.number(above=0), help="peak learning rate")
    parser.add_argument("--warmup-steps", type=flags.count(0), help="linear warmup before the cosine decay")
    parser.add_argument("--weight-decay", type=flags.number(at_least=0), default=0.0)
    parser.add_argument("--grad-clip", type=flags.number(above=0), default=1.0)
    parser.add_argument("--lora-rank", type=flags.count(0), help="0 means full fine-tuning")
    parser.add_argument("--lora-alpha", type=flags.number(above=0))
    parser.add_argument("--lora-dropout", type=flags.number(at_least=0, below=1), default=0.0)
    parser.add_argument("--micro-batch-tokens", type=flags.count(1), default=8192, help="padded tokens per forward")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations")
    parser.add_argument("--save-every", type=flags.count(0), default=50,
                        help="checkpoint and resume state every N steps, and at the end (0: only at the end)")
    parser.add_argument("--save-dtype", choices=DTYPES, default="float32")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--seed", type=flags.count(0), default=0)
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    return parser


def add_sampling_arguments(parser):
    """The flags of the trainers that sample the policy's own states (rl.py, opd.py)."""
    parser.add_argument("--samples-per-prompt", type=flags.count(1), help="completions of each prompt")
    parser.add_argument("--max-new-tokens", type=flags.count(1), default=256, help="length of the sampled completions")
    parser.add_argument("--temperature", type=flags.number(at_least=0), default=1.0, help="sampling temperature")
    parser.add_argument("--sample-batch-size", type=flags.count(1), default=128, help="rows decoded together")
    parser.add_argument("--compile", action="store_true", help="compile the decode step (CUDA graphs on a GPU)")


def finish_args(args, preset: dict, out: str):
    """Fill every flag the user left unset from the preset (the run's length, --steps or --epochs, only when the
    user set neither) and set --out when not given."""
    for name, value in preset.items():
        user_set_length = name in ("steps", "epochs") and (args.steps is not None or args.epochs is not None)
        if getattr(args, name, None) is None and not user_set_length:
            setattr(args, name, value)
    args.out = args.out or out
    return args


def split_heldout(items: list, count: int, seed: int):
    """(train, held-out): `count` items chosen by a shuffle seeded by --seed are kept out of training, at most a
    tenth of them (the run's first line says when that caps --heldout); the rest, in the shuffled order, train."""
    count = min(count, len(items) // 10)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order[count:]], [items[i] for i in order[:count]]


def describe_split(args, train: list, heldout: list) -> str:
    """For a trainer's first line: how many items train and how many are held out (and why fewer than asked)."""
    capped = f" (--heldout {args.heldout}: at most a tenth of the items)" if len(heldout) < args.heldout else ""
    return f"{len(train)} training items, {len(heldout)} held out{capped}"


def total_steps(args, examples: int) -> int:
    """--steps, or --epochs passes over `examples` in full batches of --batch-size."""
    if args.batch_size > examples:
        raise ValueError(f"{examples} training items, fewer than one step's --batch-size {args.batch_size} "
                         f"(raise --limit, or lower --heldout or --batch-size)")
    steps = args.steps if args.steps is not None else math.floor(args.epochs * (examples // args.batch_size))
    if steps < 1:
        raise ValueError(f"no training steps: {examples} items, --batch-size {args.batch_size}, --epochs {args.epochs}")
    return steps


def examples_of_step(step: int, count: int, batch_size: int, seed: int) -> list:
    """Indices of the `batch_size` examples of optimizer step `step`: a fresh shuffle each epoch, full batches.

    A pure function of the step, so a resumed run sees exactly the data an uninterrupted one would.
    """
    if count < batch_size:
        raise ValueError(f"{count} training examples, fewer than one step's {batch_size} (raise --limit)")
    epoch, position = divmod(step, count // batch_size)
    order = list(range(count))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return order[position * batch_size:(position + 1) * batch_size]


# -----------------------------------------------------------------------------
# Training sequences and batches


def encode_prompts(tokenizer, items: list) -> list:
    """The GSM8K prompt of each item as token ids: the state every trainer starts from."""
    encodings = tokenizer.encode_batch([gsm8k.prompt(item["question"]) for item in items], add_special_tokens=False)
    return [encoding.ids for encoding in encodings]


def sequence(state: list, targets: list, **columns) -> dict:
    """One training sequence: the state (token ids the model reads, no loss), then the target tokens, each
    trained on given the state and the targets before it. Each column is a list of floats, one per target
    (an advantage, a teacher's log-probability): the signal that lands on that target."""
    if not state or any(len(values) != len(targets) for values in columns.values()):
        raise ValueError("a training sequence needs a state and one value per target in each column")
    return {"state": list(state), "targets": list(targets), **columns}


def rollout_sequences(prompts: list, completions: list, **columns) -> list:
    """Sequences on the policy's own trajectories: each prompt the state, its completion's tokens the targets,
    each column one list of per-token values per completion. Empty completions teach nothing and are left out."""
    return [sequence(state=prompt, targets=completion, **{name: values[index] for name, values in columns.items()})
            for index, (prompt, completion) in enumerate(zip(prompts, completions)) if completion]


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) tokens fed to the model
    targets: torch.Tensor  # (B, T) the next token at each position
    mask: torch.Tensor  # (B, T) bool: positions whose next token is a target
    columns: dict = field(default_factory=dict)  # name -> (N,) values of the targets, in mask order (row-major)


def make_batches(sequences: list, max_tokens: int, device="cpu") -> list:
    """Pack training sequences into micro-batches of at most `max_tokens` padded tokens, similar lengths together."""
    length = [len(s["state"]) + len(s["targets"]) - 1 for s in sequences]  # model inputs: the last token is not read
    order = sorted(range(len(sequences)), key=length.__getitem__)
    groups, current = [], []
    for index in order:  # shortest first: the newest is the longest of its group
        if current and length[index] * (len(current) + 1) > max_tokens:
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    batches = []
    for group in groups:
        T = max(length[i] for i in group)
        ids = torch.zeros(len(group), T + 1, dtype=torch.long)
        mask = torch.zeros(len(group), T, dtype=torch.bool)  # mask[b, t]: token t + 1 is a target
        names = [name for name in sequences[group[0]] if name not in ("state", "targets")]
        for row, i in enumerate(group):  # row by row: the order of batch.mask's positions, and of the columns
            state, targets = sequences[i]["state"], sequences[i]["targets"]
            ids[row, :len(state) + len(targets)] = torch.tensor(state + targets)
            mask[row, len(state) - 1:len(state) + len(targets) - 1] = True
        columns = {name: torch.tensor([v for i in group for v in sequences[i][name]], dtype=torch.float32,
                                      device=device) for name in names}
        batches.append(Batch(ids[:, :-1].to(device), ids[:, 1:].to(device), mask.to(device), columns))
    return batches


def target_count(batches: list) -> int:
    """The target tokens of a step's batches, every rank's: the normaliser of a mean over the step's targets."""
    return max(1, distributed.all_sum(sum(batch.mask.sum().item() for batch in batches)))


def target_logprobs(model: Qwen3, batch: Batch) -> torch.Tensor:
    """log p(target) at the masked positions, in row-major order: (N,) float32. The LM head runs only there."""
    hidden = model(batch.input_ids, return_hidden=True)  # (B, T, H)
    return token_logprobs(model, hidden[batch.mask], batch.targets[batch.mask])

# -----------------------------------------------------------------------------
# The run: policy, optimizer, schedule, step, logging, checkpoints


def load_policy(args, device) -> tuple:
    """The model to train and its trainable parameters, in the dtypes of model.py's rule."""
    dtype = default_dtype(device) if args.lora_rank else torch.float32
    model = Qwen3.from_pretrained(args.model, device=device, dtype=dtype)
    if args.lora_rank:
        parameters = add_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout)
    else:
        parameters = list(model.parameters())
    model.model.gradient_checkpointing = args.gradient_checkpointing  # on the decoder's layers
    return model.train(), parameters


class Run:
    def __init__(self, args, total_steps: int):
        self.args, self.total_steps, self.out = args, total_steps, Path(args.out)
        self.device = distributed.setup(args.device)  # under torchrun: this rank's GPU, and the process group
        resume_file = check_output(args)  # --out's lock, --out usable; with --resume, the saved run is this run
        try:
            self.start(args, resume_file)
        except BaseException:
            release_lock(self.out)  # a run that could not start leaves nothing beside --out
            raise
        self.progress = tqdm(total=total_steps, initial=self.step, desc=self.out.name, dynamic_ncols=True,
                             disable=None if distributed.is_main() else True)
        self.started = time.perf_counter()
        self.stopper = StopOnSignal(self)  # active inside `with Run(...)`
        if self.step >= total_steps:
            self.write(f"{self.out} finished all {total_steps} steps already: nothing to do")

    def start(self, args, resume_file: Path):
        """Seeds, the policy and its tokenizer, AdamW, and with --resume the saved state; every rank from rank 0's
        weights."""
        random.seed(args.seed)
        torch.manual_seed(args.seed)
        self.model, self.parameters = load_policy(args, self.device)
        self.tokenizer = load_tokenizer(self.model)
        check_data_tokenizer(args.data_dir, self.tokenizer)
        self.compute_dtype = default_dtype(self.device)
        self.optimizer = torch.optim.AdamW(self.parameters, lr=args.lr, weight_decay=args.weight_decay)
        self.step, self.metrics, self.saved_step = 0, [], None
        if args.resume:
            read_state(self, resume_file)  # weights, optimizer, RNGs, step, metrics
            self.saved_step = self.step
        distributed.broadcast_parameters(self.model)
    def __enter__(self):
        self.stopper.__enter__()
        return self

    def __exit__(self, *exception):
        self.stopper.__exit__(*exception)
        self.progress.close()
        release_lock(self.out)
        return False

    def step_examples(self, examples: list) -> list:
        """This step's --batch-size examples (examples_of_step), this rank's share of them under torchrun."""
        chosen = examples_of_step(self.step, len(examples), self.args.batch_size, self.args.seed)
        return [examples[index] for index in distributed.shard(chosen)]

    def evaluation_due(self) -> bool:
        """After every --eval-every-th step, and after the last."""
        return self.step % self.args.eval_every == 0 or self.step == self.total_steps

    def learning_rate(self) -> float:
        """Linear warmup to --lr, then cosine decay to zero at the last step."""
        warmup = min(self.args.warmup_steps, self.total_steps)
        if self.step < warmup:
            return self.args.lr * (self.step + 1) / warmup
        progress = (self.step - warmup) / max(1, self.total_steps - warmup)
        return self.args.lr * 0.5 * (1 + math.cos(math.pi * progress))

    def sample(self, prompts: list, **options) -> list:
        """The policy's own states: sample.generate in eval mode (no dropout), seeded by --seed and the step,
        so a resumed run draws the samples an uninterrupted one would."""
        self.model.eval()
        completions = generate(self.model, prompts, seed=self.args.seed * 1_000_003 + self.step,
                               tokenizer=self.tokenizer, **options)
        self.model.train()
        return completions

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.compute_dtype == torch.bfloat16)

    def write(self, text: str):
        """A line on the console, from rank 0 only."""
        if distributed.is_main():
            self.progress.write(text)

    def train_step(self, batches: list, token_losses, reference, normaliser: int) -> dict:
        """One optimizer step: loss = (the sum over the step's targets of token_losses) / normaliser, backward
        through every micro-batch, the gradients summed over ranks, clipped, and AdamW's step. token_losses(run,
        batch, reference) -> (losses (N,), {name: sum to log}); each logged sum is shown per target. A step with
        no target on any rank (RL: every group's rewards agreed) changes nothing, and still counts."""
        started = time.perf_counter()
        learning_rate = self.learning_rate()
        targets = distributed.all_sum(sum(batch.mask.sum().item() for batch in batches))  # every rank's
        if targets == 0:
            self.step += 1
            return {"lr": learning_rate, "target_tokens": 0}
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        total, logged = 0.0, {}
        for batch in batches:
            with self.autocast():
                losses, sums = token_losses(self, batch, reference)
                loss = losses.sum() / normaliser
            if not torch.isfinite(loss):
                raise TrainingError(f"step {self.step + 1}: loss is {loss.item()}; stopped before saving anything")
            loss.backward()
            total += loss.item()
            for name, value in sums.items():
                logged[name] = logged.get(name, 0.0) + value
        distributed.all_reduce_gradients(self.parameters)  # one process: nothing to do
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.args.grad_clip)
        if not torch.isfinite(norm):
            raise TrainingError(f"step {self.step + 1}: gradient norm is {norm.item()}; stopped before saving")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        tokens = distributed.all_sum(sum(batch.input_ids.numel() for batch in batches))  # every rank's
        seconds = time.perf_counter() - started
        stats = {"loss": distributed.all_sum(total), "lr": learning_rate, "grad_norm": norm.item(),
                 "target_tokens": targets, "train_tokens_per_s": tokens / seconds, "train_s": seconds}
        for sums in distributed.gather([logged]):  # every rank's sums, at once (a rank may have had no batch)
            for name, value in sums.items():
                stats[name] = stats.get(name, 0.0) + value / targets
        if self.device.type == "cuda":
            stats["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return stats

    def log(self, stats: dict):
        """One line per step on the console, one JSON line in metrics.jsonl (written with the checkpoint);
        a save every --save-every steps, and the stop a signal asked for."""
        record = {"step": self.step, **stats, "elapsed_s": time.perf_counter() - self.started}
        self.metrics.append(record)
        self.progress.update(1)
        shown = " | ".join(f"{name} {format_number(value)}" for name, value in stats.items())
        self.write(f"step {self.step}/{self.total_steps} | {shown}")
        if self.args.save_every and self.step % self.args.save_every == 0:
            self.save()
        if self.step < self.total_steps and distributed.all_sum(int(self.stopper.requested is not None)):
            self.save()  # every rank at once
            self.stopper.stop()

    def save(self):
        """Checkpoint (LoRA merged) + args + metrics + resume state, all replacing --out in one rename,
        unless this step is saved already. Rank 0 writes (every rank holds the same weights); the others
        wait for it. Weights that are NaN or infinite are never saved."""
        if self.saved_step == self.step:
            return
        broken = [name for name, p in self.model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
        if broken:
            raise TrainingError(f"step {self.step}: {len(broken)} weight tensors are NaN or infinite ({broken[0]}, "
                                f"...); stopped before saving them")
        if distributed.is_main():
            try:
                with atomic_directory(self.out) as staging:
                    self.model.write_checkpoint(staging, DTYPES[self.args.save_dtype])
                    write_state(self, staging)  # args.json, progress.json, metrics.jsonl, resume/
            except Exception as error:  # a full disk (torch.save: 'unexpected pos', safetensors: its own error), ...
                raise TrainingError(write_failure(self.out, error)) from None
            self.write(f"saved {self.out} at step {self.step}")
        distributed.barrier()
        self.saved_step = self.step


def heldout_accuracy(run, items: list) -> float:
    """Greedy flexible-extract accuracy on held-out train items, as the GSM8K eval scores it (each rank a share
    under torchrun): the held-out measure of the trainers that sample."""
    run.model.eval()
    result = gsm8k.evaluate(run.model, run.tokenizer, items, batch_size=run.args.sample_batch_size, progress=False,
                            compile=run.args.compile)
    run.model.train()
    return result["summary"]["flexible"]


def format_number(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)
