"""Draw the `largest_families` and `random_family` pairs of `neardup_pairs.part1.jsonl`.

The families are those of `neardup-v1` (kernelbook_lib/neardup.py at commit c73a586, threshold
0.7) over the distinct `python_code` values of `kernelbook_modules.jsonl.gz`; a module is named by
its 0-based line number in that file, and a distinct code by the first line that holds it. The v1
code (with the `defaults.py` and `errors.py` it imports) is written from git into a temporary
package and imported from there, so the drawing does not depend on the working tree's neardup.py.

Drawn with a fixed seed (see `neardup_rule.md` for the strata):
- `largest_families`: 8 random pairs from each of the 10 largest v1 families (by distinct codes);
- `random_family`: one random pair from each of 80 random v1 families with two or more distinct
  codes, not among the ten largest.
A pair's two codes always differ, and no pair is drawn twice. Prints one JSON line per pair,
`{"a": line, "b": line, "stratum": ...}` with `a < b`, to stdout.

    uv run python benchmarks/labels/draw_pairs_families.py [--data ../shared/data] [--seed 20261206]

The module code is only parsed by the v1 normaliser (`ast`), never executed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMIT = "c73a586"
THRESHOLD = 0.7
LARGEST = 10
PAIRS_PER_LARGEST = 8
RANDOM_FAMILIES = 80


def load_v1(tmp: Path):
    """kernelbook_lib.neardup at COMMIT, imported from a temporary package."""
    package = tmp / "kernelbook_lib"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("neardup.py", "defaults.py", "errors.py"):
        text = subprocess.run(
            ["git", "show", f"{COMMIT}:kernelbook_lib/{name}"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        (package / name).write_text(text)
    sys.path.insert(0, str(tmp))
    for cached in [m for m in sys.modules if m == "kernelbook_lib" or m.startswith("kernelbook_lib.")]:
        del sys.modules[cached]
    from kernelbook_lib import neardup

    assert neardup.NORMALIZATION_VERSION == "neardup-v1", neardup.NORMALIZATION_VERSION
    return neardup


def distinct_codes(path: Path) -> tuple[list[str], list[str]]:
    """Keys (first line number, zero-padded) and codes of the distinct python_code values."""
    keys, codes, seen = [], [], set()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f):
            code = json.loads(line)["python_code"]
            if code in seen:
                continue
            seen.add(code)
            keys.append(f"{line_no:05d}")
            codes.append(code)
    return keys, codes


def draw(families: dict[str, list[int]], codes: list[str], seed: int) -> list[dict]:
    rng = random.Random(seed)
    shared = {fam: members for fam, members in families.items() if len(members) >= 2}
    order = sorted(shared, key=lambda fam: (-len(shared[fam]), fam))
    largest, rest = order[:LARGEST], sorted(order[LARGEST:])
    drawn: set[tuple[int, int]] = set()
    out = []

    def pick(members: list[int]) -> tuple[int, int] | None:
        for _ in range(1000):
            a, b = sorted(rng.sample(members, 2))
            if codes[a] != codes[b] and (a, b) not in drawn:
                drawn.add((a, b))
                return a, b
        return None

    for fam in largest:
        for _ in range(PAIRS_PER_LARGEST):
            pair = pick(shared[fam])
            if pair:
                out.append({"pair": pair, "stratum": "largest_families", "family": fam, "size": len(shared[fam])})
    for fam in rng.sample(rest, RANDOM_FAMILIES):
        pair = pick(shared[fam])
        if pair:
            out.append({"pair": pair, "stratum": "random_family", "family": fam, "size": len(shared[fam])})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--seed", type=int, default=20261206)
    parser.add_argument("--verbose", action="store_true", help="also print family id, size and v1 similarity")
    args = parser.parse_args()
    keys, codes = distinct_codes(args.data / "kernelbook_modules.jsonl.gz")
    with tempfile.TemporaryDirectory() as tmp:
        neardup = load_v1(Path(tmp))
        result = neardup.group_families(keys, codes, threshold=THRESHOLD, workers=1)
        families: dict[str, list[int]] = defaultdict(list)
        for i, fam in enumerate(result.family_of):
            families[fam].append(i)
        pairs = draw(families, codes, args.seed)
        for row in pairs:
            i, j = row["pair"]
            record = {"a": int(keys[i]), "b": int(keys[j]), "stratum": row["stratum"]}
            if args.verbose:
                sa, sb = set(neardup.shingles(result.forms[i])), set(neardup.shingles(result.forms[j]))
                record.update(family=int(row["family"]), size=row["size"], similarity=round(len(sa & sb) / len(sa | sb), 3))
            print(json.dumps(record))


if __name__ == "__main__":
    main()
