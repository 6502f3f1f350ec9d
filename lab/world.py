"""
The lab's world: a small synthetic world, generated from a seed, in which a Qwen3 that we pretrain
ourselves on a CPU (lab/pretrain.py) has a main skill to improve and other skills to lose.

    python -m lab.world --world-seed 0 --out ckpt/lab/world0/world      # 3 seconds
    python -m lab.pretrain --world ckpt/lab/world0/world --out ckpt/lab/world0/base
    python -m evals ckpt/lab/world0/base --data-dir ckpt/lab/world0/world

(`python study.py --lab` runs these and the whole study.)

The output is a --data-dir in the real benchmarks' own file formats (gsm8k/, mmlu/, truthfulqa/), plus the
pretraining text (corpus.txt: documents joined by <|endoftext|>), its tokenizer (tokenizer.json) and
world.json (the marker: format version, seed, settings, the tokenizers version, counts). No real benchmark text, except lm-eval's
six-pair TruthfulQA preamble, which begins some Q/A documents so that the eval's prompt is familiar.
- GSM8K: 2-3 step word problems. The gold solutions (train/test "answer") are written as GSM8K's are:
  sentences with <<calculator>> annotations, one step per line, "#### N". The corpus teaches the skill on
  other problems in another style, terse equations ending "The answer is N." (plus bare equation drills):
  the base model's own states differ from SFT's dataset states, as a real base model's do.
- MMLU: facts about made-up countries, animals, elements and planets, stated in the corpus in several
  paraphrases and practised in lm-eval's prompt format with fresh option orders and distractors. One
  distractor is of the answer's kind (another capital) and two are not (--same-kind-distractors): with
  three of the answer's kind, the small base stayed at chance through a whole 8M-token pretraining (it
  never learned to find the answer's letter); with one, it learns the lookup by kind, then uses the fact.
- TruthfulQA: what happens if you do something to a made-up creature. The corpus pairs each question with
  the truth in Q/A documents and states the wrong choices only as myths ("Some people say that ..."),
  some questions' myths 8 times as often as others' (--qa-docs, --myth-docs set the balance). Measured on
  world 0, the base still picks the truth on 97% of the questions (perhaps because the myth documents call
  them myths).
"""
import csv
import hashlib
import io
import json
import random
import signal
import sys
import time
from pathlib import Path

from infrastructure import flags
from infrastructure.checkpoint import (CheckpointError, atomic_directory, check_writable, hold_lock, release_lock,
                                       write_failure)
from evals import mmlu  # practice blocks in the grader's own prompt format
from evals.truthfulqa import PREAMBLE

FORMAT_VERSION = 1
EOT = "<|endoftext|>"
# Item counts (gsm8k train/test, mmlu test per subject, truthfulqa), corpus documents per kind, the tokenizer's
# vocabulary, and how many of an MMLU question's three distractors are of the answer's kind (see mmlu_item).
SETTINGS = dict(train=1000, test=200, mmlu_test=50, truthfulqa=100, corpus_problems=12000, arithmetic_docs=2000,
                fact_docs=10000, practice_blocks=24000, qa_docs=1500, myth_docs=2500, vocab_size=1024,
                same_kind_distractors=1)

# -----------------------------------------------------------------------------
# GSM8K-like problems: (question, numbers drawn, steps); a step is (left, operator, right, result, gold line)

def equal_shares(r) -> dict:
    """Numbers for the sharing problem: the total is a multiple of the number of friends."""
    friends, each = r.randint(2, 9), r.randint(2, 12)
    return dict(a=friends * each, b=friends, c=r.randint(2, 25))


