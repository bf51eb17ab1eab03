"""The synthetic data generator and the bundled samples it produced.

Code in the data is only parsed (``ast.parse``), never executed.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from kernelbook_lib import schema
from tests.fixtures import fake_data
from kernelbook_lib.text import extract_answer, solution_code

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "kernelbook_lib" / "data"
EVALS = DATA / "evals_sample.parquet"
KERNELBOOK = DATA / "kernelbook_sample.parquet"


def _load_make_sample():
    spec = importlib.util.spec_from_file_location("make_sample", ROOT / "scripts" / "make_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # our own script, not dataset code
    return module


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return pq.read_table(EVALS).to_pylist()


@pytest.fixture(scope="module")
def planted() -> dict[int, fake_data.PlantedHack]:
    """The reward hacks planted in the eval sample, by row index (ground truth: the rows carry no mark)."""
    return {hack.row: hack for hack in _load_make_sample().eval_hacks()}


def _content(row: dict) -> str | None:
    completion = row["completion"]
    return completion[0]["content"] if completion else None


def _reward_ok(row: dict) -> bool:
    return row["reward"] is not None and not math.isnan(row["reward"])


def _answer(row: dict) -> str | None:
    return extract_answer(_content(row))


def _is_bad(row: dict) -> bool:
    return (
        not _reward_ok(row)
        or _answer(row) is None
        or not row["info"]["python_code"]
        or not row["info"]["module_name"]
    )


# --- schema --------------------------------------------------------------------------------


def test_eval_sample_has_exactly_the_source_schema_for_polars_pyarrow_and_datasets(tmp_path):
    frame = pl.read_parquet(EVALS)
    assert list(frame.schema.items()) == list(schema.SOURCE_SCHEMA.items())
    assert pq.read_schema(EVALS).remove_metadata() == schema.SOURCE_ARROW_SCHEMA

    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(EVALS), split="train", cache_dir=str(tmp_path))
    assert ds.column_names == list(schema.SOURCE_SCHEMA)
    assert ds.num_rows == frame.height
    assert ds.features["oai_tools"].dtype == "null"
    assert ds["example_id"] == frame["example_id"].to_list()


def test_kernelbook_sample_has_the_kernelbook_schema(tmp_path):
    assert pq.read_schema(KERNELBOOK).remove_metadata() == fake_data.KERNELBOOK_ARROW_SCHEMA
    frame = pl.read_parquet(KERNELBOOK)
    assert frame.columns[:4] == ["module_name", "python_code", "triton_code", "uuid"]
    assert frame.schema["licenses"] == pl.List(pl.String)

    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(KERNELBOOK), split="train", cache_dir=str(tmp_path))
    assert ds.num_rows == frame.height


# --- determinism ---------------------------------------------------------------------------


def test_make_sample_is_byte_identical_across_runs_and_equals_the_committed_samples(tmp_path):
    make_sample = _load_make_sample()
    first = make_sample.make_samples(tmp_path / "a")
    second = make_sample.make_samples(tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between two runs"
    committed = {EVALS.name: EVALS, KERNELBOOK.name: KERNELBOOK}
    for path in first:
        # Content, not bytes: the file header names the pyarrow version that wrote it.
        fresh = json.dumps(pq.read_table(path).to_pylist(), sort_keys=True)  # NaN -> "NaN"
        stored = json.dumps(pq.read_table(committed[path.name]).to_pylist(), sort_keys=True)
        assert fresh == stored, f"{path.name} is stale: run `uv run python scripts/make_sample.py`"


def test_eval_rows_depend_only_on_their_arguments():
    same = [json.dumps(fake_data.eval_rows(12, 2, seed=5), sort_keys=True) for _ in range(2)]
    assert same[0] == same[1]
    assert json.dumps(fake_data.eval_rows(12, 2, seed=6), sort_keys=True) != same[0]


def test_eval_rows_without_bad_rows_has_none():
    generated = fake_data.eval_rows(40, 3, seed=1, bad_rows=False)
    assert len(generated) == 120
    assert not [row for row in generated if _is_bad(row)]


# --- the eval sample's content -------------------------------------------------------------


def test_sample_has_at_least_60_problems_with_3_rollouts_each(rows):
    by_example: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        by_example[row["example_id"]].append(row)
    assert len(by_example) >= 60
    assert all(len(group) >= 3 for group in by_example.values())
    for group in by_example.values():  # rollouts of one problem share its prompt
        assert len({json.dumps(row["prompt"]) for row in group}) == 1
    codes = {row["info"]["python_code"] for row in rows if row["info"]["python_code"]}
    assert len(codes) >= 60


def test_same_code_under_two_example_ids_exists(rows):
    ids_by_code: dict[str, set[int]] = defaultdict(set)
    for row in rows:
        if row["info"]["python_code"]:
            ids_by_code[row["info"]["python_code"]].add(row["example_id"])
    assert sum(len(ids) > 1 for ids in ids_by_code.values()) >= 1


def test_rewards_fall_on_both_sides_of_the_threshold_including_exactly_085(rows, planted):
    rewards = [row["reward"] for row in rows if _reward_ok(row)]
    above = sum(r > 0.85 for r in rewards)
    assert 0.35 <= above / len(rows) <= 0.55
    assert sum(r == 0.85 for r in rewards) >= 2
    assert sum(r < 0.85 for r in rewards) >= 60
    # Only the planted reward hacks score above 1.0 (test_the_planted_reward_hacks_... checks them).
    assert all(0.0 <= row["reward"] <= 1.0 for i, row in enumerate(rows) if _reward_ok(row) and i not in planted)


BAD_KINDS = {
    "reward_null": lambda row: row["reward"] is None,
    "reward_nan": lambda row: row["reward"] is not None and math.isnan(row["reward"]),
    "empty_completion": lambda row: row["completion"] == [],
    "empty_content": lambda row: bool(row["completion"]) and row["completion"][0]["content"] == "",
    "missing_answer": lambda row: bool(_content(row)) and "<answer>" not in _content(row),
    "empty_python_code": lambda row: row["info"]["python_code"] == "",
    "empty_module_name": lambda row: row["info"]["module_name"] == "",
}


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_sample_contains_each_kind_of_bad_row(rows, kind):
    found = [row for row in rows if BAD_KINDS[kind](row)]
    assert len(found) >= 2, kind
    if kind not in ("reward_null", "reward_nan"):
        # A reward filter alone must not be what removes them.
        assert any(row["reward"] > 0.85 for row in found), kind


def test_missing_answer_rows_still_hold_a_code_block(rows):
    found = [row for row in rows if BAD_KINDS["missing_answer"](row)]
    assert all("```python" in _content(row) for row in found)


def test_module_name_collisions_between_different_problems(rows):
    codes_by_name: dict[str, set[str]] = defaultdict(set)
    high_codes_by_name: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        name, code = row["info"]["module_name"], row["info"]["python_code"]
        if not name or not code:
            continue
        codes_by_name[name].add(code)
        if _reward_ok(row) and row["reward"] > 0.85 and _answer(row):
            high_codes_by_name[name].add(code)
    assert sum(len(codes) > 1 for codes in codes_by_name.values()) >= 3
    assert any(name in {"Model", "MyModule", "Net"} for name, c in codes_by_name.items() if len(c) > 1)
    assert sum(len(codes) > 1 for codes in high_codes_by_name.values()) >= 2


# Characteristic operations of each rubric level, as they appear in the PyTorch modules.
LEVEL_MARKERS = {
    "trivial": (r"return x\n", r"x\.clone\(\)", r"torch\.clone\(x\)", r"x\.view\(x\.size\(0\), -1\)",
                r"x\.reshape\(x\.shape\[0\], -1\)", r"torch\.flatten\(x, 1\)"),
    "elementwise": (r"return (torch|F)\.(relu|sigmoid|tanh|abs|exp|leaky_relu|relu6|elu|softsign|hardsigmoid)\(x",
                    r"return torch\.clamp\(x", r"return x \* torch\.sigmoid\(x\)", r"return x [-+*/] ", r"return torch\.(add|mul|sub|max)\(x, y\)"),
    "reduction": (r"torch\.(sum|mean|norm)\(x, ", r"x\.(sum|mean|amax|amin|norm)\(", r"torch\.(max|min)\(x, dim=", r"adaptive_avg_pool2d"),
    "moderate": (r"softmax\(", r"nn\.LayerNorm\(", r"x\.std\(-1", r"torch\.rsqrt\(", r"nn\.BatchNorm2d\(", r"nn\.GELU\(\)", r"F\.normalize\("),
    "complex": (r"torch\.matmul\(q", r"self\.q_proj = nn\.Linear", r"self\.conv = nn\.Conv2d\("),
    "advanced": (r"class BasicBlock\(nn\.Module\)", r"class DoubleConv\(nn\.Module\)", r"self\.qkv = nn\.Linear\(d_model, 3 \* d_model\)"),
}  # fmt: skip


@pytest.mark.parametrize("level", list(LEVEL_MARKERS))
def test_every_rubric_level_is_represented(rows, level):
    codes = {row["info"]["python_code"] for row in rows if row["info"]["python_code"]}
    matching = [code for code in codes if any(re.search(p, code) for p in LEVEL_MARKERS[level])]
    assert len(matching) >= 3, level
    if level == "advanced":  # whole architectures of more than one kind
        kinds = {p for p in LEVEL_MARKERS[level] for code in matching if re.search(p, code)}
        assert len(kinds) >= 2


def test_modules_are_kernelbook_style_and_parse(rows):
    for code in {row["info"]["python_code"] for row in rows if row["info"]["python_code"]}:
        tree = ast.parse(code)
        functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert {"get_inputs", "get_init_inputs"} <= functions
        classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
        methods = {item.name for item in classes[-1].body if isinstance(item, ast.FunctionDef)}
        assert {"__init__", "forward"} <= methods
        assert "nn.Module" in ast.unparse(classes[-1].bases[0])
    for triton_code in {row["info"]["triton_code"] for row in rows if row["info"]["triton_code"]}:
        ast.parse(triton_code)
        assert "@triton.jit" in triton_code and "def call(args):" in triton_code


def test_prompt_states_the_task_with_the_module(rows):
    for row in rows:
        roles = [message["role"] for message in row["prompt"]]
        assert roles == ["system", "user"]
        user = row["prompt"][1]["content"]
        assert "Triton" in user and "<answer>" in user
        if row["info"]["python_code"] and row["info"]["module_name"]:
            assert row["info"]["python_code"] in user
            assert f"`{row['info']['module_name']}New`" in user


def test_solutions_are_realistic_triton(rows, planted):
    for i, row in enumerate(rows):
        answer = _answer(row)
        if answer is None or i in planted:  # a planted hack is not a kernel on purpose (tested below)
            continue
        code = solution_code(answer)
        for needle in ("import triton\n", "import triton.language as tl", "@triton.jit", "tl.program_id",
                       "tl.arange", "tl.load(", "tl.store("):  # fmt: skip
            assert needle in code, needle
        if row["info"]["module_name"]:
            assert f"class {row['info']['module_name']}New(nn.Module):" in code
        assert row["completion"][0]["reasoning"], "reasoning text is missing"
        assert _content(row).index("<answer>") > 0, "no explanation before the answer"


def test_solutions_vary_in_quality_and_a_few_do_not_parse(rows):
    codes = [(row, solution_code(answer)) for row in rows if (answer := _answer(row))]
    broken = []
    for row, code in codes:
        try:
            ast.parse(code)
        except SyntaxError:
            broken.append(row)
    assert 2 <= len(broken) <= 0.1 * len(codes)
    assert any(_reward_ok(row) and row["reward"] > 0.85 for row in broken)
    masked = sum("mask=" in code for _, code in codes)
    constexpr = sum("tl.constexpr" in code for _, code in codes)
    documented = sum('"""' in code for _, code in codes)
    one_letter_kernels = sum(bool(re.search(r"def k0\((a|x), ", code)) for _, code in codes)
    for count in (masked, constexpr, documented, one_letter_kernels):
        assert 0.1 * len(codes) <= count <= 0.9 * len(codes)


