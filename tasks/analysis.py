"""The analysis stages as Prefect tasks: orchestration only (names, logs, cache policies).

Cache policy: ``NO_CACHE`` on every task but one, deliberately. The inputs are polars
DataFrames (or dicts computed from them): a policy over an input Prefect cannot hash silently
turns caching off, and the statistics, the report and the files take well under a second to
make again, so they are not cached and not persisted (``persist_result=False``): the outputs
are the files this flow writes.

The exception is drawing the plots (:func:`draw_plots`), seconds of plotnine and matplotlib
(plus their imports) for a picture that is a pure function of three numeric columns, the
drawing code and the library versions. Its cache key is exactly that
(:func:`kernelbook_lib.plot_files.images_key`, a hash of the columns' bytes: microseconds),
its result (the PNG bytes) is persisted in Prefect's result storage
(``PREFECT_HOME/storage`` by default), and :func:`write_plots` writes the bytes into the output
folder either way. Re-running on the same judged data reuses the drawing; any change to the
values, their order, the code or a library draws again.

Retries: none. Every task reads or writes local files; a missing folder, a wrong schema or a
full disk is not transient, and retrying would only repeat the same error message.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from kernelbook_lib import analysis, hub_plots, plot_files, report
from kernelbook_lib.errors import UserError
from kernelbook_lib.export import write_text

ANALYSIS_TASK = dict(cache_policy=NO_CACHE, persist_result=False)

ANALYSIS_JSON = "analysis.json"
REPORT_MD = "report.md"
#: Key of the Prefect markdown artifact (lowercase letters, digits and dashes only).
REPORT_ARTIFACT_KEY = "analysis-report"
#: The output folder inside the input folder when ``out`` is not given.
DEFAULT_SUBDIR = "analysis"


@task(name="prepare-analysis-out", **ANALYSIS_TASK)
def prepare_analysis_out(input: str, out: str | None) -> str:
    """The output folder (``out``, or ``INPUT/analysis``), created if needed."""
    path = Path(out).expanduser() if out else Path(input).expanduser() / DEFAULT_SUBDIR
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to --out {path}: {exc.strerror or exc}") from None
    return str(path)


@task(name="load-judged", **ANALYSIS_TASK)
def load_judged(input: str, run: dict | None = None) -> pl.DataFrame:
    """The judged rows; their counts must be those of ``run`` (the curate run that has just
    written them) or, without it, of the folder's ``run_summary.json``."""
    counts = (run.get("datasets") or {}).get("filtered") if run else None
    df = analysis.load_judged(Path(input), counts)
    splits = ", ".join(f"{e['value']} {e['n']}" for e in analysis.judge_info(df)["splits"])
    get_run_logger().info(f"analysis: read {df.height} judged rows from {input} ({splits or 'no rows'})")
    return df


@task(name="compute-analysis", **ANALYSIS_TASK)
def compute_analysis(df: pl.DataFrame, sft: dict | None = None) -> dict:
    """The statistics; ``sft``: the analysed run's ``sft`` block (completion form, tokenizer,
    limit), which the length section names."""
    result = analysis.compute_analysis(df, sft)
    logger = get_run_logger()
    lengths = result.get("sft_lengths") or {}
    for key, unit in (("chars", "characters"), ("tokens", "tokens")):
        stats = lengths.get(key)
        if stats:
            logger.info(f"analysis: SFT length ({lengths.get('completion')}) in {unit}: p50 {stats['p50']}, p90 {stats['p90']}, "
                        f"p99 {stats['p99']}, max {stats['max']}")
    if result["n"] == 0:
        logger.warning("analysis: the judged dataset has no rows: nothing to correlate or plot (the report says so)")
        return result
    for name, pair in result["pairs"].items():
        if pair.get("undefined"):
            logger.warning(f"analysis: {name} undefined: {pair['reason']}")
        else:
            p = pair["pearson"]
            logger.info(
                f"analysis: {name} Pearson r={p['r']:+.3f} ({p['strength']}, {report.p_phrase(p['p'])}), n={pair['n']}"
            )
    return result


@task(name="describe-judges", **ANALYSIS_TASK)
def describe_judges(df: pl.DataFrame) -> dict:
    info = analysis.judge_info(df)
    if df.height == 0:
        return info
    models = ", ".join(str(e["value"]) for e in info["judge_model"])
    get_run_logger().info(f"analysis: judged by {', '.join(str(e['value']) for e in info['judge'])} (model: {models})")
    return info


