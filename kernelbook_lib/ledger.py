"""The drop ledger: every row a stage does not pass on has a recorded, counted reason.

Each stage returns a :class:`StageResult`: the rows it keeps, the rows it drops (one ledger
line each, with a reason) and a :class:`StageReport` whose counts must reconcile:
``rows_in == rows_out + sum(dropped)``. A report that does not reconcile is a bug and raises.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import polars as pl
from pydantic import BaseModel, Field, model_validator

from kernelbook_lib import schema


class StageReport(BaseModel):
    name: str
    rows_in: int = Field(ge=0)
    rows_out: int = Field(ge=0)
    dropped: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _reconciles(self) -> StageReport:
        lost = sum(self.dropped.values())
        if self.rows_in != self.rows_out + lost:
            raise ValueError(
                f"stage {self.name!r} does not reconcile: rows_in={self.rows_in} but "
                f"rows_out={self.rows_out} + dropped={lost} ({self.dropped})"
            )
        return self


def empty_rejections() -> pl.DataFrame:
    return pl.DataFrame(schema=schema.REJECTED_SCHEMA)


def rejections(
    frame: pl.DataFrame, stage: str, reason: pl.Expr | str, detail: pl.Expr | str | None = None
) -> pl.DataFrame:
    """Ledger lines for every row of ``frame`` (which holds the internal ``_row`` column; a frame
    without ``example_id`` or ``problem_id``, e.g. KernelBook rows, gets nulls for them)."""
    reason_expr = pl.lit(reason) if isinstance(reason, str) else reason
    detail_expr = pl.lit(detail, dtype=pl.String) if detail is None or isinstance(detail, str) else detail
    example = pl.col("example_id") if "example_id" in frame.columns else pl.lit(None, dtype=pl.Int64)
    problem = pl.col("problem_id") if "problem_id" in frame.columns else pl.lit(None, dtype=pl.String)
    return frame.select(
        pl.lit(stage).alias("stage"),
        reason_expr.cast(pl.String).alias("reason"),
        pl.col(schema.ROW).cast(pl.Int64).alias("source_index"),
        example.cast(pl.Int64, strict=False).alias("example_id"),
        problem.cast(pl.String).alias("problem_id"),
        detail_expr.cast(pl.String).alias("detail"),
    )


@dataclass(frozen=True)
class StageResult:
    """What a stage passes on, what it drops (ledger lines), and the reconciled counts."""

    frame: pl.DataFrame
    rejected: pl.DataFrame
    report: StageReport

    @classmethod
    def of(cls, name: str, rows_in: int, frame: pl.DataFrame, rejected: pl.DataFrame) -> StageResult:
        dropped = Counter(rejected.get_column("reason").to_list()) if rejected.height else Counter()
        report = StageReport(name=name, rows_in=rows_in, rows_out=frame.height, dropped=dict(sorted(dropped.items())))
        return cls(frame=frame, rejected=rejected, report=report)
