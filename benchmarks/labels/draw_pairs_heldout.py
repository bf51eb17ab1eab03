"""Draw the held-out near-duplicate pairs from the final neardup-v2 grouping.

Re-runnable: prints JSON lines {"a": .., "b": .., "stratum": ..} (a < b, line numbers in
kernelbook_modules.jsonl.gz) to stdout. Labels are written by hand into neardup_heldout.jsonl.

    cd /work/main && uv run python benchmarks/labels/draw_pairs_heldout.py > /tmp/heldout_pairs.jsonl

Strata:
  heldout_merged         70 pairs v2 puts in one family: 2 random pairs from each of the 10
                         largest families, 1 random pair from each of 50 random other families
                         with two or more distinct codes.
  heldout_name_apart     30 random pairs with the same class name that v2 keeps apart, at most
                         one per name.
  heldout_similar_apart  20 pairs in different v2 families with the highest Jaccard similarity
                         of identifier tokens among 20,000 random candidate pairs of distinct
                         codes with the same number of `nn.` layer constructions.

Pairs already in any neardup_pairs*.jsonl (compared by code: each line is mapped to the first
line with the same code) and pairs of identical code are skipped. Only the `a`/`b` fields of
those files are read.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import random
import re
import sys

SEED = 20261208
THRESHOLD = 0.7
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LABEL_DIR = os.path.join(REPO_ROOT, "benchmarks", "labels")

IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NN_LAYER_RE = re.compile(r"\bnn\.[A-Z][A-Za-z0-9_]*\s*\(")


def load_rows(data_dir: str) -> list[dict]:
    path = os.path.join(data_dir, "kernelbook_modules.jsonl.gz")
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh]


def existing_pairs(first_of_line: list[int]) -> set[tuple[int, int]]:
    """Pairs (by first line of their code) already in neardup_pairs*.jsonl; reads only a/b."""
    seen: set[tuple[int, int]] = set()
    for path in sorted(glob.glob(os.path.join(LABEL_DIR, "neardup_pairs*.jsonl"))):
        with open(path) as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                obj = json.loads(line)
                a, b = first_of_line[int(obj["a"])], first_of_line[int(obj["b"])]
                seen.add((min(a, b), max(a, b)))
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(REPO_ROOT, "..", "shared", "data"))
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()

    sys.path.insert(0, REPO_ROOT)
    from kernelbook_lib import neardup

    rows = load_rows(args.data)
    first_by_code: dict[str, int] = {}
    first_of_line: list[int] = []
    for i, row in enumerate(rows):
        code = row["python_code"]
        first_of_line.append(first_by_code.setdefault(code, i))
    firsts = sorted(set(first_of_line))  # one representative line per distinct code
    keys = [f"{i:05d}" for i in firsts]
    codes = [rows[i]["python_code"] for i in firsts]

    res = neardup.group_families(keys, codes, threshold=THRESHOLD, workers=args.workers)
    fam_raw = res.family_of
    if isinstance(fam_raw, dict):
        fam = {i: fam_raw[k] for i, k in zip(firsts, keys)}
    else:
        fam = dict(zip(firsts, list(fam_raw)))

    skip = existing_pairs(first_of_line)
    used: set[tuple[int, int]] = set()
    rng = random.Random(args.seed)
    out: list[dict] = []

    def ok(a: int, b: int) -> bool:
        p = (min(a, b), max(a, b))
        return a != b and p not in skip and p not in used

    def emit(a: int, b: int, stratum: str) -> None:
        p = (min(a, b), max(a, b))
        used.add(p)
        out.append({"a": p[0], "b": p[1], "stratum": stratum})

    def random_pair(members: list[int], cond=lambda a, b: True, tries: int = 200):
        if len(members) < 2:
            return None
        for _ in range(tries):
            a, b = rng.sample(members, 2)
            if ok(a, b) and cond(a, b):
                return a, b
        # small groups: fall back to enumerating every pair
        if len(members) <= 60:
            cands = [(a, b) for x, a in enumerate(members) for b in members[x + 1:] if ok(a, b) and cond(a, b)]
            if cands:
                return rng.choice(cands)
        return None

    # ---- heldout_merged -------------------------------------------------------------------
    members_of: dict = collections.defaultdict(list)
    for i in firsts:
        members_of[fam[i]].append(i)
    fams = sorted(members_of, key=lambda f: (-len(members_of[f]), min(members_of[f])))
    multi = [f for f in fams if len(members_of[f]) >= 2]
    largest = multi[:10]
    for f in largest:
        for _ in range(2):
            p = random_pair(members_of[f])
            if p:
                emit(*p, "heldout_merged")
    others = multi[10:]
    rng.shuffle(others)
    n_other = 0
    for f in others:
        if n_other >= 50:
            break
        p = random_pair(members_of[f])
        if p:
            emit(*p, "heldout_merged")
            n_other += 1

    # ---- heldout_name_apart ---------------------------------------------------------------
    by_name: dict = collections.defaultdict(list)
    for i in firsts:
        by_name[rows[i]["entry_point"]].append(i)
    names = sorted(n for n, ms in by_name.items() if len({fam[i] for i in ms}) >= 2)
    rng.shuffle(names)
    n_name = 0
    for name in names:
        if n_name >= 30:
            break
        p = random_pair(by_name[name], cond=lambda a, b: fam[a] != fam[b])
        if p:
            emit(*p, "heldout_name_apart")
            n_name += 1

    # ---- heldout_similar_apart ------------------------------------------------------------
    tokens = {i: frozenset(IDENT_RE.findall(rows[i]["python_code"])) for i in firsts}
    by_layers: dict = collections.defaultdict(list)
    for i in firsts:
        by_layers[len(NN_LAYER_RE.findall(rows[i]["python_code"]))].append(i)
    cands: set[tuple[int, int]] = set()
    attempts = 0
    while len(cands) < 20000 and attempts < 2_000_000:
        attempts += 1
        a = rng.choice(firsts)
        bucket = by_layers[len(NN_LAYER_RE.findall(rows[a]["python_code"]))]
        if len(bucket) < 2:
            continue
        b = rng.choice(bucket)
        if a == b or fam[a] == fam[b] or not ok(a, b):
            continue
        cands.add((min(a, b), max(a, b)))

    def jaccard(p):
        x, y = tokens[p[0]], tokens[p[1]]
        return len(x & y) / max(1, len(x | y))

    ranked = sorted(cands, key=lambda p: (-jaccard(p), p))
    for p in ranked[:20]:
        emit(*p, "heldout_similar_apart")

    for obj in out:
        print(json.dumps(obj))
    print(
        f"# families={len(members_of)} multi={len(multi)} merged={sum(o['stratum']=='heldout_merged' for o in out)} "
        f"name_apart={n_name} similar_apart={min(20, len(ranked))} candidates={len(cands)} "
        f"jaccard_top20=[{jaccard(ranked[19]) if len(ranked) >= 20 else 0:.3f}, {jaccard(ranked[0]) if ranked else 0:.3f}]",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
