"""The analysis library (statistics, plots, report) without Prefect."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import stats

from kernelbook_lib import analysis, plots, report
from kernelbook_lib.errors import SchemaError, UserError
from kernelbook_lib.schema import JUDGED_SCHEMA

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PAIR_NAMES = ("difficulty~reward", "style~reward", "difficulty~style")


# --- builders ----------------------------------------------------------------------------


def judged(
    difficulty: list[int],
    style: list[int],
    reward: list[float | None],
    *,
    judge: str = "llm",
    judge_model: str | None = "openai/gpt-5.2",
    judge_prompt_version: str | None = "rubric-v1",
) -> pl.DataFrame:
    """Rows shaped like the curate flow's ``filtered`` output (a few source columns + judged ones)."""
    n = len(difficulty)
    return pl.DataFrame(
        {
            "example_id": list(range(n)),
            "reward": reward,
            "problem_id": [f"p{i}" for i in range(n)],
            "family_id": [f"p{i}" for i in range(n)],
            "kernel_flags": [[]] * n,
            "difficulty": difficulty,
            "style": style,
            "judge": [judge] * n,
            "judge_model": [judge_model] * n,
            "judge_prompt_version": [judge_prompt_version] * n,
            "judge_rationale": ["because"] * n,
            "judge_prompt_tokens": [100] * n,
            "judge_completion_tokens": [20] * n,
            "judge_verdicts": [[{"judge": judge_model or judge, "sample": 0, "difficulty": d, "style": st}] for d, st in zip(difficulty, style)],
            "score": [None] * n,
        },
        schema={"example_id": pl.Int64, "reward": pl.Float64, **JUDGED_SCHEMA},
    )


def correlated(n: int = 300, seed: int = 7) -> pl.DataFrame:
    """Difficulty raises reward a little; style falls with difficulty (like the real data)."""
    rng = np.random.default_rng(seed)
    d = rng.integers(0, 11, n)
    s = np.clip(10 - d + rng.integers(-2, 3, n), 0, 10)
    r = 0.85 + 0.01 * d + rng.normal(0, 0.04, n)
    return judged(d.tolist(), s.tolist(), r.tolist())


def write_out(root: Path, train: pl.DataFrame, validation: pl.DataFrame, *, summary: bool = True) -> Path:
    """A curate output folder: filtered/data/{split}-00000-of-00001.parquet + run_summary.json."""
    data = root / "filtered" / "data"
    data.mkdir(parents=True)
    train.write_parquet(data / "train-00000-of-00001.parquet")
    validation.write_parquet(data / "validation-00000-of-00001.parquet")
    if summary:
        counts = {"train": train.height, "validation": validation.height}
        (root / "run_summary.json").write_text(json.dumps({"datasets": {"filtered": counts, "unique": counts}}))
    return root


def strict_json(value) -> str:
    return json.dumps(value, allow_nan=False)


# --- statistics --------------------------------------------------------------------------


def test_coefficients_match_scipy_on_constructed_data():
    df = correlated()
    result = analysis.compute_analysis(df)
    assert set(result) == {"n", "pairs", "by_difficulty", "by_style"}
    assert result["n"] == 300
    for name, x, y in (("difficulty~reward", "difficulty", "reward"), ("style~reward", "style", "reward"),
                       ("difficulty~style", "difficulty", "style")):
        pair = result["pairs"][name]
        xs, ys = df[x].to_numpy().astype(float), df[y].to_numpy()
        pearson = stats.pearsonr(xs, ys)
        assert pair["n"] == 300
        assert pair["pearson"]["r"] == pytest.approx(pearson.statistic, abs=1e-12)
        assert pair["pearson"]["p"] == pytest.approx(pearson.pvalue, rel=1e-9, abs=1e-300)
        # Fisher z interval, by hand.
        z, se = math.atanh(pearson.statistic), 1 / math.sqrt(300 - 3)
        assert pair["pearson"]["ci95"] == pytest.approx([math.tanh(z - 1.959964 * se), math.tanh(z + 1.959964 * se)], abs=1e-6)
        assert pair["spearman"]["r"] == pytest.approx(stats.spearmanr(xs, ys).statistic, abs=1e-12)
        assert pair["kendall"]["r"] == pytest.approx(stats.kendalltau(xs, ys).statistic, abs=1e-12)
        assert pair["kendall"]["p"] == pytest.approx(stats.kendalltau(xs, ys).pvalue, rel=1e-9, abs=1e-300)
    # The constructed relations come out with the right signs and bands.
    assert result["pairs"]["difficulty~reward"]["pearson"]["direction"] == "positive"
    assert result["pairs"]["difficulty~style"]["pearson"]["strength"] == "very strong"
    assert result["pairs"]["difficulty~style"]["pearson"]["direction"] == "negative"
    assert result["pairs"]["difficulty~style"]["pearson"]["significant"] is True
    strict_json(result)


