"""The ``analyze`` flow: statistics, plots and a report on a curate run's judged dataset.

Reads ``INPUT/filtered`` (written by the ``curate`` flow) and writes ``analysis.json``, three
PNG plots and ``report.md`` into ``OUT`` (default ``INPUT/analysis``); the report is also
published as the Prefect markdown artifact ``analysis-report``.

    python -m flows.analyze --input outputs [--out outputs/analysis]
"""

from __future__ import annotations

import tasks  # noqa: F401  (Prefect environment defaults, before prefect is imported)

import sys

from prefect import flow, get_run_logger

from tasks.analysis import (
    REPORT_ARTIFACT_KEY,
    compute_analysis,
    describe_judges,
    load_judged,
    prepare_analysis_out,
    publish_report,
    render_plots,
    write_analysis_json,
    write_report,
)


@flow(name="analyze", log_prints=False)
def analyze(input: str = "outputs", out: str | None = None, counts: dict[str, int] | None = None) -> dict:
    """Analyse the judged dataset in ``input``; write the results into ``out`` (default INPUT/analysis).

    ``counts``: the filtered dataset's rows per split, passed by the curate run that has just
    written it (its run summary comes after the analysis); without it the folder must hold a
    finished run's ``run_summary.json``, whose counts the files must match."""
    out_dir = prepare_analysis_out(input, out)
    df = load_judged(input, counts)
    result = compute_analysis(df)
    judges = describe_judges(df)
    analysis_json = write_analysis_json(result, out_dir)
    plot_paths = render_plots(df, out_dir)
    report_path = write_report(result, plot_paths, judges, out_dir)
    publish_report(result, plot_paths, judges)
    get_run_logger().info(f"analyze: done, report at {report_path}")
    return {
        "out": out_dir,
        "analysis_json": analysis_json,
        "report": report_path,
        "plots": plot_paths,
        "artifact_key": REPORT_ARTIFACT_KEY,
        "analysis": result,
    }


if __name__ == "__main__":
    from kernelbook_cli import main

    main(["analyze", *sys.argv[1:]])
