"""SFT-ready rows (``kernelbook_lib.sft``): the completion forms, the chat-formatted lengths in
characters and in tokens (a tokenizer trained here, never downloaded), the ``too_long`` rule, the
parameters, the summary, the columns, the analysis and the card that say which form was used.

``trl_problems`` is what an SFT trainer reading the conversational prompt-completion format
needs of a row (TRL's ``prompt``/``completion`` lists of ``{role, content}`` messages); the
flow tests load whole dataset folders with ``datasets`` and check every row with it."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from kernelbook_lib import analysis, cards, export, loading, params, plot_files, report, schema, sft
from kernelbook_lib.errors import UserError
from kernelbook_lib.ledger import StageReport
from kernelbook_lib.summary import RunSummary, format_sft, format_table
from kernelbook_lib.text import extract_answer
from tests.fixtures import fake_data

FENCED = "```python\nimport triton\n\n@triton.jit\ndef k(x_ptr):\n    pass  # ``` inside a comment\n```"
REASONING = "  Let me think.\n\nThe kernel is elementwise.  \n"


def rows() -> list[dict]:
    """Rows with and without reasoning, code fences inside the answer, a quoted tag before the
    real answer, upper-case tags, and a system prompt."""
    def completion(content: str, reasoning: str | None) -> list[dict]:
        return [{"role": "assistant", "content": content, "reasoning": reasoning}]

    made = [
        fake_data.row(0, completion=completion(f"Here it is.\n<answer>\n{FENCED}\n</answer>\nDone.", REASONING)),
        fake_data.row(1, completion=completion(f"<answer>{FENCED}</answer>", None)),
        fake_data.row(2, completion=completion(f"No thoughts.\n<answer>\n{FENCED}\n</answer>", "   ")),
        fake_data.row(3, completion=completion(f"I will close with `<answer>` tags.\n<ANSWER>\n  {FENCED}\n</ANSWER>", "why")),
    ]
    made[0]["prompt"] = [{"role": "system", "content": "You write Triton."}, *made[0]["prompt"]]
    return made


@pytest.fixture
def frame() -> pl.DataFrame:
    """The rows as the load stage passes them on (with the internal solution column)."""
    result = loading.prepare(loading.LoadedSource(fake_data.frame_of(rows()), "test rows"))
    assert result.frame.height == 4
    return result.frame


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    """A byte-level BPE trained on the test rows' texts, saved as a local tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    texts = [m["content"] or "" for r in rows() for m in r["prompt"] + r["completion"]] + [REASONING, FENCED]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"],
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def trl_problems(prompt: list[dict], completion: list[dict], form: str) -> list[str]:
    """Why a row is not a conversational prompt-completion example for ``form`` (empty if it is)."""
    problems = []
    allowed = {"role", "content", "reasoning"} if form == "full" else {"role", "content"}
    for column, messages, roles in (("prompt", prompt, {"system", "user"}), ("completion", completion, {"assistant"})):
        if not isinstance(messages, list) or not messages:
            problems.append(f"{column} is not a non-empty list of messages")
            continue
        for m in messages:
            if not isinstance(m, dict) or not {"role", "content"} <= set(m) or not set(m) <= allowed:
                problems.append(f"{column} message keys {sorted(m) if isinstance(m, dict) else m}")
            elif m["role"] not in roles:
                problems.append(f"{column} role {m['role']!r}")
            elif not isinstance(m["content"], str) or not m["content"].strip():
                problems.append(f"{column} {m['role']} message has no content")
    if form == "answer" and not problems:
        content = completion[-1]["content"]
        if len(completion) != 1 or not (content.startswith("<answer>\n") and content.endswith("\n</answer>")):
            problems.append("answer form: not one <answer> block")
    return problems


def as_python(frame: pl.DataFrame, column: str) -> list[list[dict]]:
    return frame.get_column(column).to_list()


# --- the completion forms ------------------------------------------------------------------------


def test_full_keeps_the_completion_as_the_source_has_it(frame):
    out = sft.rewrite_completion(frame, "full")
    assert out.equals(frame) and schema.COMPLETION_ORIGINAL not in out.columns
    for prompt, completion in zip(as_python(out, "prompt"), as_python(out, "completion")):
        assert trl_problems(prompt, completion, "full") == []


