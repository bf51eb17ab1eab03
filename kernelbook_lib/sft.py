"""SFT-ready rows: the completion form, each row's sequence length, and the ``too_long`` rule.

The datasets' ``prompt`` and ``completion`` columns are TRL's conversational prompt-completion
format: lists of ``{role, content}`` messages. ``--completion`` chooses what the assistant
message holds (:func:`rewrite_completion`):

* ``full`` (default): the completion as the source has it (``{role, content, reasoning}``);
  nothing is rewritten and no ``completion_original`` column is written.
* ``answer``: one assistant message whose content is the answer block only,
  ``<answer>\\n{solution}\\n</answer>``, where the solution is the text of the last
  ``<answer>...</answer>`` block of the last assistant message (:func:`kernelbook_lib.text.
  extract_answer`, the same text the screen and the judge read; code fences inside it are kept
  as they are). The reasoning and everything around the block are dropped.
* ``reasoning-inline``: every message as ``{role, content}``; an assistant message with a
  non-blank ``reasoning`` gets ``<think>\\n{reasoning}\\n</think>\\n\\n`` before its content (the
  reasoning stripped of surrounding white space; no empty think block for a message without).

With ``answer`` or ``reasoning-inline`` the source's messages, untouched, are in
``completion_original``. Every row here has an answer: a completion without ``<answer>`` was
rejected at load (``missing_answer``).

Lengths (:func:`add_lengths`) are of the chat-formatted text of the row, prompt then completion
messages, each written ``<|{role}|>\\n{content}\\n`` and concatenated (:data:`CHAT_FORMAT`). A
``tokenizer.json`` carries no chat template, so this simple, documented rendering stands in for
the template of the model that will be trained (which adds a few tokens per message); a
``reasoning`` field kept in a message (``full``) is not counted, since chat templates train on
``content``. ``sft_chars`` is its length in characters (Unicode code points), always;
``sft_tokens`` the number of token ids ``Tokenizer.encode(text, add_special_tokens=False)``
gives with ``--tokenizer``, else null. With ``--max-sft-tokens N`` a row of more than N tokens
is rejected as ``too_long``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from kernelbook_lib import schema
from kernelbook_lib.ledger import StageResult, empty_rejections, rejections

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from kernelbook_lib.progress import Progress

STAGE = "sft"
COMPLETION_FORMS: tuple[str, ...] = ("full", "answer", "reasoning-inline")
REJECT_TOO_LONG = "too_long"
#: The rendering the lengths are measured on (bump it when :func:`chat_text` changes).
CHAT_FORMAT = "role-tags-v1"
#: Rows per ``encode_batch_fast`` call: the encodings of one batch only are alive at a time.
TOKEN_BATCH_ROWS = 2_000


# --- the tokenizer ------------------------------------------------------------------------


def tokenizer_path(path: str | Path) -> Path:
    return Path(path).expanduser()


@lru_cache(maxsize=4)
def _load(resolved: str, mtime_ns: int, size: int) -> Tokenizer:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(resolved)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer in the local ``tokenizer.json`` at ``path`` (``Tokenizer.from_file``; nothing
    is downloaded). A ValueError in one line when it is missing, a folder or not a tokenizer file
    (the parameter model turns it into the ``--tokenizer`` error). Cached by path and mtime, so
    the check before the run and the stage read the file once."""
    file = tokenizer_path(path)
    if not file.exists():
        raise ValueError("no such file (a local tokenizer.json is needed; nothing is downloaded)")
    if file.is_dir():
        hint = f"; pass {file / 'tokenizer.json'}" if (file / "tokenizer.json").is_file() else ""
        raise ValueError(f"is a folder, not a tokenizer.json file{hint}")
    try:
        stat = file.stat()
        return _load(str(file.resolve()), stat.st_mtime_ns, stat.st_size)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises its own Exception for any bad file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot be read as a tokenizer.json ({reason})") from None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(tokenizer_path(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the completion form --------------------------------------------------------------------


def _message_fields(frame: pl.DataFrame, column: str) -> set[str]:
    dtype = frame.schema[column]
    inner = getattr(dtype, "inner", None)
    return {f.name for f in inner.fields} if isinstance(inner, pl.Struct) else set()


def answer_block(solution: pl.Expr) -> pl.Expr:
    """``<answer>\\n{solution}\\n</answer>``: the one content of the ``answer`` form."""
    return pl.concat_str([pl.lit("<answer>\n"), solution, pl.lit("\n</answer>")])


def _as_messages(role: pl.Expr, content: pl.Expr) -> pl.Expr:
    return pl.struct(role.cast(pl.String).alias("role"), content.cast(pl.String).alias("content"))


def rewrite_completion(frame: pl.DataFrame, form: str) -> pl.DataFrame:
    """``frame`` with ``completion`` in ``form`` (see the module's docstring) and, unless ``full``,
    the source's messages in ``completion_original``. ``answer`` needs the internal solution column
    (:data:`schema.SOLUTION`, set at load)."""
    if form not in COMPLETION_FORMS:
        raise ValueError(f"--completion must be one of {', '.join(COMPLETION_FORMS)}, not {form!r}")
    if form == "full":
        return frame
    original = pl.col("completion").alias(schema.COMPLETION_ORIGINAL)
    if form == "answer":
        message = _as_messages(pl.lit("assistant"), answer_block(pl.col(schema.SOLUTION)))
        rewritten = pl.concat_list([message]).alias("completion")
    else:
        role, content = pl.element().struct.field("role"), pl.element().struct.field("content")
        if "reasoning" in _message_fields(frame, "completion"):
            reasoning = pl.element().struct.field("reasoning").str.strip_chars()
            thinks = (role == "assistant") & reasoning.is_not_null() & (reasoning != "")
            think = pl.concat_str([pl.lit("<think>\n"), reasoning, pl.lit("\n</think>\n\n"), content.fill_null("")])
            content = pl.when(thinks).then(think).otherwise(content)
        rewritten = pl.col("completion").list.eval(_as_messages(role, content)).alias("completion")
    return frame.with_columns(original, rewritten)


