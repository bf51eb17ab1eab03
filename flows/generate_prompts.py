"""The ``generate-prompts`` flow: the ``generate-prompts`` pipeline
(``kernelbook_lib/pipelines/generate.py``: load -> families -> decontaminate -> dedupe -> generate
-> export), a task specification for every near-duplicate family (or distinct problem) of
PyTorch modules, written by an LLM or by the offline AST template.

It shares the output folder with ``curate`` but writes only its own files:
``synthetic_prompts.jsonl``, ``synthetic/``, ``synthetic_rejected.jsonl`` and
``synthetic_summary.json``. Entry points: ``kernelbook generate-prompts`` and deployments; one
parameter, ``params``, a :class:`~kernelbook_lib.params.GenerateParams`.
"""

from __future__ import annotations

from prefect import flow

from kernelbook_lib.params import as_params, GenerateParams
from kernelbook_lib.pipelines import GENERATE
from tasks.pipeline import run_pipeline


@flow(name="generate-prompts", log_prints=False, validate_parameters=False)  # params: checked by as_params
def generate_prompts(params: GenerateParams = GenerateParams()) -> dict:
    """Write a task specification for every near-duplicate family (or distinct problem) of
    ``params.source`` into ``params.out``."""
    params = as_params("generate-prompts", params)
    return run_pipeline(GENERATE, params)
