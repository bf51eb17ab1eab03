"""Benchmark: bytes a republish sends to the Hub's Xet storage when 1 % of the rows are new.

The Hub stores uploads in Xet: the client cuts each file into content-defined chunks (about
64 KiB) and sends only chunks the storage does not hold yet. How much of a re-written parquet
file is new therefore depends on how the file was written. This script writes one judged
dataset of ``--rows`` rows (realistic rollouts from the project's fake-data generator, in the
output columns of ``filtered``), then the same rows plus 1 % new ones, with two writers:

* ``cdc``: the exporter's writer (:func:`kernelbook_lib.export.write_parquet`: pyarrow with
  ``use_content_defined_chunking``, zstd level 6);
* ``plain``: the writer used before (polars ``write_parquet``, zstd, fixed-size pages).

For each it uploads the first file, then the second, to a local Xet store through ``hf_xet``
(the Xet client huggingface_hub uses, with its ``local://`` storage instead of the Hub; each
upload in its own session, as two separate publishes), and prints what ``hf_xet`` reports for
the second upload: new bytes after deduplication and bytes actually uploaded (compressed chunk
data plus metadata). Two placements of the new rows: appended at the end, and inserted at
random positions (every split is written in source order, so new rollouts can land anywhere).

No network: the Hub is not reachable here, so this measures the client's chunk-level dedup
against a store holding the previous version, which is what a republish to the same repo
deduplicates against; the Hub may dedupe a little less when it does not hand the client
the previous version's chunk list.

    uv run python benchmarks/republish_bytes.py [--rows 7600] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hf_xet
import polars as pl

from kernelbook_lib import export, schema
from kernelbook_lib.text import problem_id
from tests.fixtures import fake_data


def judged_rows(n: int, seed: int, tmp: Path) -> pl.DataFrame:
    """``n`` rows above the threshold, in source order, with judged columns like the static judge's."""
    source = fake_data.write_evals_large(tmp / "evals.parquet", int(n * 2.6) + 100, seed=seed, bad_rows=False)
    frame = pl.read_parquet(source).filter(pl.col("reward") > 0.85).head(n)
    if frame.height < n:
        raise SystemExit(f"only {frame.height} rows above the threshold; raise the source size")
    codes = frame["info"].struct.field("python_code").to_list()
    ids = [problem_id(c) for c in codes]
    rng = random.Random(seed)
    difficulty = [rng.randint(0, 10) for _ in ids]
    style = [rng.randint(0, 10) for _ in ids]
    judged = pl.DataFrame(
        {
            "problem_id": ids,
            "family_id": ids,  # every problem its own family (as with --no-near-dup)
            "difficulty": difficulty,
            "style": style,
            "judge": ["static-ast-v1"] * n,
            "judge_model": [None] * n,
            "judge_prompt_version": [None] * n,
            "judge_rationale": [f"{d} ops over the module; {s} for structure" for d, s in zip(difficulty, style)],
            "judge_prompt_tokens": [None] * n,
            "judge_completion_tokens": [None] * n,
            "score": [r * d * s for r, d, s in zip(frame["reward"], difficulty, style)],
        },
        schema=schema.JUDGED_SCHEMA,
    )
    return pl.concat([frame, judged], how="horizontal")


def republished(old: pl.DataFrame, extra: pl.DataFrame, placement: str, seed: int) -> pl.DataFrame:
    if placement == "appended":
        return pl.concat([old, extra])
    rng = random.Random(seed)
    positions = sorted(rng.sample(range(old.height + extra.height), extra.height))
    order, o, e = [], 0, 0
    for i in range(old.height + extra.height):
        if e < len(positions) and positions[e] == i:
            order.append(old.height + e)
            e += 1
        else:
            order.append(o)
            o += 1
    return pl.concat([old, extra]).select(pl.all().gather(order))


def write(frame: pl.DataFrame, path: Path, writer: str) -> Path:
    if writer == "cdc":
        export.write_parquet(frame, path)
    else:
        frame.write_parquet(path, compression="zstd", statistics=True)
    return path


def xet_upload(path: Path, store: Path):
    """Upload ``path`` to the local Xet store in a new session; hf_xet's dedup metrics."""
    session = hf_xet.XetSession()
    commit = session.new_upload_commit(endpoint=f"local://{store}")
    commit.start_upload_file(str(path))
    return commit.wait_to_finish().dedup_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=7_600, help="rows in the published dataset (the real filtered set has about 7,600)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="republish-bytes-") as tmp_name:
        tmp = Path(tmp_name)
        pool = judged_rows(args.rows + max(1, args.rows // 100), args.seed, tmp)
        old, extra = pool.head(args.rows), pool.slice(args.rows)
        out = export.to_output(old)
        print(f"{args.rows:,} rows, then {extra.height:,} new rows (1 %); hf_xet local store, one session per upload")
        print(f"{'writer':<7} {'new rows':<9} {'file':>12} {'new after dedup':>16} {'uploaded':>12} {'uploaded/file':>14}")
        for writer in ("cdc", "plain"):
            for placement in ("appended", "random"):
                new = export.to_output(republished(old, extra, placement, args.seed))
                assert new.height == old.height + extra.height and new.columns == out.columns
                store = tmp / f"store-{writer}-{placement}"
                first = write(out, tmp / f"{writer}-old.parquet", writer)
                second = write(new, tmp / f"{writer}-{placement}-new.parquet", writer)
                xet_upload(first, store)
                metrics = xet_upload(second, store)
                size = second.stat().st_size
                print(f"{writer:<7} {placement:<9} {size:>12,} {metrics.new_bytes:>16,} {metrics.total_bytes_uploaded:>12,} "
                      f"{metrics.total_bytes_uploaded / size:>13.1%}")
    print(f"(took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
