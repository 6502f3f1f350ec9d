"""
The lab's world: a small synthetic world, generated from a seed, in which a Qwen3 that we pretrain
ourselves on a CPU (lab/pretrain.py) has a main skill to improve and other skills to lose.

    python -m lab.world --world-seed 0 --out ckpt/lab/world0/world      # 10 seconds
    python -m lab.pretrain --world ckpt/lab/world0/world --out ckpt/lab/world0/base
    python -m evals ckpt/lab/world0/base --data-dir ckpt/lab/world0/world

(`python study.py --lab` runs these and the whole study.)

The output is a --data-dir in the real benchmarks' own file formats (gsm8k/, mmlu/, truthfulqa/), plus the
pretraining text (corpus.txt: documents joined by <|endoftext|>), its tokenizer (tokenizer.json) and
world.json (the marker: format version, seed, settings, the tokenizers version, counts). No real benchmark text, except lm-eval's
six-pair TruthfulQA preamble, which begins some Q/A documents so that the eval's prompt is familiar.
- GSM8K: word problems of 16 kinds (templates, step counts, phrasings). The gold solutions (train/test "answer")
  are written in GSM8K's form: one step per line, a few words naming the step, then the equation with its
  <<calculator>> annotation, and "#### N" (the words restate no name, thing or number: the small base copied
  those wrongly, and the answer does not depend on them). The corpus
  solves other problems mostly in another style, terse equations ending "The answer is N." (the base's own),
  and fewer in the gold style (so the gold style is familiar but not the base's), plus equation drills, some in
  the compact form the gold's <<5*6=30>> annotations use (--compact-percent), so that the base computes in
  both styles alike. It
  solves the "common" kinds many times, the "rare" ones a few times and the "absent" ones never; train and
  test mix all three, so SFT and RL have a skill to add. Numbers stay small (1..99) so that the base's
  arithmetic is reliable and its errors are about the method.
- MMLU: facts about made-up countries, animals, elements and planets, stated in the corpus in several
  paraphrases and practised in lm-eval's prompt format with fresh option orders and distractors, unevenly:
  some test facts never, some rarely, most often. Two distractors are of the answer's kind (another capital)
  and one is not (--same-kind-distractors): with three of the answer's kind, the small base stayed at chance
  through a whole 8M-token pretraining (it never learned to find the answer's letter).
- TruthfulQA: what happens if you do something to a made-up creature. For most questions the corpus's Q/A
  documents give the truth and call the wrong choices myths ("Some people say that ..."); for some
  (--believed-percent), as for a real misconception, a myth is given as the answer more often than the truth.
"""
import csv
import hashlib
import io
import json
import random
import re
import signal
import sys
import time
from pathlib import Path

from infrastructure import flags
from infrastructure.checkpoint import (CheckpointError, atomic_directory, check_writable, hold_lock, release_lock,
                                       write_failure)
from evals import mmlu  # practice blocks in the grader's own prompt format
from evals.truthfulqa import PREAMBLE

FORMAT_VERSION = 5
EOT = "<|endoftext|>"
# Item counts (gsm8k train/test, mmlu test per subject, truthfulqa), corpus documents per kind, the tokenizer's
# vocabulary, and how many of an MMLU question's three distractors are of the answer's kind (see mmlu_item).
SETTINGS = dict(train=1000, test=700, test_common_percent=35, test_rare_percent=30, mmlu_test=165,
                truthfulqa=650, corpus_problems=10000, gold_problems=3500, rare_permille=4, arithmetic_docs=5000,
                compact_percent=50,
                fact_docs=6000, practice_blocks=20000, qa_docs=3200, myth_docs=2000, vocab_size=1024,
                same_kind_distractors=2, mmlu_unstated_percent=25, mmlu_rare_percent=20, believed_percent=50)
FREQUENT, BELIEVED = 8, 3  # how many times as often a frequent MMLU fact, and a believed myth, occur (see below)

# -----------------------------------------------------------------------------
# GSM8K-like problems. A kind is (coverage, question, numbers drawn, steps); a step is (left, operator, right,
# result, gold line). Coverage says how much of the kind the corpus holds: "common" kinds it solves many times,
# "rare" ones a few times (--rare-permille of its problems each), "absent" ones never; train and test mix all
# three (--test-common-percent, --test-rare-percent, the rest absent), so training has a skill to add. Every
# number in a problem, and every result of a step, lies in 1..MAX_VALUE: small numbers keep the base's
# arithmetic reliable, so that its errors are about the method (a wrong operation, a missing step).

MAX_VALUE = 99