@task(name="identify-judged-data", **ANALYSIS_TASK)
def identify_judged(input: str, run: dict | None = None) -> dict:
    """Which run and which exact ``filtered`` files are analysed (listed before they are read, so
    a run that replaces them meanwhile makes the analysis look stale, never current)."""
    return hub_plots.analysis_identity(input, run)


@task(name="record-analysis", **ANALYSIS_TASK)
def record_analysis(result: dict, identity: dict, plot_paths: list[str]) -> dict:
    """The analysis with what it analysed and the SHA-256 of each plot it drew: the publisher
    embeds a plot in a card only when both match (no plot of another run can slip in)."""
    return {**result, **identity, "plots": hub_plots.plot_digests(plot_paths)}


@task(name="attach-analysis", **ANALYSIS_TASK)
def attach_analysis(input: str, out_dir: str, run: dict | None = None) -> list[str]:
    """Put the plots and the correlation table into the local ``filtered``/``unique`` folders and
    cards (they are what publish uploads). Only for an analysis in ``INPUT/analysis`` of a
    finished curate run; otherwise the cards are left as they are and the log says why."""
    logger = get_run_logger()
    if Path(out_dir).resolve() != (Path(input) / DEFAULT_SUBDIR).resolve():
        logger.info(f"analysis: not added to the dataset cards ({out_dir} is not {Path(input) / DEFAULT_SUBDIR}, where publish reads it)")
        return []
    try:
        folders = hub_plots.attach_analysis(input, run)
    except UserError as exc:
        logger.warning(f"analysis: not added to the dataset cards: {exc}")
        return []
    logger.info(f"analysis: added the plots and correlations to {', '.join(str(f) for f in folders)}")
    return [str(f) for f in folders]


@task(name="write-analysis-json", **ANALYSIS_TASK)
def write_analysis_json(result: dict, out_dir: str) -> str:
    """``analysis.json``: strict JSON (no NaN), written atomically."""
    target = Path(out_dir) / ANALYSIS_JSON
    write_text(target, json.dumps(result, indent=2, allow_nan=False) + "\n")
    get_run_logger().info(f"analysis: wrote {target}")
    return str(target)


def _images_key(context: object, parameters: dict) -> str:
    return plot_files.images_key(parameters["df"])


@task(name="draw-plots", cache_key_fn=_images_key, persist_result=True)
def draw_plots(df: pl.DataFrame) -> dict:
    """The three PNGs as bytes (none for no rows), and which flow run drew them. Cached by
    content (module doc): a cache hit returns the bytes an earlier run drew, without importing
    the plotting libraries."""
    if df.height == 0:
        return {"images": {}, "drawn_by": None}
    from kernelbook_lib import plots  # plotnine, matplotlib, pandas: only when something is drawn

    return {"images": plots.render_plot_images(df), "drawn_by": str(flow_run.id)}


@task(name="write-plots", **ANALYSIS_TASK)
def write_plots(drawing: dict, out_dir: str) -> list[str]:
    paths = plot_files.write_images(drawing["images"], Path(out_dir))
    if paths:
        reused = drawing["drawn_by"] != str(flow_run.id)
        how = " (the drawing of an earlier run of the same data, code and libraries, reused)" if reused else ""
        get_run_logger().info(f"analysis: wrote {', '.join(p.name for p in paths)} in {out_dir}{how}")
    return [str(p) for p in paths]


@task(name="write-report", **ANALYSIS_TASK)
def write_report(result: dict, plot_paths: list[str], judge_info: dict, out_dir: str) -> str:
    """``report.md`` with the plots linked relative to the report."""
    target = Path(out_dir) / REPORT_MD
    text = report.render_report(result, [Path(p) for p in plot_paths], judge_info, relative_to=target.parent)
    write_text(target, text)
    get_run_logger().info(f"analysis: wrote {target}")
    return str(target)


@task(name="publish-report-artifact", **ANALYSIS_TASK)
def publish_report(result: dict, plot_paths: list[str], judge_info: dict) -> str:
    """The report as a Prefect markdown artifact (key ``analysis-report``); returns its id.

    The UI cannot load local image files, so the artifact lists the plots' paths instead of
    embedding them.
    """
    text = report.render_report(result, [Path(p) for p in plot_paths], judge_info, embed_images=False)
    artifact_id = create_markdown_artifact(
        markdown=text,
        key=REPORT_ARTIFACT_KEY,
        description=f"Difficulty/style/reward analysis of {result['n']} judged rows",
    )
    get_run_logger().info(f"analysis: published the report as artifact '{REPORT_ARTIFACT_KEY}'")
    return str(artifact_id)
