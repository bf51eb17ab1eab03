"""The ``generate-prompts`` flow: load -> families -> decontaminate -> dedupe (one per family, or
per problem) -> generate -> export.

A task specification for every distinct PyTorch module of ``GPUMODE/KernelBook`` (or of the eval
rollouts), written by an LLM (``--backend llm``, through the same LLM machinery as the judge) or
by the offline AST template (``--backend template``). Run it with ``kernelbook generate-prompts``
or ``python -m flows.generate_prompts`` (the same command line). It shares the output folder
with ``curate`` but writes only its own files: ``synthetic_prompts.jsonl``, ``synthetic/``,
``synthetic_rejected.jsonl`` and ``synthetic_summary.json``.
"""

from __future__ import annotations

import tasks  # noqa: F401  (Prefect environment defaults, before prefect is imported)

import sys

from prefect import flow

from kernelbook_lib import prompt_gen
from kernelbook_lib.loading import SplitName
from kernelbook_lib.neardup import DEFAULT_NEAR_DUP_THRESHOLD
from kernelbook_lib.summary import now_iso
from tasks.prompts import (
    check_generation,
    decontaminate_rows,
    dedupe_problems,
    export_synthetic,
    generate_specs,
    group_families,
    load_benchmarks,
    load_prompt_source,
    prepare_synthetic_out,
    resolve_backend,
    validate_prompt_rows,
)
from tasks.artifacts import generate_artifacts
from tasks.preflight import guarded


@flow(name="generate-prompts", log_prints=False)
@guarded("generate-prompts")  # parameters, settings and .env checked, then `out` locked, before any work
def generate_prompts(
    source: str = prompt_gen.DEFAULT_SOURCE,
    split: SplitName = "train",
    backend: str = "auto",
    limit: int | None = None,
    out: str = "outputs",
    refresh: bool = False,
    near_dup: bool = True,
    near_dup_threshold: float = DEFAULT_NEAR_DUP_THRESHOLD,
    decontaminate: list[str] | None = None,
) -> dict:
    """Write a task specification for every near-duplicate family (``near_dup``, the default)
    or every distinct problem of ``source`` into ``out``."""
    started_at = now_iso()
    chosen = resolve_backend(backend)
    out_dir = prepare_synthetic_out(out)
    benchmarks = load_benchmarks(list(decontaminate or []))
    prepared = validate_prompt_rows(load_prompt_source(source, split))
    families = group_families(prepared.result.frame, near_dup, near_dup_threshold)
    clean = decontaminate_rows(families.result.frame, benchmarks, near_dup_threshold, families.forms)
    problems = dedupe_problems(clean.result.frame, limit, near_dup)
    generated, generator_info = generate_specs(problems.frame, chosen, refresh)
    summary = export_synthetic(
        out_dir,
        dict(
            source=source, split=split, limit=limit, input_schema=prepared.input_schema, backend=chosen,
            **generator_info, **prompt_gen.dedupe_summary(problems, chosen),
            near_dup=families.near_dup, decontamination=clean.report or None,
            provenance_columns=list(prepared.provenance), started_at=started_at,
            stages=[r.report for r in (prepared.result, families.result, clean.result, problems, generated)],
            warnings=[*prepared.warnings, *prompt_gen.generation_warnings(generated.report)],
        ),
        generated.frame,
        [prepared.result, clean.result, problems, generated],
    )
    generate_artifacts(out_dir, summary)
    check_generation(generated)
    return summary.model_dump(mode="json")


if __name__ == "__main__":
    from kernelbook_cli import main

    main(["generate-prompts", *sys.argv[1:]])