def equal_shares(r) -> dict:
    """Numbers for the sharing problem: the total is a multiple of the number of friends."""
    friends, each = r.randint(2, 9), r.randint(2, 11)
    return dict(a=friends * each, b=friends, c=r.randint(2, 40))


KINDS = {
    # common: the corpus solves these many times (2-3 steps)
    "buy_give": ("common",
        "{A} has {a} {things}. {A} buys {b} more {things} and then gives {c} {things} to {B}. "
        "How many {things} does {A} have now?",
        lambda r: dict(a=r.randint(10, 60), b=r.randint(2, 39), c=r.randint(2, 39)),
        [("a", "+", "b", "x", "After buying more: {eq}."),
         ("x", "-", "c", "y", "After giving some away: {eq}.")]),
    "boxes_give": ("common",
        "{A} buys {a} boxes of {things}. Each box holds {b} {things}. {A} gives away {c} {things}. "
        "How many {things} does {A} have left?",
        lambda r: dict(a=r.randint(2, 9), b=r.randint(2, 11), c=r.randint(1, 30)),
        [("a", "*", "b", "x", "The boxes hold {eq}."), ("x", "-", "c", "y", "Left after giving: {eq}.")]),
    "more_together": ("common",
        "{A} has {a} {things}. {B} has {b} more {things} than {A}. How many {things} do they have together?",
        lambda r: dict(a=r.randint(5, 45), b=r.randint(2, 30)),
        [("a", "+", "b", "x", "The second has more: {eq}."), ("a", "+", "x", "y", "Together: {eq}.")]),
    "daily_find": ("common",
        "{A} collects {a} {things} every day for {b} days and then finds {c} more. How many {things} does {A} have?",
        lambda r: dict(a=r.randint(2, 11), b=r.randint(2, 9), c=r.randint(2, 40)),
        [("a", "*", "b", "x", "Collected over the days: {eq}."),
         ("x", "+", "c", "y", "With what was found: {eq}.")]),
    "share_more": ("common",
        "{A} shares {a} {things} equally among {b} friends. Each friend then gets {c} more {things}. "
        "How many {things} does each friend have?", equal_shares,
        [("a", "/", "b", "x", "Each friend first gets {eq}."),
         ("x", "+", "c", "y", "Each friend then has {eq}.")]),
    "bags_lose": ("common",
        "{A} has {a} {things}. {A} buys {b} bags with {c} {things} in each bag and then loses {d} {things}. "
        "How many {things} does {A} have now?",
        lambda r: dict(a=r.randint(2, 50), b=r.randint(2, 9), c=r.randint(2, 9), d=r.randint(1, 30)),
        [("b", "*", "c", "x", "The bags hold {eq}."), ("a", "+", "x", "y", "With the bags: {eq}."),
         ("y", "-", "d", "z", "After the loss: {eq}.")]),
    "sell_days": ("common",
        "{A} sells {things} for {a} coins each. {A} sells {b} {things} on Monday and {c} on Tuesday. "
        "How many coins does {A} earn?", lambda r: dict(a=r.randint(2, 9), b=r.randint(2, 9), c=r.randint(2, 9)),
        [("b", "+", "c", "x", "Sold on both days: {eq}."), ("x", "*", "a", "y", "Coins earned from the sales: {eq}.")]),
    "basket_twice": ("common",
        "There are {a} {things} in a basket. {A} takes {b} {things} and {B} takes twice as many as {A}. "
        "How many {things} are left in the basket?", lambda r: dict(a=r.randint(30, 99), b=r.randint(2, 25)),
        [("b", "*", "2", "x", "The second takes {eq}."), ("b", "+", "x", "y", "Taken in all: {eq}."),
         ("a", "-", "y", "z", "Left in the basket: {eq}.")]),
    # rare: a few in the corpus; a new operation in a familiar story, or a familiar one in a new story
    "fewer_together": ("rare",
        "{A} has {a} {things}. {B} has {b} fewer {things} than {A}. How many {things} do they have together?",
        lambda r: dict(a=r.randint(10, 49), b=r.randint(2, 30)),
        [("a", "-", "b", "x", "The second has fewer: {eq}."), ("a", "+", "x", "y", "Together: {eq}.")]),
    "change": ("rare",
        "{A} buys {a} {things} for {b} coins each and pays with {c} coins. How many coins does {A} get back?",
        lambda r: dict(a=r.randint(2, 9), b=r.randint(2, 9), c=r.randint(20, 99)),
        [("a", "*", "b", "x", "The cost: {eq}."), ("c", "-", "x", "y", "Coins back from the payment: {eq}.")]),
    "half_buy": ("rare",
        "{A} has {a} {things} and gives half of them to {B}. Then {A} buys {c} more {things}. "
        "How many {things} does {A} have now?", lambda r: dict(a=2 * r.randint(2, 49), c=r.randint(2, 40)),
        [("a", "/", "2", "x", "Half of them: {eq}."), ("x", "+", "c", "y", "After buying more: {eq}.")]),
    # absent: only in train and test
    "times_more": ("absent",
        "{A} has {a} {things}. {B} has {b} times as many {things} as {A}. "
        "How many more {things} does {B} have than {A}?", lambda r: dict(a=r.randint(2, 11), b=r.randint(2, 9)),
        [("a", "*", "b", "x", "The second has times as many: {eq}."), ("x", "-", "a", "y", "The difference: {eq}.")]),
    "pages_left": ("absent",
        "A book about {things} has {c} pages. {A} reads {a} pages every day for {b} days. "
        "How many pages are left to read?", lambda r: dict(a=r.randint(2, 11), b=r.randint(2, 9), c=r.randint(20, 99)),
        [("a", "*", "b", "x", "Pages read: {eq}."), ("c", "-", "x", "y", "Pages left: {eq}.")]),
    "two_groups": ("absent",
        "{A} has {a} bags with {b} {things} in each. {B} has {c} bags with {d} {things} in each. "
        "How many {things} do they have in all?",
        lambda r: dict(a=r.randint(2, 9), b=r.randint(2, 9), c=r.randint(2, 9), d=r.randint(2, 9)),
        [("a", "*", "b", "x", "The first bags hold {eq}."), ("c", "*", "d", "y", "The second bags hold {eq}."),
         ("x", "+", "y", "z", "Together: {eq}.")]),
    "bags_lose_give": ("absent",  # a common kind with a fourth step: the corpus never solves four
        "{A} has {a} {things}. {A} buys {b} bags with {c} {things} in each bag and then loses {d} {things}. "
        "Then {A} gives {e} {things} to {B}. How many {things} does {A} have now?",
        lambda r: dict(a=r.randint(2, 50), b=r.randint(2, 9), c=r.randint(2, 9), d=r.randint(1, 30),
                       e=r.randint(1, 30)),
        [("b", "*", "c", "x", "The bags hold {eq}."), ("a", "+", "x", "y", "With the bags: {eq}."),
         ("y", "-", "d", "z", "After the loss: {eq}."),
         ("z", "-", "e", "w", "After giving some away: {eq}.")]),
    "buy_give_before": ("absent",  # buy_give told in another order: the numbers are not in the order they are used
        "{A} buys {b} more {things} and then gives {c} {things} to {B}. Before that, {A} had {a} {things}. "
        "How many {things} does {A} have now?",
        lambda r: dict(a=r.randint(10, 60), b=r.randint(2, 39), c=r.randint(2, 39)),
        [("a", "+", "b", "x", "After buying more: {eq}."),
         ("x", "-", "c", "y", "After giving some away: {eq}.")]),
}
COVERAGES = ("common", "rare", "absent")
OPERATORS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y, "/": lambda x, y: x // y}


