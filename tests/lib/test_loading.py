"""Loading and entry validation: clear errors for wrong inputs, counted rejections for bad rows."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from kernelbook_lib import loading, schema
from kernelbook_lib.errors import SchemaError, SourceUnavailableError, UserError
from kernelbook_lib.text import extract_answer, normalize_code, problem_id
from tests.fixtures import fake_data


def load(tmp_path, rows, split="train"):
    path = fake_data.write_rows(rows, tmp_path / "src.parquet")
    return loading.prepare(loading.read_source(str(path), split))


def test_extract_answer_takes_the_last_block_and_none_when_missing():
    assert extract_answer("a <answer>one</answer> b <ANSWER> two </ANSWER>") == "two"
    assert extract_answer("no tags here") is None
    assert extract_answer("<answer>   </answer>") is None
    assert extract_answer(None) is None


def test_problem_id_ignores_line_endings_and_trailing_space_but_not_tokens():
    a = "class A:\n    x = 1\n"
    assert problem_id(a) == problem_id("\n\nclass A:  \r\n    x = 1\r\n\n")
    assert problem_id(a) != problem_id("class A:\n    x = 2\n")
    assert normalize_code("\n a \n\n") == " a"


def test_good_rows_pass_with_derived_columns(tmp_path):
    result = load(tmp_path, [fake_data.row(0), fake_data.row(1)])
    assert result.report.rows_in == 2 and result.report.rows_out == 2 and result.report.dropped == {}
    frame = result.frame
    assert frame.get_column(schema.ROW).to_list() == [0, 1]
    assert frame.get_column(schema.SOLUTION)[0].startswith("```python")
    assert frame.get_column("problem_id").n_unique() == 2


def test_each_bad_row_is_rejected_with_its_reason(tmp_path):
    rows = [
        fake_data.row(0),
        fake_data.row(1, reward=None),
        fake_data.row(2, reward=math.nan),
        fake_data.row(3, completion=[]),
        fake_data.row(4, content=""),
        fake_data.row(5, content="I forgot the tags: import triton"),
        fake_data.row(6, code="   \n"),
        fake_data.row(7, completion=[{"role": "user", "content": "only a user turn", "reasoning": None}]),
    ]
    result = load(tmp_path, rows)
    reasons = dict(zip(result.rejected["source_index"].to_list(), result.rejected["reason"].to_list()))
    assert reasons == {
        1: "reward_null",
        2: "reward_nan",
        3: "empty_completion",
        4: "empty_completion",
        5: "missing_answer",
        6: "empty_python_code",
        7: "empty_completion",
    }
    assert result.report.rows_in == 8 and result.report.rows_out == 1
    assert sum(result.report.dropped.values()) == 7
    assert result.rejected.filter(pl.col("source_index") == 5)["problem_id"][0] == problem_id(rows[5]["info"]["python_code"])


def test_missing_column_is_a_schema_error_naming_it_and_listing_found(tmp_path):
    frame = fake_data.frame_of([fake_data.row(0)]).drop("reward")
    path = tmp_path / "no_reward.parquet"
    frame.write_parquet(path)
    with pytest.raises(SchemaError) as err:
        loading.prepare(loading.read_source(str(path)))
    message = str(err.value)
    assert "missing column(s): reward" in message
    assert "Columns found: example_id" in message and "completion" in message
    assert err.value.exit_code == 2


def test_missing_info_field_and_wrong_types_are_named(tmp_path):
    rows = [{"example_id": "x", "prompt": [], "completion": [], "reward": "high", "info": {"module_name": "A"}}]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(SchemaError) as err:
        loading.prepare(loading.read_source(str(path)))
    message = str(err.value)
    assert "info.python_code" in message
    assert "'reward' must be numeric" in message
    assert "'example_id' must be an integer" in message


def test_jsonl_source_with_integer_rewards_is_coerced(tmp_path):
    row = fake_data.row(0, reward=None)
    row["reward"] = 1  # JSON integers are read as Int64: a lossless widening
    path = tmp_path / "src.jsonl"
    path.write_text(json.dumps(row) + "\n")
    result = loading.prepare(loading.read_source(str(path)))
    assert result.frame.schema["reward"] == pl.Float64 and result.report.rows_out == 1


def test_folder_in_hub_layout_reads_splits(tmp_path):
    (tmp_path / "data").mkdir()
    fake_data.write_rows([fake_data.row(0), fake_data.row(1)], tmp_path / "data" / "train-00000-of-00001.parquet")
    fake_data.write_rows([fake_data.row(2)], tmp_path / "data" / "validation-00000-of-00001.parquet")
    assert loading.read_source(str(tmp_path), "train").frame.height == 2
    assert loading.read_source(str(tmp_path), "validation").frame.height == 1
    both = loading.read_source(str(tmp_path), "all").frame
    assert both.height == 3 and sorted(set(both[schema.SOURCE_SPLIT])) == ["train", "validation"]


def test_missing_split_and_missing_path_and_unreadable_file_are_clear(tmp_path):
    path = fake_data.write_rows([fake_data.row(0)], tmp_path / "one.parquet")
    with pytest.raises(UserError, match="has no 'validation' split; splits found: train"):
        loading.read_source(str(path), "validation")
    with pytest.raises(SourceUnavailableError, match="no such file or folder"):
        loading.read_source(str(tmp_path / "nope.parquet"))
    with pytest.raises(SourceUnavailableError, match="neither an existing file"):
        loading.read_source("evals")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"\x00\x01 not parquet")
    with pytest.raises(SourceUnavailableError, match="cannot read"):
        loading.read_source(str(garbage))
    empty = fake_data.write_rows([], tmp_path / "empty.parquet")
    with pytest.raises(UserError, match="has no rows"):
        loading.prepare(loading.read_source(str(empty)))


def test_unreachable_hub_says_so_and_suggests_the_sample(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceUnavailableError) as err:
        loading.read_source("nobody-here/not-a-dataset-xyz")
    assert "--source sample" in str(err.value)


# --- a source that looks like a path is never sent to the Hub --------------------------------


@pytest.mark.parametrize(
    "source",
    ["mydata/evals.parquet", "evals.jsonl", "./x", "../x", "~/x", "/nope/x", "data/sub/x", "mydata/", "data\\x", "me/evals.JSONL"],
)
def test_a_missing_path_like_source_is_no_such_file_without_touching_the_hub(source, monkeypatch):
    """``mydata/evals.parquet`` with a typo used to be taken for a Hub id (56 s of Hub retries)."""
    monkeypatch.setattr(loading, "_read_hub", lambda *a, **k: pytest.fail("the Hub must not be asked"))
    with pytest.raises(SourceUnavailableError, match="no such file or folder") as err:
        loading.read_source(source)
    assert err.value.exit_code == 2 and not err.value.transient


@pytest.mark.parametrize("source", ["siro1/kernelbook-glm4-evals", "ScalingIntelligence/KernelBench", "GPUMODE/KernelBook", "me/data.v2"])
def test_owner_name_is_a_hub_id(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    assert loading.path_like_reason(source) is None
    assert loading.classify_source(source) == "hub"


def test_an_existing_local_folder_named_like_a_hub_id_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "name").mkdir(parents=True)
    fake_data.write_rows([fake_data.row(0)], tmp_path / "owner" / "name" / "train.parquet")
    assert loading.classify_source("owner/name") == "local"
    assert loading.read_source("owner/name").frame.height == 1


# --- a malformed JSONL line is a rejection, a file that is not JSONL an error ----------------


def test_a_malformed_jsonl_line_is_rejected_with_its_line_number_and_the_rest_is_curated(tmp_path):
    lines = [json.dumps(fake_data.row(i)) for i in range(4)]
    lines[2] = lines[2][: len(lines[2]) // 2]  # a truncated line
    lines.insert(1, "")  # blank lines are not rows
    lines.append("[1, 2]")  # JSON, but not an object
    path = tmp_path / "evals.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = loading.prepare(loading.read_source(str(path)))
    assert result.report.rows_in == 5 and result.report.rows_out == 3
    assert result.report.dropped == {"malformed_line": 2}
    rejected = result.rejected.sort("source_index")
    assert rejected["reason"].to_list() == ["malformed_line", "malformed_line"]
    details = rejected["detail"].to_list()
    assert details[0].startswith("evals.jsonl line 4: not JSON") and details[1].startswith("evals.jsonl line 6: a JSON list")
    assert result.frame["example_id"].to_list() == [0, 1, 3]
    assert schema.MALFORMED_LINE not in result.frame.columns


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"example_id,reward\n1,0.9\n", "line 1 is not JSON"),
        (b"\n[\n  {\"reward\": 0.9}\n]\n", "line 2 is not JSON"),
        ("{\"name\": \"\u00c9chelle\"}\n".encode("latin-1"), "line 1 is not UTF-8 text"),
    ],
)
def test_a_file_that_is_not_jsonl_at_all_is_one_error_naming_the_first_bad_line(tmp_path, content, problem):
    path = tmp_path / "evals.jsonl"
    path.write_bytes(content)
    with pytest.raises(SourceUnavailableError, match="it is not JSON lines") as err:
        loading.read_source(str(path))
    assert problem in str(err.value) and str(path) in str(err.value)
