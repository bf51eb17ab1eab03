"""Pure text helpers: the solution inside ``<answer>`` tags, code fences, problem ids."""

from __future__ import annotations

import hashlib
import re

_OPEN, _CLOSE = "<answer>", "</answer>"
_FENCE_RE = re.compile(r"```[ \t]*[A-Za-z0-9_+-]*[ \t]*\n(.*?)```", re.DOTALL)


def extract_answer(content: str | None) -> str | None:
    """The text of the last ``<answer>...</answer>`` block (tags in any case), stripped;
    ``None`` if there is none or it is empty.

    "Last" is the last opening tag that has a closing tag after it: the model's final answer
    when it quoted the tag earlier in its explanation. Plain string search, not a regex: this
    runs on every row of the source (hundreds of MB of text at full scale)."""
    if not content:
        return None
    lowered = content.lower()
    start = lowered.rfind(_OPEN)
    while start != -1:
        close = lowered.find(_CLOSE, start + len(_OPEN))
        if close != -1:
            return content[start + len(_OPEN) : close].strip() or None
        start = lowered.rfind(_OPEN, 0, start)
    return None


def solution_code(answer: str) -> str:
    """The Python source inside an answer: the fenced code blocks joined, or the answer itself
    when it has no fences. Used for parsing only; the answer itself is what the judge is shown."""
    blocks = _FENCE_RE.findall(answer)
    if not blocks:
        return answer.strip()
    return "\n\n".join(block.strip("\n") for block in blocks)


def normalize_code(code: str) -> str:
    """The normalisation under ``problem_id``: line endings to ``\\n``, tabs kept, trailing
    white space removed from every line, blank lines at the start and the end removed.

    Nothing that could change meaning is touched (no comment or docstring stripping), so two
    modules that differ in any token are two problems, whatever their ``module_name``.
    """
    lines = code.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines = [line.rstrip() for line in lines]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def problem_id(python_code: str) -> str:
    """A stable id for a problem: the first 16 hex digits of SHA-256 of the normalised code."""
    return hashlib.sha256(normalize_code(python_code).encode("utf-8")).hexdigest()[:16]