def word_problem(rng, kind: str, people, things: str) -> dict | None:
    """One problem of `kind`: question, gold answer (GSM8K style), the corpus's solution (the base's style) and
    its bare equations; None when a number in the story or a result would leave 1..MAX_VALUE or a share
    would not be whole."""
    _, question, draw, steps = KINDS[kind]
    values = {**draw(rng), "2": 2}  # a step may name the constant 2 ("twice as many", "half")
    if max(values.values()) > MAX_VALUE:
        return None
    A, B = rng.sample(people, 2)
    gold, terse = [], []
    for left, operator, right, result, line in steps:
        x, y = values[left], values[right]
        if operator == "/" and x % y:
            return None
        values[result] = OPERATORS[operator](x, y)
        if not 1 <= values[result] <= MAX_VALUE:
            return None
        eq = f"{x} {operator} {y} = <<{x}{operator}{y}={values[result]}>>{values[result]}"
        gold.append(line.format(A=A, B=B, things=things, eq=eq, **values))
        terse.append(f"{x} {operator} {y} = {values[result]}.")
    answer = values[steps[-1][3]]
    return {"kind": kind, "question": question.format(A=A, B=B, things=things, **values),
            "answer": "\n".join(gold) + f"\n#### {answer}", "equations": " ".join(terse),
            "solution": " ".join(terse) + f" The answer is {answer}."}


