"""Settings from the environment or ``.env`` (pydantic-settings). Secrets are ``SecretStr``.

Only the library reads these; tasks load them inside the task body, so neither the settings
object nor a key is ever a Prefect parameter or a persisted result.

A malformed ``.env`` is checked once, at the start of a run (:func:`check_env_file`): a line
that sets one of these variables (or a ``PREFECT_*`` one) but cannot be parsed stops the run
(python-dotenv would skip it and the default would silently apply: an unparsable
``LLM_BASE_URL`` would send the key to the default endpoint); other unparsable lines give one
warning naming the file and the line numbers. python-dotenv warns about every unparsable line
each time anything reads the file, and Prefect reads ``.env`` for its own settings hundreds of
times per run, in this process and in its temporary server: after the one warning, those
repeats are silenced (:func:`silence_dotenv_repeats`).
"""

from __future__ import annotations

import atexit
import io
import json
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kernelbook_lib.errors import UserError

DEFAULT_BASE_URL = "https://api.pinference.ai/api/v1"
DEFAULT_MODEL = "openai/gpt-5.2"


class Settings(BaseSettings):
    """Every variable is documented in ``.env.example``."""

    # Empty values (``KEY=`` in .env.example) mean "not set".
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    # The OpenAI-compatible endpoint (Prime Intellect by default).
    llm_base_url: str = DEFAULT_BASE_URL
    prime_api_key: SecretStr | None = None
    prime_team_id: str | None = None
    judge_model: str = DEFAULT_MODEL
    #: A panel of judges, comma-separated (``--judge-model`` repeated wins); unset: JUDGE_MODEL alone.
    judge_models: str | None = None
    generator_model: str = DEFAULT_MODEL
    llm_concurrency: int = Field(default=64, ge=1, le=4096)
    llm_timeout_s: float = Field(default=180.0, gt=0)
    llm_retries: int = Field(default=4, ge=0, le=20)
    #: Delay before the first retry of a failed call, in seconds; it doubles on every retry
    #: (Prefect's exponential backoff, with jitter). A longer Retry-After is honoured.
    llm_retry_backoff_s: float = Field(default=2.0, ge=0, le=600)
    #: The Prefect global concurrency limit that caps requests in flight (created if missing,
    #: with the value LLM_CONCURRENCY; a value an operator set on a Prefect server wins).
    llm_concurrency_limit_name: str = Field(default="kernelbook-llm", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    #: A prompt longer than this is not sent (the row is recorded, never truncated).
    llm_max_prompt_chars: int = Field(default=200_000, ge=1000)
    #: Request parameters, each sent only when set (docs/llm.md, "Request parameters"): the
    #: reply's token budget, sent as ``max_completion_tokens`` (OpenAI's current name) or, with
    #: LLM_TOKEN_PARAMETER=max_tokens, under the old name; the reasoning effort; the temperature.
    llm_max_completion_tokens: int | None = Field(default=None, ge=1)
    llm_token_parameter: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    llm_reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    llm_temperature: float | None = Field(default=None, ge=0, le=2)
    #: Rate limits across every run on the Prefect server (unset: none): Prefect global
    #: concurrency limits with slot decay (docs/llm.md, "Rate limits").
    llm_max_requests_per_minute: int | None = Field(default=None, ge=1)
    llm_max_tokens_per_minute: int | None = Field(default=None, ge=1)
    #: Hedged requests (off when unset): a call still unanswered after this quantile of the
    #: latencies seen so far in the run gets a second copy on a spare slot; the first answer
    #: wins (docs/llm.md, "Hedged requests").
    llm_hedge_after_quantile: float | None = Field(default=None, gt=0, lt=1)
    #: Optional prices in USD per million tokens, for the cost estimate.
    llm_price_input_per_mtok: float | None = Field(default=None, ge=0)
    llm_price_output_per_mtok: float | None = Field(default=None, ge=0)
    #: Price of prompt tokens the provider served from its prompt cache (default: the input price).
    llm_price_cached_input_per_mtok: float | None = Field(default=None, ge=0)
    #: How the LLM stages send their requests when --llm-mode is not given: online (one call
    #: per request, now) or batch (the provider's Batch API; docs/llm.md, "Batch mode").
    llm_mode: Literal["online", "batch"] = "online"
    #: Requests per batch and bytes per batch input file: OpenAI's documented limits are
    #: 50,000 requests and 200 MB per file; a larger job is split into several batches.
    llm_batch_max_requests: int = Field(default=50_000, ge=1, le=50_000)
    llm_batch_max_bytes: int = Field(default=200_000_000, ge=4096, le=200_000_000)
    #: Batch prices as a share of the online prices (OpenAI bills batches at half price).
    llm_batch_price_factor: float = Field(default=0.5, ge=0, le=1)
    #: Seconds between two status checks of the batches a run waits for.
    llm_batch_poll_s: float = Field(default=30.0, gt=0, le=3600)
    #: Where LLM results are cached (judge and prompt generator).
    kernelbook_cache_dir: Path = Path(".kernelbook-cache")
    #: Progress of long stages: a live display on a terminal, plain periodic lines otherwise.
    kernelbook_progress: Literal["auto", "live", "plain"] = "auto"

    # Hugging Face Hub publishing.
    hf_token: SecretStr | None = None
    hf_filtered_repo: str | None = None
    hf_unique_repo: str | None = None
    hf_synthetic_repo: str | None = None

    @field_validator("llm_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # A value that swallowed the next lines (an unclosed quote in .env) or lost its scheme
        # would send the key somewhere the user did not choose: refuse it.
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in value):
            raise ValueError("must be an http(s) URL without spaces or line breaks, e.g. https://api.pinference.ai/api/v1")
        return value

    @property
    def has_llm_key(self) -> bool:
        return self.prime_api_key is not None and bool(self.prime_api_key.get_secret_value().strip())


def env_file_path() -> Path:
    """The ``.env`` the settings read: ``KERNELBOOK_ENV_FILE`` (the tests point it at nothing) or ``.env``."""
    return Path(os.environ.get("KERNELBOOK_ENV_FILE", ".env"))


def load_settings() -> Settings:
    """Read the settings; a bad value is a :class:`UserError` naming the variable, never the value."""
    try:
        return Settings(_env_file=env_file_path())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise UserError(f"invalid configuration (environment or .env): {problems}") from None


# --- the .env file, checked once per run ---------------------------------------------------

#: What python-dotenv logs (logger ``dotenv.main``) for every unparsable line, on every read.
_DOTENV_LOGGER = "dotenv.main"
_DOTENV_PARSE_WARNING = "python-dotenv could not parse statement"
_LINE_NAME = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)")


