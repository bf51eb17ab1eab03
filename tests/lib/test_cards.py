"""Dataset cards: metadata the Hub and ``datasets`` understand, an honest account of how the data
was made, and nothing secret. ``write_out`` (also used by test_publish) builds a small output
folder in Hub layout with the exporter the curate flow uses."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from kernelbook_lib import export, schema
from kernelbook_lib.cards import CardPart, render_combined_card, render_dataset_card
from kernelbook_lib.errors import UserError
from kernelbook_lib.summary import RunSummary
from kernelbook_lib.text import problem_id
from tests.fixtures import fake_data

FILES = {"train": ["data/train-00000-of-00001-0123456789abcdef.parquet"],
         "validation": ["data/validation-00000-of-00001-fedcba9876543210.parquet"]}


def shard(folder: Path, split: str) -> Path:
    """The one shard of ``split`` in a dataset folder."""
    [relative] = export.dataset_files(folder)[split]
    return folder / relative


def replace_shard(folder: Path, split: str, frame: pl.DataFrame) -> Path:
    """Put other rows in place of a split's shard, named by their content like the exporter does."""
    shard(folder, split).unlink()
    tmp = folder / "data" / "tmp.parquet"
    export.write_parquet(frame, tmp)
    target = folder / "data" / f"{split}-00000-of-00001-{export.file_sha256(tmp)[:export.FINGERPRINT_CHARS]}.parquet"
    tmp.rename(target)
    return target


def judged_frame(problems: list[int], rollouts: int = 2) -> pl.DataFrame:
    """Judged rows in the output column order: ``rollouts`` rows for each problem number."""
    rows = [fake_data.row(p * 100 + j, k=p, name=f"Mod{p}", reward=0.9 + j / 100) for p in problems for j in range(rollouts)]
    frame = fake_data.frame_of(rows)
    n = frame.height
    judged = pl.DataFrame(
        {
            "problem_id": [problem_id(r["info"]["python_code"]) for r in rows],
            "family_id": [problem_id(r["info"]["python_code"]) for r in rows],
            "kernel_flags": [[]] * n,
            "difficulty": [3] * n,
            "style": [5] * n,
            "judge": ["static-ast-v1"] * n,
            "judge_model": [None] * n,
            "judge_prompt_version": [None] * n,
            "judge_rationale": ["elementwise; tidy"] * n,
            "judge_prompt_tokens": [None] * n,
            "judge_completion_tokens": [None] * n,
            "judge_verdicts": [[{"judge": "static-ast-v1", "sample": 0, "difficulty": 3, "style": 5}]] * n,
            "score": [r["reward"] * 15 for r in rows],
        },
        schema=schema.JUDGED_SCHEMA,
    )
    return pl.concat([frame, judged], how="horizontal")


def run_summary(datasets: dict[str, dict[str, int]], **overrides) -> dict:
    """A consistent run summary (the lead's RunSummary model) for the given dataset counts."""
    n_filtered = sum(datasets["filtered"].values())
    n_unique = sum(datasets["unique"].values())
    fields = dict(
        source="sample", split="train", threshold=0.85, limit=None, judge="static-ast-v1",
        group_by="problem_id", seed=42, val_fraction=0.1,
        started_at="2025-01-01T00:00:00+00:00", finished_at="2025-01-01T00:01:00+00:00",
        stages=[
            {"name": "load", "rows_in": n_filtered + 5, "rows_out": n_filtered + 2, "dropped": {"missing_answer": 3}},
            {"name": "families", "rows_in": n_filtered + 2, "rows_out": n_filtered + 2, "dropped": {}},
            {"name": "filter", "rows_in": n_filtered + 2, "rows_out": n_filtered, "dropped": {"reward_not_above_threshold": 2}},
            {"name": "decontaminate", "rows_in": n_filtered, "rows_out": n_filtered, "dropped": {}},
            {"name": "judge", "rows_in": n_filtered, "rows_out": n_filtered, "dropped": {}},
            {"name": "dedupe", "rows_in": n_filtered, "rows_out": n_unique, "dropped": {"lower_score_than_best_of_problem_id": n_filtered - n_unique}},
            {"name": "split", "rows_in": n_unique, "rows_out": n_unique, "dropped": {}},
        ],
        datasets=datasets,
    )
    fields.update(overrides)
    return RunSummary(**fields).model_dump(mode="json")


def write_dataset(folder: Path, kind: str, splits: dict[str, pl.DataFrame], summary: dict) -> export.DataFiles:
    counts = {split: frame.height for split, frame in splits.items()}
    return export.write_dataset_folder(
        folder, splits, lambda files: render_dataset_card(kind, summary, counts, data_files=files,
                                                          columns=dict(splits["train"].schema) if kind == "synthetic" else None))


