"""
State drift: how far a post-trained model's own states have moved from the base model's.

    python -m evals.drift --base Qwen/Qwen3-0.6B-Base --model ckpt/sft_stress --out results/sft_stress/drift.json
    python -m evals.drift --base ckpt/tiny --model ckpt/tiny_sft --data-dir ../shared/data --prompts 16

Both models answer the same fixed prompts (the first --prompts GSM8K test questions, one sample each,
temperature 1), with independent random numbers: the base model's rollouts are seeded by --seed, the
post-trained model's by --seed + 1, so the two sets of states are two independent samples (shared random
numbers would make two similar models write similar text by construction). Each rollout gives --cuts prefix
states, prompt + the first j/K of the completion for j = 1..K. A state is embedded by lexical features: hashed word unigrams and bigrams
(--features buckets), L2-normalised. Between the two sets of states we report:
  mmd2                the squared maximum mean discrepancy with an RBF kernel, bandwidth by the median
                      heuristic (the median pairwise distance of the pooled states), biased (V-statistic)
                      estimator: mean k(X, X) + mean k(Y, Y) - 2 mean k(X, Y); 0 for identical sets
  centroid            the Euclidean distance between the two mean feature vectors
  sliced_wasserstein  the 1-D Wasserstein-1 distance of the states' projections on --projections random
                      unit directions, averaged
  jaccard             1 - |A n B| / |A u B| of the word sets of the two models' completions
The paper reports these four but not their features or estimators; all choices here are ours. Beyond the
paper, the drift of the distribution itself on the main task's states, which "RL's Razor" (arXiv
2509.04259) found to predict forgetting:
  forward_kl          E over prompts and the base's samples y of log p_base(y | prompt) - log p_post(y | prompt),
                      nats per completion: an unbiased estimate of KL(base || post) on the base's own states
  forward_kl_per_token  the same sum divided by the base's completion tokens
and, to see how far the post-trained model is from the dataset's states and the base's own, "losses": the
mean loss per token (nats) of the prompts' gold solutions and of the base's samples, under each model.

Below MINIMUM_STATES prefix states per model the MMD cannot be told from that of two independent sample sets
of one model (docs/evaluation.md gives the measurement): the results and the console then say so.
"""
import re
import sys
import zlib
from pathlib import Path

import numpy as np

from evals import DataError, check_data_tokenizer, continuation_logprobs, gsm8k, write_atomically, written_by
from infrastructure import flags
from infrastructure.checkpoint import CheckpointError, check_writable, guard_output, load_tokenizer
from model import DTYPES, Qwen3
from sample import generate

WORD = re.compile(r"\w+|[^\w\s]")
WRITER, OLD_KEYS = "python -m evals.drift", {"base", "model", "protocol", "distances"}  # a results file of ours
# The fewest states per model at which the MMD of the base against itself (its samples under two seeds) falls
# below the smallest drift the lab's study reports: about 0.4 / states against RL's 0.0018 (docs/evaluation.md)
MINIMUM_STATES = 250

# -----------------------------------------------------------------------------
# States and their features


def words(text: str) -> list:
    return WORD.findall(text.lower())


def features(texts: list, buckets: int) -> np.ndarray:
    """Hashed word unigram and bigram counts, L2-normalised: (N, buckets) float64."""
    matrix = np.zeros((len(texts), buckets))
    for row, text in enumerate(texts):
        tokens = words(text)
        for gram in tokens + [a + " " + b for a, b in zip(tokens, tokens[1:])]:
            matrix[row, zlib.crc32(gram.encode()) % buckets] += 1.0  # crc32: the same in every process
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


def prefix_states(prompt: str, completion_tokens: list, tokenizer, cuts: int) -> list:
    """prompt + the first j/K of the completion, for j = 1..K (the prompt alone is the same for every model)."""
    length = len(completion_tokens)
    ends = sorted({max(1, round(j * length / cuts)) for j in range(1, cuts + 1)}) if length else []
    return [prompt + tokenizer.decode(completion_tokens[:end]) for end in ends]

# -----------------------------------------------------------------------------
# Distances between two sets of states


def pairwise_squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(squared, 0.0)


def mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Biased squared MMD with an RBF kernel, bandwidth = median pooled pairwise distance."""
    pooled = np.concatenate([x, y])
    distances = pairwise_squared_distances(pooled, pooled)
    off_diagonal = distances[~np.eye(len(pooled), dtype=bool)]
    bandwidth = np.sqrt(np.median(off_diagonal)) if off_diagonal.size else 1.0
    kernel = np.exp(-distances / (2 * max(bandwidth, 1e-12) ** 2))
    n = len(x)
    return float(kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean())


def centroid_distance(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.linalg.norm(x.mean(0) - y.mean(0)))


def sliced_wasserstein(x: np.ndarray, y: np.ndarray, projections: int = 128, seed: int = 0) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance between the projections."""
    directions = np.random.default_rng(seed).normal(size=(x.shape[1], projections))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    quantiles = np.linspace(0, 1, max(len(x), len(y)))
    a, b = np.quantile(x @ directions, quantiles, axis=0), np.quantile(y @ directions, quantiles, axis=0)
    return float(np.abs(a - b).mean())


def jaccard_distance(texts_a: list, texts_b: list) -> float:
    a, b = {w for t in texts_a for w in words(t)}, {w for t in texts_b for w in words(t)}
    return 1.0 - len(a & b) / len(a | b) if a | b else 0.0


def distances(x, y, texts_a, texts_b, projections: int, seed: int) -> dict:
    return {"mmd2": mmd2(x, y), "centroid": centroid_distance(x, y),
            "sliced_wasserstein": sliced_wasserstein(x, y, projections, seed),
            "jaccard": jaccard_distance(texts_a, texts_b)}

# -----------------------------------------------------------------------------
# Rollouts of both models on the fixed prompts


def rollouts(model, tokenizer, prompts: list, seed: int, args):
    """One sample of each prompt at temperature 1: (prompt token ids, completions, prefix states)."""
    ids = [tokenizer.encode(p).ids for p in prompts]
    completions = generate(model, ids, max_new_tokens=args.max_new_tokens, temperature=1.0, seed=seed,
                           stop=gsm8k.STOP, tokenizer=tokenizer, batch_size=args.batch_size)
    states = [s for p, c in zip(prompts, completions) for s in prefix_states(p, c.tokens, tokenizer, args.cuts)]
    return ids, completions, states


def sequence_logprobs(model, pairs: list, batch_size: int) -> np.ndarray:
    """log p(completion | prompt) of each (prompt ids, completion ids) pair, summed over the completion: (N,)."""
    return np.array([sum(values) for values in continuation_logprobs(model, pairs, batch_size=batch_size)])


def load(path: str, args):
    model = Qwen3.from_pretrained(path, dtype=DTYPES.get(args.dtype))
    return model, load_tokenizer(model), str(model.lm_head.weight.dtype).removeprefix("torch.")


