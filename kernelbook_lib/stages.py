"""The pure stages between load and export: families, filter, dedupe, split (decontaminate is
in :mod:`kernelbook_lib.decontam`).

Every stage takes a frame and returns a :class:`~kernelbook_lib.ledger.StageResult` whose
counts reconcile. Nothing here knows about Prefect.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import polars as pl

from kernelbook_lib import neardup, schema
from kernelbook_lib.errors import UserError
from kernelbook_lib.ledger import StageResult, empty_rejections, rejections

if TYPE_CHECKING:
    from kernelbook_lib.progress import Progress

from kernelbook_lib.defaults import DEFAULT_SEED, DEFAULT_THRESHOLD, DEFAULT_VAL_FRACTION, GroupBy
GROUP_BY_CHOICES: tuple[str, ...] = ("problem_id", "module_name", "family_id")

REJECT_BELOW_THRESHOLD = "reward_not_above_threshold"
REJECT_BEYOND_LIMIT = "beyond_limit"
SPLIT_COLUMN = "_split"


@dataclass(frozen=True)
class FamilyStage:
    """The ``families`` stage's result (every row, with ``family_id``), what the summary says
    about the families (``near_dup``), and the normalised form of each problem (``problem_id``,
    ``_form``; None with ``--no-near-dup``), which decontamination reuses."""

    result: StageResult
    near_dup: dict = field(default_factory=dict)
    forms: pl.DataFrame | None = None
    timings: dict = field(default_factory=dict)  # seconds (logged, not in the summary: runs must compare equal)


def assign_families(
    frame: pl.DataFrame,
    near_dup: bool = True,
    threshold: float = neardup.DEFAULT_NEAR_DUP_THRESHOLD,
    workers: int | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> FamilyStage:
    """The ``families`` stage: add ``family_id`` to every row. With ``near_dup``, problems whose
    modules are near-duplicates (:func:`kernelbook_lib.neardup.group_families`) share a family,
    named by its smallest ``problem_id``; without, every problem is its own family
    (``family_id == problem_id``). Nothing is dropped.

    It runs on every row that passed load validation, before the filter, so a problem's family
    (and so its split) never depends on ``--threshold`` or ``--limit``."""
    neardup.check_threshold(threshold)
    problems = frame.select("problem_id", schema.PYTHON_CODE).unique(subset="problem_id", keep="first", maintain_order=True)
    keys = problems.get_column("problem_id").to_list()
    if near_dup:
        grouped = neardup.group_families(keys, problems.get_column(schema.PYTHON_CODE).to_list(), threshold, workers, progress, log)
        forms = pl.DataFrame({"problem_id": keys, "_form": grouped.forms}, schema={"problem_id": pl.String, "_form": pl.String})
        timings = {k: grouped.stats[k] for k in ("normalize_s", "wall_s", "workers", "worker_peak_rss_mib", "worker_cpu_s")}
        summary = {"enabled": True, **{k: v for k, v in grouped.stats.items() if k not in timings}}
    else:
        grouped = neardup.singleton_families(keys)
        forms = None
        timings = {}
        summary = {"enabled": False, "normalization": None, "threshold": None, **grouped.stats}
    mapping = pl.DataFrame({"problem_id": keys, "family_id": grouped.family_of}, schema={"problem_id": pl.String, "family_id": pl.String})
    out = frame.join(mapping, on="problem_id", how="left", maintain_order="left")
    return FamilyStage(StageResult.of("families", frame.height, out, empty_rejections()), summary, forms, timings)


def family_counts(frame: pl.DataFrame) -> dict[str, int]:
    """Problems and families among a dataset's rows."""
    return {
        "problems": int(frame.get_column("problem_id").n_unique()),
        "families": int(frame.get_column("family_id").n_unique()),
    }


def filter_rewards(frame: pl.DataFrame, threshold: float = DEFAULT_THRESHOLD, limit: int | None = None) -> StageResult:
    """Keep rows with ``reward > threshold`` (strict, like the original). With ``limit``, keep
    only the first ``limit`` passing rows in source order; the rest are recorded as
    ``beyond_limit`` (the original's test mode, made explicit)."""
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold must be between 0 and 1, not {threshold}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive number of rows, not {limit}")
    passes = pl.col("reward") > threshold
    kept = frame.filter(passes)
    rejected = rejections(frame.filter(~passes), "filter", REJECT_BELOW_THRESHOLD, detail=f"reward <= {threshold}")
    if limit is not None and kept.height > limit:
        beyond = kept.slice(limit)
        kept = kept.head(limit)
        rejected = pl.concat([rejected, rejections(beyond, "filter", REJECT_BEYOND_LIMIT, detail=f"--limit {limit}")])
    return StageResult.of("filter", frame.height, kept, rejected)