def test_unrelated_columns_are_not_significant():
    rng = np.random.default_rng(3)
    n = 200
    df = judged(rng.integers(0, 11, n).tolist(), rng.integers(0, 11, n).tolist(), rng.uniform(0.85, 1, n).tolist())
    pair = analysis.compute_analysis(df)["pairs"]["difficulty~style"]
    assert pair["pearson"]["significant"] is False
    assert pair["pearson"]["strength"] == "negligible"
    assert pair["pearson"]["ci95"][0] < 0 < pair["pearson"]["ci95"][1]


def test_perfect_relation_has_r_of_one_and_a_finite_report():
    d = list(range(11))
    result = analysis.compute_analysis(judged(d, [10 - v for v in d], [0.9 + v / 100 for v in d]))
    pair = result["pairs"]["difficulty~style"]
    assert pair["pearson"]["r"] == pytest.approx(-1.0)
    assert pair["pearson"]["ci95"] == pytest.approx([-1.0, -1.0])
    assert pair["kendall"]["r"] == pytest.approx(-1.0)
    assert pair["pearson"]["strength"] == "very strong"
    strict_json(result)


@pytest.mark.parametrize(
    "r, band",
    [(0.0, "negligible"), (0.0999, "negligible"), (0.1, "weak"), (-0.29, "weak"), (0.3, "moderate"),
     (0.4999, "moderate"), (0.5, "strong"), (-0.7, "strong"), (0.7001, "very strong"), (-1.0, "very strong")],
)
def test_strength_band_edges(r, band):
    assert analysis.strength_band(r) == band


def test_constant_column_makes_its_pairs_undefined_not_nan():
    df = judged([5, 5, 5, 5], [3, 7, 8, 2], [0.9, 0.95, 1.0, 0.97])
    result = analysis.compute_analysis(df)
    for name in ("difficulty~reward", "difficulty~style"):
        assert result["pairs"][name]["undefined"] is True
        assert "difficulty is constant" in result["pairs"][name]["reason"]
    assert "pearson" in result["pairs"]["style~reward"]
    assert result["by_difficulty"] == [{"level": 5, "n": 4, "mean": pytest.approx(0.955), "std": pytest.approx(np.std([0.9, 0.95, 1.0, 0.97], ddof=1))}]
    strict_json(result)


def test_fewer_than_three_rows_is_undefined_and_three_rows_is_defined():
    two = analysis.compute_analysis(judged([1, 2], [3, 4], [0.9, 1.0]))
    assert all(two["pairs"][n] == {"n": 2, "undefined": True, "reason": "fewer than 3 rows (n=2)"} for n in PAIR_NAMES)
    strict_json(two)
    three = analysis.compute_analysis(judged([1, 2, 4], [3, 4, 2], [0.9, 1.0, 0.95]))
    pearson = three["pairs"]["difficulty~reward"]["pearson"]
    assert pearson["ci95"] == [-1.0, 1.0]  # Fisher's interval is not defined for n <= 3
    strict_json(three)


def test_reward_per_level():
    result = analysis.compute_analysis(judged([1, 1, 2, 3], [4, 4, 4, 9], [0.9, 1.0, 0.8, 0.95]))
    assert result["by_difficulty"] == [
        {"level": 1, "n": 2, "mean": pytest.approx(0.95), "std": pytest.approx(math.sqrt(0.005))},
        {"level": 2, "n": 1, "mean": pytest.approx(0.8), "std": None},
        {"level": 3, "n": 1, "mean": pytest.approx(0.95), "std": None},
    ]
    assert [(r["level"], r["n"]) for r in result["by_style"]] == [(4, 3), (9, 1)]
    assert all(type(r["level"]) is int and type(r["mean"]) is float for r in result["by_style"])


