"""The analysis plots' files, and the key that says when a drawing can be reused.

Light on purpose: it imports no plotting library (``kernelbook_lib/plots.py`` draws), so a run
whose plots are reused never imports plotnine, matplotlib or pandas.

The plots are a pure function of the analysed values: the ``difficulty``, ``style`` and
``reward`` columns in row order (the jitter is seeded), the code that draws them and the
versions of the libraries that render them. :func:`images_key` hashes exactly that, so the
analysis task can reuse the PNG bytes an earlier run drew for the same key (a Prefect cache key,
``tasks/analysis.py``) and a change in any of them draws again.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import polars as pl

from kernelbook_lib.export import atomic_path

CORRELATION_PNG = "correlation_analysis.png"
JOINT_PNG = "joint_distribution.png"
REWARD_PNG = "reward_distribution.png"
#: The plots of every analysis (the correlations).
PLOT_FILES: tuple[str, ...] = (CORRELATION_PNG, JOINT_PNG, REWARD_PNG)
#: The SFT length distribution: drawn when the rows carry ``sft_chars`` (every curate run since
#: the sft stage; not an older folder's rows).
SFT_LENGTHS_PNG = "sft_lengths.png"
ALL_PLOT_FILES: tuple[str, ...] = (*PLOT_FILES, SFT_LENGTHS_PNG)
#: The length columns a plot shows, when present.
LENGTH_COLUMNS: tuple[str, ...] = ("sft_chars", "sft_tokens")

#: Bump to draw every plot again whatever the key's other parts say.
KEY_VERSION = "plots-v2"
#: Modules whose source decides the pictures: the drawing, the statistics printed in the panels.
DRAWING_MODULES: tuple[str, ...] = (
    "kernelbook_lib.plots",
    "kernelbook_lib.analysis",
    "kernelbook_lib.report",
    "kernelbook_lib.plot_files",
)
#: Distributions that render them (matplotlib brings the fonts it draws with).
DRAWING_LIBRARIES: tuple[str, ...] = ("plotnine", "matplotlib", "mizani", "pandas", "numpy", "scipy", "pillow", "polars")


def plot_data(df: pl.DataFrame) -> pl.DataFrame:
    """The values the plots show, with the types they are drawn from (the SFT lengths when the
    rows have them)."""
    return df.select(
        pl.col("difficulty").cast(pl.Int64), pl.col("style").cast(pl.Int64), pl.col("reward").cast(pl.Float64),
        *(pl.col(c).cast(pl.Int64) for c in LENGTH_COLUMNS if c in df.columns),
    )


def _library_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def images_key(df: pl.DataFrame) -> str:
    """SHA-256 over the plotted values (row order included), the drawing code and library versions."""
    digest = hashlib.sha256(KEY_VERSION.encode())
    for module in DRAWING_MODULES:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"cannot find the source of {module} to key the plots")
        digest.update(module.encode() + b"\0" + Path(spec.origin).read_bytes())
    for name in DRAWING_LIBRARIES:
        digest.update(f"{name}=={_library_version(name)}\0".encode())
    data = plot_data(df)
    digest.update(f"rows={data.height}\0".encode())
    for column in data.iter_columns():
        digest.update(column.name.encode() + b"\0")
        digest.update(column.to_numpy().tobytes())
        digest.update(column.is_null().to_numpy().tobytes())
    return digest.hexdigest()


def write_images(images: Mapping[str, bytes], out_dir: Path) -> list[Path]:
    """Write the PNGs (each atomically) into ``out_dir``, in :data:`ALL_PLOT_FILES` order: every
    one of :data:`PLOT_FILES`, and :data:`SFT_LENGTHS_PNG` when it was drawn.

    A plot file of an earlier run that is not among ``images`` (all of them when there are no
    rows to plot) is removed from ``out_dir``: it would contradict the report next to it."""
    out_dir = Path(out_dir)
    if images and not set(PLOT_FILES) <= set(images) <= set(ALL_PLOT_FILES):
        raise ValueError(f"expected the images {', '.join(PLOT_FILES)} (and optionally {SFT_LENGTHS_PNG}), got {', '.join(sorted(images))}")
    for name in ALL_PLOT_FILES:
        if name not in images:
            (out_dir / name).unlink(missing_ok=True)
    paths = []
    for name in ALL_PLOT_FILES:
        if name not in images:
            continue
        with atomic_path(out_dir / name) as tmp:
            Path(tmp).write_bytes(images[name])
        paths.append(out_dir / name)
    return paths