def arithmetic_fact(rng) -> str:
    """A random equation in the problems' range: `a op b = c.` with a, b, c in 1..MAX_VALUE; a product or a quotient
    has one factor (the divisor) in 2..11 and the other anywhere in range. Subtractions and quotients, which the
    base got wrong most often, come more often."""
    while True:
        operator = rng.choice("+--**//")
        if operator in "*/":
            small = rng.randint(2, 11)
            large = rng.randint(2, MAX_VALUE // small)
            a, b = (small * large, small) if operator == "/" else rng.sample([small, large], 2)
        else:
            a, b = rng.randint(1, MAX_VALUE), rng.randint(1, MAX_VALUE)
        c = OPERATORS[operator](a, b)
        if 1 <= c <= MAX_VALUE:
            return f"{a} {operator} {b} = {c}."


# -----------------------------------------------------------------------------
# Facts (MMLU-like): per subject, an entity kind and two attributes (question, paraphrases, values)

GOODS = "salt wool copper tea glass rice timber silk honey paper iron cotton".split()
FOODS = "berries moss fish beetles seeds roots leaves worms nectar bark mushrooms grass".split()
PLACES = "deserts swamps caves forests mountains rivers meadows marshes lakes hills islands valleys".split()
COLORS = "red blue green yellow purple orange white black silver pink brown grey".split()
SUBJECTS = {
    "geography": ("{}ia", [
        ("What is the capital of {e}?", ["The capital of {e} is {v}.", "{v} is the capital city of {e}.",
                                          "{e} is governed from its capital, {v}."], "towns"),
        ("What does {e} export the most?", ["{e} exports mostly {v}.", "The main export of {e} is {v}.",
                                             "Most of what {e} sells abroad is {v}."], GOODS)]),
    "zoology": ("the {}", [
        ("What does {e} eat?", ["{E} eats {v}.", "The main food of {e} is {v}.", "{E} lives on {v}."], FOODS),
        ("Where does {e} live?", ["{E} lives in {v}.", "The home of {e} is {v}.", "{E} is found in {v}."], PLACES)]),
    "chemistry": ("{}ium", [
        ("What color is {e}?", ["{E} is {v}.", "The color of {e} is {v}.", "Pure {e} looks {v}."], COLORS),
        ("Who discovered {e}?", ["{E} was discovered by {v}.", "{v} discovered {e}.",
                                 "The discoverer of {e} was {v}."], "people")]),
    "astronomy": ("{}", [
        ("How many moons does {e} have?", ["{e} has {v} moons.", "The planet {e} has {v} moons.",
                                           "There are {v} moons around {e}."], [str(n) for n in range(2, 26)]),
        ("Which star does {e} orbit?", ["{e} orbits the star {v}.", "The star of {e} is {v}.",
                                        "{e} goes around {v}."], "stars")]),
}
CAPITALIZED = ("geography", "astronomy")  # proper names; animals and elements are common nouns

# -----------------------------------------------------------------------------
# Misconceptions (TruthfulQA-like): one outcome is true, others are myths; all come from one pool

VERBS = ["touch", "feed", "wake", "follow", "pick up", "sing to", "step on", "count"]
OUTCOMES = ["your hair turns white", "you fall asleep for a day", "your hands glow at night", "you sneeze until dark",
            "you forget your own name", "your voice gets deep", "you can see in the dark", "your skin turns blue",
            "you hear distant bells", "you feel warm for a week", "your teeth turn green", "you dream of the sea",
            "you lose your sense of smell", "your shadow grows long", "you start to hiccup", "your eyes turn gold",
            "you become very hungry", "you grow an inch taller", "you laugh for an hour", "your feet feel cold",
            "you sing in your sleep", "your nails turn black", "you cannot stop yawning", "you smell of mint"]
MYTH_FORMS = ["Some people say that {claim}.", "It is a common myth that {claim}.",
              "Many people believe that {claim}, but this is not true.", "An old story says that {claim}."]


def names(rng, count, form="{}") -> list:
    """`count` distinct made-up words of two or three syllables, put in `form` (e.g. "{}ium")."""
    syllables = "ka lo mi ra te vo su dri fe no bi za quo el tor wen gra pi sel mon ar ve ul bro".split()
    found = set()
    while len(found) < count:
        found.add("".join(rng.choice(syllables) for _ in range(rng.choice((2, 3)))))
    words = sorted(found)  # a set's order changes from run to run (hash seeds); a sorted list's does not
    rng.shuffle(words)
    return [form.format(word) for word in words]


def build_facts(rng, entities: int) -> dict:
    """{subject: [fact]}; a fact is {"question", "answer", "values" (its kind's values), "sentences"}."""
    kinds = {"towns": names(rng, entities, "{}ton"), "people": names(rng, entities),  # one per entity
             "stars": names(rng, 12, "{}ar")}
    kinds = {kind: [word.capitalize() for word in words] for kind, words in kinds.items()}
    facts = {}
    for subject, (form, attributes) in SUBJECTS.items():
        entity_names = [form.format(w.capitalize() if subject in CAPITALIZED else w) for w in names(rng, entities)]
        facts[subject] = []
        for question, sentences, kind in attributes:  # a kind: a name in `kinds`, or a list of values
            unique = kind in ("towns", "people")  # one town per country, one discoverer per element
            values = kinds[kind] if isinstance(kind, str) else kind
            for index, entity in enumerate(entity_names):
                v = values[index] if unique else rng.choice(values)
                facts[subject].append({"question": question.format(e=entity), "answer": v, "values": values,
                                       "sentences": [s.format(e=entity, E=entity[0].upper() + entity[1:], v=v)
                                                     for s in sentences]})
    every = sorted({v for subject_facts in facts.values() for fact in subject_facts for v in fact["values"]})
    for fact in (fact for subject_facts in facts.values() for fact in subject_facts):
        fact["others"] = [v for v in every if v not in fact["values"]]  # distractors of another kind
    return facts


def mmlu_item(rng, fact, same_kind: int) -> dict:
    """The fact as a four-choice question with fresh distractors, `same_kind` of them of the answer's kind
    (other capitals for a capital: only knowing the fact tells them apart) and the rest of other kinds."""
    choices = (rng.sample([v for v in fact["values"] if v != fact["answer"]], same_kind)
               + rng.sample(fact["others"], 3 - same_kind) + [fact["answer"]])
    rng.shuffle(choices)
    return {"question": fact["question"], "choices": choices, "answer": choices.index(fact["answer"])}


def deck(rng, items):
    """Endless draws from `items`, each once per round in a fresh order: every item gets its share."""
    while True:
        order = list(items)
        rng.shuffle(order)
        yield from order


# -----------------------------------------------------------------------------
# The world: the benchmark files and the corpus documents of each skill


def pick_kind(rng, weights: dict) -> str:
    """A kind drawn with the given {kind: weight}."""
    kinds = list(weights)
    return rng.choices(kinds, [weights[kind] for kind in kinds])[0]


def kind_weights(counts) -> tuple:
    """({kind: weight} of train and test, {kind: weight} of the corpus's problems)."""
    by = {coverage: [kind for kind, spec in KINDS.items() if spec[0] == coverage] for coverage in COVERAGES}
    shares = {"common": counts["test_common_percent"], "rare": counts["test_rare_percent"],
              "absent": 100 - counts["test_common_percent"] - counts["test_rare_percent"]}
    split = {kind: shares[coverage] / len(by[coverage]) for coverage in COVERAGES for kind in by[coverage]}
    rare = counts["rare_permille"] / 1000
    corpus = {**{kind: (1 - rare * len(by["rare"])) / len(by["common"]) for kind in by["common"]},
              **{kind: rare for kind in by["rare"]}}
    return split, corpus


def gsm8k_problems(rng, counts, people, things) -> tuple:
    """Test, train and the corpus's problems (terse, then gold-style), disjoint by question text."""
    split, corpus = kind_weights(counts)
    seen, parts = set(), []
    for weights, size in ((split, counts["test"]), (split, counts["train"]),
                          (corpus, counts["corpus_problems"] + counts["gold_problems"])):
        part = []
        while len(part) < size:
            problem = word_problem(rng, pick_kind(rng, weights), people, rng.choice(things))
            if problem and problem["question"] not in seen:
                seen.add(problem["question"])
                part.append(problem)
        parts.append(part)
    test, train, rest = parts
    return test, train, rest[:counts["corpus_problems"]], rest[counts["corpus_problems"]:]


def gsm8k_part(rng, counts, people, things) -> tuple:
    """The test and train files and the corpus's documents: problems solved in the base's terse style, fewer
    in the gold solutions' style (on other problems), and arithmetic drills."""
    test, train, terse, gold = gsm8k_problems(rng, counts, people, things)
    files = {f"gsm8k/{split}.jsonl": "".join(json.dumps({"question": p["question"], "answer": p["answer"]}) + "\n"
                                             for p in items) for split, items in (("train", train), ("test", test))}
    docs = []
    for problems, field in ((terse, "solution"), (gold, "answer")):
        while problems:  # one to three problems a document, joined as few-shot prompts join them
            size = rng.choice((1, 1, 2, 3))
            docs.append("\n\n".join(f"Question: {p['question']}\nAnswer: {p[field]}" for p in problems[:size]))
            problems = problems[size:]
    _, corpus_weights = kind_weights(counts)
    for _ in range(counts["arithmetic_docs"]):  # drills: the equations of a few problems, and random equations
        drills = (word_problem(rng, pick_kind(rng, corpus_weights), people, things[0]) for _ in range(3))
        equations = [problem["equations"] for problem in drills if problem]
        equations += [arithmetic_fact(rng) for _ in range(6)]
        rng.shuffle(equations)
        text = " ".join(equations)
        if rng.randrange(100) < counts["compact_percent"]:  # "5*6=30.": the form inside the gold's <<5*6=30>>
            text = re.sub(r" ([-+*/=]) ", r"\1", text)
        docs.append(text)
    return files, docs


def mmlu_part(rng, counts) -> tuple:
    """Dev and test items from distinct facts; the facts in paraphrases; practice blocks, never a test item.
    Returns the files, the documents, (question, sentence) pairs of the practised facts for Q/A documents, and
    each fact's tier {question: (tier, its sentences)}.
    Facts are known unevenly, as a real base's are: of the test facts, --mmlu-unstated-percent never occur in
    the corpus, --mmlu-rare-percent occur only in a few paraphrases (FREQUENT times rarer than the rest), and
    the rest (with the dev facts) are stated and practised. Practice questions have 0 to --same-kind-distractors
    distractors of the answer's kind (test questions have that many): the easier ones teach the small base to
    find the answer's letter at all, which it did not learn from hard ones alone."""
    facts = build_facts(rng, (counts["mmlu_test"] + 5 + 1) // 2 + 3)
    files, held, same_kind, stated, practised, tiers = {}, set(), counts["same_kind_distractors"], {}, {}, {}
    unstated = round(counts["mmlu_test"] * counts["mmlu_unstated_percent"] / 100)
    rare = round(counts["mmlu_test"] * counts["mmlu_rare_percent"] / 100)
    for subject, subject_facts in facts.items():
        chosen = rng.sample(subject_facts, counts["mmlu_test"] + 5)
        for split, part in (("dev", chosen[:5]), ("test", chosen[5:])):
            text = io.StringIO()  # the original layout: no header; question, A, B, C, D, answer letter
            for item in (mmlu_item(rng, fact, same_kind) for fact in part):
                held.add((item["question"], tuple(item["choices"])))
                csv.writer(text, lineterminator="\n").writerow([item["question"], *item["choices"],
                                                                "ABCD"[item["answer"]]])
            files[f"mmlu/{split}/{subject}_{split}.csv"] = text.getvalue()
        test = chosen[5:]  # in a random order already: the first `unstated` are never stated, the next `rare` rarely
        hidden, seldom = test[:unstated], test[unstated:unstated + rare]
        practised[subject] = [fact for fact in subject_facts if fact not in hidden and fact not in seldom]
        tiers.update({fact["question"]: ("unstated", fact["sentences"]) for fact in hidden})
        tiers.update({fact["question"]: ("rare", fact["sentences"]) for fact in seldom})
        tiers.update({fact["question"]: ("practised", fact["sentences"]) for fact in practised[subject]})
        stated[subject] = [fact for fact in practised[subject] for _ in range(FREQUENT)] + seldom
    decks = {subject: deck(rng, subject_facts) for subject, subject_facts in stated.items()}
    docs = []
    for _ in range(counts["fact_docs"]):  # a few facts of one subject, each in one of its paraphrases
        subject = rng.choice(list(facts))
        docs.append(" ".join(rng.choice(next(decks[subject])["sentences"]) for _ in range(rng.randint(1, 4))))
    decks = {subject: deck(rng, subject_facts) for subject, subject_facts in practised.items()}
    for _ in range(counts["practice_blocks"]):  # one to four questions with answers, as a few-shot prompt
        subject = rng.choice(list(facts))
        items = [mmlu_item(rng, next(decks[subject]), rng.randint(0, same_kind)) for _ in range(rng.randint(1, 4))]
        if not any((item["question"], tuple(item["choices"])) in held for item in items):
            docs.append(mmlu.prompt(subject, items[-1], items[:-1]) + f" {'ABCD'[items[-1]['answer']]}")
    pairs = [(fact["question"], fact["sentences"][0]) for items in practised.values() for fact in items]
    return files, docs, pairs, tiers


def truthfulqa_part(rng, counts) -> tuple:
    """Questions whose wrong choices are misconceptions. For most, the corpus's Q/A documents give the true
    answer and call the wrong ones myths; for --believed-percent of them, as for a real misconception, one
    myth is given plainly as the answer, BELIEVED times as often as the truth, and the rest are called myths.
    MC2's choices are MC1's (one true, three false): each choice is a forward pass of lm-eval's long preamble,
    and four rather than the real file's dozen keep the eval of 650 questions within the lab's minutes."""
    entries, answers, myths = [], [], []
    creatures = names(rng, counts["truthfulqa"])
    believed = set(rng.sample(range(len(creatures)), round(len(creatures) * counts["believed_percent"] / 100)))
    for index, creature in enumerate(creatures):
        verb, outcomes = rng.choice(VERBS), rng.sample(OUTCOMES, 4)
        condition = f"if you {verb} {'an' if creature[0] in 'aeiou' else 'a'} {creature}"
        choices = [f"{condition[0].upper()}{condition[1:]}, {o}." for o in outcomes]  # truth first, as in the real file
        question = f"What happens {condition}?"
        targets = {text: int(i == 0) for i, text in enumerate(choices)}
        entries.append({"question": question, "mc1_targets": targets, "mc2_targets": dict(targets)})
        if index in believed:  # the first myth is what most documents answer; the truth is there, rarer
            answers += [(question, choices[0])] + [(question, choices[1])] * BELIEVED
            myths += [f"{condition}, {o}" for o in outcomes[2:]]
        else:
            answers += [(question, choices[0])] * BELIEVED
            myths += [f"{condition}, {o}" for o in outcomes[1:]]
    return {"truthfulqa/mc_task.json": json.dumps(entries, indent=1) + "\n"}, answers, myths


def qa_documents(rng, counts, answers, myths, fact_pairs) -> list:
    """Q/A documents (TruthfulQA's answers among MMLU's facts, some after lm-eval's preamble) and myth documents."""
    answer_deck, myth_deck, fact_deck, docs = deck(rng, answers), deck(rng, myths), deck(rng, fact_pairs), []
    for _ in range(counts["qa_docs"]):
        pairs = [next(answer_deck) for _ in range(5)] + [next(fact_deck)]
        rng.shuffle(pairs)
        text = "\n\n".join(f"Q: {q}\nA: {a}" for q, a in pairs)
        docs.append(f"{PREAMBLE}\n\n{text}" if rng.random() < 0.3 else text)  # lm-eval's six pairs, as in the eval
    for _ in range(counts["myth_docs"]):
        docs.append(" ".join(rng.choice(MYTH_FORMS).format(claim=next(myth_deck)) for _ in range(3)))
    return docs


def rng_for(seed: int, part: str):
    """A random stream per part of the world: changing one part's counts leaves the others as they were."""
    return random.Random(f"lab/{seed}/{part}")


def cast(seed: int) -> tuple:
    """The world's people and things (the names its word problems use)."""
    rng = rng_for(seed, "names")
    return [word.capitalize() for word in names(rng, 40)], names(rng, 30, "{}s")


def problems(seed: int, counts: dict = SETTINGS) -> tuple:
    """The world's word problems with their kinds: (test, train, terse corpus problems, gold-style corpus problems)."""
    return gsm8k_problems(rng_for(seed, "gsm8k"), counts, *cast(seed))


def generate(seed: int, counts: dict = SETTINGS) -> dict:
    """{relative path: file text} of the world: a pure function of (seed, counts)."""
    gsm8k_files, gsm8k_docs = gsm8k_part(rng_for(seed, "gsm8k"), counts, *cast(seed))
    mmlu_files, mmlu_docs, fact_pairs, _ = mmlu_part(rng_for(seed, "mmlu"), counts)
    truthfulqa_files, answers, myths = truthfulqa_part(rng_for(seed, "truthfulqa"), counts)
    truthfulqa_docs = qa_documents(rng_for(seed, "qa"), counts, answers, myths, fact_pairs)
    docs = gsm8k_docs + mmlu_docs + truthfulqa_docs
    rng_for(seed, "corpus").shuffle(docs)
    files = {**gsm8k_files, **mmlu_files, **truthfulqa_files, "corpus.txt": EOT.join(docs),
             "tokenizer.json": train_tokenizer(docs, counts["vocab_size"])}
    sizes = {"gsm8k/train": counts["train"], "gsm8k/test": counts["test"], "mmlu/dev": 5 * len(SUBJECTS),
             "mmlu/test": counts["mmlu_test"] * len(SUBJECTS), "truthfulqa": counts["truthfulqa"],
             "corpus_documents": len(docs), "corpus_characters": len(files["corpus.txt"]),
             "tokenizer_sha256": hashlib.sha256(files["tokenizer.json"].encode()).hexdigest()}  # to check a base's
    import tokenizers  # its BPE trainer makes the vocabulary: the world is a function of its version too
    files["world.json"] = json.dumps({"lab_world": FORMAT_VERSION, "world_seed": seed, "settings": counts,
                                      "tokenizers": tokenizers.__version__, "counts": sizes}, indent=1) + "\n"
    return files


def train_tokenizer(docs: list, vocab_size: int) -> str:
    """A byte-level BPE with one token per digit (as Qwen's), trained on the corpus; its JSON text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(docs, trainer)
    return tokenizer.to_str(pretty=True)

# -----------------------------------------------------------------------------
# Writing it


def write_world(files: dict, out: Path):
    """Stage the files beside `out`, then rename: a half-written world never appears (checkpoint.py's way)."""
    with atomic_directory(out) as staging:
        for relative, text in files.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_text(text, encoding="utf-8")


def read_marker(folder: Path) -> dict | None:
    """world.json of the lab world in `folder`, or None when `folder` holds none."""
    try:
        marker = json.loads((Path(folder) / "world.json").read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and "lab_world" in marker else None


def bounds(name: str) -> tuple:
    """The range of a setting: benchmark items 1 to a million, corpus documents 0 to ten million (a world beyond
    them would not fit a CPU's lab), the vocabulary 300 (the byte alphabet and some merges) to 65,536, shares in
    percent 0 to 100 (per mille: 0 to 999)."""
    if name == "vocab_size":
        return 300, 65536
    if name == "same_kind_distractors":
        return 0, 3
    if name.endswith("_percent"):
        return 0, 100
    if name.endswith("_permille"):
        return 0, 999
    return (1, 10**6) if name in ("train", "test", "mmlu_test", "truthfulqa") else (0, 10**7)


def check_shares(counts: dict):
    """Shares that must fit together, in one line naming the flags."""
    rare_kinds = sum(spec[0] == "rare" for spec in KINDS.values())
    if counts["test_common_percent"] + counts["test_rare_percent"] > 100:
        sys.exit("error: --test-common-percent + --test-rare-percent must be at most 100")
    if counts["mmlu_unstated_percent"] + counts["mmlu_rare_percent"] > 100:
        sys.exit("error: --mmlu-unstated-percent + --mmlu-rare-percent must be at most 100")
    if counts["rare_permille"] * rare_kinds >= 1000:
        sys.exit(f"error: --rare-permille must be under {-(-1000 // rare_kinds)}: the {rare_kinds} rare kinds "
                 f"would leave no room for the common ones")


def parse_args(argv=None):
    parser = flags.parser(__doc__)
    parser.add_argument("--world-seed", type=flags.count(0), required=True,
                        help="a whole number: the world is a pure function of it")
    parser.add_argument("--out", required=True, help="the world's folder (a --data-dir)")
    for name, value in SETTINGS.items():  # smaller worlds for tests; the defaults are the lab's
        parser.add_argument("--" + name.replace("_", "-"), type=flags.count(*bounds(name)), default=value)
    args = parser.parse_args(argv)
    args.counts = {name: getattr(args, name) for name in SETTINGS}
    return args


class Stopped(BaseException):
    """Ctrl-C or SIGTERM while the world is written: leave through the staging folder's cleanup."""
    def __init__(self, number: int):
        super().__init__(number)
        self.number = number


def stopped(number, frame):
    raise Stopped(number)


def main(argv=None):
    args = parse_args(argv)
    seed, counts, out = args.world_seed, args.counts, Path(args.out)
    check_shares(counts)
    try:
        check_writable(out)
        hold_lock(out)
    except (CheckpointError, OSError) as error:
        sys.exit(f"error: {error}")
    try:
        write_or_keep(seed, counts, out)
    finally:
        release_lock(out)


def write_or_keep(seed: int, counts: dict, out: Path):
    """The world, unless --out holds it already; refuse anything else there."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # refuse to replace anything but this world
        old = read_marker(out)
        if old is None:
            sys.exit(f"error: {out} already exists and is not a lab world; choose another --out")
        if (old.get("lab_world"), old.get("world_seed"), old.get("settings")) != (FORMAT_VERSION, seed, counts):
            sys.exit(f"error: {out} already holds another world (seed {old.get('world_seed')}, other settings "
                     f"or format); choose another --out or remove it")
        print(f"{out} already holds this world (seed {seed}, same settings); nothing to do")
        return
    started = time.perf_counter()
    previous = {number: signal.signal(number, stopped) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        files = generate(seed, counts)
        write_world(files, out)
    except Stopped as stop:  # the staging folder is gone, nothing else was written
        print(f"interrupted: {out} was not written", file=sys.stderr)
        sys.exit(128 + stop.number)
    except OSError as error:
        sys.exit(f"error: {write_failure(out, error)}")
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    print(f"wrote {out} in {time.perf_counter() - started:.1f} s: {json.loads(files['world.json'])['counts']}")


if __name__ == "__main__":
    main()
