"""The ``curate`` flow: the ``curate`` pipeline (``kernelbook_lib/pipelines/curate.py``: load ->
families -> filter -> decontaminate -> screen -> judge -> sft -> dedupe -> split -> export), then its
analysis (the ``analyze`` subflow) before the run summary is written.

Entry points: ``kernelbook curate`` (the CLI) and deployments (``prefect.yaml``); it takes one
parameter, ``params``, a :class:`~kernelbook_lib.params.CurateParams`.
"""

from __future__ import annotations

from prefect import flow

from flows.analyze import analyze
from kernelbook_lib.params import as_params, AnalyzeParams, CurateParams
from kernelbook_lib.pipelines import CURATE
from kernelbook_lib.summary import RunSummary
from tasks.pipeline import run_pipeline


@flow(name="curate", log_prints=False, validate_parameters=False)  # params: checked by as_params
def curate(params: CurateParams = CurateParams()) -> dict:
    """Curate eval rollouts into the ``filtered`` and ``unique`` SFT datasets in ``params.out``."""
    params = as_params("curate", params)

    def analysis(out: str, summary: RunSummary) -> None:
        analyze(AnalyzeParams(input=out), run=summary.model_dump(mode="json"))

    return run_pipeline(CURATE, params, after_write=analysis if params.analysis else None)