def write_out(root: Path, *, train: tuple[int, ...] = (1, 2, 3), validation: tuple[int, ...] = (4,), summary_overrides: dict | None = None) -> Path:
    """An output folder like the curate flow's: filtered (2 rollouts per problem) and unique
    (1 per problem), split by problem, with cards and run_summary.json."""
    root.mkdir(parents=True, exist_ok=True)
    data = {
        "filtered": {"train": judged_frame(list(train)), "validation": judged_frame(list(validation))},
        "unique": {"train": judged_frame(list(train), 1), "validation": judged_frame(list(validation), 1)},
    }
    counts = {kind: {split: f.height for split, f in splits.items()} for kind, splits in data.items()}
    summary = run_summary(counts, **(summary_overrides or {}))
    for kind, splits in data.items():
        write_dataset(root / kind, kind, splits, summary)
    (root / "run_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return root


def write_synthetic(root: Path, n: int = 3) -> Path:
    frame = pl.DataFrame(
        {"prompt": [f"Write a Triton kernel for task {i}." for i in range(n)], "module_name": [f"Mod{i}" for i in range(n)],
         "python_code": [fake_data.MODULE.format(name=f"Mod{i}", k=i) for i in range(n)]}
    )
    summary = {
        "pipeline": "generate", "version": "0.1.0", "source": "GPUMODE/KernelBook", "split": "train", "limit": None,
        "generator_model": "openai/gpt-5.2", "generator_prompt_version": "generate-v1",
        "started_at": "2025-01-01T00:00:00+00:00", "finished_at": "2025-01-01T00:02:00+00:00",
        "stages": [{"name": "load", "rows_in": n, "rows_out": n, "dropped": {}}, {"name": "generate", "rows_in": n, "rows_out": n, "dropped": {}}],
        "datasets": {"synthetic": {"train": n}}, "llm": {"calls": n, "prompt_tokens": 100 * n}, "warnings": [],
    }
    write_dataset(root / "synthetic", "synthetic", {"train": frame}, summary)
    (root / "synthetic_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return root


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    header, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(header)


ANALYSIS = {
    "n": 8,
    "pairs": {
        "difficulty~reward": {
            "n": 8,
            "pearson": {"r": 0.0712, "p": 0.51, "ci95": [-0.14, 0.28], "strength": "negligible", "direction": "positive", "significant": False},
            "spearman": {"r": 0.05, "p": 0.6},
            "kendall": {"r": 0.04, "p": 0.62},
        },
        "style~reward": {"n": 8, "undefined": True, "reason": "style is constant (every row is 5)"},
    },
}


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return write_out(tmp_path / "out")


def summary_of(root: Path) -> dict:
    return json.loads((root / "run_summary.json").read_text())


def card(kind: str, summary: dict, splits: dict[str, int], **kwargs) -> str:
    files = {split: FILES[split] for split in splits}
    return render_dataset_card(kind, summary, splits, data_files=kwargs.pop("data_files", files), **kwargs)


def test_card_metadata_is_built_with_huggingface_hub_and_reads_back(out: Path):
    from huggingface_hub import DatasetCard

    text = card("filtered", summary_of(out), {"train": 6, "validation": 2}, split_bytes={"train": 1000, "validation": 300})
    meta = front_matter(text)
    # Exactly the files of this run, never a glob that would also load an older run's shards.
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": FILES["train"][0]}, {"split": "validation", "path": FILES["validation"][0]}]}]
    assert meta["dataset_info"]["splits"] == [
        {"name": "train", "num_bytes": 1000, "num_examples": 6},
        {"name": "validation", "num_bytes": 300, "num_examples": 2},
    ]
    assert meta["license"] == "other" and meta["task_categories"] == ["text-generation"]
    assert meta["annotations_creators"] == ["machine-generated"] and meta["size_categories"] == ["n<1K"]
    assert {"triton", "gpu-kernels", "sft"} <= set(meta["tags"])
    # huggingface_hub's own loader reads the same metadata back from a file.
    path = out / "card.md"
    path.write_text(text)
    loaded = DatasetCard.load(path)
    assert loaded.data.license == "other" and loaded.data.configs == meta["configs"]
    assert loaded.data.annotations_creators == ["machine-generated"]
    # Without byte sizes there is no dataset_info (datasets would ignore splits lacking num_bytes).
    assert "dataset_info" not in front_matter(card("filtered", summary_of(out), {"train": 6, "validation": 2}))


def test_a_card_must_list_files_for_every_split(out: Path):
    with pytest.raises(ValueError, match="data_files must list files for exactly the splits"):
        card("filtered", summary_of(out), {"train": 6, "validation": 2}, data_files={"train": FILES["train"]})


def test_a_sample_card_says_so_in_its_title_and_tags(out: Path):
    summary = summary_of(out)  # source "sample", static judge
    text = card("unique", summary, {"train": 3, "validation": 1}, repo_id="me/kb-unique")
    meta = front_matter(text)
    title = text.split("\n---\n", 1)[1].lstrip().splitlines()[0]
    assert title == "# me/kb-unique (built from the bundled synthetic sample, not real data; heuristic scores, no LLM judge)"
    assert "synthetic" in meta["tags"] and "heuristic-judged" in meta["tags"]
    assert "bundled synthetic sample" in meta["pretty_name"] and "heuristic scores" in meta["pretty_name"]


def test_a_real_llm_judged_card_has_a_plain_title(out: Path):
    summary = {**summary_of(out), "source": "siro1/kernelbook-glm4-evals", "judge": "llm",
               "judge_model": "openai/gpt-5.2", "judge_prompt_version": "judge-v1"}
    text = card("filtered", summary, {"train": 6, "validation": 2}, repo_id="me/kb-filtered")
    meta = front_matter(text)
    assert "\n# me/kb-filtered\n" in text
    assert "synthetic" not in meta["tags"] and "llm-judged" in meta["tags"]
    assert meta["source_datasets"] == ["siro1/kernelbook-glm4-evals"]
    # Statically judged rows of real data: the title still says the scores are heuristic.
    static = card("filtered", {**summary, "judge": "static-ast-v1", "judge_model": None}, {"train": 6, "validation": 2}, repo_id="me/kb")
    assert "\n# me/kb (heuristic scores, no LLM judge)\n" in static


def test_datasets_loads_the_folder_with_its_card(out: Path, tmp_path: Path):
    import datasets

    loaded = datasets.load_dataset(str(out / "filtered"), cache_dir=str(tmp_path / "cache"))
    assert set(loaded) == {"train", "validation"}
    assert (loaded["train"].num_rows, loaded["validation"].num_rows) == (6, 2)
    assert "problem_id" in loaded["train"].column_names


def test_card_row_counts_are_checked_by_datasets(out: Path, tmp_path: Path):
    """With dataset_info, datasets compares the card's counts with the data: a wrong card fails."""
    import datasets
    from datasets.exceptions import NonMatchingSplitsSizesError

    folder = out / "unique"
    files = export.dataset_files(folder)
    sizes = {"train": 10, "validation": 10}
    (folder / "README.md").write_text(card("unique", summary_of(out), {"train": 3, "validation": 1}, data_files=files, split_bytes=sizes))
    assert datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "ok"))["train"].num_rows == 3
    (folder / "README.md").write_text(card("unique", summary_of(out), {"train": 4, "validation": 1}, data_files=files, split_bytes=sizes))
    with pytest.raises(NonMatchingSplitsSizesError):
        datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "bad"))