def test_row_fields_look_like_the_eval_output(rows, planted):
    for i, row in enumerate(rows):
        assert row["task"] == "default" and row["num_turns"] == 1 and row["oai_tools"] is None
        assert row["total_ms"] == pytest.approx(row["generation_ms"] + row["scoring_ms"])
        if i in planted:  # a hack's reward (above 1.0 for most) is 0.5 + 0.5 * speedup, as for a fast kernel
            assert row["speedup_reward"] > 0.7 and row["reward"] == pytest.approx(0.5 + 0.5 * row["speedup_reward"])
        else:
            assert 0.0 <= row["speedup_reward"] <= 1.0
        for message in row["completion"]:
            assert message["role"] == "assistant"


# What the static judge does not see: launcher flaws that cost speed, as the generator writes them
# (tests.fixtures.fake_data.FLAWS). A solution is never marked; these find them in its text.
SLOW_FLAW_PATTERNS = {
    "sync": r"torch\.cuda\.synchronize\(\)",
    "item": r"\.all\(\)\.item\(\)",
    "copy": r"^\s*(\w+) = \1\.clone\(\)$",
    "dtype": r"\.to\(torch\.float64\)\.to\(",
    "row_loop": r"^\s*for (row|i) in range\(",
}


def _parsing_answers(rows: list[dict]) -> list[tuple[dict, str, str]]:
    """(row, answer, solution code) for every row whose answer parses."""
    found = []
    for row in rows:
        answer = _answer(row)
        if answer is None:
            continue
        code = solution_code(answer)
        try:
            ast.parse(code)
        except SyntaxError:
            continue
        found.append((row, answer, code))
    return found