def add_score(frame: pl.DataFrame) -> pl.DataFrame:
    """``score = reward * difficulty * style``, the original's ranking of rollouts."""
    return frame.with_columns((pl.col("reward") * pl.col("difficulty") * pl.col("style")).cast(pl.Float64).alias("score"))


def dedupe(frame: pl.DataFrame, group_by: GroupBy = "problem_id") -> StageResult:
    """The best row per problem ("unique"): highest score, then highest reward, then lowest
    ``example_id``, then source order, so the result is deterministic. ``group_by=
    "family_id"`` keeps one row per near-duplicate family; ``"module_name"`` reproduces the
    original's grouping (which merges different problems that share a class name) for
    comparison. Losers are counted, not written to the ledger: they stay in the ``filtered``
    dataset."""
    if group_by not in GROUP_BY_CHOICES:
        raise UserError(f"--group-by must be one of {', '.join(GROUP_BY_CHOICES)}, not {group_by!r}")
    key = schema.MODULE_NAME if group_by == "module_name" else group_by
    ranked = frame.sort(
        by=["score", "reward", "example_id", schema.ROW],
        descending=[True, True, False, False],
        nulls_last=True,
    )
    best = ranked.unique(subset=[key], keep="first", maintain_order=True).sort(schema.ROW)
    losers = frame.join(best.select(schema.ROW), on=schema.ROW, how="anti")
    reason = f"lower_score_than_best_of_{group_by}"
    return StageResult.of("dedupe", frame.height, best, rejections(losers, "dedupe", reason))


def split_of(problem: str, seed: int = DEFAULT_SEED, val_fraction: float = DEFAULT_VAL_FRACTION) -> str:
    """``"validation"`` or ``"train"`` for a family (or a problem), from a seeded hash.

    The split depends only on the id and the seed: never on the other rows, so it is the same in
    ``filtered`` and ``unique``, and stays put when the source grows (scheduled re-evaluation
    never moves a family whose members do not change from train to validation). The validation
    share is ``val_fraction`` of families in expectation, not exactly. A family of one has its
    problem's id, so it gets the split its problem had before families existed.
    """
    digest = hashlib.sha256(f"{seed}:{problem}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def assign_splits(frame: pl.DataFrame, seed: int = DEFAULT_SEED, val_fraction: float = DEFAULT_VAL_FRACTION) -> pl.DataFrame:
    """Add the ``_split`` column (train/validation), by ``family_id`` (by ``problem_id`` for a
    frame without families): every row of a family gets the family's split."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    key = "family_id" if "family_id" in frame.columns else "problem_id"
    groups = frame.get_column(key).unique()
    splits = pl.DataFrame(
        {key: groups, SPLIT_COLUMN: [split_of(g, seed, val_fraction) for g in groups.to_list()]},
        schema={key: pl.String, SPLIT_COLUMN: pl.String},
    )
    return frame.join(splits, on=key, how="left", maintain_order="left")


def split_stage(unique: pl.DataFrame, seed: int, val_fraction: float) -> StageResult:
    """The ``split`` stage over the unique rows: nothing is dropped, every row gets a split."""
    return StageResult.of("split", unique.height, assign_splits(unique, seed, val_fraction), empty_rejections())


def split_counts(frame: pl.DataFrame) -> dict[str, int]:
    counts = dict(frame.group_by(SPLIT_COLUMN).len().iter_rows())
    return {"train": int(counts.get("train", 0)), "validation": int(counts.get("validation", 0))}


def leaked_problems(frame: pl.DataFrame) -> list[str]:
    """Problems that sit in more than one split (must be empty)."""
    return sorted(
        frame.group_by("problem_id").agg(pl.col(SPLIT_COLUMN).n_unique().alias("n")).filter(pl.col("n") > 1)["problem_id"].to_list()
    )


def leaked_families(frame: pl.DataFrame) -> list[str]:
    """Families that sit in more than one split (must be empty)."""
    if "family_id" not in frame.columns:
        return []
    return sorted(
        frame.group_by("family_id").agg(pl.col(SPLIT_COLUMN).n_unique().alias("n")).filter(pl.col("n") > 1)["family_id"].to_list()
    )


def check_splits(**datasets: pl.DataFrame) -> None:
    """Refuse (a bug, never a user mistake) a dataset in which a problem or a family sits in
    both splits."""
    for name, frame in datasets.items():
        for what, leaks in (("problem", leaked_problems(frame)), ("family", leaked_families(frame))):
            if leaks:
                raise RuntimeError(f"{name}: {len(leaks)} {what}(s) in both splits, e.g. {leaks[:3]}; refusing to write")
