"""The prompt-generation stages as Prefect tasks: orchestration only (names, retries, caching).

Same decisions as ``tasks/curate.py``: the data tasks take and return polars frames, so they use
``NO_CACHE`` and persist nothing; only reading the source retries (on a network failure). The LLM
backend's calls go through :func:`tasks.llm.run_llm_requests`, the one LLM mechanism of the
project (Prefect retries, the content-keyed cache and the global concurrency limit), exactly as
the judge's do.
"""

from __future__ import annotations

import polars as pl
from prefect import get_run_logger, task

from kernelbook_lib import prompt_gen
from kernelbook_lib.errors import RunFailedError, UserError
from kernelbook_lib.ledger import StageResult
from kernelbook_lib.llm import LLMRequest
from kernelbook_lib.loading import LoadedSource, describe_source
from kernelbook_lib.settings import load_settings
from tasks.curate import DATA_TASK, _log_stage, _retry_if_network, decontaminate_rows, group_families, load_benchmarks  # noqa: F401
from tasks.llm import run_llm_requests

#: Modules per template task run (~0.5 ms each): big enough that orchestration is noise, small
#: enough to spread over Dask workers.
TEMPLATE_CHUNK_ROWS = 4096


@task(name="resolve-backend", **DATA_TASK)
def resolve_backend(backend: str) -> str:
    """``auto`` is ``llm`` when an API key is configured, else ``template`` (with a notice);
    ``llm`` without a key is a clear error before anything is read."""
    if backend not in prompt_gen.BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(prompt_gen.BACKENDS)}, not {backend!r}")
    has_key = load_settings().has_llm_key
    if backend == "auto":
        if has_key:
            return "llm"
        get_run_logger().info("generate: no PRIME_API_KEY configured, using the offline template backend (--backend template)")
        return "template"
    if backend == "llm" and not has_key:
        raise UserError("PRIME_API_KEY is not set: --backend llm needs an API key (environment or .env); "
                        "use --backend template to generate offline")
    return backend


@task(name="prepare-synthetic-out", **DATA_TASK)
def prepare_synthetic_out(out: str) -> str:
    return str(prompt_gen.prepare_out(out))


@task(name="load-prompt-source", retries=1, retry_delay_seconds=5, retry_condition_fn=_retry_if_network, **DATA_TASK)
def load_prompt_source(source: str, split: str) -> LoadedSource:
    label = prompt_gen.SAMPLE_DESCRIPTION if source == "sample" else describe_source(source)
    get_run_logger().info(f"load: reading {label} (split {split})")
    return prompt_gen.read_prompt_source(source, split)


@task(name="validate-prompt-rows", **DATA_TASK)
def validate_prompt_rows(loaded: LoadedSource) -> prompt_gen.PreparedSource:
    prepared = prompt_gen.prepare(loaded)
    get_run_logger().info(f"load: {prepared.input_schema} schema")
    _log_stage(prepared.result)
    return prepared


@task(name="dedupe-problems", **DATA_TASK)
def dedupe_problems(frame: pl.DataFrame, limit: int | None, near_dup: bool = False) -> StageResult:
    """One row per near-duplicate family (``near_dup``) or per problem, before any call."""
    result = prompt_gen.dedupe_problems(frame, limit, "family_id" if near_dup else "problem_id")
    _log_stage(result)
    return result


@task(name="template-chunk", **DATA_TASK)
def template_chunk(frame: pl.DataFrame) -> pl.DataFrame:
    return prompt_gen.template_spec_rows(frame)


@task(name="apply-specs", **DATA_TASK)
def apply_specs(frame: pl.DataFrame, specs: pl.DataFrame) -> StageResult:
    result = prompt_gen.apply_specs(frame, specs)
    _log_stage(result)
    return result


@task(name="llm-spec-rows", **DATA_TASK)
def llm_spec_rows(frame: pl.DataFrame, outcomes: list, model: str) -> pl.DataFrame:
    return prompt_gen.llm_spec_rows(frame, outcomes, model)


def generate_template(frame: pl.DataFrame) -> StageResult:
    """The template backend, in chunks (mapped, so a Dask task runner spreads them)."""
    chunks = [frame.slice(i, TEMPLATE_CHUNK_ROWS) for i in range(0, frame.height, TEMPLATE_CHUNK_ROWS)]
    futures = template_chunk.map(chunks)
    specs = pl.concat([f.result() for f in futures]) if chunks else prompt_gen.template_spec_rows(frame)
    return apply_specs(frame, specs)


@task(name="specification-requests", **DATA_TASK)
def build_specification_requests(frame: pl.DataFrame) -> tuple[list[LLMRequest], str]:
    """The generator's requests (full modules, content-keyed) and the model they go to. Each
    request carries what its reply check needs, so they may be built in any process."""
    model = load_settings().generator_model
    return prompt_gen.specification_requests(frame, model), model


def generate_llm(frame: pl.DataFrame, refresh: bool) -> tuple[StageResult, str, dict]:
    """The LLM backend: one request per problem through ``tasks/llm.py``; failures come back as
    outcomes and go to the ledger."""
    requests, model = build_specification_requests(frame)
    calls = run_llm_requests(prompt_gen.SPECIFICATION_TASK, requests, refresh=refresh, progress_label="generate")
    return apply_specs(frame, llm_spec_rows(frame, calls.outcomes, model)), model, calls.accounting


def generate_specs(frame: pl.DataFrame, backend: str, refresh: bool = False) -> tuple[StageResult, dict]:
    """The generate stage with the chosen backend, and the generator's identity for the summary
    (plus the LLM accounting under ``llm``)."""
    if backend == "template":
        return generate_template(frame), {
            "generator": prompt_gen.TEMPLATE_GENERATOR, "generator_model": None,
            "generator_prompt_version": prompt_gen.TEMPLATE_GENERATOR, "llm": None,
        }
    if backend == "llm":
        result, model, accounting = generate_llm(frame, refresh)
        return result, {
            "generator": prompt_gen.LLM_GENERATOR, "generator_model": model,
            "generator_prompt_version": prompt_gen.GENERATOR_PROMPT_VERSION, "llm": accounting,
        }
    raise ValueError(f"unknown backend {backend!r}")


@task(name="export-synthetic", **DATA_TASK)
def export_synthetic(out: str, summary_fields: dict, frame: pl.DataFrame, stages: list[StageResult]) -> prompt_gen.SyntheticSummary:
    """Write the dataset, the JSONL, the ledger (every stage's dropped rows) and, last, the summary."""
    ledger = pl.concat([s.rejected for s in stages])
    summary = prompt_gen.write_outputs(out, summary_fields, frame, ledger)
    get_run_logger().info(
        f"export: wrote {out}/{prompt_gen.PROMPTS_FILE}, {out}/{prompt_gen.DATASET_DIR}/, "
        f"{prompt_gen.REJECTED_FILE} and {prompt_gen.SUMMARY_FILE}"
    )
    return summary


@task(name="check-generation", **DATA_TASK)
def check_generation(generated: StageResult) -> None:
    """Fail the run (after everything is written) when no problem got a specification."""
    report = generated.report
    if report.rows_in and not report.rows_out:
        raise RunFailedError(
            f"no specification could be generated for any of the {report.rows_in} problems "
            f"({report.dropped}); the outputs and {prompt_gen.REJECTED_FILE} are written. Fix the cause "
            "and run again (successful replies are cached, so only the failed problems are called again)."
        )