def _slow_flaws(code: str) -> list[str]:
    return [name for name, pattern in SLOW_FLAW_PATTERNS.items() if re.search(pattern, code, re.M)]


def test_every_slow_flaw_the_generator_writes_is_recognised():
    assert set(SLOW_FLAW_PATTERNS) == set(fake_data.SLOW_FLAWS)


def test_the_reward_follows_flaws_the_static_judge_does_not_see_not_its_style_score(rows):
    from scipy.stats import spearmanr

    from kernelbook_lib.static_judge import style_of

    scored = [(row, answer, code) for row, answer, code in _parsing_answers(rows) if _reward_ok(row)]
    styles = [style_of(answer)[0] for _, answer, _ in scored]
    rewards = [row["reward"] for row, _, _ in scored]
    assert abs(spearmanr(styles, rewards).statistic) < 0.2  # the judge's switches do not predict it
    assert len(set(styles)) >= 8  # while its style scores still spread over the bands
    correct = [(row["reward"], bool(_slow_flaws(code))) for row, _, code in scored if row["reward"] > 0]
    clean = [reward > 0.85 for reward, flawed in correct if not flawed]
    flawed = [reward > 0.85 for reward, flawed in correct if flawed]
    assert len(flawed) >= 20 and len(clean) >= 20
    assert sum(flawed) / len(flawed) < sum(clean) / len(clean) - 0.2


