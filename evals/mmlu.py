"""
MMLU: four-choice questions on 57 subjects, graded by which answer letter the model finds most likely
(lm-eval's `mmlu` task, its default template).

    python -m evals ckpt/sft_mild --tasks mmlu                  # zero-shot, as lm-eval's default
    python -m evals ckpt/sft_mild --tasks mmlu --shots 5        # the canonical 5-shot protocol

The prompt is the subject header, the first k dev items of the subject with their answers, then the
question; the answer is the argmax of the log-likelihoods of " A", " B", " C", " D". The four letters
share one context, so each question costs one forward. Accuracy is the micro-average over items.
"""
import csv
from pathlib import Path

import numpy as np

from evals import DataError, binomial_stderr, continuation_logprobs, encode_pairs, hub_rows, run_batches

LETTERS = "ABCD"  # lm-eval _default_template_yaml: doc_to_choice ["A", "B", "C", "D"]

# -----------------------------------------------------------------------------
# Data: per subject, a list of {"question", "choices" (4 strings), "answer" (0-3)}


def load(split: str, data_dir=None) -> dict:
    """{subject: items} of `split` ("dev" or "test"), from DATA_DIR/mmlu/{split}/<subject>_{split}.csv
    (the original layout: no header, columns question,A,B,C,D,answer letter) or from the hub (cais/mmlu all)."""
    if split not in ("dev", "test"):
        raise ValueError(f"unknown MMLU split {split!r} (dev or test)")
    subjects = {}
    if data_dir is None:
        for row in hub_rows("cais/mmlu", f"all/{split}-*.parquet"):
            subjects.setdefault(row["subject"], []).append(
                {"question": row["question"], "choices": list(row["choices"]), "answer": int(row["answer"])})
        return dict(sorted(subjects.items()))
    folder = Path(data_dir) / "mmlu" / split
    files = sorted(folder.glob(f"*_{split}.csv"))
    if not files:
        raise DataError(f"{folder}: no <subject>_{split}.csv files (expected the --data-dir layout, see README)")
    for path in files:
        subjects[path.name[:-len(f"_{split}.csv")]] = read_csv(path)
    return subjects


def read_csv(path) -> list:
    items = []
    with open(path, newline="", encoding="utf-8") as file:
        reader, line = csv.reader(file), 1  # `line`: where the next row starts (a quoted field can span lines)
        try:
            for row in reader:
                if len(row) != 6:
                    raise DataError(f"{path}:{line}: expected 6 fields question,A,B,C,D,answer, got {len(row)} fields")
                if row[5] not in LETTERS:
                    raise DataError(f"{path}:{line}: the answer must be A-D, got {row[5]!r}")
                items.append({"question": row[0], "choices": row[1:5], "answer": LETTERS.index(row[5])})
                line = reader.line_num + 1
        except csv.Error as error:
            raise DataError(f"{path}:{line}: malformed CSV ({error})") from None
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text") from None
    if not items:
        raise DataError(f"{path}: no items")
    return items

# -----------------------------------------------------------------------------
# Prompt format (lm-eval mmlu/default: the subject's `description`, then the first k dev items
# (fewshot sampler first_n) joined by "\n\n", each doc_to_text + " " + its answer letter)


def header(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def question_text(item: dict) -> str:
    """lm-eval doc_to_text: "{{question.strip()}}\\nA. {{choices[0]}}\\nB. ...\\nD. {{choices[3]}}\\nAnswer:"."""
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, item["choices"]))
    return f"{item['question'].strip()}{options}\nAnswer:"


def prompt(subject: str, item: dict, exemplars=()) -> str:
    shots = "".join(f"{question_text(e)} {LETTERS[e['answer']]}\n\n" for e in exemplars)
    return header(subject) + shots + question_text(item)


def choose(test: dict, limit=None) -> list:
    """(subject, index) of the items to evaluate, by subject then file order.

    With `limit`, the first `limit` items taken round-robin over the subjects in alphabetical order
    (the first item of every subject, then the second, ...), so a subset covers many subjects.
    """
    picked = sorted((index, subject) for subject, items in test.items() for index in range(len(items)))[:limit]
    return sorted((subject, index) for index, subject in picked)

# -----------------------------------------------------------------------------
# Evaluation


def evaluate(model, tokenizer, test: dict, dev: dict, *, shots: int = 0, limit=None, batch_size: int = 16,
             progress: bool = True) -> dict:
    """Score the four letters of each chosen question; returns {"protocol", "summary", "subjects", "items"}."""
    chosen = choose(test, limit)
    for subject in dict.fromkeys(subject for subject, _ in chosen):
        if len(dev.get(subject, [])) < shots:
            raise ValueError(f"mmlu {subject}: {shots} shots need {shots} dev items, found "
                             f"{len(dev.get(subject, []))}")
    texts = [prompt(subject, test[subject][index], dev.get(subject, [])[:shots]) for subject, index in chosen]
    requests = encode_pairs(tokenizer, [(text, f" {letter}") for text in texts for letter in LETTERS])
    context_length = model.config.max_position_embeddings
    for (subject, index), (context_ids, _) in zip(chosen, requests[::4]):
        if len(context_ids) > context_length:
            raise ValueError(f"mmlu {subject} test item {index}: the {shots}-shot prompt has {len(context_ids)} "
                             f"tokens, more than the model's context of {context_length} (use fewer --shots)")

    def run_batch(chunk):  # the 4 requests of a question have the same model input: one forward row per question
        results = continuation_logprobs(model, [requests[4 * i + j] for i in chunk for j in range(4)], batch_size)
        return [[sum(values) for values in results[4 * n:4 * n + 4]] for n in range(len(chunk))]
    prompt_lengths = [len(requests[4 * i][0]) for i in range(len(chosen))]
    loglikelihoods, seconds = run_batches("mmlu", prompt_lengths, batch_size, run_batch, progress)

    records, subjects = [], {}
    for position, (subject, index) in enumerate(chosen):
        scores = loglikelihoods[position]
        answer, predicted = test[subject][index]["answer"], int(np.argmax(scores))
        records.append({"id": f"{subject}/test/{index}", "subject": subject, "loglikelihoods": scores,
                        "prediction": LETTERS[predicted], "answer": LETTERS[answer],
                        "correct": int(predicted == answer)})
        subjects.setdefault(subject, []).append(records[-1]["correct"])
    count = len(records)
    accuracy = sum(r["correct"] for r in records) / max(count, 1)
    summary = {"items": count, "seconds": round(seconds, 3), "accuracy": accuracy,
               "accuracy_stderr": binomial_stderr(accuracy, count), "subjects": len(subjects)}
    per_subject = {subject: {"accuracy": sum(scores) / len(scores), "items": len(scores)}
                   for subject, scores in subjects.items()}
    total = sum(len(items) for items in test.values())
    protocol = {"split": "test", "items": count, "shots": shots, "fewshot": "the first k dev items of the subject",
                "subset": "all" if limit is None or limit >= total else
                f"{count} of {total} items: round-robin over the {len(test)} subjects in alphabetical order, "
                f"each subject's items in file order",
                "continuations": [f" {letter}" for letter in LETTERS], "metric": "accuracy, micro-averaged"}
    return {"protocol": protocol, "summary": summary, "subjects": per_subject, "items": records}
