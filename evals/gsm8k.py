"""
GSM8K: grade-school math word problems, graded by the final number (lm-eval's `gsm8k` task).

    python -m evals ckpt/sft_mild --tasks gsm8k                 # zero-shot, the 1319 test problems
    python -m evals ckpt/sft_mild --tasks gsm8k --shots 5       # lm-eval's few-shot protocol

Greedy decoding, at most 256 new tokens, stopping at "Question:" or end of text; the answer is
extracted two ways (strict-match and flexible-extract) and compared with the reference number.
This file is also the trainers' GSM8K: `load`, `prompt`, `target` and `grade` (the RL reward) are the
same functions the evaluation uses, so training and evaluation see the same states.
"""
import json
import random
import re

import sample
from evals import DataError, binomial_stderr, data_file, hub_rows, run_batches, subset_text

MAX_NEW_TOKENS = 256  # lm-eval's default max_gen_toks
STOP = ["Question:"]  # lm-eval gsm8k.yaml `until` (it also lists </s> and <|im_end|>; we stop at our eos)
FEWSHOT_SEED = 1234  # lm-eval's default fewshot seed; our exemplars are drawn per item (see `exemplars`)

# -----------------------------------------------------------------------------
# Data: {"question", "answer"} items; the answer is the worked solution ending in "#### N"


def load(split: str, data_dir=None) -> list:
    """GSM8K `split` ("train" or "test") from DATA_DIR/gsm8k/{split}.jsonl, or from the hub (openai/gsm8k main)."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown GSM8K split {split!r} (train or test)")
    if data_dir is None:
        rows = hub_rows("openai/gsm8k", f"main/{split}-*.parquet")
        return [checked(row, f"openai/gsm8k {split} row {number}") for number, row in enumerate(rows, start=1)]
    path = data_file(data_dir, f"gsm8k/{split}.jsonl")
    items = []
    try:
        with open(path, encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                if line.strip():
                    items.append(checked(line, f"{path}:{number}"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    if not items:
        raise DataError(f"{path}: no items")
    return items


def checked(line, where: str) -> dict:
    """A {"question", "answer"} item from a JSON line (or a hub row), refused unless the answer ends in "#### N":
    without it the whole solution would be the reference, and every completion would score 0."""
    try:
        item = json.loads(line) if isinstance(line, str) else line
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: invalid JSON ({error.msg})") from None
    if not (isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("answer"), str)):
        raise DataError(f"{where}: expected an object with string fields question and answer")
    if "#### " not in item["answer"]:
        raise DataError(f"{where}: the answer has no final '#### N'")
    return {"question": item["question"], "answer": item["answer"]}

# -----------------------------------------------------------------------------
# Prompt format (lm-eval gsm8k.yaml: doc_to_text "Question: {{question}}\nAnswer:", doc_to_target
# "{{answer}}"; exemplars joined to the question with target_delimiter " " and fewshot_delimiter "\n\n")


def prompt(question: str, exemplars=()) -> str:
    """`Question: {question}\\nAnswer:`, after each exemplar's `Question: ...\\nAnswer: {solution}\\n\\n`."""
    shots = "".join(f"Question: {e['question']}\nAnswer: {e['answer']}\n\n" for e in exemplars)
    return f"{shots}Question: {question}\nAnswer:"


def target(answer: str) -> str:
    """The training target after the prompt: ` {answer}`; the trainer appends the end-of-text token."""
    return f" {answer}"


def exemplars(pool: list, shots: int, item_id, seed: int = FEWSHOT_SEED, exclude: int | None = None) -> list:
    """`shots` items of `pool` (the train split) chosen by a generator seeded by (seed, item id).

    An item gets the same exemplars whatever else is evaluated (a --limit subset, another batch).
    `exclude` is an index of `pool` never chosen (a train item must not be its own exemplar).
    """
    if shots == 0:
        return []
    rng = random.Random(f"gsm8k/{seed}/{item_id}")  # string seeds hash the same in every process
    picks = [i for i in rng.sample(range(len(pool)), min(shots + 1, len(pool))) if i != exclude]
    return [pool[i] for i in picks[:shots]]

# -----------------------------------------------------------------------------
# Answer extraction and comparison (lm-eval gsm8k.yaml, version 3: filters and exact_match options)

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")  # "strict-match": the first "#### N"
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # "flexible-extract": the last number-like string
IGNORE = [",", r"\$", r"(?s).*#### ", r"\.$"]  # regexes_to_ignore, applied to prediction and reference
INVALID = "[invalid]"  # lm-eval's regex filter fallback when nothing matches


