"""The parameters of each flow, declared once as a pydantic model, and the run's preflight.

One model per flow (:data:`MODELS`) is the single declaration of its parameters: each flow takes
its model as its one parameter (``params``; Prefect validates it, and a deployment's parameters
and the UI's run form are the model's fields), and the CLI's options are generated from the
model's fields (name, default, choices from ``Literal`` types, help from the description; a
field's ``json_schema_extra`` may name its ``flag`` spelling or ``metavar``). Every deployment's
parameters in ``prefect.yaml`` are tested valid against them. This module imports nothing heavy
(``kernelbook_lib.defaults``), so the CLI's ``--help`` stays fast.

Every option and setting is checked before a run reads its source or makes an LLM call
(:func:`preflight`): the CLI checks before it starts Prefect (a mistake costs no server start),
and the pipeline adapter (``tasks/pipeline.py``) again at the flow's start (deployments). A
mistake is a :class:`UserError` (one line, exit code 2) naming the option as the CLI spells it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from kernelbook_lib.defaults import (
    DEFAULT_NEAR_DUP_THRESHOLD,
    DEFAULT_SCREEN,
    DEFAULT_SEED,
    DEFAULT_SOURCE,
    DEFAULT_THRESHOLD,
    DEFAULT_VAL_FRACTION,
    GroupBy,
    ScreenMode,
    SplitName,
)
from kernelbook_lib.errors import UserError

#: The default source of ``generate-prompts`` (``kernelbook_lib.prompt_dataset.DEFAULT_SOURCE``;
#: repeated so this module stays light to import, and checked equal by the tests).
KERNELBOOK_SOURCE = "GPUMODE/KernelBook"

Judge = Literal["auto", "static", "llm"]
Backend = Literal["auto", "llm", "template"]
LLMMode = Literal["online", "batch"]
TaskRunner = Literal["default", "dask"]
#: The assistant message of the SFT rows (kernelbook_lib/sft.py): as the source has it, the
#: <answer> block only, or the reasoning inlined as a <think> block before the content.
CompletionForm = Literal["full", "answer", "reasoning-inline"]
#: A Dask scheduler address: ``tcp://host:port`` (also tls, ucx) or a bare ``host:port``, which
#: Dask reads as tcp (checked here before any work, and by ``tasks/runners.py`` for deployments).
DASK_ADDRESS = re.compile(r"^((tcp|tls|ucx)://)?(\[[0-9a-fA-F:]+\]|[^\s/:\[\]]+)(:\d{1,5})?/?$")


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("source", check_fields=False)
    @classmethod
    def _source_exists_or_is_a_hub_id(cls, value: str) -> str:
        # Raises SourceUnavailableError (not a ValueError, so pydantic passes it through as is):
        # "no such file or folder" for a path-like source that does not exist.
        from kernelbook_lib import loading  # polars: imported when a run is checked, not for --help

        loading.classify_source(value)
        return value

    @field_validator("decontaminate", check_fields=False)
    @classmethod
    def _benchmarks_exist_or_are_hub_ids(cls, value: list[str] | None) -> list[str] | None:
        from kernelbook_lib import loading

        for benchmark in value or []:
            loading.classify_source(benchmark, "--decontaminate")  # a mistyped path: "no such file or folder" now
        return value

    @field_validator("out", check_fields=False)
    @classmethod
    def _out_is_a_folder(cls, value: str | None) -> str | None:
        if value is None:  # analyze: INPUT/analysis
            return value
        if not value.strip():
            raise ValueError("is empty")
        path = Path(value).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError("exists and is not a folder")
        return value


_DECONTAMINATE = (
    "An evaluation benchmark (local .parquet/.jsonl file or folder, or a Hub dataset id such as "
    "ScalingIntelligence/KernelBench) whose items must not be copied: matching rows are removed as "
    "'contaminated'. Repeatable (a list in a deployment)."
)
_LLM_MODE = (
    "How the LLM stage sends its requests: online (one call per request, now) or batch (the provider's Batch "
    "API: batch prices, results within 24 h; needs /v1/files and /v1/batches). Unset: the LLM_MODE setting "
    "(default online)."
)
_NO_WAIT = (
    "Batch mode only: submit the batches (or check on those already submitted) and exit with code 3 instead "
    "of waiting; run the same command again without --no-wait to collect the results and finish."
)


class _CurateOptions(_Params):
    source: str = Field(DEFAULT_SOURCE, description="'sample' (bundled synthetic sample), a local .parquet/.jsonl file or folder, or a Hub dataset id (owner/name).")
    split: SplitName = Field("train", description="Source split to read (the original used train).")
    judge: Judge = Field("auto", description="llm: the LLM judge (needs PRIME_API_KEY); static: the offline AST heuristic; auto: llm when a key is configured, else static.")
    threshold: float = Field(DEFAULT_THRESHOLD, ge=0.0, le=1.0, description="Keep rows with reward strictly above this.")
    limit: int | None = Field(None, ge=1, description="Keep only the first N rows that pass the filter (test mode).")
    seed: int = Field(DEFAULT_SEED, description="Seed of the family-grouped train/validation split.")
    val_fraction: float = Field(DEFAULT_VAL_FRACTION, gt=0.0, lt=1.0, description="Share of near-duplicate families (problems with --no-near-dup) in validation.")
    group_by: GroupBy = Field("problem_id", description="Dedupe key: problem_id (default), family_id (one rollout per near-duplicate family) or module_name (the original's grouping).")
    out: str = Field("outputs", description="Output folder.")
    near_dup: bool = Field(True, description="Group near-duplicate modules into families (MinHash over a normalised form of the code); off (--no-near-dup) makes every problem its own family.")
    near_dup_threshold: float = Field(DEFAULT_NEAR_DUP_THRESHOLD, gt=0.0, le=1.0, description="Similarity (Jaccard of the normalised modules' shingles, above 0 and at most 1) at which two modules are one family, or a row copies a benchmark item.")
    decontaminate: list[str] | None = Field(None, json_schema_extra={"metavar": "SRC"}, description=_DECONTAMINATE)
    screen: ScreenMode = Field(DEFAULT_SCREEN, description="The kernel screen, before the judge: standard rejects solutions that are not Triton kernels (no kernel, none launched, PyTorch computes, reference bypass, cached or constant output) and flags partial conversions in kernel_flags; strict also rejects rows flagged partial, fallback or library; off runs no screen.")
    judge_model: list[str] | None = Field(None, json_schema_extra={"metavar": "MODEL"}, description="The LLM judge's model; repeat for a panel of judges (the first is the primary, asked for every row; 'static' adds the offline static judge as a member). Unset: JUDGE_MODELS (comma-separated), else JUDGE_MODEL.")
    judge_samples: int = Field(1, ge=1, le=20, description="Verdicts per row from each LLM judge (each its own cached call); a row's grades are the lower median of its verdicts, and the run reports the judge's agreement with itself.")
    reliability_sample: str | None = Field(None, json_schema_extra={"metavar": "N|all"}, description="Ask for the extra samples and judges on a seeded random N rows only (all: on every row, the default), so reliability is measured without paying K times for every row.")
    llm_mode: LLMMode | None = Field(None, description=_LLM_MODE)
    no_wait: bool = Field(False, description=_NO_WAIT)
    completion: CompletionForm = Field("full", description="The SFT completion: full (as the source has it); answer (the answer block only, no reasoning); reasoning-inline (the reasoning as a think block before the content). The source's messages stay in completion_original.")
    tokenizer: str | None = Field(None, json_schema_extra={"metavar": "PATH"}, description="A local tokenizer.json (read with the tokenizers library, never downloaded): each row's tokens of its chat-formatted prompt and completion go in sft_tokens (characters, sft_chars, are always counted).")
    max_sft_tokens: int | None = Field(None, ge=1, json_schema_extra={"metavar": "N"}, description="Reject rows of more than N sft_tokens as too_long (after the judge, before dedupe); needs --tokenizer.")

    @field_validator("reliability_sample")
    @classmethod
    def _reliability_sample(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() == "all" or (value.strip().isdigit() and int(value) >= 1):
            return value
        raise ValueError("must be a number of rows (at least 1) or all")

    @field_validator("judge_model")
    @classmethod
    def _judge_models(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [v.strip() for v in value]
        if not names or any(not n for n in names):
            raise ValueError("a judge model name is empty")
        if names[0] == "static":
            raise ValueError("static can be a panel member, not the first (primary) judge: put an LLM model first")
        if len(set(names)) != len(names):
            raise ValueError(f"a judge is named twice ({', '.join(names)})")
        return names

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_is_readable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from kernelbook_lib import sft  # the tokenizers library: imported when a run is checked, not for --help

        sft.load_tokenizer(value)  # ValueError: missing, a folder, or not a tokenizer.json
        return value

    @field_validator("max_sft_tokens")
    @classmethod
    def _max_sft_tokens_needs_a_tokenizer(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and "tokenizer" in info.data and info.data["tokenizer"] is None:
            raise ValueError("--max-sft-tokens needs --tokenizer (a local tokenizer.json to count tokens with)")
        return value


def reliability_rows(value: str | None) -> int | None:
    """``--reliability-sample``: None for every row, else the number of rows."""
    if value is None or value.strip().lower() == "all":
        return None
    return int(value)


class CurateParams(_CurateOptions):
    """``kernelbook curate`` / the ``curate`` flow."""

    analysis: bool = Field(True, description="Run the analysis (statistics, plots, report) at the end.")
    refresh_judge: bool = Field(False, description="Ignore cached LLM judgements and call again (the new replies replace the cached ones).")
    max_judge_failure_rate: float = Field(0.01, ge=0.0, le=1.0, description="Exit non-zero (after writing everything) when more than this share of rows could not be judged.")


class RunnerParams(_Params):
    """Where the mapped tasks run (the CLI's ``--task-runner``/``--dask-address``, and
    ``re-evaluate``'s parameters of the same names)."""

    task_runner: TaskRunner = Field("default", description="default: threads in this process; dask: a local Dask cluster (one worker process per core) or --dask-address. Spreads the static judge over cores; the LLM stage is bound by its concurrency limit, not CPU.")
    dask_address: str | None = Field(None, description="Scheduler address of an existing Dask cluster (with --task-runner dask).")

    @field_validator("dask_address")
    @classmethod
    def _dask_address(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if info.data.get("task_runner") != "dask":
            raise ValueError("--dask-address needs --task-runner dask")
        if not DASK_ADDRESS.match(value.strip()):
            raise ValueError(
                f"--dask-address {value!r} is not a Dask scheduler address "
                "(expected tcp://host:port, e.g. tcp://10.0.0.5:8786)"
            )
        return value


class ReevaluateParams(_CurateOptions, RunnerParams):
    """The scheduled ``re-evaluate`` flow."""

    publish: bool = Field(False, json_schema_extra={"flag": "--publish"}, description="Upload to the Hub at the end (needs HF_TOKEN or `hf auth login`; repos from HF_FILTERED_REPO / HF_UNIQUE_REPO / HF_SYNTHETIC_REPO, or --single-repo).")
    private: bool = Field(True, json_schema_extra={"flag": "--private/--public"}, description="Visibility of repos the publish creates: private (default) or public (--public).")
    max_judge_failure_rate: float | None = Field(None, ge=0.0, le=1.0, description="Stop non-zero, before the analysis and the publish, when more than this share of rows could not be judged (unset: curate's default, 0.01).")
    single_repo: str | None = Field(None, json_schema_extra={"metavar": "OWNER/NAME"}, description="Publish filtered, unique and synthetic as configs of this one Hub dataset repo (OWNER/NAME).")


class GenerateParams(_Params):
    """``kernelbook generate-prompts`` / the ``generate-prompts`` flow."""

    source: str = Field(KERNELBOOK_SOURCE, description="'sample' (bundled synthetic KernelBook sample), a local .parquet/.jsonl file or folder, or a Hub dataset id; KernelBook schema (module_name, python_code) or eval schema (info.*).")
    split: SplitName = Field("train", description="Source split to read (KernelBook has train only).")
    backend: Backend = Field("auto", description="llm: specifications written by GENERATOR_MODEL (needs PRIME_API_KEY); template: offline, built from the module's syntax tree; auto: llm when a key is configured, else template.")
    limit: int | None = Field(None, ge=1, description="Generate for the first N families (distinct problems with --no-near-dup) only (test mode).")
    out: str = Field("outputs", description="Output folder (may be curate's: only the synthetic* outputs are written).")
    refresh: bool = Field(False, description="Ignore cached LLM replies and call again (the new replies replace the cached ones).")
    llm_mode: LLMMode | None = Field(None, description=_LLM_MODE)
    no_wait: bool = Field(False, description=_NO_WAIT)
    near_dup: bool = Field(True, description="One specification per near-duplicate family (default), or with --no-near-dup one per distinct problem.")
    near_dup_threshold: float = Field(DEFAULT_NEAR_DUP_THRESHOLD, gt=0.0, le=1.0, description="Similarity (Jaccard of the normalised modules' shingles, above 0 and at most 1) at which two modules are one family, or a module copies a benchmark item.")
    decontaminate: list[str] | None = Field(None, json_schema_extra={"metavar": "SRC"}, description=_DECONTAMINATE)


_REPO = "owner/name of the {kind} dataset repo (default: HF_{upper}_REPO from the environment or .env; a dataset without a repo is skipped)."


class AnalyzeParams(_Params):
    """``kernelbook analyze`` / the ``analyze`` flow."""

    input: str = Field("outputs", description="A curate output folder.")
    out: str | None = Field(None, description="Where to write the analysis (default: INPUT/analysis).")


class PublishParams(_Params):
    """``kernelbook publish`` / the ``publish`` flow (a dry run unless ``push``)."""

    input: str = Field("outputs", description="A curate output folder.")
    push: bool = Field(False, json_schema_extra={"flag": "--push"}, description="Upload for real (needs HF_TOKEN or `hf auth login`) and tag the commit; the default is a dry run.")
    private: bool = Field(True, json_schema_extra={"flag": "--private/--public"}, description="Visibility of repos the push creates.")
    filtered_repo: str | None = Field(None, json_schema_extra={"metavar": "OWNER/NAME"}, description=_REPO.format(kind="filtered", upper="FILTERED"))
    unique_repo: str | None = Field(None, json_schema_extra={"metavar": "OWNER/NAME"}, description=_REPO.format(kind="unique", upper="UNIQUE"))
    synthetic_repo: str | None = Field(None, json_schema_extra={"metavar": "OWNER/NAME"}, description=_REPO.format(kind="synthetic prompts", upper="SYNTHETIC"))
    single_repo: str | None = Field(None, json_schema_extra={"metavar": "OWNER/NAME"}, description="owner/name of ONE dataset repo holding filtered, unique and synthetic as configs (instead of a repo each; HF_*_REPO are then not used).")


MODELS: dict[str, type[_Params]] = {
    "curate": CurateParams,
    "re-evaluate": ReevaluateParams,
    "generate-prompts": GenerateParams,
    "analyze": AnalyzeParams,
    "publish": PublishParams,
    "task-runner": RunnerParams,
}


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _describe(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error.get("loc", ()) if not isinstance(p, int)]
    field = loc[0] if loc else ""
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if message.startswith("--"):  # already a sentence naming the option
        return message
    message = message[:1].lower() + message[1:]
    if error.get("type") == "extra_forbidden":
        return f"unknown parameter {field!r}"
    value = error.get("input")
    shown = f" {value}" if isinstance(value, (int, float, str)) and not isinstance(value, bool) else ""
    return f"{_flag(field)}{shown}: {message}"


def validate_params(pipeline: str, values: dict[str, Any]) -> _Params:
    """The validated parameters of ``pipeline``; a :class:`UserError` naming every bad option."""
    model = MODELS[pipeline]
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise UserError("; ".join(_describe(e) for e in exc.errors())) from None


def as_params(pipeline: str, value: Any) -> _Params:
    """A flow's ``params`` as its model: the model itself (the CLI, a parent flow), or the plain
    mapping a deployment run passes, validated here so that a mistake is the same one line the
    CLI prints (the flows tell Prefect not to validate it first: ``validate_parameters=False``)."""
    model = MODELS[pipeline]
    if isinstance(value, model):
        return value
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise UserError(f"{pipeline}: params must be a mapping of its parameters, not {type(value).__name__}")
    return validate_params(pipeline, value)


@dataclass(frozen=True)
class Preflight:
    params: _Params
    #: Things the user should see once per run (a malformed .env line that sets nothing we read).
    warnings: tuple[str, ...]


def preflight(pipeline: str, values: dict[str, Any]) -> Preflight:
    """Everything checked before any work: the parameters, ``.env``, the settings, and the API
    key when the chosen judge or backend is the LLM. Raises :class:`UserError` (exit code 2).

    Never returns the settings (they hold secrets and must not become a Prefect result)."""
    from kernelbook_lib import settings

    params = validate_params(pipeline, values)
    env = settings.check_env_file()
    if env.unparsable_lines:
        settings.silence_dotenv_repeats()  # this check says it once, below; nothing else repeats it
    config = settings.load_settings()
    llm_choice = getattr(params, "judge", None) == "llm" or getattr(params, "backend", None) == "llm"
    if llm_choice and not config.has_llm_key:
        option = "--judge llm" if getattr(params, "judge", None) == "llm" else "--backend llm"
        offline = "--judge static" if option == "--judge llm" else "--backend template"
        raise UserError(
            f"PRIME_API_KEY is not set: {option} needs an API key (environment or .env); use {offline} to run offline"
        )
    if getattr(params, "no_wait", False) and (getattr(params, "llm_mode", None) or config.llm_mode) != "batch":
        raise UserError("--no-wait needs batch mode: add --llm-mode batch (or set LLM_MODE=batch)")
    warning = settings.env_file_warning_once(env)
    return Preflight(params=params, warnings=(warning,) if warning else ())