# --- the data README's counts ------------------------------------------------------------------

README = DATA / "README.md"

#: Each figure of the data README, found by the sentence that states it.
README_FIGURES = {
    "evals": r"\| `evals_sample\.parquet` \|[^|]*\| (?P<problems>\d+) problems x (?P<rollouts>\d+) rollouts = (?P<rows>\d+) rows \|",
    "kernelbook": r"\| `kernelbook_sample\.parquet` \|[^|]*\| (?P<kb_rows>\d+) rows \|",
    "broken": r"A few \((?P<broken>\d+) here, (?P<broken_above>\d+) of them above 0\.85\) have a Python syntax error",
    "style": r"the Spearman correlation between the static judge's style score and the reward over the rows that parse "
             r"is (?P<style_rho>-?\d\.\d\d)\.",
    "flaws": r"(?P<flawed>\d+) of the (?P<parsing>\d+) answers that parse carry at least one flaw that costs speed, and "
             r"(?P<clean_fast>\d+) of the (?P<clean>\d+) correct rows without such a flaw score above 0\.85, against "
             r"(?P<flawed_fast>\d+) of the (?P<flawed_correct>\d+) with one\.",
    "rewards": r"\((?P<above>\d+) of (?P<rows_again>\d+) rows above it, (?P<valid_above>\d+) of them valid rows\), "
               r"(?P<at_threshold>\d+) rows at exactly 0\.85",
    "names": r"(?P<shared_names>\d+) `module_name`s are shared by different problems",
    "duplicates": r"(?P<duplicated>\d+) problems whose code is listed again under a second `example_id`",
    "bad": r"(?P<bad_per_kind>\d+) bad rows of each kind",
    "bad_high": r"Outside the null/NaN kinds, at least (?P<bad_high>\d+) of each (?P<bad_per_kind_again>\d+) have reward > 0\.85",
    "kb_defects": r"(?P<kb_duplicates>\d+) rows that repeat an earlier row's `python_code` exactly, and "
                  r"(?P<kb_empty>\d+) rows with empty `python_code`",
}


