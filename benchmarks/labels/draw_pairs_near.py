"""Draw the ``near_miss`` and ``same_name`` pairs of real KernelBook modules to label by hand.

The pairs are drawn with the families of ``neardup-v1`` (``kernelbook_lib/neardup.py`` at commit
c73a586, threshold 0.7), which this script rebuilds from git into a temporary directory, so that
the drawing does not change when the live module does:

- ``near_miss``: 100 random pairs of modules in *different* v1 families whose exact v1 Jaccard
  similarity is in [0.5, 0.7). Candidates come from MinHash/LSH at 0.5 (v1's own signatures),
  their similarity is then computed exactly. A pair is drawn uniformly among the qualifying pairs
  of distinct normalised forms; each form is then represented by one random module holding it.
- ``same_name``: 60 random pairs of modules with the same class name (``entry_point``) and
  different code, at most 2 pairs per name, none already drawn as ``near_miss``. A pair is drawn
  uniformly among all such pairs of distinct codes (then capped per name).

A module is its 0-based line number in ``kernelbook_modules.jsonl.gz``; among rows with identical
code only the first line stands for that code. No pair has two identical codes, no pair is drawn
twice. The pairs are printed as JSON lines ``{"a": .., "b": .., "stratum": ..}`` with ``a < b``.

    uv run python benchmarks/labels/draw_pairs_near.py [--data ../shared/data] [--seed 20261206]

The data's code is only parsed (by v1's normaliser, with :mod:`ast`), never executed.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import itertools
import json
import random
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
V1_COMMIT = "c73a586"
THRESHOLD = 0.7
LOW = 0.5
N_NEAR_MISS = 100
N_SAME_NAME = 60
PER_NAME = 2


def load_v1(tmp: Path):
    """``neardup-v1`` as a module of its own, from git (its one project import, the default
    threshold, is written in as the number it was at that commit)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{V1_COMMIT}:kernelbook_lib/neardup.py"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    line = "from kernelbook_lib.defaults import DEFAULT_NEAR_DUP_THRESHOLD  # noqa: E402,F401"
    assert line in source, "unexpected v1 source"
    source = source.replace(line, "DEFAULT_NEAR_DUP_THRESHOLD = 0.7")
    (tmp / "neardup_v1.py").write_text(source)
    sys.path.insert(0, str(tmp))
    return importlib.import_module("neardup_v1")


def read_modules(data: Path) -> tuple[list[str], list[str]]:
    codes, names = [], []
    with gzip.open(data / "kernelbook_modules.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            codes.append(row["python_code"])
            names.append(row["entry_point"])
    return codes, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--seed", type=int, default=20261206)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        v1 = load_v1(Path(tmp))
        codes, names = read_modules(args.data)

        # Distinct codes, each keyed by the first line holding it.
        first_line: dict[str, int] = {}
        for line, code in enumerate(codes):
            first_line.setdefault(code, line)
        lines = sorted(first_line.values())
        width = len(str(len(codes)))
        keys = [str(line).zfill(width) for line in lines]
        distinct_codes = [codes[line] for line in lines]
        result = v1.group_families(keys, distinct_codes, threshold=THRESHOLD, workers=1)
        family = dict(zip(lines, result.family_of))
        print(
            f"# {len(codes)} modules, {len(lines)} distinct codes, {len(set(result.family_of))} v1 families",
            file=sys.stderr,
        )

        # Distinct forms and the lines (distinct codes) holding each.
        distinct_forms, position = v1.distinct_forms(result.forms)
        lines_of_form: list[list[int]] = [[] for _ in distinct_forms]
        for line, pos in zip(lines, position):
            if pos >= 0:
                lines_of_form[pos].append(line)
        sigs = v1.Signatures.of(distinct_forms)
        index = sigs.lsh(LOW)
        qualifying: list[tuple[int, int]] = []
        for left, right, _ in v1._candidate_pairs(sigs, index, LOW - v1.ESTIMATE_MARGIN):
            for i, j in zip(left.tolist(), right.tolist()):
                if family[lines_of_form[i][0]] == family[lines_of_form[j][0]]:
                    continue
                if LOW <= sigs.jaccard(i, sigs, j) < THRESHOLD:
                    qualifying.append((i, j))
        print(f"# {len(qualifying)} near-miss form pairs", file=sys.stderr)

    rng = random.Random(args.seed)
    drawn: list[dict] = []
    seen: set[tuple[int, int]] = set()

    def take(a: int, b: int, stratum: str) -> None:
        pair = (min(a, b), max(a, b))
        assert pair[0] != pair[1] and codes[pair[0]] != codes[pair[1]] and pair not in seen
        seen.add(pair)
        drawn.append({"a": pair[0], "b": pair[1], "stratum": stratum})

    for i, j in rng.sample(qualifying, N_NEAR_MISS):
        take(rng.choice(lines_of_form[i]), rng.choice(lines_of_form[j]), "near_miss")

    lines_of_name: dict[str, list[int]] = defaultdict(list)
    for line in lines:
        lines_of_name[names[line]].append(line)
    same_name = [
        (name, a, b)
        for name in sorted(lines_of_name)
        for a, b in itertools.combinations(lines_of_name[name], 2)
    ]
    rng.shuffle(same_name)
    per_name: dict[str, int] = defaultdict(int)
    count = 0
    for name, a, b in same_name:
        if count == N_SAME_NAME:
            break
        if per_name[name] >= PER_NAME or (a, b) in seen:
            continue
        take(a, b, "same_name")
        per_name[name] += 1
        count += 1
    print(f"# {len(same_name)} same-name pairs of distinct codes", file=sys.stderr)

    for pair in drawn:
        print(json.dumps(pair))


if __name__ == "__main__":
    main()
