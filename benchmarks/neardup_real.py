"""Benchmark: the near-duplicate families on the 18,161 real KernelBook modules, against pairs
labelled by hand.

Reads ``kernelbook_modules.jsonl.gz`` from the data folder (``--data``, default
``../shared/data`` beside the repository; never copied into the project: its code is parsed by
the families stage, never run), groups the distinct modules (``neardup.group_families``; the key
of a module is the first line number holding its code, zero-padded) at the library's default
threshold, in a fresh process, and prints:

- pairwise precision and recall on the labelled pairs (``benchmarks/labels/neardup_pairs*.jsonl``,
  labelled with ``benchmarks/labels/neardup_rule.md``; a pair is predicted the same task when
  both modules land in one family), with the confusion table, overall and per stratum;
- the distinct modules, the families, the largest family (its size and the operations its
  members run), the stage's wall time and peak RSS;
- every labelled pair it gets wrong: ``a b stratum label predicted`` with the similarity.

    uv run python benchmarks/neardup_real.py [--data ../shared/data] [--threshold T ...]
    uv run python benchmarks/neardup_real.py --sweep 0.5 0.6 0.7 0.8 0.9   # one table row per threshold
    uv run python benchmarks/neardup_real.py --decontam   # KernelBench problems against KernelBook

``--decontam`` runs the decontamination matching (``neardup.ReferenceIndex`` of the 270
KernelBench problems, ``kernelbench_problems.jsonl``, field ``code``) against every KernelBook
module, prints each match and its label (``benchmarks/labels/decontam_matches.jsonl``), the
precision of the matches on those labels, and how many KernelBook modules are matched.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LABELS = ROOT / "benchmarks" / "labels"
STRATA = ("largest_families", "random_family", "near_miss", "same_name", "v2_merged")


def read_modules(data: Path) -> list[str]:
    with gzip.open(data / "kernelbook_modules.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line)["python_code"] for line in f]


def distinct_modules(codes: list[str]) -> tuple[list[str], list[str], list[str]]:
    """The key of every line (its first line with the same code), the distinct keys and codes."""
    first: dict[str, str] = {}
    key_of = []
    for line, code in enumerate(codes):
        key_of.append(first.setdefault(code, f"{line:05d}"))
    keys = list(dict.fromkeys(key_of))
    by_key = {k: codes[int(k)] for k in keys}
    return key_of, keys, [by_key[k] for k in keys]


def read_labels(pattern: str = "neardup_pairs*.jsonl") -> tuple[list[dict], int]:
    """The labelled pairs, and the lines that are not (yet) a complete label (files being written)."""
    rows, skipped = [], 0
    for path in sorted(LABELS.glob(pattern)):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if row.get("label") in ("same", "different"):
                    rows.append(row)
                else:
                    skipped += 1
            except json.JSONDecodeError:
                skipped += 1
    return rows, skipped


# --- the measured child process ----------------------------------------------------------------


def run_stage(data: Path, thresholds: list[float], out: Path, workers: int | None) -> None:
    """Normalise once, group at each threshold (the first is timed as the whole stage), write
    the families and figures as JSON."""
    from kernelbook_lib import neardup

    codes = read_modules(data)
    _, keys, distinct = distinct_modules(codes)
    del codes
    started = time.perf_counter()
    result = neardup.group_families(keys, distinct, thresholds[0], workers)
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    families = {thresholds[0]: result.family_of}
    for t in thresholds[1:]:
        families[t] = neardup.families_of_forms(keys, result.forms, t)[0]
    out.write_text(json.dumps({
        "keys": keys, "families": {str(t): f for t, f in families.items()}, "stats": result.stats,
        "wall_s": wall, "peak_rss_mib": peak, "forms": result.forms,
    }))  # fmt: skip


def measured(data: Path, thresholds: list[float], workers: int | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="kernelbook-neardup-real-") as tmp:
        out = Path(tmp) / "families.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run", str(out), "--data", str(data),
               "--threshold", *map(str, thresholds)]  # fmt: skip
        if workers is not None:
            cmd += ["--workers", str(workers)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr)
            raise SystemExit("the measured process failed")
        return json.loads(out.read_text())


# --- scoring -----------------------------------------------------------------------------------


def confusion(pairs: list[tuple[dict, bool]]) -> dict[str, int]:
    c = Counter()
    for row, predicted in pairs:
        same = row["label"] == "same"
        c["tp" if same and predicted else "fn" if same else "fp" if predicted else "tn"] += 1
    return {k: c[k] for k in ("tp", "fp", "fn", "tn")}


def scores(c: dict[str, int]) -> tuple[float, float]:
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 1.0
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 1.0
    return precision, recall


def predictions(labels: list[dict], key_of: list[str], family: dict[str, str]) -> list[tuple[dict, bool]]:
    return [(row, family[key_of[row["a"]]] == family[key_of[row["b"]]]) for row in labels]


def print_table(pairs: list[tuple[dict, bool]]) -> None:
    print(f"{'stratum':<18} {'pairs':>5} {'TP':>4} {'FP':>4} {'FN':>4} {'TN':>4} {'precision':>9} {'recall':>7}")
    groups = [("all", pairs)] + [(s, [p for p in pairs if p[0]["stratum"] == s]) for s in STRATA]
    groups += [(s, [p for p in pairs if p[0]["stratum"] == s]) for s in sorted({p[0]["stratum"] for p in pairs} - set(STRATA))]
    for name, group in groups:
        if not group:
            continue
        c = confusion(group)
        precision, recall = scores(c)
        print(f"{name:<18} {len(group):>5} {c['tp']:>4} {c['fp']:>4} {c['fn']:>4} {c['tn']:>4} {precision:>9.3f} {recall:>7.3f}")


def pair_similarity(codes: list[str], a: int, b: int) -> float:
    from kernelbook_lib import neardup

    sigs = neardup.Signatures.of([neardup.normalize(codes[a]).form, neardup.normalize(codes[b]).form])
    return neardup.similarity(sigs, 0, sigs, 1)


def largest_family(keys: list[str], family_of: list[str], forms: list[str]) -> None:
    from kernelbook_lib import neardup

    members: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(family_of):
        members[f].append(i)
    fid, group = min(members.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    sequences = Counter(neardup.parts(forms[i])[3] or "(not walked: scaffolding only)" for i in group)
    print(f"largest family: {len(group)} distinct modules (id {fid}); its representative (line {int(fid)}) runs: "
          f"{neardup.parts(forms[keys.index(fid)])[3] or '(not walked)'}")  # fmt: skip
    print(f"  the operation sequences its members hold ({len(sequences)} distinct):")
    for seq, n in sequences.most_common(8):
        print(f"  {n:>5} x {seq[:160]}")


def read_decontam_labels(name: str = "decontam_matches.jsonl") -> dict[tuple[str, int], dict]:
    path = LABELS / name
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {(row["kernelbench"], row["module"]): row for row in rows}


def decontam(data: Path, threshold: float, workers: int | None, label_file: str = "decontam_matches.jsonl") -> None:
    """The KernelBench problems as the reference items, every KernelBook module matched against
    them (its best match), as the ``decontaminate`` stage does."""
    from kernelbook_lib import neardup

    path = data / "kernelbench_problems.jsonl"
    if not path.exists():
        raise SystemExit(f"no data: {path} is absent (pass --data DIR)")
    problems = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    items = [f"L{p['level']}/{p['problem_id']}" for p in problems]
    codes = read_modules(data)
    key_of, keys, distinct = distinct_modules(codes)
    started = time.perf_counter()
    index = neardup.ReferenceIndex([p["code"] for p in problems], threshold, workers)
    forms, _ = neardup.normalize_many(distinct, workers)
    matches, compared = index.match(forms)
    wall = time.perf_counter() - started
    rows_of = Counter(key_of)
    labels = read_decontam_labels(label_file)
    found = [(keys[i], m) for i, m in enumerate(matches) if m is not None]
    print(f"{len(problems)} KernelBench problems against {len(codes):,} KernelBook modules ({len(keys):,} distinct codes); "
          f"{neardup.NORMALIZATION_VERSION}, threshold {threshold}; {compared:,} candidate pairs, {wall:.1f} s")  # fmt: skip
    print(f"\n{len(found)} KernelBook module(s) match (line kernelbench similarity rows label):")
    same = different = unlabelled = 0
    for key, m in sorted(found, key=lambda km: (items[km[1].item], km[0])):
        row = labels.get((items[m.item], int(key)))
        label = row["label"] if row else "unlabelled"
        same += label == "same"
        different += label == "different"
        unlabelled += row is None
        name = problems[m.item]["name"]
        print(f"{int(key):>5} {items[m.item]:<8} {m.similarity:.3f} {rows_of[key]:>3} {label:<10} {name}")
    labelled = same + different
    print(f"\nprecision on the labels: {same}/{labelled} = {same / labelled if labelled else float('nan'):.3f} "
          f"({unlabelled} match(es) unlabelled; labels: benchmarks/labels/{label_file})")  # fmt: skip
    stale = sorted(set(labels) - {(items[m.item], int(k)) for k, m in found})
    if stale:
        print(f"{len(stale)} labelled pair(s) no longer matched: " + ", ".join(f"{kb} {line}" for kb, line in stale))
    print(f"KernelBook modules matched: {len(found)} distinct codes, {sum(rows_of[k] for k, _ in found)} of {len(codes):,} rows; "
          f"KernelBench problems with a match: {len({m.item for _, m in found})} of {len(problems)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--threshold", type=float, nargs="+", default=None, help="default: the library's")
    parser.add_argument("--sweep", type=float, nargs="+", help="print precision and recall at each of these thresholds")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--decontam", action="store_true", help="match KernelBench against KernelBook instead")
    parser.add_argument("--labels", default="neardup_pairs*.jsonl",
                        help="label files in benchmarks/labels (a glob; neardup_heldout.jsonl for the held-out pairs)")
    parser.add_argument("--decontam-labels", default="decontam_matches.jsonl",
                        help="with --decontam: the labels of the matches in benchmarks/labels (decontam_sample.jsonl: "
                             "a random sample read in full by another reader)")
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)  # the measured child process
    args = parser.parse_args()

    from kernelbook_lib import neardup

    if not (args.data / "kernelbook_modules.jsonl.gz").exists():
        raise SystemExit(f"no data: {args.data / 'kernelbook_modules.jsonl.gz'} is absent (pass --data DIR)")
    thresholds = args.threshold or [neardup.DEFAULT_NEAR_DUP_THRESHOLD]
    if args.run:
        run_stage(args.data, thresholds, args.run, args.workers)
        return
    if args.decontam:
        decontam(args.data, thresholds[0], args.workers, args.decontam_labels)
        return
    threshold = thresholds[0]
    run = measured(args.data, [threshold, *(t for t in (args.sweep or []) if t != threshold)], args.workers)
    codes = read_modules(args.data)
    key_of, keys, _ = distinct_modules(codes)
    stats = run["stats"]
    labels, skipped = read_labels(args.labels)
    print(f"{len(codes):,} KernelBook modules, {len(keys):,} distinct codes; {stats['normalization']}, threshold {threshold}, "
          f"{stats['linkage']} linkage, operations share {stats['operations_share']}")  # fmt: skip
    print(f"families: {stats['families']:,} ({stats['problems_in_shared_families']:,} distinct modules in "
          f"{stats['shared_families']:,} families of more than one); {stats['distinct_forms']:,} distinct forms, "
          f"{stats['untraced_modules']:,} modules not walked {stats['untraced_reasons']}")  # fmt: skip
    print(f"stage: {run['wall_s']:.1f} s wall (normalisation {stats['normalize_s']:.1f} s, {stats['workers']} worker(s)), "
          f"peak RSS {run['peak_rss_mib']:,.0f} MiB (the stage's process, with the modules read), "
          f"{stats.get('worker_peak_rss_mib') or 0:,.0f} MiB (largest worker); {stats['pairs_compared']:,} candidate pairs, "
          f"{stats['pairs_compared_exactly']:,} compared exactly, {stats['pairs_confirmed']:,} linked")  # fmt: skip
    largest_family(keys, run["families"][str(threshold)], run["forms"])
    family = dict(zip(keys, run["families"][str(threshold)]))
    pairs = predictions(labels, key_of, family)
    print(f"\nlabelled pairs: {len(labels)} ({sum(r['label'] == 'same' for r in labels)} same task)"
          + (f"; {skipped} line(s) not a complete label yet, skipped" if skipped else ""))  # fmt: skip
    print_table(pairs)
    if args.sweep:
        print(f"\n{'threshold':>9} {'precision':>9} {'recall':>7} {'families':>8}")
        for t in sorted({threshold, *args.sweep}):
            fam = dict(zip(keys, run["families"][str(t)]))
            precision, recall = scores(confusion(predictions(labels, key_of, fam)))
            mark = "  <- default" if t == neardup.DEFAULT_NEAR_DUP_THRESHOLD else ""
            print(f"{t:>9} {precision:>9.3f} {recall:>7.3f} {len(set(fam.values())):>8,}{mark}")
    wrong = [(row, predicted) for row, predicted in pairs if predicted != (row["label"] == "same")]
    print(f"\n{len(wrong)} labelled pair(s) wrong at {threshold} (a b stratum label predicted similarity):")
    for row, predicted in sorted(wrong, key=lambda p: (p[0]["stratum"], p[0]["a"], p[0]["b"])):
        value = pair_similarity(codes, row["a"], row["b"])
        print(f"{row['a']} {row['b']} {row['stratum']} {row['label']} {'same' if predicted else 'different'} {value:.3f}")


if __name__ == "__main__":
    main()