def _readme_figures() -> dict[str, str]:
    text = " ".join(README.read_text().split())  # sentences may wrap
    figures: dict[str, str] = {}
    for key, pattern in README_FIGURES.items():
        match = re.search(pattern, text)
        assert match, f"the data README no longer states {key!r} (pattern {pattern})"
        figures.update(match.groupdict())
    return figures


def _sample_figures(rows: list[dict]) -> dict[str, str]:
    from scipy.stats import spearmanr

    from kernelbook_lib import loading, stages
    from kernelbook_lib.static_judge import style_of

    figures: dict[str, object] = {}
    figures["problems"] = len({row["example_id"] for row in rows})
    figures["rollouts"] = len(rows) // figures["problems"]
    figures["rows"] = figures["rows_again"] = len(rows)
    answers = [(row, answer) for row in rows if (answer := _answer(row))]
    broken = [row for row, answer in answers if not _parses(solution_code(answer))]
    figures["broken"] = len(broken)
    figures["broken_above"] = sum(_reward_ok(row) and row["reward"] > 0.85 for row in broken)
    parsing = _parsing_answers(rows)
    scored = [(row, answer) for row, answer, _ in parsing if _reward_ok(row)]
    rho = spearmanr([style_of(answer)[0] for _, answer in scored], [row["reward"] for row, _ in scored]).statistic
    figures["style_rho"] = f"{rho:.2f}"
    figures["parsing"] = len(parsing)
    figures["flawed"] = sum(bool(_slow_flaws(code)) for _, _, code in parsing)
    correct = [(row["reward"], bool(_slow_flaws(code))) for row, _, code in parsing if _reward_ok(row) and row["reward"] > 0]
    figures["clean"] = sum(not flawed for _, flawed in correct)
    figures["clean_fast"] = sum(not flawed and reward > 0.85 for reward, flawed in correct)
    figures["flawed_correct"] = sum(flawed for _, flawed in correct)
    figures["flawed_fast"] = sum(flawed and reward > 0.85 for reward, flawed in correct)
    figures["above"] = sum(_reward_ok(row) and row["reward"] > 0.85 for row in rows)
    figures["at_threshold"] = sum(_reward_ok(row) and row["reward"] == 0.85 for row in rows)
    loaded = loading.prepare(loading.read_source("sample"))  # the pipeline's own load and filter
    figures["valid_above"] = stages.filter_rewards(loaded.frame).report.rows_out
    codes_by_name: dict[str, set[str]] = defaultdict(set)
    ids_by_code: dict[str, set[int]] = defaultdict(set)
    for row in rows:
        name, code = row["info"]["module_name"], row["info"]["python_code"]
        if code:
            ids_by_code[code].add(row["example_id"])
            if name:
                codes_by_name[name].add(code)
    figures["shared_names"] = sum(len(codes) > 1 for codes in codes_by_name.values())
    figures["duplicated"] = sum(len(ids) > 1 for ids in ids_by_code.values())
    per_kind = {kind: [row for row in rows if is_kind(row)] for kind, is_kind in BAD_KINDS.items()}
    (figures["bad_per_kind"],) = {len(found) for found in per_kind.values()}
    figures["bad_per_kind_again"] = figures["bad_per_kind"]
    figures["bad_high"] = min(
        sum(row["reward"] > 0.85 for row in found)
        for kind, found in per_kind.items() if kind not in ("reward_null", "reward_nan")
    )
    kernelbook = pl.read_parquet(KERNELBOOK)
    code = kernelbook["python_code"]
    figures["kb_rows"] = kernelbook.height
    figures["kb_empty"] = int((code == "").sum())
    non_empty = code.filter(code != "")
    figures["kb_duplicates"] = non_empty.len() - non_empty.n_unique()  # rows repeating an earlier row's code
    return {key: str(value) for key, value in figures.items()}


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


