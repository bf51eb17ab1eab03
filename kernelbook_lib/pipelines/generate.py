"""The ``generate-prompts`` pipeline: resolve-backend -> prepare-out -> load-benchmarks ->
read-source -> load -> families -> decontaminate -> dedupe (one per family, or per problem) ->
generate, then its outputs (:mod:`kernelbook_lib.prompt_dataset`).

It shares the output-folder, benchmark, source, families and decontaminate stages with ``curate``
(:mod:`kernelbook_lib.pipelines.common`); its own are the load of either input schema, the
dedupe before any call, and the generate stage (the LLM or the template backend).
"""

from __future__ import annotations

import polars as pl

from kernelbook_lib import prompt_gen, prompt_dataset
from kernelbook_lib.errors import UserError
from kernelbook_lib.loading import describe_source
from kernelbook_lib.params import GenerateParams
from kernelbook_lib.pipeline import Outputs, Pipeline, Run, Stage, StageOutput, chunks
from kernelbook_lib.pipelines.common import Decontaminate, Families, LoadBenchmarks, PrepareOut, ReadSource
from kernelbook_lib.prompt_template import TEMPLATE_GENERATOR
from kernelbook_lib.settings import load_settings
from kernelbook_lib.prompt_dataset import SyntheticSummary

#: Modules per template task run (~0.5 ms each): big enough that orchestration is noise, small
#: enough to spread over Dask workers.
TEMPLATE_CHUNK_ROWS = 4096
TEMPLATE_CHUNK_TASK = "template-chunk"


def _describe(source: str) -> str:
    return prompt_dataset.SAMPLE_DESCRIPTION if source == "sample" else describe_source(source)


class ResolveBackend(Stage):
    """``--backend auto`` is ``llm`` when an API key is configured, else ``template`` (with a
    notice); ``llm`` without a key is a clear error before anything is read."""

    name = "resolve-backend"

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        backend = run.params.backend  # type: ignore[attr-defined]
        has_key = load_settings().has_llm_key
        if backend == "auto":
            if has_key:
                backend = "llm"
            else:
                run.log("generate: no PRIME_API_KEY configured, using the offline template backend (--backend template)")
                backend = "template"
        elif backend == "llm" and not has_key:
            raise UserError("PRIME_API_KEY is not set: --backend llm needs an API key (environment or .env); "
                            "use --backend template to generate offline")
        return StageOutput(facts={"backend": backend})


class LoadModules(Stage):
    """Detect the input schema (KernelBook or eval), reject unusable rows with a reason (empty
    code or name, not a class name, code that does not parse or lacks the class)."""

    name = "load"

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        prepared = prompt_dataset.prepare(run.facts["loaded"])
        run.log(f"load: {prepared.input_schema} schema")
        return StageOutput(prepared.result, summary={
            "input_schema": prepared.input_schema, "provenance_columns": list(prepared.provenance),
            "load_warnings": list(prepared.warnings),
        })


class DedupeProblems(Stage):
    """One row per near-duplicate family (or per problem with ``--no-near-dup``), before any call;
    ``--limit`` keeps the first N."""

    name = "dedupe"

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        assert frame is not None
        p = run.params
        return StageOutput(prompt_dataset.dedupe_problems(frame, p.limit, "family_id" if p.near_dup else "problem_id"))  # type: ignore[attr-defined]


class Generate(Stage):
    """A specification per problem, by the chosen backend; a problem without one goes to the
    ledger (``generate_failed:<kind>``, ``template_invalid``)."""

    name = "generate"

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        assert frame is not None
        backend = run.facts["backend"]
        if backend == "template":
            parts = list(chunks(frame, TEMPLATE_CHUNK_ROWS))
            specs = run.services.map(TEMPLATE_CHUNK_TASK, prompt_gen.template_spec_rows, parts)
            specs = pl.concat(specs) if parts else prompt_gen.template_spec_rows(frame)
            identity = {"generator": TEMPLATE_GENERATOR, "generator_model": None, "generator_prompt_version": TEMPLATE_GENERATOR, "llm": None}
            return StageOutput(prompt_gen.apply_specs(frame, specs), summary=identity)
        if backend == "llm":
            model = load_settings().generator_model
            requests = prompt_gen.specification_requests(frame, model)
            calls = run.services.llm(prompt_gen.SPECIFICATION_TASK, requests, run.params.refresh, "generate")  # type: ignore[attr-defined]
            identity = {"generator": prompt_gen.LLM_GENERATOR, "generator_model": model,
                        "generator_prompt_version": prompt_gen.GENERATOR_PROMPT_VERSION, "llm": calls.accounting}
            return StageOutput(prompt_gen.apply_specs(frame, prompt_gen.llm_spec_rows(frame, calls.outcomes, model)), summary=identity)
        raise ValueError(f"unknown backend {backend!r}")


def generate_stages(params: GenerateParams) -> list[Stage]:
    return [
        ResolveBackend(), PrepareOut(prompt_dataset.SUMMARY_FILE), LoadBenchmarks(), ReadSource(prompt_dataset.read_prompt_source, _describe),
        LoadModules(), Families(), Decontaminate(), DedupeProblems(), Generate(),
    ]


def write_generate(run: Run) -> SyntheticSummary:
    """The dataset, the JSONL, the ledger (every stage's dropped rows) and, last, the summary."""
    p: GenerateParams = run.params  # type: ignore[assignment]
    s = run.summary
    backend = run.facts["backend"]
    generated = run.result("generate")
    fields = dict(
        source=p.source, split=p.split, limit=p.limit, input_schema=s["input_schema"], backend=backend,
        generator=s["generator"], generator_model=s["generator_model"], generator_prompt_version=s["generator_prompt_version"], llm=s["llm"],
        **prompt_dataset.dedupe_summary(run.result("dedupe"), backend),
        near_dup=s["near_dup"], decontamination=s["decontamination"],
        provenance_columns=s["provenance_columns"], started_at=s["started_at"],
        stages=run.reports, warnings=[*s["load_warnings"], *prompt_dataset.generation_warnings(generated.report)],
    )
    out = run.facts["out"]
    summary = prompt_dataset.write_outputs(out, fields, generated.frame, run.ledger)
    run.log(
        f"export: wrote {out}/{prompt_dataset.PROMPTS_FILE}, {out}/{prompt_dataset.DATASET_DIR}/, "
        f"{prompt_dataset.REJECTED_FILE} and {prompt_dataset.SUMMARY_FILE}"
    )
    return summary


def no_specification(run: Run, summary: SyntheticSummary) -> str | None:
    """The run fails (after everything is written) when no problem got a specification."""
    report = run.result("generate").report
    if report.rows_in and not report.rows_out:
        return (
            f"no specification could be generated for any of the {report.rows_in} problems "
            f"({report.dropped}); the outputs and {prompt_dataset.REJECTED_FILE} are written. Fix the cause "
            "and run again (successful replies are cached, so only the failed problems are called again)."
        )
    return None


GENERATE = Pipeline(
    name="generate-prompts",
    params=GenerateParams,
    stages=generate_stages,  # type: ignore[arg-type]
    outputs=Outputs(
        summary_file=prompt_dataset.SUMMARY_FILE,
        files=(prompt_dataset.PROMPTS_FILE, f"{prompt_dataset.DATASET_DIR}/", prompt_dataset.REJECTED_FILE, prompt_dataset.SUMMARY_FILE),
        write=write_generate,
        finish=lambda out, summary: summary,  # write_outputs writes the summary file last
        gate=no_specification,
    ),
)


