"""The ``analyze`` flow: statistics, plots and a report on a curate run's judged dataset.

Reads ``INPUT/filtered`` (written by the ``curate`` flow) and writes ``analysis.json`` (with
the run and files it analysed and each plot's SHA-256), three PNG plots and ``report.md`` into
``OUT`` (default ``INPUT/analysis``); the report is also published as the Prefect markdown
artifact ``analysis-report``. With the default ``OUT`` the plots and the correlation table are
also put into the ``filtered`` and ``unique`` folders (``images/`` and their cards).

    kernelbook analyze --input outputs [--out outputs/analysis]
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from kernelbook_lib import analysis
from kernelbook_lib.params import as_params, AnalyzeParams

from tasks.analysis import (
    REPORT_ARTIFACT_KEY,
    attach_analysis,
    compute_analysis,
    describe_judges,
    draw_plots,
    identify_judged,
    load_judged,
    prepare_analysis_out,
    publish_report,
    record_analysis,
    write_analysis_json,
    write_plots,
    write_report,
)
from tasks.artifacts import correlations_artifact


@flow(name="analyze", log_prints=False, validate_parameters=False)  # params: checked by as_params
def analyze(params: AnalyzeParams = AnalyzeParams(), run: dict | None = None) -> dict:
    """Analyse the judged dataset in ``input``; write the results into ``out`` (default INPUT/analysis).

    ``run``: the run summary of the curate run that has just written ``input`` (its
    ``run_summary.json`` is written after the analysis), which says which run is analysed and
    how many rows the files must hold; without it the folder must hold a finished run's
    ``run_summary.json``."""
    params = as_params("analyze", params)
    input, out = params.input, params.out
    out_dir = prepare_analysis_out(input, out)
    identity = identify_judged(input, run)
    df = load_judged(input, run)
    result = compute_analysis(df, analysis.run_sft(Path(input), run))
    judges = describe_judges(df)
    plot_paths = write_plots(draw_plots(df), out_dir)
    document = record_analysis(result, identity, plot_paths)
    analysis_json = write_analysis_json(document, out_dir)  # after the plots it vouches for
    report_path = write_report(result, plot_paths, judges, out_dir)
    attached = attach_analysis(input, out_dir, run)
    publish_report(result, plot_paths, judges)
    correlations_artifact(result)
    get_run_logger().info(f"analyze: done, report at {report_path}")
    return {
        "out": out_dir,
        "analysis_json": analysis_json,
        "report": report_path,
        "plots": plot_paths,
        "artifact_key": REPORT_ARTIFACT_KEY,
        "analysis": document,
        "attached_to": attached,
    }