# --- lengths -------------------------------------------------------------------------------


def _rendered(column: str) -> pl.Expr:
    message = pl.concat_str([
        pl.lit("<|"), pl.element().struct.field("role").fill_null(""), pl.lit("|>\n"),
        pl.element().struct.field("content").fill_null(""), pl.lit("\n"),
    ])
    return pl.col(column).list.eval(message).list.join("").fill_null("")


def chat_text() -> pl.Expr:
    """The text the lengths are measured on (:data:`CHAT_FORMAT`): every prompt message, then
    every completion message, as ``<|{role}|>\\n{content}\\n``, concatenated."""
    return pl.concat_str([_rendered("prompt"), _rendered("completion")]).alias("_sft_text")


def format_messages(messages: Sequence[dict[str, Any]]) -> str:
    """:func:`chat_text` for plain messages (what tests and readers can compare with)."""
    return "".join(f"<|{m.get('role') or ''}|>\n{m.get('content') or ''}\n" for m in messages)


def _batches(texts: pl.Series, rows: int) -> Iterator[list[str]]:
    for start in range(0, len(texts), rows):
        yield texts.slice(start, rows).to_list()


def count_tokens(texts: pl.Series, tokenizer: Tokenizer, progress: Progress | None = None) -> pl.Series:
    """The number of token ids of each text (``add_special_tokens=False``), in batches."""
    counts: list[int] = []
    for batch in _batches(texts, TOKEN_BATCH_ROWS):
        counts.extend(len(encoding.ids) for encoding in tokenizer.encode_batch_fast(batch, add_special_tokens=False))
        if progress is not None:
            progress.advance(len(batch))
    return pl.Series(schema.SFT_TOKENS, counts, dtype=pl.Int64)


#: Characters :func:`chat_text` adds to a message: ``<|``, ``|>\n`` and the closing ``\n``.
_TAG_CHARS = 6


def _chars(column: str) -> pl.Expr:
    message = pl.element().struct
    length = message.field("role").fill_null("").str.len_chars() + message.field("content").fill_null("").str.len_chars() + _TAG_CHARS
    return pl.col(column).list.eval(length).list.sum().fill_null(0)


def chat_chars() -> pl.Expr:
    """The characters of :func:`chat_text`, summed per message without building the text (25x
    faster; the default run counts characters only)."""
    return (_chars("prompt") + _chars("completion")).cast(pl.Int64).alias(schema.SFT_CHARS)


def add_lengths(frame: pl.DataFrame, tokenizer: Tokenizer | None = None, progress: Progress | None = None) -> pl.DataFrame:
    """``sft_chars`` (always) and ``sft_tokens`` (null without a tokenizer) of every row."""
    if tokenizer is None:
        return frame.with_columns(chat_chars(), pl.lit(None, dtype=pl.Int64).alias(schema.SFT_TOKENS))
    tokens = count_tokens(frame.select(chat_text()).to_series(), tokenizer, progress)
    return frame.with_columns(chat_chars(), tokens)


# --- the stage ------------------------------------------------------------------------------


def chars_by_form(frame: pl.DataFrame) -> dict[str, dict[str, int] | None]:
    """The character-length percentiles of the stage's rows in every completion form (cheap:
    characters are summed per message), so a user can choose a form by its length; tokens are
    counted for the form the run writes only."""
    from kernelbook_lib.analysis import length_stats

    return {form: length_stats(rewrite_completion(frame, form).select(chat_chars()).to_series()) for form in COMPLETION_FORMS}


@dataclass(frozen=True)
class SftStage:
    """The ``sft`` stage's rows and ledger, and the summary's ``sft`` block."""

    result: StageResult
    report: dict[str, Any]


def sft_stage(frame: pl.DataFrame, form: str = "full", tokenizer: str | None = None, max_tokens: int | None = None,
              progress: Progress | None = None) -> SftStage:
    """The ``sft`` stage: the completion in ``form``, the lengths, and with ``max_tokens`` the rows
    of more tokens rejected as ``too_long`` (detail: ``N tokens > --max-sft-tokens M``)."""
    if max_tokens is not None and tokenizer is None:
        raise ValueError("--max-sft-tokens needs --tokenizer")
    loaded = load_tokenizer(tokenizer) if tokenizer is not None else None
    out = add_lengths(rewrite_completion(frame, form), loaded, progress)
    rejected = empty_rejections()
    if max_tokens is not None:
        long = pl.col(schema.SFT_TOKENS) > max_tokens
        too_long = out.filter(long)
        rejected = rejections(too_long, STAGE, REJECT_TOO_LONG,
                              detail=pl.format("{} tokens > --max-sft-tokens {}", pl.col(schema.SFT_TOKENS), pl.lit(max_tokens)))
        out = out.filter(~long)
    report = {
        "completion": form,
        "chat_format": CHAT_FORMAT,
        "tokenizer": tokenizer_path(tokenizer).name if tokenizer is not None else None,
        "tokenizer_sha256": file_sha256(tokenizer) if tokenizer is not None else None,
        "max_tokens": max_tokens,
        "too_long": rejected.height,
        "chars_by_form": chars_by_form(frame),
    }
    return SftStage(StageResult.of(STAGE, frame.height, out, rejected), report)

