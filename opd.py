"""
On-policy distillation: the student learns from a teacher on the states the student itself visits.

State source: student trajectories. Each step the student answers GSM8K train questions; the states
are its own prompts + generated prefixes, so the supervision lands where the student will be.
Signal: the teacher, and nothing else (no gold answers, no reward).
Per-token loss: continuation: -log p(teacher token | student state + teacher prefix); reverse_kl:
(log p_s - log p_t)(y) log p_s(y) for the student's own token y (a policy gradient whose reward is
log p_t - log p_s); full_kl: the exact next-token KL at the student's states.

    python opd.py --teacher ckpt/sft_stress                 # -> ckpt/opd_sft_stress, student = base model
    python opd.py --teacher ckpt/sft_mild --mode reverse_kl # -> ckpt/opd_sft_mild_reverse_kl
    python opd.py --teacher ckpt/tiny --student ckpt/tiny --data-dir ../shared/data --steps 3 --out ckpt/tiny_opd
    torchrun --nproc_per_node=8 opd.py --teacher ckpt/sft_stress --teacher-dtype bfloat16  # 8 GPUs

Three modes:
  continuation (default, the paper's working variant, DAgger-style): cut each student rollout at K
    points (the empty prefix included); from each cut the teacher writes L tokens (greedy by
    default); the student is trained with cross-entropy on those teacher tokens given the student's
    prefix, and on nothing else. The teacher says "from here, I would go on like this".
  reverse_kl (Thinking Machines' on-policy distillation, TRL's GKD with beta = 1): one teacher
    forward over the student's own tokens; each sampled token y_t gets the advantage
    log p_teacher(y_t) - log p_student(y_t), minus a one-sample estimate of the reverse KL, with no
    discount; a policy-gradient step raises the tokens the teacher likes more than the student does.
  full_kl: the exact next-token KL over the whole vocabulary at every student state, one step deep
    (--kl-direction reverse: sum p_s (log p_s - log p_t); forward: sum p_t (log p_t - log p_s)). The
    paper reports a one-step variant of this kind collapsing (GSM8K 0.040); it is here as the ablation.
"""
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import training
from evals import continuation_logprobs, gsm8k
from infrastructure import distributed, flags
from infrastructure.checkpoint import load_tokenizer
from model import DTYPES, Qwen3
from sample import generate

PRESET = dict(steps=100, batch_size=16, samples_per_prompt=1, lr=5e-5, lora_rank=32, lora_alpha=64, warmup_steps=5,
              heldout=64, eval_every=25)

# -----------------------------------------------------------------------------
# The teacher, and the student's states


def load_teacher(path: str, student: Qwen3, student_tokenizer, device, dtype=None) -> Qwen3:
    """The frozen teacher (in `dtype`; default: the dtype it was saved in, model.py's rule), refused unless it
    shares the student's tokenizer and vocabulary size."""
    teacher = Qwen3.from_pretrained(path, device=device, dtype=dtype).eval().requires_grad_(False)
    tokenizer = load_tokenizer(teacher)
    if teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(f"teacher {path} has vocabulary size {teacher.config.vocab_size}, the student "
                         f"{student.config.vocab_size}: distillation needs the same vocabulary")
    if tokenizer.get_vocab(with_added_tokens=True) != student_tokenizer.get_vocab(with_added_tokens=True):
        raise ValueError(f"teacher {path} has a different tokenizer from the student's: same token ids are needed")
    return teacher


