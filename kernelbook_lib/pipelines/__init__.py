"""The pipelines, as data (:class:`kernelbook_lib.pipeline.Pipeline`): ``curate`` and
``generate-prompts``, by name."""

from __future__ import annotations

from kernelbook_lib.pipeline import Pipeline
from kernelbook_lib.pipelines.curate import CURATE
from kernelbook_lib.pipelines.generate import GENERATE

PIPELINES: dict[str, Pipeline] = {p.name: p for p in (CURATE, GENERATE)}

__all__ = ["CURATE", "GENERATE", "PIPELINES"]
