"""The curate flow with ``--completion answer|reasoning-inline``, ``--tokenizer`` and
``--max-sft-tokens`` on the bundled sample: every row of both datasets, loaded with ``datasets``,
is a conversational prompt-completion example in the chosen form; rows too long are in the
ledger and the summary; the analysis and the cards say which form, tokenizer and limit."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from flows.curate import curate
from kernelbook_lib import export, loading, schema, sft
from kernelbook_lib.params import CurateParams
from kernelbook_lib.text import extract_answer
from tests.lib.test_sft import trl_problems


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    """A byte-level BPE trained on the bundled sample's texts (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    source = pl.read_parquet(loading.SAMPLE_PATH)
    texts = [m["content"] or "" for messages in source["prompt"].to_list() + source["completion"].to_list() for m in messages]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1000, special_tokens=["[UNK]"],
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path_factory.mktemp("sft-tokenizer") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="module")
def runs(prefect_harness, tmp_path_factory, tokenizer_file) -> dict[str, tuple[Path, dict]]:
    """``answer`` with a tokenizer and a limit that rejects some rows (and the analysis), and
    ``reasoning-inline`` counting characters only; the limit is the median of an unlimited run."""
    root = tmp_path_factory.mktemp("curate-sft")
    probe = root / "probe"
    curate(CurateParams(source="sample", judge="static", out=str(probe), analysis=False, completion="answer", tokenizer=str(tokenizer_file)))
    tokens = pl.read_parquet(probe / "filtered" / "data" / "*.parquet").get_column(schema.SFT_TOKENS)
    limit = int(tokens.median())
    curate(CurateParams(source="sample", judge="static", out=str(root / "answer"), completion="answer",
                        tokenizer=str(tokenizer_file), max_sft_tokens=limit))
    curate(CurateParams(source="sample", judge="static", out=str(root / "inline"), analysis=False, completion="reasoning-inline"))
    read = lambda out: json.loads((out / "run_summary.json").read_text())  # noqa: E731
    return {"probe": (probe, read(probe)), "answer": (root / "answer", read(root / "answer")), "inline": (root / "inline", read(root / "inline"))}


def ledger(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("run", "form"), [("answer", "answer"), ("inline", "reasoning-inline")])
def test_every_row_of_both_datasets_is_a_conversational_prompt_completion_example(runs, run, form):
    import datasets

    out, summary = runs[run]
    source = {r["example_id"]: r for r in pl.read_parquet(loading.SAMPLE_PATH).iter_rows(named=True)}
    for name in ("filtered", "unique"):
        folder = out / name
        files = {split: [str(folder / f) for f in paths] for split, paths in export.dataset_files(folder).items()}
        by_files = datasets.load_dataset("parquet", data_files=files)
        by_folder = datasets.load_dataset(str(folder))
        assert {s: d.num_rows for s, d in by_folder.items()} == {s: d.num_rows for s, d in by_files.items()} == summary["datasets"][name]
        for ds in by_folder.values():
            assert set(ds.features["completion"].feature) == {"role", "content"}  # no reasoning field in this form
            for row in ds:
                assert trl_problems(row["prompt"], row["completion"], form) == [], (name, row["example_id"])
                original = row["completion_original"]
                assert original[-1]["role"] == "assistant" and "reasoning" in original[-1]
                content = row["completion"][-1]["content"]
                if form == "answer":
                    assert content == f"<answer>\n{extract_answer(original[-1]['content'])}\n</answer>" and "```" in content
                elif (original[-1]["reasoning"] or "").strip():
                    assert content.startswith("<think>\n") and content.endswith(original[-1]["content"])
                assert row["prompt"] == source[row["example_id"]]["prompt"]
                assert row["sft_chars"] == len(sft.format_messages(row["prompt"] + row["completion"]))


def test_rows_too_long_are_rejected_before_dedupe_and_reconcile(runs, tokenizer_file):
    from tokenizers import Tokenizer

    out, summary = runs["answer"]
    limit = summary["sft"]["max_tokens"]
    stages = {s["name"]: s for s in summary["stages"]}
    assert [s["name"] for s in summary["stages"]] == list(schema.STAGES)
    for stage in summary["stages"]:
        assert stage["rows_in"] == stage["rows_out"] + sum(stage["dropped"].values())
    too_long = [r for r in ledger(out) if r["reason"] == "too_long"]
    assert too_long and all(r["stage"] == "sft" for r in too_long)
    assert stages["sft"]["dropped"] == {"too_long": len(too_long)} == {"too_long": summary["sft"]["too_long"]}
    assert stages["sft"]["rows_in"] == stages["judge"]["rows_out"] and stages["dedupe"]["rows_in"] == stages["sft"]["rows_out"]
    # Every source row is in a dataset or the ledger, once; the datasets hold no row over the limit.
    filtered = pl.read_parquet(out / "filtered" / "data" / "*.parquet")
    assert filtered.height + len(ledger(out)) == pl.read_parquet(loading.SAMPLE_PATH).height
    assert filtered.height == sum(summary["datasets"]["filtered"].values()) == stages["sft"]["rows_out"]
    assert filtered.get_column(schema.SFT_TOKENS).max() <= limit
    unique = pl.read_parquet(out / "unique" / "data" / "*.parquet")
    assert unique.get_column(schema.SFT_TOKENS).max() <= limit and unique.height == stages["dedupe"]["rows_out"]
    # The counts are the tokenizer's own, on the documented rendering.
    own = Tokenizer.from_file(str(tokenizer_file))
    for prompt, completion, tokens in filtered.select("prompt", "completion", schema.SFT_TOKENS).head(10).iter_rows():
        assert tokens == len(own.encode(sft.format_messages(prompt + completion), add_special_tokens=False).ids)
    probe = runs["probe"][1]
    assert sum(probe["datasets"]["filtered"].values()) == filtered.height + len(too_long)  # only the limit differs


def test_the_summary_analysis_and_cards_name_the_form_tokenizer_and_limit(runs, tokenizer_file):
    out, summary = runs["answer"]
    assert summary["sft"] == {"completion": "answer", "chat_format": sft.CHAT_FORMAT, "tokenizer": "tokenizer.json",
                              "tokenizer_sha256": export.file_sha256(tokenizer_file), "max_tokens": summary["sft"]["max_tokens"],
                              "too_long": summary["sft"]["too_long"], "chars_by_form": summary["sft"]["chars_by_form"]}
    assert set(summary["sft"]["chars_by_form"]) == {"full", "answer", "reasoning-inline"}
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    lengths = analysis["sft_lengths"]
    assert lengths["completion"] == "answer" and lengths["tokenizer"] == "tokenizer.json"
    assert lengths["tokens"]["n"] == sum(summary["datasets"]["filtered"].values())
    assert lengths["tokens"]["max"] <= summary["sft"]["max_tokens"] and lengths["chars"]["p50"] <= lengths["chars"]["p99"]
    assert "sft_lengths.png" in analysis["plots"]
    assert "## SFT sequence lengths" in (out / "analysis" / "report.md").read_text()
    for name in ("filtered", "unique"):
        card = (out / name / "README.md").read_text()
        assert "Completion form `answer`" in card and summary["sft"]["tokenizer_sha256"] in card
        assert f"more than {summary['sft']['max_tokens']} tokens were rejected as `too_long`" in card
        assert "](images/sft_lengths.png)" in card and "| `completion_original` |" in card
    inline = runs["inline"][1]["sft"]
    assert inline["completion"] == "reasoning-inline" and inline["tokenizer"] is None and inline["max_tokens"] is None