def test_answer_is_the_answer_block_only(frame):
    out = sft.rewrite_completion(frame, "answer")
    assert out.schema["completion"] == pl.List(schema.PROMPT_MESSAGE)  # {role, content}: no reasoning field
    for source, completion, prompt in zip(rows(), as_python(out, "completion"), as_python(out, "prompt")):
        solution = extract_answer(source["completion"][0]["content"])
        assert completion == [{"role": "assistant", "content": f"<answer>\n{solution}\n</answer>"}]
        assert FENCED.strip() in completion[0]["content"]  # the code fences inside the answer are kept
        assert "Done." not in completion[0]["content"] and "think" not in completion[0]["content"]
        assert trl_problems(prompt, completion, "answer") == []
    # The last block, not the tag quoted in the explanation; upper-case tags read too.
    assert as_python(out, "completion")[3][0]["content"] == f"<answer>\n{FENCED}\n</answer>"
    assert as_python(out, schema.COMPLETION_ORIGINAL) == [r["completion"] for r in rows()]


def test_reasoning_inline_writes_a_think_block_before_the_content(frame):
    out = sft.rewrite_completion(frame, "reasoning-inline")
    assert out.schema["completion"] == pl.List(schema.PROMPT_MESSAGE)
    completions = as_python(out, "completion")
    source = rows()
    assert completions[0][0]["content"] == f"<think>\n{REASONING.strip()}\n</think>\n\n{source[0]['completion'][0]['content']}"
    assert completions[1][0]["content"] == source[1]["completion"][0]["content"]  # no reasoning: no think block
    assert completions[2][0]["content"] == source[2]["completion"][0]["content"]  # blank reasoning: none either
    assert completions[3][0]["content"].startswith("<think>\nwhy\n</think>\n\nI will close")
    for prompt, completion in zip(as_python(out, "prompt"), completions):
        assert trl_problems(prompt, completion, "reasoning-inline") == []
    assert as_python(out, schema.COMPLETION_ORIGINAL) == [r["completion"] for r in source]


def test_reasoning_inline_without_a_reasoning_field_keeps_the_content():
    frame = fake_data.frame_of([fake_data.row(0)])
    frame = frame.with_columns(pl.col("completion").list.eval(pl.struct(pl.element().struct.field("role"), pl.element().struct.field("content"))))
    out = sft.rewrite_completion(frame, "reasoning-inline")
    assert as_python(out, "completion") == as_python(frame, "completion")


def test_an_unknown_form_is_refused(frame):
    with pytest.raises(ValueError, match="--completion must be one of full, answer, reasoning-inline"):
        sft.rewrite_completion(frame, "short")


# --- lengths -------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", sft.COMPLETION_FORMS)
def test_characters_are_those_of_the_chat_formatted_text(frame, form):
    out = sft.add_lengths(sft.rewrite_completion(frame, form))
    for prompt, completion, chars, tokens in out.select("prompt", "completion", schema.SFT_CHARS, schema.SFT_TOKENS).iter_rows():
        text = sft.format_messages(prompt + completion)
        assert chars == len(text) and tokens is None
        assert text.startswith("<|") and "<|assistant|>\n" in text and "reasoning" not in text.split("<|assistant|>")[0]
    assert out.schema[schema.SFT_CHARS] == pl.Int64 and out.schema[schema.SFT_TOKENS] == pl.Int64


@pytest.mark.parametrize("form", sft.COMPLETION_FORMS)
def test_token_counts_are_exactly_the_tokenizers(frame, form, tokenizer_file):
    from tokenizers import Tokenizer

    own = Tokenizer.from_file(str(tokenizer_file))
    out = sft.add_lengths(sft.rewrite_completion(frame, form), sft.load_tokenizer(tokenizer_file))
    counts = out.get_column(schema.SFT_TOKENS).to_list()
    expected = [len(own.encode(sft.format_messages(p + c), add_special_tokens=False).ids)
                for p, c in zip(as_python(out, "prompt"), as_python(out, "completion"))]
    assert counts == expected and all(n > 0 for n in counts)


def test_the_rendering_in_polars_is_the_documented_one(frame):
    text = frame.select(sft.chat_text()).to_series().to_list()
    assert text == [sft.format_messages(p + c) for p, c in zip(as_python(frame, "prompt"), as_python(frame, "completion"))]
    assert text[0].startswith("<|system|>\nYou write Triton.\n<|user|>\nConvert Scale to Triton.\n<|assistant|>\nHere it is.")


