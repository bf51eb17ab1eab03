"""Regenerate the bundled synthetic samples in ``kernelbook_lib/data`` (deterministic).

    uv run python scripts/make_sample.py [--out-dir kernelbook_lib/data]

Running it twice gives byte-identical files: the rows come from fixed seeds and the parquet
writer options are pinned in ``tests.fixtures.fake_data``. The data is synthetic; see
``kernelbook_lib/data/README.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tests.fixtures import fake_data

DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "kernelbook_lib" / "data"

#: The parameters of the committed samples (tests regenerate them with these).
EVALS_FILE = "evals_sample.parquet"
EVALS_PROBLEMS = 72
EVALS_ROLLOUTS = 3
EVALS_SEED = 20250101
EVALS_FAMILIES = 3  # near-duplicate families (an original and two rewrites each)
EVALS_HACKS = 9  # planted reward hacks: one of each shape in fake_data.HACK_SHAPES
KERNELBOOK_FILE = "kernelbook_sample.parquet"
KERNELBOOK_ROWS = 50
KERNELBOOK_DUPLICATES = 4
KERNELBOOK_EMPTY_CODE = 2
KERNELBOOK_SEED = 20250102
KERNELBOOK_FAMILIES = 2


def make_samples(out_dir: Path) -> list[Path]:
    """Write both samples into ``out_dir`` and return their paths."""
    evals = fake_data.write_evals(
        out_dir / EVALS_FILE, EVALS_PROBLEMS, EVALS_ROLLOUTS, seed=EVALS_SEED, bad_rows=True, families=EVALS_FAMILIES,
        hacks=EVALS_HACKS,
    )
    kernelbook = fake_data.write_kernelbook(
        out_dir / KERNELBOOK_FILE,
        KERNELBOOK_ROWS,
        seed=KERNELBOOK_SEED,
        duplicates=KERNELBOOK_DUPLICATES,
        empty_code=KERNELBOOK_EMPTY_CODE,
        families=KERNELBOOK_FAMILIES,
    )
    return [evals, kernelbook]


def eval_families() -> list[tuple[int, ...]]:
    """The example_ids of the eval sample's near-duplicate families (ground truth; see the data README)."""
    return fake_data.eval_families(EVALS_PROBLEMS, seed=EVALS_SEED, families=EVALS_FAMILIES)


def eval_hacks() -> list[fake_data.PlantedHack]:
    """The reward hacks planted in the eval sample, by row (ground truth; see the data README)."""
    return fake_data.eval_hacks(
        EVALS_PROBLEMS, EVALS_ROLLOUTS, seed=EVALS_SEED, bad_rows=True, families=EVALS_FAMILIES, hacks=EVALS_HACKS
    )


def kernelbook_families() -> list[tuple[tuple[int, ...], ...]]:
    """The uuids of the KernelBook sample's near-duplicate families, per member."""
    return fake_data.kernelbook_families(
        KERNELBOOK_ROWS, seed=KERNELBOOK_SEED, duplicates=KERNELBOOK_DUPLICATES, empty_code=KERNELBOOK_EMPTY_CODE,
        families=KERNELBOOK_FAMILIES,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where to write (default: %(default)s)")
    args = parser.parse_args()
    for path in make_samples(args.out_dir):
        print(f"{path}  {path.stat().st_size:,} bytes  sha256 {fake_data.file_digest(path)}")


if __name__ == "__main__":
    main()
