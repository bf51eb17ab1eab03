"""Draw the ``v2_merged`` and ``v2_apart`` pairs of ``neardup_pairs.part3.jsonl``.

The families are those of ``neardup-v2`` (the working tree's ``kernelbook_lib/neardup.py``,
``group_families(keys, codes, threshold=0.7, workers=1)``) over the distinct ``python_code``
values of ``kernelbook_modules.jsonl.gz``. A distinct code is named by the first 0-based line
that holds it (the key, zero-padded to 5 digits); its class name is the ``entry_point`` of that
line. Drawn with a fixed seed (see ``neardup_rule.md``):

- ``v2_merged``: 4 random pairs from each of the 10 largest v2 families (by distinct codes, ties
  by family id; fewer when a family has fewer pairs left), then one random pair from each of 60
  random other v2 families with two or more distinct codes (a family with no pair left is
  passed over and the next random family is taken), 100 pairs in all.
- ``v2_apart``: 40 pairs of distinct codes in different v2 families with the same class name,
  at most one per name. As for ``same_name`` in ``draw_pairs_near.py``, the draw is uniform over
  all such pairs and then capped per name: names are taken one after another with probability
  proportional to their number of qualifying pairs left (without replacement), which is the same
  as shuffling all qualifying pairs and keeping the first of each name, and the pair is then
  uniform within the name.

A pair already in ``neardup_pairs.part1.jsonl`` or ``.part2.jsonl`` is never drawn: only their
``a``/``b`` fields are read, each line is mapped to the key of its code, and any pair with the same
two keys is skipped (so a pair is also skipped when an earlier part used another line with the same
code). Two identical codes are never paired, and no pair is drawn twice. Prints one JSON line per
pair, ``{"a": .., "b": .., "stratum": ..}`` with ``a < b``, to stdout.

    uv run python benchmarks/labels/draw_pairs_v2.py [--data ../shared/data] [--seed 20261207]

The data's code is only handed to v2's ``group_families`` (which parses it), never executed.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LABELS = Path(__file__).resolve().parent
THRESHOLD = 0.7
LARGEST = 10
PAIRS_PER_LARGEST = 4
RANDOM_FAMILIES = 60
N_APART = 40
EARLIER_PARTS = ("neardup_pairs.part1.jsonl", "neardup_pairs.part2.jsonl")


def read_modules(path: Path) -> tuple[list[str], list[str], list[str], list[int]]:
    """Keys, codes and class names of the distinct codes, and the key index of every line."""
    keys, codes, names, index_of_line = [], [], [], []
    index: dict[str, int] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f):
            row = json.loads(line)
            code = row["python_code"]
            if code not in index:
                index[code] = len(codes)
                keys.append(f"{line_no:05d}")
                codes.append(code)
                names.append(row["entry_point"])
            index_of_line.append(index[code])
    return keys, codes, names, index_of_line


def earlier_pairs(index_of_line: list[int]) -> set[tuple[int, int]]:
    """Pairs of distinct-code indices already drawn in the earlier parts (a/b fields only)."""
    out: set[tuple[int, int]] = set()
    for name in EARLIER_PARTS:
        with open(LABELS / name, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    i, j = sorted((index_of_line[row["a"]], index_of_line[row["b"]]))
                    out.add((i, j))
    return out


def random_pair(rng: random.Random, members: list[int], ok) -> tuple[int, int] | None:
    """A uniformly random pair (i < j) of members for which ok(i, j) holds, or None."""
    members = sorted(members)
    for _ in range(200):
        i, j = sorted(rng.sample(members, 2))
        if ok(i, j):
            return i, j
    pairs = [p for p in itertools.combinations(members, 2) if ok(*p)]
    return rng.choice(pairs) if pairs else None


def draw(family_of: list[str], names: list[str], skip: set[tuple[int, int]], seed: int) -> list[tuple[int, int, str]]:
    rng = random.Random(seed)
    drawn: set[tuple[int, int]] = set(skip)
    out: list[tuple[int, int, str]] = []

    def fresh(i: int, j: int) -> bool:
        return (i, j) not in drawn

    families: dict[str, list[int]] = defaultdict(list)
    for i, fam in enumerate(family_of):
        families[fam].append(i)
    shared = {fam: members for fam, members in families.items() if len(members) >= 2}
    order = sorted(shared, key=lambda fam: (-len(shared[fam]), fam))
    largest, rest = order[:LARGEST], sorted(order[LARGEST:])

    for fam in largest:
        for _ in range(PAIRS_PER_LARGEST):
            pair = random_pair(rng, shared[fam], fresh)
            if pair:
                drawn.add(pair)
                out.append((*pair, "v2_merged"))
    taken = 0
    for fam in rng.sample(rest, len(rest)):
        if taken == RANDOM_FAMILIES:
            break
        pair = random_pair(rng, shared[fam], fresh)
        if pair:
            drawn.add(pair)
            out.append((*pair, "v2_merged"))
            taken += 1

    by_name: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(names):
        by_name[name].append(i)

    def apart(i: int, j: int) -> bool:
        return family_of[i] != family_of[j] and (i, j) not in drawn

    weight: dict[str, int] = {}
    for name, members in sorted(by_name.items()):
        if len(members) < 2:
            continue
        n = len(members)
        sizes: dict[str, int] = defaultdict(int)
        for i in members:
            sizes[family_of[i]] += 1
        count = n * (n - 1) // 2 - sum(m * (m - 1) // 2 for m in sizes.values())
        member_set = set(members)
        count -= sum(1 for i, j in drawn if i in member_set and j in member_set and family_of[i] != family_of[j])
        if count > 0:
            weight[name] = count
    for _ in range(N_APART):
        if not weight:
            break
        pool = sorted(weight)
        name = rng.choices(pool, weights=[weight[k] for k in pool])[0]
        del weight[name]
        pair = random_pair(rng, by_name[name], apart)
        if pair:
            drawn.add(pair)
            out.append((*pair, "v2_apart"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--seed", type=int, default=20261207)
    args = parser.parse_args()
    keys, codes, names, index_of_line = read_modules(args.data / "kernelbook_modules.jsonl.gz")
    skip = earlier_pairs(index_of_line)

    sys.path.insert(0, str(ROOT))
    from kernelbook_lib import neardup

    assert neardup.NORMALIZATION_VERSION == "neardup-v2", neardup.NORMALIZATION_VERSION
    result = neardup.group_families(keys, codes, threshold=THRESHOLD, workers=1)
    for i, j, stratum in draw(list(result.family_of), names, skip, args.seed):
        assert i < j and codes[i] != codes[j]
        print(json.dumps({"a": int(keys[i]), "b": int(keys[j]), "stratum": stratum}))


if __name__ == "__main__":
    main()