def test_answer_is_shorter_than_full_and_reasoning_inline_longer(frame, tokenizer_file):
    tokenizer = sft.load_tokenizer(tokenizer_file)
    lengths = {form: sft.add_lengths(sft.rewrite_completion(frame, form), tokenizer) for form in sft.COMPLETION_FORMS}
    for column in (schema.SFT_CHARS, schema.SFT_TOKENS):
        full, answer, inline = (lengths[f].get_column(column) for f in ("full", "answer", "reasoning-inline"))
        assert (inline >= full).all() and (inline > full).any()
        assert answer[0] < full[0] and answer[3] < full[3]  # the text around the block is dropped


# --- the stage: too_long, the ledger and the report ---------------------------------------------


def test_max_tokens_rejects_longer_rows_and_the_ledger_reconciles(frame, tokenizer_file):
    tokens = sft.add_lengths(frame, sft.load_tokenizer(tokenizer_file)).get_column(schema.SFT_TOKENS).to_list()
    limit = sorted(tokens)[1]  # keeps the two shortest (and ties)
    stage = sft.sft_stage(frame, "full", str(tokenizer_file), limit)
    kept = stage.result.frame
    assert kept.get_column(schema.SFT_TOKENS).max() <= limit
    rejected = stage.result.rejected
    assert rejected.height == sum(t > limit for t in tokens) > 0
    assert set(rejected.get_column("reason")) == {"too_long"} and set(rejected.get_column("stage")) == {"sft"}
    assert all(d.endswith(f"tokens > --max-sft-tokens {limit}") for d in rejected.get_column("detail"))
    report = stage.result.report
    assert report.rows_in == frame.height == report.rows_out + sum(report.dropped.values())
    assert report.dropped == {"too_long": rejected.height}
    assert stage.report == {
        "completion": "full", "chat_format": sft.CHAT_FORMAT, "tokenizer": "tokenizer.json",
        "tokenizer_sha256": export.file_sha256(tokenizer_file), "max_tokens": limit, "too_long": rejected.height,
        "chars_by_form": sft.chars_by_form(frame),
    }


def test_without_a_tokenizer_nothing_is_dropped_and_tokens_are_null(frame):
    stage = sft.sft_stage(frame, "answer")
    assert stage.result.frame.height == frame.height and stage.result.rejected.height == 0
    assert stage.result.frame.get_column(schema.SFT_TOKENS).null_count() == frame.height
    assert stage.report["tokenizer"] is None and stage.report["tokenizer_sha256"] is None and stage.report["too_long"] == 0
    with pytest.raises(ValueError, match="--max-sft-tokens needs --tokenizer"):
        sft.sft_stage(frame, "full", None, 10)


# --- the parameters: one line before any work -----------------------------------------------------


def test_the_options_are_checked_before_any_work(tmp_path, tokenizer_file):
    def error(**values) -> str:
        with pytest.raises(UserError) as err:
            params.validate_params("curate", {"source": "sample", **values})
        assert "\n" not in str(err.value) and err.value.exit_code == 2
        return str(err.value)

    assert error(tokenizer=str(tmp_path / "nope.json")).startswith(f"--tokenizer {tmp_path / 'nope.json'}: no such file")
    (tmp_path / "bad.json").write_text('{"not": "a tokenizer"}')
    assert "cannot be read as a tokenizer.json" in error(tokenizer=str(tmp_path / "bad.json"))
    (tmp_path / "text.json").write_text("not json at all\nsecond line")
    assert "cannot be read as a tokenizer.json" in error(tokenizer=str(tmp_path / "text.json"))
    assert "is a folder, not a tokenizer.json file; pass" in error(tokenizer=str(tokenizer_file.parent))
    assert error(max_sft_tokens=100) == "--max-sft-tokens needs --tokenizer (a local tokenizer.json to count tokens with)"
    assert "--max-sft-tokens 0: input should be greater than or equal to 1" in error(tokenizer=str(tokenizer_file), max_sft_tokens=0)
    assert "--completion short: input should be 'full', 'answer' or 'reasoning-inline'" in error(completion="short")
    ok = params.validate_params("re-evaluate", {"source": "sample", "completion": "answer", "tokenizer": str(tokenizer_file), "max_sft_tokens": 8})
    assert (ok.completion, ok.tokenizer, ok.max_sft_tokens) == ("answer", str(tokenizer_file), 8)
    assert params.CurateParams().completion == "full" and params.CurateParams().tokenizer is None


