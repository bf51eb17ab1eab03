"""The LLM judge's rubric, prompt and reply format, and :data:`JUDGE_TASK`, the judge's
:class:`~kernelbook_lib.llm.LLMTask` (no orchestration here).

The judge sees the FULL PyTorch reference module and the FULL Triton solution: nothing is
truncated (a prompt that is too long for the endpoint is not sent at all, see
``kernelbook_lib.llm``). It answers with a JSON object that a strict JSON schema describes;
when a provider ignores the schema, ``<difficulty>N</difficulty><style>N</style>`` tags are
accepted instead. Anything else is an invalid reply (an ``InvalidJudgeReply``, a ``ValueError``), which the LLM
machinery retries and finally records as ``invalid_reply``.

Change ``JUDGE_PROMPT_VERSION`` whenever the prompt, the rubric or the reply format changes:
it is part of every cache key, so old verdicts are never reused for a new prompt. The system
prompt is the fixed part and comes first (a provider's prefix cache serves it); everything
that varies per row is in the user message.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kernelbook_lib.llm import LLMRequest, LLMTask, json_schema_response_format

JUDGE_PROMPT_VERSION = "judge-v1"

#: The name of the JSON schema sent with every judge request (also what the test server keys on).
JUDGE_SCHEMA_NAME = "judge_reply"


class JudgeReply(BaseModel):
    """One verdict: two integer grades on the 0-10 scale and a short justification."""

    # Extra keys from a lenient provider are ignored; the schema sent forbids them anyway.
    model_config = ConfigDict(extra="ignore", frozen=True)

    difficulty: int = Field(ge=0, le=10, strict=True, description="Difficulty grade, 0-10.")
    style: int = Field(ge=0, le=10, strict=True, description="Code quality grade, 0-10.")
    rationale: str = Field(description="Two or three sentences justifying both grades.")


#: Built once at import and reused for every request.
JUDGE_RESPONSE_FORMAT: dict[str, Any] = json_schema_response_format(JUDGE_SCHEMA_NAME, JudgeReply)
JUDGE_JSON_SCHEMA: dict[str, Any] = JUDGE_RESPONSE_FORMAT["json_schema"]["schema"]

JUDGE_SYSTEM_PROMPT = """\
You review GPU kernels. Each task pairs a PyTorch reference module with a Triton program
written to replace it; the program is known to compute the right result. Grade the pair on two
independent 0-10 integer scales.

DIFFICULTY: how hard the computation is to implement well as a Triton kernel (judge the
problem the kernel solves, not the length of the code).
- 0: nothing to compute: a copy, an identity or a reshape.
- 1-2: simple elementwise work (relu, add, scaling, a fused activation).
- 3-4: basic reductions (sum, mean, max over an axis) or light broadcasting.
- 5-6: moderate kernels that combine a reduction with elementwise work (softmax, layernorm,
  normalisations, simple pooling).
- 7-8: complex kernels with tiling and data reuse (matrix multiplication, attention,
  convolutions).
- 9-10: advanced fused kernels or whole multi-layer models (FlashAttention-style fusion,
  a ResNet block or more).

STYLE: the quality of the Triton solution as code a student should learn from.
- 0-1: broken-looking or unreadable.
- 2-3: messy but working: dead code, confusing names, copy-paste, magic numbers.
- 4-5: acceptable and functional, with little structure.
- 5-6: good structure: clear kernels, sensible names, a clean wrapper module.
- 7-8: very good: efficient patterns (coalesced access, masking, fusion, sensible block sizes).
- 9-10: excellent: close to optimal and easy to learn from.

Answer with a JSON object with exactly these keys: "difficulty" (integer 0-10), "style"
(integer 0-10) and "rationale" (two or three sentences that justify both grades)."""

JUDGE_USER_TEMPLATE = """\
Module name: {module_name}

PyTorch reference module:
```python
{python_code}
```

