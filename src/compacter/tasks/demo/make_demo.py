"""Write the demo task's train/validation/test.jsonl (binary sentiment of short reviews).

Every sentence is built from the hand-written phrase lists below (written for this
project). The same words occur on both sides: "bad" in "was bad" (0) and "was not bad at
all" (1), "worth" in "worth every penny" (1) and "hardly worth it" (0), and in "A, but B"
sentences the clause after "but" decides. So no single keyword gives the label, while a
small pretrained sentence encoder learns it.

    python src/compacter/tasks/demo/make_demo.py      # deterministic: same files every run
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 2021
SIZES = {"train": 300, "validation": 60, "test": 60}

# (noun phrase, verb, kind)
SUBJECTS = [
    ("the pasta", "was", "food"), ("the soup", "was", "food"), ("the burger", "was", "food"),
    ("the pizza", "was", "food"), ("the dessert", "was", "food"), ("the coffee", "was", "food"),
    ("the curry", "was", "food"), ("the salad", "was", "food"), ("the bread", "was", "food"),
    ("the waiter", "was", "service"), ("the staff", "were", "service"), ("the delivery", "was", "service"),
    ("the service", "was", "service"), ("the host", "was", "service"), ("customer support", "was", "service"),
    ("this blender", "is", "product"), ("these headphones", "are", "product"), ("this laptop", "is", "product"),
    ("the charger", "is", "product"), ("this phone case", "is", "product"), ("the keyboard", "is", "product"),
    ("this speaker", "is", "product"), ("the vacuum cleaner", "is", "product"), ("this kettle", "is", "product"),
]
GOOD = {
    "food": ["delicious", "tasty", "fresh", "great", "good", "perfectly cooked", "generous"],
    "service": ["friendly", "helpful", "quick", "great", "good", "attentive", "polite"],
    "product": ["sturdy", "reliable", "great", "good", "well made", "quiet", "easy to use"],
}
BAD = {
    "food": ["bland", "stale", "cold", "bad", "awful", "greasy", "overpriced"],
    "service": ["rude", "slow", "careless", "bad", "awful", "unhelpful", "late"],
    "product": ["flimsy", "noisy", "unreliable", "bad", "awful", "overpriced", "hard to use"],
}
# Whole predicates that do not fit the adjective pattern.
IDIOMS_GOOD = ["is worth every penny", "never disappoints", "exceeded my expectations", "made my day",
               "is hard to beat", "won me over"]
IDIOMS_BAD = ["is hardly worth it", "was a waste of money", "let me down", "is not worth the price",
              "fell short", "did not live up to the hype"]
OPENERS = ["", "", "", "Honestly, ", "Overall, ", "I have to say ", "To be fair, ", "All in all, "]


def _clause(rng: random.Random, label: int) -> str:
    """One clause with sentiment `label`, e.g. "the soup was not bad at all" (1)."""
    noun, verb, kind = rng.choice(SUBJECTS)
    good, bad = rng.choice(GOOD[kind]), rng.choice(BAD[kind])
    if rng.random() < 0.2:
        return f"{noun} {rng.choice(IDIOMS_GOOD if label else IDIOMS_BAD)}"
    patterns = {  # plain and negated forms, both directions
        1: [f"{verb} {good}", f"{verb} really {good}", f"{verb} not {bad} at all", f"{verb} far from {bad}",
            f"{verb} never {bad}", f"{verb} not {bad}, quite the opposite"],
        0: [f"{verb} {bad}", f"{verb} really {bad}", f"{verb} not {good} at all", f"{verb} far from {good}",
            f"{verb} hardly {good}", f"{verb} anything but {good}"],
    }
    return f"{noun} {rng.choice(patterns[label])}"


def sentence(rng: random.Random, label: int) -> str:
    """A review sentence; contrastive ones ("A, but B") take the label of B."""
    text = _clause(rng, label)
    if rng.random() < 0.35:
        text = f"{_clause(rng, 1 - label)}, but {text}"
    text = rng.choice(OPENERS) + text
    return text[0].upper() + text[1:] + "."


def build(seed: int = SEED) -> dict[str, list[dict]]:
    """Balanced, duplicate-free splits, identical for the same seed."""
    rng, seen = random.Random(seed), set()
    splits: dict[str, list[dict]] = {}
    for split, size in SIZES.items():
        rows = []
        while len(rows) < size:
            label = len(rows) % 2
            text = sentence(rng, label)
            if text not in seen:
                seen.add(text)
                rows.append({"sentence": text, "label": label})
        rng.shuffle(rows)
        splits[split] = rows
    return splits


def main(out_dir: Path = Path(__file__).resolve().parent) -> None:
    for split, rows in build().items():
        with open(out_dir / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    main()