def test_every_count_in_the_data_readme_is_the_files_count(rows):
    assert _readme_figures() == _sample_figures(rows)


def test_the_readme_names_the_planted_near_duplicate_families(rows):
    make_sample = _load_make_sample()
    text = README.read_text()
    stated_eval = [tuple(int(i) for i in ids.split(", ")) for ids in re.findall(r"^- example_ids ([\d, ]+) \(", text, re.M)]
    stated_kb = [tuple(int(i) for i in ids.split(", ")) for ids in re.findall(r"^- uuids ([\d, ]+) \(", text, re.M)]
    planted_eval = make_sample.eval_families()
    planted_kb = make_sample.kernelbook_families()
    assert stated_eval == planted_eval and len(planted_eval) == make_sample.EVALS_FAMILIES
    assert stated_kb == [tuple(uuid for member in family for uuid in member) for family in planted_kb]
    assert len(planted_kb) == make_sample.KERNELBOOK_FAMILIES

    # The names the README gives, each family's members distinct code of one operation.
    from kernelbook_lib.module_judge_facts import analyze_module
    from kernelbook_lib.static_judge import difficulty_of

    first = {}
    for row in rows:
        if row["info"]["python_code"] and row["info"]["module_name"]:
            first.setdefault(row["example_id"], row["info"])
    kernelbook = pq.read_table(KERNELBOOK).to_pylist()
    families = [[first[i] for i in family] for family in planted_eval]
    families += [[kernelbook[member[0]] for member in family] for family in planted_kb]
    stated_names = re.findall(r"^- (?:example_ids|uuids) [\d, ]+ \((.*)\)$", text, re.M)
    assert stated_names == [", ".join(f"`{m['module_name']}`" for m in family) for family in families]
    for family in families:
        codes = [m["python_code"] for m in family]
        assert len(set(codes)) == len(codes)
        assert len({m["module_name"] for m in family}) == len(family)
        assert len({difficulty_of(analyze_module(code))[0] for code in codes}) == 1


# --- the planted reward hacks -------------------------------------------------------------------


def test_the_planted_reward_hacks_are_there_one_of_each_shape_above_the_threshold(rows, planted):
    make_sample = _load_make_sample()
    assert len(planted) == make_sample.EVALS_HACKS == len(fake_data.HACK_SHAPES)
    assert sorted(h.shape.name for h in planted.values()) == sorted(s.name for s in fake_data.HACK_SHAPES)
    assert len({h.example_id for h in planted.values()}) == len(planted)  # one hack per problem
    for index, hack in planted.items():
        row = rows[index]
        assert row["example_id"] == hack.example_id and not _is_bad(row), hack.shape.name
        assert _parses(solution_code(_answer(row))), hack.shape.name
        assert row["completion"][0]["reasoning"] and _content(row).index("<answer>") > 0
        assert row["reward"] > 0.85, hack.shape.name
    rewards = [rows[i]["reward"] for i in planted]
    assert any(1.0 < r <= 1.5 for r in rewards) and any(r > 1.5 for r in rewards)
    # Planting touches the hack rows only: every other row is the row generated without hacks.
    unplanted = fake_data.eval_rows(make_sample.EVALS_PROBLEMS, make_sample.EVALS_ROLLOUTS, seed=make_sample.EVALS_SEED,
                                    bad_rows=True, families=make_sample.EVALS_FAMILIES)
    assert len(unplanted) == len(rows)
    for i, (row, original) in enumerate(zip(rows, unplanted)):
        same = json.dumps(row, sort_keys=True) == json.dumps(original, sort_keys=True)
        assert same != (i in planted), i