Triton solution (the model's complete answer):
{solution}"""


def build_judge_messages(module_name: str, python_code: str, solution: str) -> list[dict[str, str]]:
    """The chat messages for one verdict. ``python_code`` and ``solution`` are sent in full."""
    return JUDGE_TASK.messages(module_name=module_name, python_code=python_code, solution=solution)


# A reply wrapped in one Markdown code fence (some providers do that even in JSON mode).
_FENCED_RE = re.compile(r"\A```[A-Za-z]*\s*\n?(.*?)\n?```\Z", re.DOTALL)
_TAG_RES = {
    name: re.compile(rf"<{name}>\s*(.*?)\s*</{name}>", re.DOTALL | re.IGNORECASE)
    for name in ("difficulty", "style", "rationale")
}
_INT_RE = re.compile(r"\A[+]?\d+\Z")


class InvalidJudgeReply(ValueError):
    """The reply is neither the JSON object nor the tag form (or a grade is out of range)."""


def _from_tags(text: str) -> JudgeReply | None:
    """The tag form, or ``None`` when the text holds no grade tag at all."""
    found = {name: pattern.findall(text) for name, pattern in _TAG_RES.items()}
    if not found["difficulty"] and not found["style"]:
        return None
    values: dict[str, Any] = {}
    for name in ("difficulty", "style"):
        hits = found[name]
        if len(hits) != 1:
            raise InvalidJudgeReply(f"expected exactly one <{name}> tag, found {len(hits)}")
        if not _INT_RE.match(hits[0]):
            raise InvalidJudgeReply(f"<{name}> is not an integer: {hits[0][:40]!r}")
        values[name] = int(hits[0])
    rationale = found["rationale"]
    values["rationale"] = rationale[0] if len(rationale) == 1 else ""
    return _validated(values)


def _validated(data: dict[str, Any]) -> JudgeReply:
    try:
        return JudgeReply.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "reply"
        raise InvalidJudgeReply(f"{where}: {first['msg']}") from None


def parse_judge_reply(content: str) -> JudgeReply:
    """Parse a judge reply: the JSON object (optionally inside one code fence), else the tag
    form (rationale optional there). Raises ``InvalidJudgeReply`` (a ``ValueError``) for anything
    else, including grades outside 0-10 and non-integer grades."""
    if not isinstance(content, str) or not content.strip():
        raise InvalidJudgeReply("empty reply")
    text = content.strip()
    fenced = _FENCED_RE.match(text)
    candidate = fenced.group(1).strip() if fenced else text
    if candidate.startswith("{"):
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError as exc:
            # Not JSON after all: a provider may have mixed tags into a brace-led reply.
            tagged = _from_tags(text)
            if tagged is not None:
                return tagged
            raise InvalidJudgeReply(f"reply is not valid JSON: {exc.msg} at char {exc.pos}") from None
        if not isinstance(data, dict):
            raise InvalidJudgeReply("reply JSON is not an object")
        return _validated(data)
    tagged = _from_tags(text)
    if tagged is not None:
        return tagged
    raise InvalidJudgeReply("reply is neither a JSON object nor <difficulty>/<style> tags")


class JudgeTask(LLMTask):
    """The judge: one verdict per (module, solution) pair. Its reply check needs nothing but
    the reply, so requests keep no context."""

    name = "judge"
    prompt_version = JUDGE_PROMPT_VERSION
    system_prompt = JUDGE_SYSTEM_PROMPT
    user_template = JUDGE_USER_TEMPLATE
    response_format = JUDGE_RESPONSE_FORMAT
    reply_model = JudgeReply

    def request(self, model: str, *, module_name: str, python_code: str, solution: str) -> LLMRequest:  # type: ignore[override]
        return super().request(model, module_name=module_name, python_code=python_code, solution=solution)

    def parse(self, reply: str, request: LLMRequest) -> dict[str, Any]:
        return parse_judge_reply(reply).model_dump()


JUDGE_TASK = JudgeTask()