def extract(completion: str) -> dict:
    """The strict and flexible answer strings of a completion (INVALID when nothing matches)."""
    strict = STRICT.findall(completion)
    flexible = FLEXIBLE.findall(completion)  # a list of (group 1, group 2); one of them is empty
    last = [group for group in flexible[-1] if group] if flexible else []
    return {"strict": strict[0].strip() if strict else INVALID,
            "flexible": last[0].strip() if last else INVALID}


def normalize(text: str) -> str:
    """lm-eval exact_match with ignore_case and regexes_to_ignore: drop the regexes in order, lower-case."""
    for pattern in IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def grade(completion: str, reference: str) -> dict:
    """{"strict": 0 or 1, "flexible": 0 or 1} for a completion against GSM8K's answer field.

    `reference` is the solution text ending in "#### N", or just "#### N". This is also the RL reward.
    """
    expected = normalize(reference)
    return {name: int(normalize(answer) == expected) for name, answer in extract(completion).items()}

# -----------------------------------------------------------------------------
# What a solution looks like: the dataset's style, and slips of arithmetic (the report's state measures)

CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotation: "5 * 4 = <<5*4=20>>20"
# `a op b = c` of whole numbers, standing alone: not the tail of a chain (`2 + 3 + 4 = 9`), not a percentage
EQUATION = re.compile(r"(?<![\d.,])(?<![-+*/×])(?<![-+*/×] )(\d+) ?([-+*/×]) ?(\d+) ?= ?(\d+)"
                      r"(?![\d,%]|\.\d| percent)")


def gold_style(completion: str) -> bool:
    """Whether a completion writes the dataset's markers: a calculator annotation or a "#### N" line."""
    return "<<" in completion or "####" in completion


def false_equation(completion: str) -> bool:
    """Whether a completion states `a op b = c` with a false c (a slip of arithmetic, not of method); division
    must be exact. Calculator annotations are read as the equation they annotate; chains of several operations
    are not read (their precedence is the writer's)."""
    for left, operator, right, result in EQUATION.findall(CALCULATOR.sub("", completion)):
        a, b, c = int(left), int(right), int(result)
        true = {"+": a + b, "-": a - b, "*": a * b, "×": a * b}.get(operator)
        if operator == "/":
            true = a // b if b and a % b == 0 else None
        if true != c:
            return True
    return False

# -----------------------------------------------------------------------------
# Evaluation


def evaluate(model, tokenizer, test: list, train=None, *, shots: int = 0, limit=None, seed: int = FEWSHOT_SEED,
             batch_size: int = 16, progress: bool = True, compile: bool = False) -> dict:
    """Greedy completions of the first `limit` test items; returns {"protocol", "summary", "items"}.
    `compile` compiles the decode step (sample.generate)."""
    items = test[:limit]
    if shots and not train:
        raise ValueError("gsm8k: --shots needs the train split for exemplars")
    texts = [prompt(item["question"], exemplars(train, shots, index, seed)) for index, item in enumerate(items)]
    prompts = [encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]
    context = model.config.max_position_embeddings
    for index, ids in enumerate(prompts):
        if len(ids) + MAX_NEW_TOKENS > context:
            raise ValueError(f"gsm8k test item {index}: the {shots}-shot prompt has {len(ids)} tokens, which with "
                             f"{MAX_NEW_TOKENS} new tokens exceeds the model's context of {context} "
                             f"(use fewer --shots)")

    def run_batch(chunk):
        return sample.generate(model, [prompts[i] for i in chunk], max_new_tokens=MAX_NEW_TOKENS, temperature=0.0,
                               stop=STOP, tokenizer=tokenizer, compile=compile)
    completions, seconds = run_batches("gsm8k", [len(ids) for ids in prompts], batch_size, run_batch, progress)

    records = []
    for index, item in enumerate(items):
        completion = completions[index]
        records.append({"id": f"test/{index}", "question": item["question"], "prompt_tokens": len(prompts[index]),
                        "prediction": completion.text, "finish_reason": completion.finish_reason,
                        "extracted": extract(completion.text), "reference": normalize(item["answer"]),
                        "correct": grade(completion.text, item["answer"])})
    summary = {"items": len(records), "seconds": round(seconds, 3)}
    for name in ("flexible", "strict"):
        accuracy = sum(r["correct"][name] for r in records) / max(len(records), 1)
        summary[name], summary[f"{name}_stderr"] = accuracy, binomial_stderr(accuracy, len(records))
    protocol = {"split": "test", "items": len(records), "subset": subset_text(len(test), limit), "shots": shots,
                "fewshot_split": "train" if shots else None, "fewshot_seed": seed if shots else None,
                "decoding": "greedy", "max_new_tokens": MAX_NEW_TOKENS, "stop": STOP + ["end of text"],
                "template": "Question: {question}\\nAnswer:",
                "metrics": "strict-match, flexible-extract (lm-eval)"}
    return {"protocol": protocol, "summary": summary, "items": records}

