"""Benchmark: the cost of the ``sft`` stage's token counting at the 10x curate size.

Generates the 10x data as ``benchmarks/curate_scale.py`` does (181,620 rollout rows,
``tests.fixtures.fake_data.write_evals_large``, seed 1), runs the load stage on it, and times
``kernelbook_lib.sft.sft_stage`` in each completion form: characters only (no ``--tokenizer``),
then with a tokenizer, on the rows above the reward threshold (what the stage gets in a 10x
curate run, less the few the screen rejects; ``--all-rows`` adds every loaded row, in the
``full`` form). Prints seconds and rows/s of each, and the cost of the token counting itself
(the difference).

The tokenizer is a byte-level BPE trained here on 5,000 rows' texts with ``tokenizers.trainers``
(``--vocab``, default 32,000; nothing is downloaded). ``tokenizers`` encodes a batch on every
core (``TOKENIZERS_PARALLELISM``), so the figures scale with the cores printed first. With
``--curate`` it also times the real command (``kernelbook curate --no-analysis --judge static``)
with and without ``--tokenizer`` (minutes each).

    uv run python benchmarks/sft_tokens.py [--rows 181620] [--vocab 32000] [--all-rows] [--curate] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train_tokenizer(frame, path: Path, vocab: int) -> float:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    started = time.perf_counter()
    sample = frame.head(5_000)
    texts = [m["content"] or "" for messages in sample["prompt"].to_list() + sample["completion"].to_list() for m in messages]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["[UNK]"],
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer.save(str(path))
    return time.perf_counter() - started


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=181_620)
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--all-rows", action="store_true", help="also time every loaded row (the full form)")
    parser.add_argument("--curate", action="store_true", help="also time the real curate command with and without --tokenizer")
    parser.add_argument("--keep", action="store_true", help="keep the generated data and tokenizer")
    args = parser.parse_args()

    import polars as pl

    from kernelbook_lib import loading, schema, sft
    from tests.fixtures.fake_data import write_evals_large

    print(f"cores {os.cpu_count()}, TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', '(unset: on)')}, "
          f"load average {os.getloadavg()[0]:.1f}")
    work = Path(tempfile.mkdtemp(prefix="kernelbook-sft-bench-"))
    try:
        data = work / "evals.parquet"
        _, wall = timed(lambda: write_evals_large(data, args.rows, seed=1))
        print(f"generated {args.rows:,} rows ({data.stat().st_size / 2**20:.0f} MiB) in {wall:.1f} s")
        loaded, wall = timed(lambda: loading.prepare(loading.read_source(str(data))).frame)
        print(f"load stage: {loaded.height:,} rows in {wall:.1f} s")
        tokenizer_file = work / "tokenizer.json"
        wall = train_tokenizer(loaded, tokenizer_file, args.vocab)
        print(f"tokenizer: byte-level BPE, vocab {args.vocab:,}, trained on 5,000 rows in {wall:.1f} s")
        sft.load_tokenizer(tokenizer_file)  # read once (the parameter check does this before a run)

        above = loaded.filter(pl.col("reward") > 0.85)
        cases = [("rows with reward > 0.85 (the sft stage's input at 10x)", above, sft.COMPLETION_FORMS)]
        if args.all_rows:
            cases.append(("every loaded row", loaded, ("full",)))
        for label, frame, forms in cases:
            print(f"\n{label}: {frame.height:,} rows")
            for form in forms:
                chars, chars_s = timed(lambda: sft.sft_stage(frame, form))  # noqa: B023
                tokens, tokens_s = timed(lambda: sft.sft_stage(frame, form, str(tokenizer_file)))  # noqa: B023
                counts = tokens.result.frame.get_column(schema.SFT_TOKENS)
                lengths = chars.result.frame.get_column(schema.SFT_CHARS)
                counting = tokens_s - chars_s
                print(f"  {form:16} characters only {chars_s:6.2f} s ({frame.height / chars_s:>9,.0f} rows/s); "
                      f"with tokens {tokens_s:6.2f} s ({frame.height / tokens_s:>9,.0f} rows/s); "
                      f"token counting {counting:6.2f} s ({frame.height / max(counting, 1e-9):>9,.0f} rows/s); "
                      f"{counts.sum() / max(tokens_s, 1e-9) / 1e6:5.2f} M tokens/s; "
                      f"mean {lengths.mean():,.0f} chars, {counts.mean():,.0f} tokens")

        if args.curate:
            print()
            for label, extra in (("no tokenizer", []), ("--tokenizer", ["--tokenizer", str(tokenizer_file)])):
                out = work / f"out-{label.strip('-')}"
                started = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "kernelbook_cli", "curate", "--source", str(data), "--judge", "static",
                                       "--no-analysis", "--completion", "answer", "--out", str(out), *extra],
                                      cwd=ROOT, capture_output=True, text=True)
                wall = time.perf_counter() - started
                if proc.returncode != 0:
                    print(proc.stdout + proc.stderr)
                    raise SystemExit("curate failed")
                stage = next((line for line in proc.stdout.splitlines() if "sft: counted the tokens" in line), "")
                print(f"curate --completion answer, {label:12}: {wall:6.1f} s; {stage.split(' - ', 1)[-1]}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
