"""The run's results as Prefect artifacts, where operators look (the UI's Artifacts page and
each run's Artifacts tab). The content is formatted by ``kernelbook_lib.artifact_content``;
this module only publishes it, under keys that are the same on every run.

Plain functions called from the flow, not tasks: an artifact is attached to the flow run, and
publishing it must never fail a run whose files are written. Every artifact is created on its
own; a failure (the API unreachable, a server hiccup) is a warning naming the key, and the
others are still tried. Nothing here writes a file, so the flows call these after
``run_summary.json`` / ``synthetic_summary.json`` (the last file of a run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from kernelbook_lib import artifact_content as content
from kernelbook_lib.prompt_dataset import DATASET_DIR, SyntheticSummary
from kernelbook_lib.summary import RunSummary, format_screen


def _create(key: str, create: Callable[..., Any], **fields: Any) -> str | None:
    """Create one artifact; on any error log a warning and return None (the run goes on)."""
    try:
        create(key=key, **fields)
    except Exception as exc:  # noqa: BLE001  (any API failure; the run's files are already written)
        get_run_logger().warning(f"artifacts: could not create the Prefect artifact {key!r}: {type(exc).__name__}: {exc}")
        return None
    return key


def _summary_artifacts(summary: RunSummary | SyntheticSummary, out_dir: str, stages_key: str, summary_key: str) -> list[str | None]:
    return [
        _create(stages_key, create_table_artifact, table=content.stage_rows(summary.stages),
                description=content.stages_description(summary)),
        _create(summary_key, create_markdown_artifact, markdown=content.summary_markdown(summary, out_dir),
                description=content.summary_description(summary)),
    ]


def _folder_artifact(key: str, folder: Path, what: str) -> str | None:
    link, text = content.folder_link(folder)
    return _create(key, create_link_artifact, link=link, link_text=text, description=what)


def _done(created: list[str | None]) -> list[str]:
    keys = [k for k in created if k]
    get_run_logger().info(f"artifacts: published {', '.join(keys) or 'none'}")
    return keys


def curate_artifacts(out_dir: str, summary: RunSummary, analysed: bool) -> list[str]:
    """``curate-stages``, ``curate-summary``, ``curate-screen`` (when the screen ran) and a link per
    output folder (``curate-filtered``, ``curate-unique``, and ``curate-analysis`` when this run
    wrote its analysis)."""
    created = _summary_artifacts(summary, out_dir, content.CURATE_STAGES_KEY, content.CURATE_SUMMARY_KEY)
    if summary.screen:
        created.append(_create(content.CURATE_SCREEN_KEY, create_table_artifact, table=content.screen_rows(summary.screen),
                               description=format_screen(summary.screen)))
    folders = ["filtered", "unique", *(["analysis"] if analysed else [])]
    for name in folders:
        counts = summary.datasets.get(name)
        what = (f"curate: the {name} dataset ({', '.join(f'{s} {n:,}' for s, n in counts.items())})" if counts
                else "curate: the analysis (report.md, analysis.json, plots)")
        created.append(_folder_artifact(content.CURATE_FOLDER_KEYS[name], Path(out_dir) / name, what))
    return _done(created)


def generate_artifacts(out_dir: str, summary: SyntheticSummary) -> list[str]:
    """``generate-stages``, ``generate-summary`` and ``generate-synthetic`` (the dataset folder)."""
    created = _summary_artifacts(summary, out_dir, content.GENERATE_STAGES_KEY, content.GENERATE_SUMMARY_KEY)
    rows = sum((summary.datasets.get("synthetic") or {}).values())
    created.append(_folder_artifact(content.GENERATE_FOLDER_KEY, Path(out_dir) / DATASET_DIR,
                                    f"generate-prompts: the synthetic dataset ({rows:,} prompts)"))
    return _done(created)


def correlations_artifact(result: dict) -> list[str]:
    """``analysis-correlations``: each pair's Pearson, Spearman and Kendall coefficients."""
    return _done([_create(content.CORRELATIONS_KEY, create_table_artifact, table=content.correlation_rows(result),
                          description=f"analysis: correlations of difficulty, style and reward over {result['n']:,} judged rows")])


def push_artifact(commit: dict) -> list[str]:
    """``publish-<dataset>``: a link to the commit of one pushed repo, with its tag."""
    link = content.push_link(commit)
    return _done([_create(link["key"], create_link_artifact, link=link["link"], link_text=link["link_text"],
                          description=link["description"])])
