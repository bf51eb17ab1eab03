"""Dataset folders read back what the last run wrote, with the user's ordinary ``datasets``
cache, and hold exactly one run's files."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from kernelbook_lib import export, prompt_dataset
from kernelbook_lib.cards import render_dataset_card
from kernelbook_lib.stages import SPLIT_COLUMN
from kernelbook_lib.summary import RunSummary
from tests.lib.test_cards import judged_frame, run_summary


@pytest.fixture
def shared_cache(tmp_path: Path, monkeypatch) -> Path:
    """One HF_DATASETS_CACHE for the whole test, as a user has (no cache_dir passed to load)."""
    import datasets.config

    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def curate_like_write(out: Path, threshold: float, train: list[int], validation: list[int]) -> dict[str, pl.DataFrame]:
    """What a curate run writes for filtered and unique; returns the rows of each train split."""
    filtered = pl.concat([
        judged_frame(train).with_columns(pl.lit("train").alias(SPLIT_COLUMN)),
        judged_frame(validation).with_columns(pl.lit("validation").alias(SPLIT_COLUMN)),
    ])
    unique = filtered.unique("problem_id", keep="first", maintain_order=True)
    counts = {name: {s: f.filter(pl.col(SPLIT_COLUMN) == s).height for s in ("train", "validation")}
              for name, f in (("filtered", filtered), ("unique", unique))}
    summary = RunSummary(**run_summary(counts, threshold=threshold))
    for name, frame in (("filtered", filtered), ("unique", unique)):
        export.write_hub_dataset(frame, out / name, name, summary)
    return {name: export.to_output(f.filter(pl.col(SPLIT_COLUMN) == "train")) for name, f in (("filtered", filtered), ("unique", unique))}


def loaded_rows(folder: Path, split: str = "train") -> list[tuple]:
    import datasets

    ds = datasets.load_dataset(str(folder))[split]
    return sorted(zip(ds["example_id"], ds["reward"], ds["problem_id"]))


def expected_rows(frame: pl.DataFrame) -> list[tuple]:
    return sorted(zip(frame["example_id"], frame["reward"], frame["problem_id"]))


def test_a_rerun_into_the_same_folder_reads_back_the_new_rows(tmp_path: Path, shared_cache: Path):
    out = tmp_path / "outputs"
    first = curate_like_write(out, 0.85, [1, 2, 3], [4])
    for name in ("filtered", "unique"):
        assert loaded_rows(out / name) == expected_rows(first[name])
    second = curate_like_write(out, 0.5, [1, 2, 3, 5, 6], [4, 7])
    for name in ("filtered", "unique"):
        assert loaded_rows(out / name) == expected_rows(second[name]), f"{name} read back the first run's rows"
        assert loaded_rows(out / name, "validation") == expected_rows(judged_frame([4, 7], 2 if name == "filtered" else 1))


def test_two_folders_of_the_same_name_read_back_their_own_rows(tmp_path: Path, shared_cache: Path):
    a = curate_like_write(tmp_path / "a" / "outputs", 0.85, [1, 2], [4])
    b = curate_like_write(tmp_path / "b" / "outputs", 0.85, [3, 5, 6], [7])
    assert loaded_rows(tmp_path / "a" / "outputs" / "filtered") == expected_rows(a["filtered"])
    assert loaded_rows(tmp_path / "b" / "outputs" / "filtered") == expected_rows(b["filtered"])


def test_a_rerun_of_prompt_generation_reads_back_the_new_prompts(tmp_path: Path, shared_cache: Path):
    import datasets

    folder = tmp_path / "outputs" / prompt_dataset.DATASET_DIR
    for prompts in (["first a", "first b"], ["second a", "second b", "second c"]):
        frame = pl.DataFrame({"prompt": prompts, "module_name": [f"M{i}" for i in range(len(prompts))],
                              "python_code": ["class M: pass"] * len(prompts)})
        summary = {"pipeline": "generate-prompts", "source": "sample", "split": "train", "stages": []}
        prompt_dataset.write_dataset_folder(folder, frame, lambda files, summary=summary, frame=frame: render_dataset_card(
            "synthetic", summary, {"train": frame.height}, data_files=files, columns=dict(frame.schema)))
        assert datasets.load_dataset(str(folder))["train"]["prompt"] == prompts


def test_a_folder_holds_exactly_one_runs_files(tmp_path: Path):
    out = tmp_path / "outputs"
    curate_like_write(out, 0.85, [1, 2, 3], [4])
    curate_like_write(out, 0.5, [1, 2, 3, 5], [4])
    for name in ("filtered", "unique"):
        folder = out / name
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        shards = export.dataset_files(folder)
        assert files == sorted(["README.md", *shards["train"], *shards["validation"]])
        for [shard] in shards.values():
            # The name carries the start of the file's SHA-256, and the card lists exactly it.
            assert Path(shard).stem.rsplit("-", 1)[1] == export.file_sha256(folder / shard)[: export.FINGERPRINT_CHARS]
            assert f"path: {shard}\n" in (folder / "README.md").read_text()