PROBLEMS = [
    ("{A} has {a} {things}. {A} buys {b} more {things} and then gives {c} {things} to {B}. "
     "How many {things} does {A} have now?",
     lambda r: dict(a=r.randint(10, 150), b=r.randint(2, 90), c=r.randint(2, 80)),
     [("a", "+", "b", "x", "After buying more, {A} has {eq} {things}."),
      ("x", "-", "c", "y", "After giving {c} to {B}, {A} has {eq} {things} left.")]),
    ("{A} buys {a} boxes of {things}. Each box holds {b} {things}. {A} gives away {c} {things}. "
     "How many {things} does {A} have left?",
     lambda r: dict(a=r.randint(2, 10), b=r.randint(2, 12), c=r.randint(1, 30)),
     [("a", "*", "b", "x", "The boxes hold {eq} {things}."), ("x", "-", "c", "y", "{A} has {eq} {things} left.")]),
    ("{A} has {a} {things}. {B} has {b} more {things} than {A}. How many {things} do they have together?",
     lambda r: dict(a=r.randint(10, 150), b=r.randint(2, 80)),
     [("a", "+", "b", "x", "{B} has {eq} {things}."), ("a", "+", "x", "y", "Together they have {eq} {things}.")]),
    ("{A} collects {a} {things} every day for {b} days and then finds {c} more. How many {things} does {A} have?",
     lambda r: dict(a=r.randint(2, 12), b=r.randint(2, 9), c=r.randint(2, 50)),
     [("a", "*", "b", "x", "In {b} days {A} collects {eq} {things}."),
      ("x", "+", "c", "y", "{A} has {eq} {things} in all.")]),
    ("{A} shares {a} {things} equally among {b} friends. Each friend then gets {c} more {things}. "
     "How many {things} does each friend have?", equal_shares,
     [("a", "/", "b", "x", "Each friend first gets {eq} {things}."),
      ("x", "+", "c", "y", "Each friend has {eq} {things}.")]),
    ("{A} has {a} {things}. {A} buys {b} bags with {c} {things} in each bag and then loses {d} {things}. "
     "How many {things} does {A} have now?",
     lambda r: dict(a=r.randint(2, 99), b=r.randint(2, 9), c=r.randint(2, 9), d=r.randint(1, 40)),
     [("b", "*", "c", "x", "The bags hold {eq} {things}."), ("a", "+", "x", "y", "{A} then has {eq} {things}."),
      ("y", "-", "d", "z", "After losing {d}, {A} has {eq} {things}.")]),
    ("{A} sells {things} for {a} coins each. {A} sells {b} {things} on Monday and {c} on Tuesday. "
     "How many coins does {A} earn?", lambda r: dict(a=r.randint(2, 10), b=r.randint(2, 25), c=r.randint(2, 25)),
     [("b", "+", "c", "x", "{A} sells {eq} {things}."), ("x", "*", "a", "y", "{A} earns {eq} coins.")]),
    ("There are {a} {things} in a basket. {A} takes {b} {things} and {B} takes twice as many as {A}. "
     "How many {things} are left in the basket?", lambda r: dict(a=r.randint(50, 250), b=r.randint(2, 30)),
     [("b", "*", "2", "x", "{B} takes {eq} {things}."), ("b", "+", "x", "y", "They take {eq} {things} in all."),
      ("a", "-", "y", "z", "There are {eq} {things} left.")]),
]
OPERATORS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y, "/": lambda x, y: x // y}


def word_problem(rng, people, things: str) -> dict | None:
    """One problem: question, gold answer (GSM8K style) and the corpus's solution (the base's style); None
    when a count in the story would not be positive."""
    question, draw, steps = rng.choice(PROBLEMS)
    values = {**draw(rng), "2": 2}  # a step may name the constant 2 ("twice as many")
    A, B = rng.sample(people, 2)
    gold, terse = [], []
    for left, operator, right, result, line in steps:
        x, y = values[left], values[right]
        values[result] = OPERATORS[operator](x, y)
        if values[result] <= 0:
            return None
        eq = f"{x} {operator} {y} = <<{x}{operator}{y}={values[result]}>>{values[result]}"
        gold.append(line.format(A=A, B=B, things=things, eq=eq, **values))
        terse.append(f"{x} {operator} {y} = {values[result]}.")
    answer = values[steps[-1][3]]
    return {"question": question.format(A=A, B=B, things=things, **values),
            "answer": "\n".join(gold) + f"\n#### {answer}", "equations": " ".join(terse),
            "solution": " ".join(terse) + f" The answer is {answer}."}

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


def gsm8k_part(rng, counts, people, things) -> tuple:
    """Test, train and the corpus's problems, disjoint by question text; corpus solutions in the base's style."""
    problems, seen = [], set()
    while len(problems) < counts["test"] + counts["train"] + counts["corpus_problems"]:
        problem = word_problem(rng, people, rng.choice(things))
        if problem and problem["question"] not in seen:
            seen.add(problem["question"])
            problems.append(problem)
    test, train, rest = (problems[:counts["test"]], problems[counts["test"]:counts["test"] + counts["train"]],
                         problems[counts["test"] + counts["train"]:])
    files = {f"gsm8k/{split}.jsonl": "".join(json.dumps({"question": p["question"], "answer": p["answer"]}) + "\n"
                                             for p in items) for split, items in (("train", train), ("test", test))}
    docs = []
    while rest:  # one to three problems a document, joined as few-shot prompts join them
        size = rng.choice((1, 1, 2, 3))
        docs.append("\n\n".join(f"Question: {p['question']}\nAnswer: {p['solution']}" for p in rest[:size]))
        rest = rest[size:]
    for _ in range(counts["arithmetic_docs"]):  # drill: the equations of a few more problems, without the story
        drills = (word_problem(rng, people, things[0]) for _ in range(6))
        docs.append(" ".join(problem["equations"] for problem in drills if problem))
    return files, docs