# --- the summary, the columns, the analysis and the card -----------------------------------------


def summary_fields(sft_block: dict | None, names: tuple[str, ...]) -> dict:
    return dict(
        source="sample", split="train", threshold=0.85, judge="static-ast-v1", group_by="problem_id", seed=42,
        val_fraction=0.1, started_at="2026-01-01T00:00:00+00:00", finished_at="2026-01-01T00:00:01+00:00",
        stages=[StageReport(name=n, rows_in=5, rows_out=5) for n in names], screen={"mode": "standard"}, sft=sft_block,
    )


SFT_BLOCK = {"completion": "answer", "chat_format": sft.CHAT_FORMAT, "tokenizer": "tokenizer.json",
             "tokenizer_sha256": "ab" * 32, "max_tokens": 4096, "too_long": 3}


def test_the_summary_needs_the_sft_stage_with_its_block_and_reads_an_older_one_without():
    summary = RunSummary(**summary_fields(SFT_BLOCK, schema.STAGES))
    assert "sft: completion answer, tokens by tokenizer.json (sha256 abababababab), max 4096 tokens, 3 rows too long" in format_table(summary)
    with pytest.raises(ValueError, match="stages must be"):
        RunSummary(**summary_fields(SFT_BLOCK, schema.STAGES_BEFORE_SFT))
    with pytest.raises(ValueError, match="stages must be"):
        RunSummary(**summary_fields(None, schema.STAGES))
    assert RunSummary(**summary_fields(None, schema.STAGES_BEFORE_SFT)).sft is None  # written before the stage existed
    assert format_sft({"completion": "full", "tokenizer": None, "max_tokens": None}) == \
        "sft: completion full, characters only (no --tokenizer), no length limit"


def test_the_sft_columns_come_after_the_judged_ones(frame):
    missing = {c: t for c, t in schema.JUDGED_SCHEMA.items() if c not in frame.columns}
    judged = pl.concat([frame, pl.DataFrame({c: [None] * frame.height for c in missing}, schema=missing)], how="horizontal")
    out = sft.sft_stage(judged, "answer").result.frame
    assert export.output_columns(out) == [*schema.SOURCE_SCHEMA, *schema.JUDGED_SCHEMA, *schema.SFT_SCHEMA]
    full = sft.sft_stage(judged, "full").result.frame
    assert export.output_columns(full) == [*schema.SOURCE_SCHEMA, *schema.JUDGED_SCHEMA, *schema.SFT_COLUMNS]


