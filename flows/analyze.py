"""The ``analyze`` flow: statistics, plots and a report on a curate run's judged dataset.

Reads ``INPUT/filtered`` (written by the ``curate`` flow) and writes ``analysis.json``, three
PNG plots and ``report.md`` into ``OUT`` (default ``INPUT/analysis``); the report is also
published as the Prefect markdown artifact ``analysis-report``.

    python -m flows.analyze --input outputs [--out outputs/analysis]
"""

from __future__ import annotations

import tasks  # noqa: F401  (Prefect environment defaults, before prefect is imported)

import argparse
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
def analyze(input: str = "outputs", out: str | None = None) -> dict:
    """Analyse the judged dataset in ``input``; write the results into ``out`` (default INPUT/analysis)."""
    out_dir = prepare_analysis_out(input, out)
    df = load_judged(input)
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


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.analyze``: run the flow; a user error is one line on stderr, exit 2."""
    from pathlib import Path

    from kernelbook_lib.analysis import judged_files
    from kernelbook_lib.errors import UserError

    parser = argparse.ArgumentParser(prog="python -m flows.analyze", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default="outputs", help="the curate flow's output folder (default: outputs)")
    parser.add_argument("--out", default=None, help="where to write the analysis (default: INPUT/analysis)")
    args = parser.parse_args(argv)
    try:
        # Check the input before starting a flow run, so a wrong folder is one clear line
        # rather than a failed run with a traceback in the logs.
        judged_files(Path(args.input))
        result = analyze(input=args.input, out=args.out)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"analysis written to {result['out']} (report: {result['report']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
