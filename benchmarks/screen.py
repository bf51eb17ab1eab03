"""How well the kernel screen agrees with hand labels, and how fast it is.

    uv run python benchmarks/screen.py [--data DIR] [--json]

Reads the real third-party solutions in ``DIR`` (default ``../shared/data`` beside the repository:
``triton_solutions.jsonl`` and ``reward_hacking_examples.jsonl``, never copied into the project)
and the hand labels ``benchmarks/labels/screen_labels*.jsonl`` (the rule is
``benchmarks/labels/screen_rule.md``; ids are ``pair_id`` or ``hack:<example_id>``). It screens
every labelled row (solution: ``solution_code``; reference: ``pytorch_code`` / ``reference_code``)
and prints:

* the confusion table, label verdict (kernel / flagged / reject) x screen outcome (kept clean /
  kept flagged / rejected), overall and per source;
* the four goals: (1) of the rows kept with no flag, the share labelled ``kernel`` (>= 95 %);
  (2) the share of ``kernel`` rows kept with no flag (>= 90 %); (3) the share of ``reject`` rows
  rejected (>= 90 %); (4) rows labelled ``partial`` or ``fallback:device`` kept unflagged (0);
* every disagreement as ``id | label | screen reason/flags | detail``, then the rows whose outcome
  agrees but whose kinds differ;
* the screen's time per solution over every row of both files (labelled or not), with a cold
  reference cache (each reference is read once, as in the pipeline).

``--json`` prints the same figures as one JSON object; ``--labels GLOB`` reads other label files
(a held-out set) instead.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kernelbook_lib import screen as screen_module
from kernelbook_lib.module_parse import parse_code
from kernelbook_lib.screen import screen

VERDICTS = ("kernel", "flagged", "reject")
OUTCOMES = ("kept-clean", "kept-flagged", "rejected")


def _load_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_rows(data: Path) -> dict[str, dict]:
    """id -> {source, solution, reference} for every row of both files."""
    solutions = data / "triton_solutions.jsonl"
    hacks = data / "reward_hacking_examples.jsonl"
    missing = [p.name for p in (solutions, hacks) if not p.is_file()]
    if missing:
        raise SystemExit(f"benchmarks/screen.py: {', '.join(missing)} not found in {data} (pass --data DIR)")
    rows: dict[str, dict] = {}
    for row in _load_jsonl(solutions):
        rows[row["pair_id"]] = {"source": row["source"], "solution": row["solution_code"],
                                "reference": row["pytorch_code"]}
    for row in _load_jsonl(hacks):
        rows[f"hack:{row['example_id']}"] = {"source": "reward_hacking_examples", "solution": row["solution_code"],
                                             "reference": row["reference_code"]}
    return rows


DEFAULT_LABELS = "benchmarks/labels/screen_labels*.jsonl"


def load_labels(pattern: str = DEFAULT_LABELS) -> tuple[dict[str, dict], list[str]]:
    """id -> label, and the problems found (duplicate ids that disagree)."""
    labels: dict[str, dict] = {}
    problems: list[str] = []
    paths = sorted(glob.glob(pattern if Path(pattern).is_absolute() else str(REPO / pattern)))
    if not paths:
        raise SystemExit(f"benchmarks/screen.py: no label file matches {pattern}")
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    label = json.loads(line)
                except json.JSONDecodeError:
                    problems.append(f"{Path(path).name}:{number}: not JSON (a line being written?)")
                    continue
                ident = label.get("id")
                if label.get("verdict") not in VERDICTS or not ident:
                    problems.append(f"{Path(path).name}:{number}: no id or verdict")
                    continue
                old = labels.get(ident)
                if old is not None and (old["verdict"], sorted(old.get("kinds", []))) != (
                        label["verdict"], sorted(label.get("kinds", []))):
                    problems.append(f"{ident}: labelled twice, differently ({old['verdict']} / {label['verdict']})")
                labels[ident] = label
    return labels, problems


ADJUDICATION = "benchmarks/labels/screen_adjudication.jsonl"


def apply_adjudication(labels: dict[str, dict]) -> list[str]:
    """Replace the labels the lead adjudicated (only those in ``labels``); the ids replaced."""
    replaced = []
    for decision in _load_jsonl(REPO / ADJUDICATION):
        ident = decision["id"]
        if ident in labels:
            labels[ident] = {**labels[ident], **{k: decision[k] for k in ("verdict", "kinds", "ops")}}
            replaced.append(ident)
    return replaced


def outcome(verdict) -> str:
    if verdict.reject is not None:
        return "rejected"
    return "kept-flagged" if verdict.flags else "kept-clean"


def shown(verdict) -> str:
    if verdict.reject is not None:
        return verdict.reason
    return ",".join(verdict.flags) if verdict.flags else "kept clean"


def label_text(label: dict) -> str:
    kinds = ",".join(label.get("kinds") or [])
    ops = ",".join(label.get("ops") or [])
    return label["verdict"] + (f" {kinds}" if kinds else "") + (f" [{ops}]" if ops else "")


def kinds_agree(label: dict, verdict) -> bool:
    kinds = set(label.get("kinds") or [])
    if verdict.reject is not None:
        return verdict.reject in kinds or not kinds
    screen_kinds = {f.split(":", 1)[0] if not f.startswith("fallback:") else f for f in verdict.flags}
    wanted = {k if k.startswith("fallback") else k.split(":", 1)[0] for k in kinds}
    return screen_kinds == wanted


def table(pairs: list[tuple[dict, object]]) -> tuple[list[str], dict]:
    counts = Counter((label["verdict"], outcome(v)) for label, v in pairs)
    head = "label / screen"
    lines = [f"{head:<16}" + "".join(f"{o:>14}" for o in OUTCOMES) + f"{'total':>8}"]
    for verdict in VERDICTS:
        row = [counts[(verdict, o)] for o in OUTCOMES]
        lines.append(f"{verdict:<16}" + "".join(f"{n:>14}" for n in row) + f"{sum(row):>8}")
    totals = [sum(counts[(v, o)] for v in VERDICTS) for o in OUTCOMES]
    lines.append(f"{'total':<16}" + "".join(f"{n:>14}" for n in totals) + f"{sum(totals):>8}")
    return lines, {f"{v}/{o}": counts[(v, o)] for v in VERDICTS for o in OUTCOMES}


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} % ({part}/{whole})" if whole else "n/a (0 rows)"


def goals(pairs: list[tuple[dict, object]]) -> dict:
    clean = [label for label, v in pairs if outcome(v) == "kept-clean"]
    kernel = [v for label, v in pairs if label["verdict"] == "kernel"]
    reject = [v for label, v in pairs if label["verdict"] == "reject"]
    unflagged_partial = [label["id"] for label, v in pairs if outcome(v) == "kept-clean" and (
        {"partial", "fallback:device"} & set(label.get("kinds") or []))]
    return {
        "clean_precision": (sum(1 for label in clean if label["verdict"] == "kernel"), len(clean)),
        "kernel_recall": (sum(1 for v in kernel if outcome(v) == "kept-clean"), len(kernel)),
        "reject_recall": (sum(1 for v in reject if outcome(v) == "rejected"), len(reject)),
        "partial_or_fallback_kept_clean": unflagged_partial,
    }


def timing(rows: dict[str, dict]) -> dict:
    """The screen's time per solution (parse included), its parse alone, and how many verdicts
    report a failure of the screen itself."""
    screen_module._REF_CACHE.clear()  # cold: each reference read once, as in a pipeline run
    times = []
    failures = []
    for ident, row in rows.items():
        start = time.perf_counter()
        verdict = screen(row["solution"], row["reference"])
        times.append(time.perf_counter() - start)
        if "the screen failed" in verdict.detail:
            failures.append(ident)
    parse = []
    for row in rows.values():
        start = time.perf_counter()
        parse_code(row["solution"])
        parse.append(time.perf_counter() - start)
    times.sort()
    return {"rows": len(times), "total_s": sum(times), "mean_ms": 1000 * statistics.fmean(times),
            "median_ms": 1000 * statistics.median(times), "p95_ms": 1000 * times[int(0.95 * (len(times) - 1))],
            "max_ms": 1000 * times[-1], "parse_mean_ms": 1000 * statistics.fmean(parse),
            "screen_failures": failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                        help="directory with triton_solutions.jsonl and reward_hacking_examples.jsonl")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--labels", default=DEFAULT_LABELS,
                        help=f"label files (a glob, relative to the repository; default {DEFAULT_LABELS})")
    parser.add_argument("--adjudicated", action="store_true",
                        help=f"apply the lead's decisions in {ADJUDICATION} (see screen_rule.md) to the labels")
    args = parser.parse_args(argv)
    rows = load_rows(args.data)
    labels, problems = load_labels(args.labels)
    adjudicated = apply_adjudication(labels) if args.adjudicated else []
    unknown = sorted(set(labels) - set(rows))
    problems += [f"{ident}: no such row in the data" for ident in unknown]
    pairs = []
    for ident in sorted(set(labels) & set(rows), key=_order):
        row = rows[ident]
        pairs.append(({**labels[ident], "source": row["source"]}, screen(row["solution"], row["reference"])))
    overall, overall_counts = table(pairs)
    sources = sorted({label["source"] for label, _ in pairs})
    per_source = {s: table([p for p in pairs if p[0]["source"] == s]) for s in sources}
    figures = goals(pairs)
    disagreements = [(label, v) for label, v in pairs if {"kernel": "kept-clean", "flagged": "kept-flagged",
                                                         "reject": "rejected"}[label["verdict"]] != outcome(v)]
    kind_differences = [(label, v) for label, v in pairs if (label, v) not in disagreements
                        and not kinds_agree(label, v)]
    times = timing(rows)
    if args.json:
        print(json.dumps({
            "screen_version": screen_module.SCREEN_VERSION, "labels": args.labels, "labelled_rows": len(pairs),
            "confusion": overall_counts, "per_source": {s: c for s, (_, c) in per_source.items()},
            "goals": {"clean_precision": figures["clean_precision"], "kernel_recall": figures["kernel_recall"],
                      "reject_recall": figures["reject_recall"],
                      "partial_or_fallback_kept_clean": figures["partial_or_fallback_kept_clean"]},
            "disagreements": [{"id": label["id"], "label": label_text(label), "screen": shown(v),
                               "detail": v.detail} for label, v in disagreements],
            "kind_differences": [{"id": label["id"], "label": label_text(label), "screen": shown(v)}
                                 for label, v in kind_differences],
            "label_problems": problems, "timing": times, "adjudicated": adjudicated,
        }, indent=2))
        return 0
    print(f"kernel screen {screen_module.SCREEN_VERSION}: {len(pairs)} labelled rows of {len(rows)} ({args.labels})")
    if args.adjudicated:
        print(f"adjudicated: {len(adjudicated)} label(s) replaced by the decisions in {ADJUDICATION}"
              + (f" ({', '.join(adjudicated)})" if adjudicated else ""))
    print()
    print("confusion (all labelled rows)")
    print("\n".join(overall))
    for source, (lines, _) in per_source.items():
        print()
        print(f"confusion: {source}")
        print("\n".join(lines))
    print()
    (a, b), (c, d), (e, f) = figures["clean_precision"], figures["kernel_recall"], figures["reject_recall"]
    kept = figures["partial_or_fallback_kept_clean"]
    print("goals")
    print(f"  (1) kept with no flag and labelled kernel: {share(a, b)}   goal >= 95 %")
    print(f"  (2) kernel rows kept with no flag:          {share(c, d)}   goal >= 90 %")
    print(f"  (3) reject rows rejected:                   {share(e, f)}   goal >= 90 %")
    print(f"  (4) partial/fallback:device kept unflagged: {len(kept)}{(' (' + ', '.join(kept) + ')') if kept else ''}"
          "   goal 0")
    print()
    print(f"disagreements ({len(disagreements)}): id | label | screen reason/flags | detail")
    for label, v in disagreements:
        print(f"  {label['id']} | {label_text(label)} | {shown(v)} | {v.detail}")
    print()
    print(f"same outcome, other kinds ({len(kind_differences)}): id | label | screen")
    for label, v in kind_differences:
        print(f"  {label['id']} | {label_text(label)} | {shown(v)}")
    if problems:
        print()
        print(f"label problems ({len(problems)})")
        for problem in problems:
            print(f"  {problem}")
    print()
    print(f"time per solution over all {times['rows']} rows (cold reference cache): mean {times['mean_ms']:.2f} ms, "
          f"median {times['median_ms']:.2f} ms, p95 {times['p95_ms']:.2f} ms, max {times['max_ms']:.2f} ms "
          f"(total {times['total_s']:.2f} s); of which parsing alone: mean {times['parse_mean_ms']:.2f} ms")
    failed = times["screen_failures"]
    print(f"verdicts reporting a failure of the screen itself: {len(failed)}{(' (' + ', '.join(failed) + ')') if failed else ''}")
    return 0


def _order(ident: str) -> tuple:
    head, _, tail = ident.rpartition(":")
    return (head, int(tail)) if tail.isdigit() else (ident, 0)


if __name__ == "__main__":
    raise SystemExit(main())