@pytest.mark.parametrize(
    "df, message",
    [
        (judged([1, 2, 3], [1, 2, 3], [0.9, None, 0.9]), "1 null value(s) in 'reward'"),
        (judged([1, 2, 3], [1, 2, 3], [0.9, float("nan"), 0.9]), "1 NaN or infinite value(s) in 'reward'"),
        (judged([1, 2, 11], [1, 2, 3], [0.9, 0.9, 0.9]), "1 value(s) of 'difficulty' outside 0-10"),
        (judged([1, 2, 3], [1, 2, 3], [0.9, 0.9, 0.9]).with_columns(pl.lit(None, pl.Int64).alias("style")),
         "3 null value(s) in 'style'"),
    ],
)
def test_rows_are_never_dropped_silently(df, message):
    with pytest.raises(UserError) as err:
        analysis.compute_analysis(df)
    assert message in str(err.value)
    assert "3 rows" in str(err.value)


def test_missing_columns_are_named():
    with pytest.raises(SchemaError, match=r"lacks column\(s\) \['style'\].*columns found"):
        analysis.compute_analysis(correlated(10).drop("style"))


def test_judge_info_lists_every_judge_with_counts():
    df = pl.concat([
        judged([1, 2], [1, 2], [0.9, 0.9], judge_model="openai/gpt-5.2"),
        judged([3], [3], [0.9], judge_model="other/model", judge_prompt_version="rubric-v2"),
        judged([4], [4], [0.9], judge="static-ast-v1", judge_model=None, judge_prompt_version=None),
    ])
    info = analysis.judge_info(df)
    assert info["judge"] == [{"value": "llm", "n": 3}, {"value": "static-ast-v1", "n": 1}]
    # Most frequent first; ties by value, null (the static judge's model) before names.
    assert info["judge_model"] == [
        {"value": "openai/gpt-5.2", "n": 2}, {"value": None, "n": 1}, {"value": "other/model", "n": 1}
    ]
    assert info["judge_prompt_version"][0] == {"value": "rubric-v1", "n": 2}


# --- loading -----------------------------------------------------------------------------


def test_load_judged_reads_every_split(tmp_path):
    df = correlated(50)
    out = write_out(tmp_path, df.head(45), df.tail(5))
    loaded = analysis.load_judged(out)
    assert loaded.height == 50
    assert loaded.group_by("_split").len().sort("_split").rows() == [("train", 45), ("validation", 5)]
    assert set(analysis.ANALYSIS_COLUMNS) <= set(loaded.columns)
    assert "judge_rationale" not in loaded.columns  # only what the analysis needs is read
    assert analysis.compute_analysis(loaded) == analysis.compute_analysis(df)


def test_load_judged_accepts_an_empty_validation_split(tmp_path):
    df = correlated(20)
    assert analysis.load_judged(write_out(tmp_path, df, df.head(0))).height == 20


def test_load_judged_missing_folder_names_it(tmp_path):
    with pytest.raises(UserError, match="no such output folder"):
        analysis.load_judged(tmp_path / "nope")
    (tmp_path / "unique").mkdir()
    with pytest.raises(UserError) as err:
        analysis.load_judged(tmp_path)
    assert "filtered/data does not exist" in str(err.value) and "['unique']" in str(err.value)


def test_load_judged_refuses_an_unfinished_run(tmp_path):
    df = correlated(10)
    with pytest.raises(UserError, match="no run_summary.json.*did not finish"):
        analysis.load_judged(write_out(tmp_path, df, df.head(0), summary=False))


def test_load_judged_refuses_files_that_disagree_with_the_summary(tmp_path):
    df = correlated(10)
    out = write_out(tmp_path, df, df.head(0))
    (out / "run_summary.json").write_text(json.dumps({"datasets": {"filtered": {"train": 12, "validation": 0}}}))
    with pytest.raises(UserError, match=r"\{'train': 10\} rows per split.*records \{'train': 12"):
        analysis.load_judged(out)