def test_length_percentiles_are_by_nearest_rank():
    stats = analysis.length_stats(pl.Series(list(range(1, 101)) + [None]))
    assert stats == {"n": 100, "p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert analysis.length_stats(pl.Series([7])) == {"n": 1, "p50": 7, "p90": 7, "p99": 7, "max": 7}
    assert analysis.length_stats(pl.Series([None], dtype=pl.Int64)) is None


def correlated(n: int) -> pl.DataFrame:
    """Just the columns the analysis reads, for ``n`` rows (deterministic, not constant)."""
    return pl.DataFrame({
        "reward": [0.86 + (i % 13) / 100 for i in range(n)], "difficulty": [i % 11 for i in range(n)],
        "style": [(3 * i) % 11 for i in range(n)], "judge": ["llm"] * n, "judge_model": ["openai/gpt-5.2"] * n,
        "judge_prompt_version": ["rubric-v1"] * n,
    }, schema={"reward": pl.Float64, "difficulty": pl.Int64, "style": pl.Int64, "judge": pl.String, "judge_model": pl.String,
               "judge_prompt_version": pl.String})


def with_lengths(df: pl.DataFrame, tokens: bool = True) -> pl.DataFrame:
    n = df.height
    return df.with_columns(pl.Series(schema.SFT_CHARS, [1000 + 37 * i for i in range(n)], dtype=pl.Int64),
                           pl.Series(schema.SFT_TOKENS, [250 + 9 * i for i in range(n)] if tokens else [None] * n, dtype=pl.Int64))


def test_the_analysis_reports_the_length_distribution_of_the_form_used(tmp_path):
    df = with_lengths(correlated(120))
    result = analysis.compute_analysis(df, SFT_BLOCK)
    lengths = result["sft_lengths"]
    assert lengths["completion"] == "answer" and lengths["max_tokens"] == 4096 and lengths["too_long"] == 3
    assert lengths["chars"] == analysis.length_stats(df.get_column(schema.SFT_CHARS))
    assert lengths["tokens"]["max"] == 250 + 9 * 119 and lengths["tokens"]["p50"] == 250 + 9 * 59
    json.dumps(result, allow_nan=False)
    assert "sft_lengths" not in analysis.compute_analysis(correlated(20))  # rows of a run before the sft stage
    chars_only = analysis.compute_analysis(with_lengths(correlated(20), tokens=False), {"completion": "full"})["sft_lengths"]
    assert chars_only["tokens"] is None and chars_only["chars"]["n"] == 20
    text = report.render_report(result, [tmp_path / n for n in plot_files.ALL_PLOT_FILES], analysis.judge_info(df), relative_to=tmp_path)
    assert "## SFT sequence lengths" in text and "form `answer`" in text and "Tokens by `tokenizer.json`" in text
    assert f"| tokens | 120 | {lengths['tokens']['p50']:,} | {lengths['tokens']['p90']:,} |" in text
    assert "rejected as `too_long` (3 rows)" in text and "](sft_lengths.png)" in text


def test_the_length_plot_is_drawn_when_the_rows_have_lengths(tmp_path):
    from kernelbook_lib import plots
    paths = plots.render_plots(with_lengths(correlated(60)), tmp_path / "a")
    assert [p.name for p in paths] == list(plot_files.ALL_PLOT_FILES)
    assert (tmp_path / "a" / plot_files.SFT_LENGTHS_PNG).read_bytes().startswith(b"\x89PNG")
    # Characters when there are no token counts; none at all for rows without lengths, and an
    # earlier run's length plot is removed then.
    assert plots.sft_length_unit(with_lengths(correlated(10), tokens=False)) == ("sft_chars", "characters")
    again = plots.render_plots(correlated(60), tmp_path / "a")
    assert [p.name for p in again] == list(plot_files.PLOT_FILES) and not (tmp_path / "a" / plot_files.SFT_LENGTHS_PNG).exists()
    key = plot_files.images_key(with_lengths(correlated(30)))
    assert plot_files.images_key(with_lengths(correlated(30), tokens=False)) != key  # the lengths are in the picture


@pytest.mark.parametrize("form", sft.COMPLETION_FORMS)
def test_the_card_says_which_form_tokenizer_and_limit_the_dataset_used(form):
    from tests.lib.test_cards import FILES

    block = {**SFT_BLOCK, "completion": form}
    summary = RunSummary(**{**summary_fields(block, schema.STAGES), "datasets": {"filtered": {"train": 4, "validation": 1}}}).model_dump(mode="json")
    lengths = {"n": 5, "completion": form, "chars": {"n": 5, "p50": 10, "p90": 20, "p99": 30, "max": 40}, "tokens": None}
    text = cards.render_dataset_card("filtered", summary, {"train": 4, "validation": 1}, data_files=FILES,
                                     analysis={"n": 5, "pairs": {}, "sft_lengths": lengths})
    assert "**SFT format.**" in text and f"Completion form `{form}`" in text
    assert "`tokenizer.json` (sha256 `" + "ab" * 32 + "`)" in text and "more than 4096 tokens were rejected as `too_long` (3 rows)" in text
    assert "rejected at load (`missing_answer`)" in text and "The `filtered` dataset is the output of `sft`" in text
    assert "## SFT sequence lengths" in text and "| characters | 5 | 10 | 20 | 30 | 40 |" in text
    assert ("`completion_original`" in text) == (form != "full")


def test_the_stage_reports_the_characters_of_every_completion_form(frame):
    """A user chooses a form by its length: the summary gives each form's percentiles, whichever
    form the run writes (they are the characters each rewrite would have)."""
    report = sft.sft_stage(frame, "answer").report
    assert set(report["chars_by_form"]) == set(sft.COMPLETION_FORMS)
    for form in sft.COMPLETION_FORMS:
        lengths = sft.add_lengths(sft.rewrite_completion(frame, form)).get_column(schema.SFT_CHARS)
        assert report["chars_by_form"][form] == analysis.length_stats(lengths)
    assert report["chars_by_form"]["answer"]["max"] <= report["chars_by_form"]["full"]["max"] <= report["chars_by_form"]["reasoning-inline"]["max"]