def cut_points(length: int, cuts: int) -> list:
    """K evenly spaced prefix lengths of a rollout of `length` tokens, starting with the empty prefix."""
    return sorted({j * length // cuts for j in range(cuts)}) if length else [0]


def before_stop(completion, tokenizer) -> list:
    """The tokens of a completion that lie before its stop string (the stop text is not taught)."""
    tokens = completion.tokens
    if completion.finish_reason != "stop":
        return tokens
    keep = len(tokens) - 1  # the last token completed the stop string
    while keep and not completion.text.startswith(tokenizer.decode(tokens[:keep])):
        keep -= 1
    return tokens[:keep]

# -----------------------------------------------------------------------------
# The signal of each mode: training sequences from the student's rollouts


def continuation_sequences(run, teacher, prompts: list, rollouts: list) -> list:
    """Training sequences: a student state (prompt + the student's rollout up to a cut, K cuts per rollout) and,
    as targets, the L tokens the teacher writes from there."""
    args = run.args
    # a state reached by several rollouts (the bare prompt, with --samples-per-prompt > 1) is taught once
    states = list(dict.fromkeys(tuple(prompt + rollout[:cut]) for prompt, rollout in zip(prompts, rollouts)
                                for cut in cut_points(len(rollout), args.cuts)))
    states = [list(state) for state in states]
    continuations = generate(teacher, states, max_new_tokens=args.continuation_tokens,
                             temperature=args.teacher_temperature, stop=gsm8k.STOP, tokenizer=run.tokenizer,
                             seed=args.seed * 1_000_003 + run.step, batch_size=args.sample_batch_size,
                             compile=args.compile)
    taught = [before_stop(continuation, run.tokenizer) for continuation in continuations]
    return [training.sequence(state=state, targets=tokens) for state, tokens in zip(states, taught) if tokens]


def teacher_logprob_sequences(run, teacher, prompts: list, rollouts: list) -> list:
    """reverse_kl: the prompt as the state, the student's own rollout as the targets, each token with the teacher's
    log-probability of it."""
    pairs = [(prompt, rollout) for prompt, rollout in zip(prompts, rollouts) if rollout]
    logprobs = continuation_logprobs(teacher, pairs, batch_size=run.args.sample_batch_size)
    return training.rollout_sequences([p for p, _ in pairs], [r for _, r in pairs], teacher_logprob=logprobs)

# -----------------------------------------------------------------------------
# The loss of each mode


def kl_per_state(student_logits, teacher_logits, direction: str):
    """Exact next-token KL at each state: (N, V), (N, V) -> (N,), in float32."""
    student, teacher = F.log_softmax(student_logits.float(), -1), F.log_softmax(teacher_logits.float(), -1)
    if direction == "reverse":
        return (student.exp() * (student - teacher)).sum(-1)
    return (teacher.exp() * (teacher - student)).sum(-1)


def chunked_kl(run, teacher, batch, direction: str, chunk_size: int = 256):
    """kl_per_state at every masked state of the batch, at most `chunk_size` states of two (V,) rows at a
    time; with gradients each chunk is recomputed in backward rather than kept: (N,)."""
    hidden = run.model(batch.input_ids, return_hidden=True)[batch.mask]  # (N, H)
    with torch.no_grad():
        teacher_hidden = teacher(batch.input_ids, return_hidden=True)[batch.mask]  # (N, H)

    def piece(h, t):
        return kl_per_state(run.model.lm_head(h), teacher.lm_head(t), direction)
    pieces = [checkpoint(piece, hidden[i:i + chunk_size], teacher_hidden[i:i + chunk_size], use_reentrant=False)
              for i in range(0, len(hidden), chunk_size)]
    return torch.cat(pieces)


def token_losses(run, batch, reference):
    """The per-target loss of the --mode (N,), `reference` being the teacher; reverse_kl and full_kl log the sum
    of their KL estimate as `teacher_kl`."""
    mode = run.args.mode
    if mode == "continuation":  # cross-entropy on the teacher's tokens
        return -training.target_logprobs(run.model, batch), {}
    if mode == "reverse_kl":  # policy gradient with advantage -(log p_s - log p_t) per token
        logprobs = training.target_logprobs(run.model, batch)
        estimate = logprobs.detach() - batch.columns["teacher_logprob"]
        return estimate * logprobs, {"teacher_kl": estimate.sum().item()}
    kl = chunked_kl(run, reference, batch, run.args.kl_direction)
    return kl, {"teacher_kl": kl.detach().sum().item()}

# -----------------------------------------------------------------------------
# One step: student rollouts, teacher signal, update


def opd_step(run, examples: list, reference) -> dict:
    """Roll the student out from each example's prompt, get the teacher's signal on its states, update. Under
    torchrun `examples` are this rank's share of the step's; the statistics cover every rank's."""
    args, started = run.args, time.perf_counter()
    rollouts = run.sample(examples, n=args.samples_per_prompt, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, stop=gsm8k.STOP, batch_size=args.sample_batch_size,
                          compile=args.compile)
    sampling_s = time.perf_counter() - started
    prompts = [prompt for prompt in examples for _ in range(args.samples_per_prompt)]  # one per rollout
    rollouts = [before_stop(r, run.tokenizer) for r in rollouts]  # the student's tokens, stop text left out
    if args.mode == "continuation":
        sequences = continuation_sequences(run, reference, prompts, rollouts)
    elif args.mode == "reverse_kl":
        sequences = teacher_logprob_sequences(run, reference, prompts, rollouts)
    else:  # full_kl: the teacher's whole distribution is computed in the loss
        sequences = training.rollout_sequences(prompts, rollouts)
    teacher_s = time.perf_counter() - started - sampling_s
    batches = training.make_batches(sequences, args.micro_batch_tokens, run.device)
    update = run.train_step(batches, token_losses, reference, normaliser=training.target_count(batches))
    rollout_tokens, rollout_count = distributed.all_sum(sum(map(len, rollouts))), distributed.all_sum(len(rollouts))
    return {**update, "completion_length": rollout_tokens / max(1, rollout_count),
            "sampling_tokens_per_s": rollout_tokens / sampling_s, "sampling_s": sampling_s, "teacher_s": teacher_s}


def parse_args(argv=None):
    parser = training.parser(__doc__)
    training.add_sampling_arguments(parser)
    parser.add_argument("--teacher", required=True, help="teacher checkpoint (frozen)")
    parser.add_argument("--student", help="student checkpoint (default: --model, the base model)")
    parser.add_argument("--mode", choices=["continuation", "reverse_kl", "full_kl"], default="continuation")
    parser.add_argument("--kl-direction", choices=["reverse", "forward"], default="reverse", help="full_kl only")
    parser.add_argument("--cuts", type=flags.count(1), default=4, help="continuation: cut points K per rollout")
    parser.add_argument("--continuation-tokens", type=flags.count(1), default=32,
                        help="continuation: teacher tokens L")
    parser.add_argument("--teacher-temperature", type=flags.number(at_least=0), default=0.0,
                        help="continuation: 0 is greedy")
    parser.add_argument("--teacher-dtype", choices=DTYPES,
                        help="teacher weights (default: the dtype the teacher was saved in; float32 on CPU)")
    args = parser.parse_args(argv)
    suffix = "" if args.mode == "continuation" else f"_{args.mode}"
    args = training.finish_args(args, PRESET, out=f"ckpt/opd_{Path(args.teacher.rstrip('/')).name}{suffix}")
    if args.mode == "reverse_kl" and args.temperature != 1:  # the advantage needs the log-probs of the sampler
        raise ValueError(f"--temperature {args.temperature}: reverse_kl samples at temperature 1, the student it trains")
    args.model = args.student or args.model
    return args


def main(argv=None):
    args = parse_args(argv)
    train_items, heldout_items = training.split_heldout(gsm8k.load("train", args.data_dir)[:args.limit], args.heldout,
                                                        args.seed)
    with training.Run(args, training.total_steps(args, len(train_items))) as run:
        train = training.encode_prompts(run.tokenizer, train_items)  # the states come from the student's rollouts
        reference = load_teacher(args.teacher, run.model, run.tokenizer, run.device, DTYPES.get(args.teacher_dtype))
        run.write(f"opd ({args.mode}): teacher {args.teacher}, student {args.model}, "
                  f"{training.describe_split(args, train_items, heldout_items)}, {run.total_steps} steps of "
                  f"{args.batch_size} prompts x {args.samples_per_prompt} rollouts, lr {args.lr}, LoRA rank "
                  f"{args.lora_rank or 'none (full fine-tuning)'}")
        while run.step < run.total_steps:
            stats = opd_step(run, run.step_examples(train), reference)
            if heldout_items and run.evaluation_due():
                stats["heldout_accuracy"] = training.heldout_accuracy(run, heldout_items)
            run.log(stats)
        run.save()


if __name__ == "__main__":
    training.run_main(main)