def test_load_judged_names_missing_and_found_columns(tmp_path):
    df = correlated(10).drop("judge_prompt_version", "difficulty")
    out = write_out(tmp_path, df, df.head(0))
    with pytest.raises(SchemaError) as err:
        analysis.load_judged(out)
    message = str(err.value)
    assert "['difficulty', 'judge_prompt_version']" in message
    assert "columns found: ['example_id', 'reward', 'problem_id', 'family_id', 'kernel_flags', 'style'" in message


# --- plots -------------------------------------------------------------------------------


def _assert_pngs(paths: list[Path], out: Path) -> None:
    assert [p.name for p in paths] == list(plots.PLOT_FILES)
    for path in paths:
        assert path.parent == out
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_render_plots_writes_three_pngs_reproducibly(tmp_path):
    df = correlated(120)
    first = plots.render_plots(df, tmp_path / "a")
    _assert_pngs(first, tmp_path / "a")
    second = plots.render_plots(df, tmp_path / "b")
    # Deterministic jitter: the same data gives the same pictures.
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


@pytest.mark.parametrize(
    "df",
    [
        judged([5, 5, 5], [3, 7, 8], [0.9, 0.9, 0.9]),  # constant difficulty and reward
        judged([1, 4, 9], [3, 3, 3], [0.9, 0.95, 1.2]),  # constant style
        judged([2], [2], [1.0]),  # one row
    ],
    ids=["constant-difficulty-and-reward", "constant-style", "one-row"],
)
def test_render_plots_survives_tiny_and_constant_data(tmp_path, df):
    _assert_pngs(plots.render_plots(df, tmp_path), tmp_path)


def test_render_plots_refuses_no_rows(tmp_path):
    with pytest.raises(UserError, match="no rows"):
        plots.render_plots(correlated(5).head(0), tmp_path)


# --- report ------------------------------------------------------------------------------


def test_report_has_tables_bands_plots_and_judge(tmp_path):
    df = correlated(300).with_columns(pl.lit("train").alias("_split"))
    result = analysis.compute_analysis(df)
    paths = [tmp_path / name for name in plots.PLOT_FILES]
    text = report.render_report(result, paths, analysis.judge_info(df), relative_to=tmp_path)
    assert "n = 300 rows** (train: 300)" in text
    assert "| pair | n | coefficient | value | 95 % CI | p | strength | significant |" in text
    pearson = result["pairs"]["difficulty~style"]["pearson"]
    lo, hi = pearson["ci95"]
    assert f"| difficulty~style | 300 | Pearson r | {pearson['r']:+.3f} | [{lo:+.3f}, {hi:+.3f}] |" in text
    assert "very strong negative | yes |" in text
    assert "negligible (0 ≤ |r| < 0.1), weak (0.1 ≤ |r| < 0.3)" in text
    assert "| difficulty | n | mean reward | std reward |" in text
    assert "`openai/gpt-5.2` (300 rows)" in text and "`rubric-v1` (300 rows)" in text
    for name in plots.PLOT_FILES:
        assert f"]({name})" in text  # relative to the report
    assert str(tmp_path) not in text


def test_report_flags_mixed_judges_and_undefined_pairs():
    df = pl.concat([
        judged([5, 5], [3, 4], [0.9, 1.0], judge_model="a/model"),
        judged([5, 5], [6, 7], [0.95, 0.97], judge_model="b|model"),
    ])
    text = report.render_report(analysis.compute_analysis(df), [], analysis.judge_info(df))
    assert "judged with more than one model" in text
    assert "`a/model` (2 rows)" in text and r"`b\|model` (2 rows)" in text  # pipes escaped in tables
    assert "| difficulty~reward | 4 | – | undefined | – | – | difficulty is constant (every row is 5) | – |" in text
    assert "no correlation can be computed: difficulty is constant" in text


def test_report_without_images_lists_plot_paths(tmp_path):
    df = correlated(30)
    paths = [tmp_path / name for name in plots.PLOT_FILES]
    text = report.render_report(analysis.compute_analysis(df), paths, analysis.judge_info(df), embed_images=False)
    assert "![" not in text
    assert f"`{tmp_path / plots.CORRELATION_PNG}`" in text
