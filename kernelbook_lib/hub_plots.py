"""The analysis of a curate run on its way into the dataset folders and cards: this run's, or none.

``analysis.json`` records which run and which ``filtered`` shards it analysed
(:func:`analysis_identity`) and the digests of its plots (:func:`plot_digests`);
:func:`analysis_problems` says why an analysis must not go into this run's cards (another run,
other files, a plot that is not the one it drew), and :func:`analysis_images` lists the plots to
publish. The analyze flow calls :func:`attach_analysis` to put the plots and the correlation table
into the local dataset folders and cards, so a folder looks like the repo it becomes; the publish
plan (:mod:`kernelbook_lib.hub`) adds the same to the cards it uploads.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kernelbook_lib import export
from kernelbook_lib.cards import render_dataset_card
from kernelbook_lib.errors import UserError
from kernelbook_lib.export import atomic_path, write_text
from kernelbook_lib.hub_validate import SUMMARY_FILES, validate_dataset_folder

#: The analyze flow's result, relative to the output folder (optional).
ANALYSIS_FILE = Path("analysis") / "analysis.json"
#: How each plot is introduced in a card (the analysis report's captions).
PLOT_CAPTIONS = {
    "correlation_analysis.png": "Correlations: scatter plots, reward by score, mean-reward heatmap",
    "joint_distribution.png": "Joint distribution of difficulty and style, coloured by reward",
    "reward_distribution.png": "Distribution of reward",
    "sft_lengths.png": "SFT sequence lengths (chat-formatted prompt + completion)",
}


# --- the analysis: this run's, or none -----------------------------------------------------


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} not found: {what}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


def load_analysis(input_dir: str | Path) -> dict | None:
    """``OUT/analysis/analysis.json`` when the analyze flow has run, else None."""
    path = Path(input_dir) / ANALYSIS_FILE
    return _read_json(path, "run the analyze flow first") if path.exists() else None


def run_identity(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Which curate run a summary describes: its ``run_id`` (new for every run) and start. The
    analysis of a run happens before its ``run_summary.json`` is written, so nothing set at the
    end (``finished_at``) may be part of it."""
    return {key: summary.get(key) for key in ("pipeline", "run_id", "started_at")}


def _summary_of(root: Path, summary: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """``summary`` (the run that is writing ``root`` now), else the folder's finished run."""
    return summary if summary is not None else _read_json(root / SUMMARY_FILES["filtered"], "run curate first")


def analysis_identity(input_dir: str | Path, summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What an analysis of ``input_dir`` is about, recorded in ``analysis.json``: the curate run
    (``summary``, the run writing the folder now, else its ``run_summary.json``) and the exact
    ``filtered`` shards (their names carry their content's fingerprint)."""
    root = Path(input_dir)
    summary_path = root / SUMMARY_FILES["filtered"]
    if summary is None:
        summary = _read_json(summary_path, "run curate first") if summary_path.exists() else {}
    return {"run": run_identity(summary), "data_files": export.dataset_files(root / "filtered")}


def plot_digests(paths: list[str] | list[Path]) -> dict[str, str]:
    """``{file name: sha256}`` of the plots, recorded in ``analysis.json``."""
    return {Path(p).name: export.file_sha256(Path(p)) for p in paths}


def analysis_problems(analysis: Mapping[str, Any], input_dir: Path, summary: Mapping[str, Any]) -> list[str]:
    """Why ``analysis`` must not go into this run's cards (empty when it may): it analysed
    another run or other files, or a plot beside it is not the one it drew."""
    where = ANALYSIS_FILE.as_posix()
    rerun = "re-run the analyze flow (or remove the stale analysis)"
    if "run" not in analysis or "data_files" not in analysis:
        return [f"{where} does not say which run it analysed (written by an older version); {rerun}"]
    if analysis["run"] != run_identity(summary):
        return [f"{where} analysed the run finished at {analysis['run'].get('finished_at')}, not this "
                f"run (finished at {summary.get('finished_at')}); {rerun}"]
    if analysis["data_files"] != export.dataset_files(Path(input_dir) / "filtered"):
        return [f"{where} analysed other filtered files than those in the folder; {rerun}"]
    problems = []
    folder = (Path(input_dir) / ANALYSIS_FILE).parent
    for name, digest in (analysis.get("plots") or {}).items():
        path = folder / name
        if not path.is_file() or export.file_sha256(path) != digest:
            problems.append(f"{(ANALYSIS_FILE.parent / name).as_posix()} is not the plot this analysis drew; {rerun}")
    return problems


def analysis_images(input_dir: Path, analysis: Mapping[str, Any] | None) -> list[tuple[Path, str, str]]:
    """The plots to publish as ``(local file, path in the repo, caption)``."""
    folder = (Path(input_dir) / ANALYSIS_FILE).parent
    return [
        (folder / name, f"{export.IMAGES_DIR}/{name}", PLOT_CAPTIONS.get(name, name))
        for name in sorted((analysis or {}).get("plots") or {})
    ]


def _mirror_images(folder: Path, images: list[tuple[Path, str, str]]) -> None:
    """Make ``folder/images`` hold exactly ``images`` (older plots removed)."""
    target = folder / export.IMAGES_DIR
    wanted = {Path(in_repo).name for _, in_repo, _ in images}
    if target.is_dir():
        for old in target.iterdir():
            if old.name not in wanted:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
    for source, in_repo, _ in images:
        if not (folder / in_repo).is_file() or export.file_sha256(folder / in_repo) != export.file_sha256(source):
            with atomic_path(folder / in_repo) as tmp:
                shutil.copyfile(source, tmp)


def attach_analysis(input_dir: str | Path, summary: Mapping[str, Any] | None = None) -> list[Path]:
    """Put the analysis into the local ``filtered`` and ``unique`` folders: the plots into
    ``images/`` and a card with the correlation table and the plots. Refuses (UserError) an
    analysis that is not this run's (``summary``: the run writing the folder now, else its
    ``run_summary.json``). Returns the folders updated."""
    root = Path(input_dir)
    analysis = load_analysis(root)
    if analysis is None:
        raise UserError(f"{root / ANALYSIS_FILE} not found: run the analyze flow first")
    summary = _summary_of(root, summary)
    problems = analysis_problems(analysis, root, summary)
    images = analysis_images(root, analysis)
    updated = []
    for kind in ("filtered", "unique"):
        report = validate_dataset_folder(root / kind, kind, summary)
        if problems or not report.ok:
            raise UserError(f"not adding the analysis to {root / kind}: " + "; ".join([*problems, *report.problems]))
        card = render_dataset_card(
            kind, summary, report.rows, analysis, data_files=report.split_files, columns=report.columns,
            images=[(in_repo, caption) for _, in_repo, caption in images],
        )
        _mirror_images(report.path, images)
        write_text(report.path / export.CARD_FILE, card)
        updated.append(report.path)
    return updated
