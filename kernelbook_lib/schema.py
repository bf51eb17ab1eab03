"""The one declared schema of the data that moves between stages.

Three layers, patito-style: the *source* columns (what ``siro1/kernelbook-glm4-evals`` holds,
described in ``shared/spec/source-schema.md``), the *internal* columns the pipeline derives at
entry (prefixed ``_`` and never exported), and the *judged* columns every output row carries.

Source columns pass through every stage unchanged: they are what SFT trainers consume. The one
exception is ``completion`` with ``--completion answer|reasoning-inline``: the ``sft`` stage
rewrites it and keeps the source's messages in ``completion_original`` (the *SFT* columns).
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

# --- source (the judge input) -------------------------------------------------------------

PROMPT_MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
COMPLETION_MESSAGE = pl.Struct({"role": pl.String, "content": pl.String, "reasoning": pl.String})
INFO = pl.Struct({"module_name": pl.String, "python_code": pl.String, "triton_code": pl.String})

#: The source columns in their published order with their polars types.
SOURCE_SCHEMA: dict[str, pl.DataType] = {
    "example_id": pl.Int64(),
    "prompt": pl.List(PROMPT_MESSAGE),
    "completion": pl.List(COMPLETION_MESSAGE),
    "task": pl.String(),
    "reward": pl.Float64(),
    "generation_ms": pl.Float64(),
    "scoring_ms": pl.Float64(),
    "total_ms": pl.Float64(),
    "info": INFO,
    "answer": pl.String(),
    "speedup_reward": pl.Float64(),
    "num_turns": pl.Int64(),
    "oai_tools": pl.Null(),
}

#: The same schema for pyarrow (used to write the bundled sample and benchmark data exactly).
SOURCE_ARROW_SCHEMA = pa.schema(
    [
        ("example_id", pa.int64()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        (
            "completion",
            pa.list_(
                pa.struct([("role", pa.string()), ("content", pa.string()), ("reasoning", pa.string())])
            ),
        ),
        ("task", pa.string()),
        ("reward", pa.float64()),
        ("generation_ms", pa.float64()),
        ("scoring_ms", pa.float64()),
        ("total_ms", pa.float64()),
        (
            "info",
            pa.struct([("module_name", pa.string()), ("python_code", pa.string()), ("triton_code", pa.string())]),
        ),
        ("answer", pa.string()),
        ("speedup_reward", pa.float64()),
        ("num_turns", pa.int64()),
        ("oai_tools", pa.null()),
    ]
)

#: Columns without which the pipeline cannot run (``info.*`` are struct fields).
REQUIRED_COLUMNS: tuple[str, ...] = ("example_id", "prompt", "completion", "reward", "info")
REQUIRED_INFO_FIELDS: tuple[str, ...] = ("module_name", "python_code")

# --- internal columns, derived once at entry, dropped on export ----------------------------

ROW = "_row"  # the row's 0-based index in the loaded source (after the split is chosen)
SOURCE_SPLIT = "_source_split"  # which source split the row came from
MODULE_NAME = "_module_name"  # info.module_name
PYTHON_CODE = "_python_code"  # info.python_code
SOLUTION = "_solution"  # the content of the last <answer>...</answer> in the assistant reply
MALFORMED_LINE = "_malformed_line"  # a JSONL line that is not a JSON object: where and why (else null)
INTERNAL_COLUMNS: tuple[str, ...] = (ROW, SOURCE_SPLIT, MODULE_NAME, PYTHON_CODE, SOLUTION, MALFORMED_LINE)

# --- columns every judged output row carries, after the source columns -------------------

#: One verdict of a row (``judge_verdicts``): which judge, which of its samples, the two grades.
JUDGE_VERDICT = pl.Struct({"judge": pl.String, "sample": pl.Int64, "difficulty": pl.Int64, "style": pl.Int64})

JUDGED_SCHEMA: dict[str, pl.DataType] = {
    "problem_id": pl.String(),
    "family_id": pl.String(),  # the near-duplicate family: the smallest problem_id among its members
    # The kernel screen's flags (kernelbook_lib.screening): [] for a clean kernel, e.g.
    # ["partial:conv2d"] when a kernel runs but work stays in PyTorch; null with --screen off.
    "kernel_flags": pl.List(pl.String()),
    "difficulty": pl.Int64(),
    "style": pl.Int64(),
    "judge": pl.String(),  # e.g. "static-ast-v1" or "llm"
    "judge_model": pl.String(),  # the LLM's model name; null for the static judge
    "judge_prompt_version": pl.String(),  # the rubric/prompt version; null for the static judge
    "judge_rationale": pl.String(),
    "judge_prompt_tokens": pl.Int64(),  # null for the static judge
    "judge_completion_tokens": pl.Int64(),  # null for the static judge
    # Every verdict of the row (kernelbook_lib.judge_panel): one for a one-verdict judge, more with
    # --judge-samples or a --judge-model panel; difficulty and style are their lower median.
    "judge_verdicts": pl.List(JUDGE_VERDICT),
    "score": pl.Float64(),  # reward * difficulty * style
}

# The verdict columns a judge produces (a subset of JUDGED_SCHEMA, everything but the ids and score).
VERDICT_COLUMNS: tuple[str, ...] = (
    "difficulty",
    "style",
    "judge",
    "judge_model",
    "judge_prompt_version",
    "judge_rationale",
    "judge_prompt_tokens",
    "judge_completion_tokens",
)

# --- the SFT columns (kernelbook_lib/sft.py), after the judged ones ------------------------

COMPLETION_ORIGINAL = "completion_original"  # the source's completion, with --completion answer|reasoning-inline only
SFT_CHARS = "sft_chars"  # characters of the chat-formatted prompt + completion (always)
SFT_TOKENS = "sft_tokens"  # its tokens with --tokenizer; null without
#: The SFT columns in their published order (``completion_original`` only when the completion
#: is rewritten; ``sft_chars`` and ``sft_tokens`` in every judged dataset).
SFT_SCHEMA: dict[str, pl.DataType] = {
    COMPLETION_ORIGINAL: pl.List(COMPLETION_MESSAGE),
    SFT_CHARS: pl.Int64(),
    SFT_TOKENS: pl.Int64(),
}
#: The SFT columns every judged dataset carries, whatever the completion form.
SFT_COLUMNS: tuple[str, ...] = (SFT_CHARS, SFT_TOKENS)

# --- the drop ledger -------------------------------------------------------------------

REJECTED_SCHEMA: dict[str, pl.DataType] = {
    "stage": pl.String(),
    "reason": pl.String(),
    "source_index": pl.Int64(),
    "example_id": pl.Int64(),
    "problem_id": pl.String(),
    "detail": pl.String(),
}

STAGES: tuple[str, ...] = ("load", "families", "filter", "decontaminate", "screen", "judge", "sft", "dedupe", "split")
#: The stages of a run with ``--screen off`` (no screen stage).
STAGES_UNSCREENED: tuple[str, ...] = tuple(s for s in STAGES if s != "screen")
#: The stages of a summary written before the ``sft`` stage existed (it has no ``sft`` block):
#: still read (an older output folder can be published), never written.
STAGES_BEFORE_SFT: tuple[str, ...] = tuple(s for s in STAGES if s != "sft")
STAGES_UNSCREENED_BEFORE_SFT: tuple[str, ...] = tuple(s for s in STAGES_UNSCREENED if s != "sft")