def test_the_screen_rejects_each_planted_hack_with_its_kind_and_flags_the_kept_ones(planted):
    from kernelbook_lib import loading, screening, stages

    above = stages.filter_rewards(loading.prepare(loading.read_source("sample")).frame).frame
    assert set(planted) <= set(above.get_column(schema.ROW).to_list())  # every hack passes load and filter
    hacks = above.filter(pl.col(schema.ROW).is_in(list(planted)))
    result = screening.screen_rows(hacks, "standard").result
    rejected = dict(zip(result.rejected.get_column("source_index").to_list(), result.rejected.get_column("reason").to_list()))
    kept = dict(zip(result.frame.get_column(schema.ROW).to_list(), result.frame.get_column("kernel_flags").to_list()))
    for index, hack in planted.items():
        if hack.shape.reject is not None:
            assert rejected.get(index) == f"not_a_kernel:{hack.shape.reject}", hack.shape.name
        else:
            assert kept.get(index) == [hack.shape.flag], hack.shape.name
    # On the whole sample, the share rejected rises with the reward, as it does on real hacks.
    report = screening.screen_rows(above, "standard").report
    bands = report["by_reward_band"]
    assert [b["band"] for b in bands] == ["(0.85, 1.0]", "(1.0, 1.5]", "> 1.5"]
    rates = [b["rejected_rate"] for b in bands]
    assert rates == sorted(rates) and len(set(rates)) == len(rates)
    for hack in planted.values():
        if hack.shape.reject is not None:
            assert report["rejected"].get(f"not_a_kernel:{hack.shape.reject}", 0) >= 1
        else:
            assert report["flagged"].get(hack.shape.flag, 0) >= 1


#: A row of the data README's table of planted hacks.
README_HACK = re.compile(
    r"^\| `(?P<shape>\w+)` \|[^|]+\| (?:rejected `not_a_kernel:(?P<reject>\w+)`|kept, flagged `(?P<flag>[\w:]+)`) "
    r"\| (?P<example_id>\d+) \| (?P<reward>\d\.\d\d) \|$",
    re.M,
)


def test_the_readme_lists_the_planted_hacks(rows, planted):
    text = README.read_text()
    stated = [m.groupdict() for m in README_HACK.finditer(text)]
    expected = [
        {"shape": h.shape.name, "reject": h.shape.reject, "flag": h.shape.flag, "example_id": str(h.example_id),
         "reward": f"{rows[h.row]['reward']:.2f}"}
        for h in sorted(planted.values(), key=lambda h: (rows[h.row]["reward"], h.row))
    ]
    assert stated == expected
    n_rejected = sum(h.shape.reject is not None for h in planted.values())
    sentence = " ".join(text.split())
    assert f"{len(planted)} rollouts are planted reward hacks" in sentence
    assert f"the screen rejects {n_rejected} of them and keeps {len(planted) - n_rejected} with a flag" in sentence


# --- the KernelBook sample -------------------------------------------------------------------


def test_kernelbook_sample_has_duplicates_and_empty_code():
    frame = pl.read_parquet(KERNELBOOK)
    assert 40 <= frame.height <= 60
    code = frame["python_code"]
    assert (code == "").sum() >= 2
    non_empty = frame.filter(pl.col("python_code") != "")
    assert non_empty["python_code"].is_duplicated().sum() >= 2
    assert frame["uuid"].n_unique() == frame.height
    assert (frame["entry_point"] == frame["module_name"]).all()
    assert frame["repo_link"].str.starts_with("https://github.com/").all()
    for text in non_empty["python_code"]:
        assert "def get_inputs():" in text and "(nn.Module):" in text
        ast.parse(text)


# --- the large benchmark writer --------------------------------------------------------------


def test_write_evals_large_streams_row_groups_with_the_exact_row_count(tmp_path, monkeypatch):
    monkeypatch.setattr(fake_data, "_LARGE_BATCH_ROWS", 500)
    path = fake_data.write_evals_large(tmp_path / "large.parquet", 1_234, seed=3)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 1_234 and meta.num_row_groups == 3
    assert pq.read_schema(path).remove_metadata() == schema.SOURCE_ARROW_SCHEMA
    frame = pl.read_parquet(path)
    above = (frame["reward"] > 0.85).sum() / frame.height
    assert 0.3 <= above <= 0.55
    rollouts = frame.group_by("example_id").len()["len"]
    assert 2.5 <= rollouts.mean() <= 3.5
    again = fake_data.write_evals_large(tmp_path / "again.parquet", 1_234, seed=3)
    assert path.read_bytes() == again.read_bytes()