def parse_args(argv=None):
    parser = flags.parser(__doc__, prog="python -m evals.drift")
    parser.add_argument("--base", required=True, help="the base model the drift is measured from")
    parser.add_argument("--model", required=True, help="the post-trained model")
    parser.add_argument("--data-dir", help="local data (default: the hub)")
    parser.add_argument("--prompts", type=flags.count(1), default=200, help="the first N GSM8K test questions")
    parser.add_argument("--shots", type=flags.count(0), default=0,
                        help="few-shot exemplars, as in the evaluation (training prompts have none)")
    parser.add_argument("--cuts", type=flags.count(1), default=4, help="prefix states per rollout")
    parser.add_argument("--max-new-tokens", type=flags.count(1), default=256)
    parser.add_argument("--features", type=flags.count(1), default=4096, help="hash buckets of the lexical features")
    parser.add_argument("--projections", type=flags.count(1), default=128,
                        help="directions of the sliced Wasserstein")
    parser.add_argument("--batch-size", type=flags.count(1), default=64)
    parser.add_argument("--seed", type=flags.count(0), default=0, help="the base's rollouts; the model's use seed + 1")
    parser.add_argument("--dtype", choices=DTYPES, help="weights (default: the dtype each checkpoint was saved in)")
    parser.add_argument("--out", help="results JSON (default: results/<model name>/drift.json)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out or Path("results") / Path(args.model.rstrip("/")).name / "drift.json")
    try:
        if out.is_dir():
            raise ValueError(f"--out {out}: is a directory")
        check_writable(out)
        guard_output(out, [args.base, args.model, args.data_dir],
                     own_output=lambda path: written_by(path, WRITER, OLD_KEYS))
        test = gsm8k.load("test", args.data_dir)[:args.prompts]
        train = gsm8k.load("train", args.data_dir) if args.shots else []
        prompts = [gsm8k.prompt(item["question"], gsm8k.exemplars(train, args.shots, index))
                   for index, item in enumerate(test)]
        base, tokenizer, base_dtype = load(args.base, args)
        check_data_tokenizer(args.data_dir, tokenizer)  # the model's is compared with the base's below
        ids, base_completions, base_states = rollouts(base, tokenizer, prompts, args.seed, args)
        pairs = [(prompt, c.tokens) for prompt, c in zip(ids, base_completions) if c.tokens]  # the base's states
        base_logprobs = sequence_logprobs(base, pairs, args.batch_size)
        golds = [(prompt, tokenizer.encode(gsm8k.target(item["answer"]), add_special_tokens=False).ids)
                 for prompt, item in zip(ids, test)]  # the dataset's states on the same prompts
        base_gold = sequence_logprobs(base, golds, args.batch_size)
        del base
        model, model_tokenizer, model_dtype = load(args.model, args)
        if model_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"{args.model} and {args.base} have different tokenizers: no common states to compare")
        _, model_completions, model_states = rollouts(model, tokenizer, prompts, args.seed + 1, args)
        if not base_states or not model_states:
            raise ValueError("no states: every rollout was empty")
        model_logprobs = sequence_logprobs(model, pairs, args.batch_size)
        kl = base_logprobs - model_logprobs  # (N,) nats per completion
        base_texts, model_texts = [c.text for c in base_completions], [c.text for c in model_completions]
        x, y = features(base_states, args.features), features(model_states, args.features)
        sample_tokens, gold_tokens = sum(len(c) for _, c in pairs), sum(len(c) for _, c in golds)
        model_gold = sequence_logprobs(model, golds, args.batch_size)
        losses = {"gold": {"base": -base_gold.sum() / gold_tokens, "model": -model_gold.sum() / gold_tokens},
                  "base_samples": {"base": -base_logprobs.sum() / sample_tokens,
                                   "model": -model_logprobs.sum() / sample_tokens}}
        few = min(len(base_states), len(model_states)) < MINIMUM_STATES
        warning = (f"{min(len(base_states), len(model_states))} prefix states, fewer than {MINIMUM_STATES}: below "
                   f"that the MMD of two independent samples of one model exceeds the smallest drift the lab "
                   f"reports (docs/evaluation.md); raise --prompts") if few else None
        result = {"written_by": WRITER, "base": args.base, "model": args.model,
                  "protocol": {"prompts": len(prompts), "shots": args.shots, "cuts": args.cuts,
                               "max_new_tokens": args.max_new_tokens, "temperature": 1.0,
                               "seeds": {"base": args.seed, "model": args.seed + 1},
                               "dtypes": {"base": base_dtype, "model": model_dtype},
                               "features": f"hashed word unigrams + bigrams, {args.features} buckets, L2-normalised",
                               "mmd": "RBF kernel, median-heuristic bandwidth, biased V-statistic of MMD^2",
                               "forward_kl": "mean over prompts of log p_base - log p_model of the base's sample "
                                             "(nats per completion; per token: divided by its tokens)",
                               "states": [len(base_states), len(model_states)], "minimum_states": MINIMUM_STATES},
                  "distances": {**distances(x, y, base_texts, model_texts, args.projections, args.seed),
                                "forward_kl": float(kl.mean()),
                                "forward_kl_per_token": float(kl.sum() / sample_tokens)},
                  "losses": {name: {who: float(value) for who, value in pair.items()} for name, pair in losses.items()},
                  **({"warning": warning} if warning else {})}
        write_atomically(out, result)
    except (CheckpointError, DataError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(" | ".join(f"{name} {value:.5f}" for name, value in result["distances"].items()))
    print(" | ".join(f"{name} loss per token: base {pair['base']:.3f}, model {pair['model']:.3f}"
                     for name, pair in result["losses"].items()))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # results are written whole at the end, so nothing was
        print("interrupted: nothing was written", file=sys.stderr)
        sys.exit(130)