def test_card_tells_how_the_data_was_made(out: Path):
    text = card("unique", summary_of(out), {"train": 3, "validation": 1})
    body = text.split("\n---\n", 1)[1]
    assert "| train | 3 |" in body and "| validation | 1 |" in body
    assert "reward > 0.85" in body
    assert "**heuristic stand-in**" in body and "`static-ast-v1`" in body
    assert "ties go to the higher `reward`, then the lower `example_id`" in body
    assert 'SHA-256 of `"42:<problem_id>"`' in body and "first 10%" in body and "no problem is in both" in body
    # The stage table carries every stage's counts and drop reasons.
    assert "| load | 13 | 10 | 3 | missing_answer: 3 |" in body
    assert "| dedupe | 8 | 4 | 4 | lower_score_than_best_of_problem_id: 4 |" in body
    assert "| `problem_id` | `string` |" in body and "| `prompt` | `list<struct<role: string, content: string>>` |" in body
    assert "Correlations" not in body and "## Plots" not in body  # no analysis given


def test_llm_judge_card_names_model_and_prompt_version_and_shows_no_secret(out: Path, monkeypatch):
    secrets = {"HF_TOKEN": "hf_SECRET-token-VALUE-1234567890abcdef", "PRIME_API_KEY": "sk-SECRET-key-VALUE-1234567890"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    summary = summary_of(out)
    summary.update(
        judge="llm", judge_model="openai/gpt-5.2", judge_prompt_version="judge-v1",
        source="/home/alice/private-project/evals.parquet",
        # A careless caller might put anything in the LLM block: only numbers are shown.
        llm={"calls": 8, "prompt_tokens": 12345, "api_key": secrets["PRIME_API_KEY"], "base_url": f"https://u:{secrets['HF_TOKEN']}@x"},
    )
    text = card("filtered", summary, {"train": 6, "validation": 2}, analysis=ANALYSIS, repo_id="me/kb-filtered")
    assert "`openai/gpt-5.2`" in text and "`judge-v1`" in text and "heuristic stand-in" not in text
    assert "llm-judged" in front_matter(text)["tags"]
    assert "| prompt_tokens | 12345 |" in text
    for value in secrets.values():
        assert value not in text
    assert "/home/alice" not in text and "`evals.parquet`" in text
    assert 'load_dataset("me/kb-filtered")' in text


def test_correlation_summary_and_plots_from_the_analysis(out: Path):
    images = [("images/correlation_analysis.png", "Correlations"), ("images/reward_distribution.png", "Reward")]
    text = card("filtered", summary_of(out), {"train": 6, "validation": 2}, analysis=ANALYSIS, images=images)
    assert "n = 8 judged rows" in text
    assert "| difficulty ~ reward | 8 | +0.071 [-0.140, +0.280] (negligible) | 0.51 | +0.050 (p 0.6) | +0.040 (p 0.62) |" in text
    assert "| style ~ reward | 8 | undefined: style is constant (every row is 5) |" in text
    assert "![Correlations](images/correlation_analysis.png)" in text and "![Reward](images/reward_distribution.png)" in text
    assert text.index("## Correlations") < text.index("## Plots") < text.index("## Columns")


def test_synthetic_card(tmp_path: Path):
    root = write_synthetic(tmp_path)
    text = (root / "synthetic" / "README.md").read_text()
    meta = front_matter(text)
    assert "synthetic" in meta["tags"] and meta["source_datasets"] == ["GPUMODE/KernelBook"]
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": export.dataset_files(root / "synthetic")["train"][0]}]
    assert "`openai/gpt-5.2`" in text and "`generate-v1`" in text and "| train | 3 |" in text
    assert "| `prompt` | `string` | the generated task specification (by the generator named in `generator`) |" in text
    assert "generated by an LLM" in text and "without a model" not in text


def test_card_refuses_wrong_splits_and_incomplete_summaries(out: Path):
    summary = summary_of(out)
    with pytest.raises(ValueError, match="needs splits"):
        card("filtered", summary, {"train": 6})
    del summary["judge"]
    with pytest.raises(UserError, match="lacks field"):
        card("filtered", summary, {"train": 6, "validation": 2})


def test_single_repo_card_has_one_config_per_dataset_and_datasets_loads_each(tmp_path: Path):
    """The --single-repo layout, arranged locally as the repo will be: kind/data/..., one card."""
    import shutil

    import datasets

    root = write_synthetic(write_out(tmp_path / "out"))
    repo = tmp_path / "repo"
    parts = []
    for kind in ("filtered", "unique", "synthetic"):
        shutil.copytree(root / kind / "data", repo / kind / "data")
        summary = json.loads((root / ("synthetic_summary.json" if kind == "synthetic" else "run_summary.json")).read_text())
        files = {split: [f"{kind}/{f}" for f in fs] for split, fs in export.dataset_files(root / kind).items()}
        parts.append(CardPart(kind, summary, summary["datasets"][kind], files,
                              analysis=ANALYSIS if kind == "filtered" else None,
                              images=[("images/joint_distribution.png", "Joint")] if kind == "filtered" else ()))
    text = render_combined_card("me/kb", parts)
    (repo / "README.md").write_text(text)
    meta = front_matter(text)
    assert [c["config_name"] for c in meta["configs"]] == ["filtered", "unique", "synthetic"]
    assert meta["configs"][0]["default"] is True and "default" not in meta["configs"][1]
    assert "\n# me/kb (built from the bundled synthetic sample, not real data; heuristic scores, no LLM judge)\n" in text
    assert "## Config `unique`" in text and "### How the data was made" in text
    assert 'load_dataset("me/kb", "unique")' in text and text.count("![Joint](images/joint_distribution.png)") == 1
    cache = str(tmp_path / "cache")
    assert datasets.load_dataset(str(repo), cache_dir=cache)["train"].num_rows == 6  # the default config: filtered
    assert datasets.load_dataset(str(repo), "unique", cache_dir=cache)["validation"].num_rows == 1
    assert datasets.load_dataset(str(repo), "synthetic", cache_dir=cache)["train"]["prompt"][0].startswith("Write a Triton kernel")