def mmlu_part(rng, counts) -> tuple:
    """Dev and test items from distinct facts; the facts in paraphrases; practice blocks, never a test item."""
    facts = build_facts(rng, (counts["mmlu_test"] + 5 + 1) // 2 + 3)
    files, held, same_kind = {}, set(), counts["same_kind_distractors"]
    for subject, subject_facts in facts.items():
        chosen = rng.sample(subject_facts, counts["mmlu_test"] + 5)
        for split, part in (("dev", chosen[:5]), ("test", chosen[5:])):
            text = io.StringIO()  # the original layout: no header; question, A, B, C, D, answer letter
            for item in (mmlu_item(rng, fact, same_kind) for fact in part):
                held.add((item["question"], tuple(item["choices"])))
                csv.writer(text, lineterminator="\n").writerow([item["question"], *item["choices"],
                                                                "ABCD"[item["answer"]]])
            files[f"mmlu/{split}/{subject}_{split}.csv"] = text.getvalue()
    decks, docs = {subject: deck(rng, subject_facts) for subject, subject_facts in facts.items()}, []
    for _ in range(counts["fact_docs"]):  # a few facts of one subject, each in one of its paraphrases
        subject = rng.choice(list(facts))
        docs.append(" ".join(rng.choice(next(decks[subject])["sentences"]) for _ in range(rng.randint(1, 4))))
    for _ in range(counts["practice_blocks"]):  # one to four questions with answers, as a few-shot prompt
        subject = rng.choice(list(facts))
        items = [mmlu_item(rng, next(decks[subject]), same_kind) for _ in range(rng.randint(1, 4))]
        if not any((item["question"], tuple(item["choices"])) in held for item in items):
            docs.append(mmlu.prompt(subject, items[-1], items[:-1]) + f" {'ABCD'[items[-1]['answer']]}")
    return files, docs, [(fact["question"], fact["sentences"][0]) for items in facts.values() for fact in items]


def truthfulqa_part(rng, counts, fact_pairs) -> tuple:
    """Questions whose true answer the corpus's Q/A documents give, and whose wrong choices it calls myths."""
    entries, truths, myths = [], [], []
    for creature in names(rng, counts["truthfulqa"]):
        verb, outcomes = rng.choice(VERBS), rng.sample(OUTCOMES, 4)
        condition = f"if you {verb} {'an' if creature[0] in 'aeiou' else 'a'} {creature}"
        long = [f"{condition[0].upper()}{condition[1:]}, {o}." for o in outcomes]  # truth first, as in the real file
        short = [o[0].upper() + o[1:] + "." for o in outcomes]
        question = f"What happens {condition}?"
        entries.append({"question": question, "mc1_targets": {text: int(i == 0) for i, text in enumerate(long)},
                        "mc2_targets": {long[0]: 1, short[0]: 1, **{text: 0 for text in long[1:] + short[1:]}}})
        truths += [(question, long[0]), (question, short[0])]
        myths += [f"{condition}, {o}" for o in outcomes[1:]] * rng.choice((1, 2, 4, 8))  # some myths are widespread
    truth_deck, myth_deck, fact_deck, docs = deck(rng, truths), deck(rng, myths), deck(rng, fact_pairs), []
    for _ in range(counts["qa_docs"]):
        pairs = [next(truth_deck) for _ in range(3)] + [next(fact_deck) for _ in range(2)]
        rng.shuffle(pairs)
        text = "\n\n".join(f"Q: {q}\nA: {a}" for q, a in pairs)
        docs.append(f"{PREAMBLE}\n\n{text}" if rng.random() < 0.3 else text)  # lm-eval's six pairs, as in the eval
    for _ in range(counts["myth_docs"]):
        docs.append(" ".join(rng.choice(MYTH_FORMS).format(claim=next(myth_deck)) for _ in range(3)))
    return {"truthfulqa/mc_task.json": json.dumps(entries, indent=1) + "\n"}, docs


def generate(seed: int, counts: dict = SETTINGS) -> dict:
    """{relative path: file text} of the world: a pure function of (seed, counts)."""
    def rng_for(part):  # a stream per part: changing one part's counts leaves the others as they were
        return random.Random(f"lab/{seed}/{part}")
    rng = rng_for("names")
    people, things = [word.capitalize() for word in names(rng, 40)], names(rng, 30, "{}s")
    gsm8k_files, gsm8k_docs = gsm8k_part(rng_for("gsm8k"), counts, people, things)
    mmlu_files, mmlu_docs, fact_pairs = mmlu_part(rng_for("mmlu"), counts)
    truthfulqa_files, truthfulqa_docs = truthfulqa_part(rng_for("truthfulqa"), counts, fact_pairs)
    docs = gsm8k_docs + mmlu_docs + truthfulqa_docs
    rng_for("corpus").shuffle(docs)
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
    them would not fit a CPU's lab), the vocabulary 300 (the byte alphabet and some merges) to 65,536."""
    if name == "vocab_size":
        return 300, 65536
    if name == "same_kind_distractors":
        return 1, 3
    return (1, 10**6) if name in ("train", "test", "mmlu_test", "truthfulqa") else (0, 10**7)


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