def known_variables() -> frozenset[str]:
    """The variables this project reads (``.env.example`` lists them)."""
    return frozenset(name.upper() for name in Settings.model_fields)


@dataclass(frozen=True)
class EnvFileCheck:
    path: Path
    #: Lines python-dotenv cannot parse that set none of our variables (skipped, with a warning).
    unparsable_lines: tuple[int, ...] = ()

    def warning(self) -> str | None:
        if not self.unparsable_lines:
            return None
        lines = ", ".join(str(n) for n in self.unparsable_lines)
        return (
            f"{self.path}: line{'s' if len(self.unparsable_lines) > 1 else ''} {lines} cannot be parsed "
            "(expected NAME=value) and set no variable this project reads; they are ignored"
        )


def check_env_file(path: Path | None = None) -> EnvFileCheck:
    """Parse ``path`` (default :func:`env_file_path`) the way python-dotenv does, once.

    Raises :class:`UserError` (exit code 2) naming the line and the variable when a line that
    sets a known variable (or a ``PREFECT_*`` one) cannot be parsed; never quotes the line (it
    may hold a key). Returns the other unparsable lines, for one warning."""
    from dotenv.parser import parse_stream

    path = env_file_path() if path is None else Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return EnvFileCheck(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    known = known_variables()
    fatal: list[str] = []
    ignored: list[int] = []
    for binding in parse_stream(io.StringIO(text)):
        if not binding.error:
            continue
        line = binding.original.line
        match = _LINE_NAME.match(binding.original.string)
        name = match.group(1).upper() if match else ""
        if name in known or name.startswith("PREFECT_"):
            fatal.append(f"line {line} sets {name}")
        else:
            ignored.append(line)
    if fatal:
        raise UserError(
            f"{path}: {'; '.join(fatal)} but cannot be parsed (expected NAME=value, with a value "
            "containing spaces, '#' or quotes in matching quotes); fix the line: without it the "
            "default would be used silently"
        )
    return EnvFileCheck(path, tuple(ignored))


def silence_dotenv_repeats_if_unparsable() -> None:
    """Before ``import prefect`` (``tasks/__init__.py``): Prefect's settings read ``.env`` in the
    working directory hundreds of times while it is imported, each read repeating python-dotenv's
    warning for every unparsable line. If there is one, silence those repeats now; the run's
    preflight (:func:`kernelbook_lib.params.preflight`) reports the lines once, or stops the run."""
    from dotenv.parser import parse_stream

    for path in {env_file_path(), Path(".env")}:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if any(binding.error for binding in parse_stream(io.StringIO(text))):
            silence_dotenv_repeats()
            return


_warned: set[tuple[str, tuple[int, ...]]] = set()
_warned_lock = threading.Lock()


def env_file_warning_once(check: EnvFileCheck) -> str | None:
    """The check's warning the first time this process sees it (a run and its subflows, the CLI
    and its flow, say it once), and silence python-dotenv's own repeats from then on."""
    message = check.warning()
    if message is None:
        return None
    silence_dotenv_repeats()
    key = (str(check.path.absolute()), check.unparsable_lines)
    with _warned_lock:
        if key in _warned:
            return None
        _warned.add(key)
    return message


class _DropDotenvParseWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_DOTENV_PARSE_WARNING)


_silenced = False


def silence_dotenv_repeats() -> None:
    """Drop python-dotenv's per-read "could not parse statement" warnings in this process and in
    the temporary Prefect server it may start (once the run has said it, once). Idempotent.

    The server is ``python -m uvicorn`` (Prefect's ``SubprocessASGIServer``), which applies the
    logging configuration named by ``UVICORN_LOG_CONFIG`` before it imports Prefect: uvicorn's
    own default configuration plus the dotenv logger at ERROR. A value the user set wins."""
    global _silenced
    with _warned_lock:
        if _silenced:
            return
        _silenced = True
    logging.getLogger(_DOTENV_LOGGER).addFilter(_DropDotenvParseWarnings())
    if "UVICORN_LOG_CONFIG" in os.environ:
        return
    try:
        from uvicorn.config import LOGGING_CONFIG
    except ImportError:  # no uvicorn, no temporary server
        return
    config = json.loads(json.dumps(LOGGING_CONFIG))
    config.setdefault("loggers", {})[_DOTENV_LOGGER] = {"level": "ERROR"}
    fd, name = tempfile.mkstemp(prefix="kernelbook-uvicorn-log-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(config, handle)
    atexit.register(lambda: Path(name).unlink(missing_ok=True))
    os.environ["UVICORN_LOG_CONFIG"] = name
