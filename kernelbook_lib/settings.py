"""Settings from the environment or ``.env`` (pydantic-settings). Secrets are ``SecretStr``.

Only the library reads these; tasks load them inside the task body, so neither the settings
object nor a key is ever a Prefect parameter or a persisted result.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
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
    #: Optional prices in USD per million tokens, for the cost estimate.
    llm_price_input_per_mtok: float | None = Field(default=None, ge=0)
    llm_price_output_per_mtok: float | None = Field(default=None, ge=0)
    #: Price of prompt tokens the provider served from its prompt cache (default: the input price).
    llm_price_cached_input_per_mtok: float | None = Field(default=None, ge=0)
    #: Where LLM results are cached (judge and prompt generator).
    kernelbook_cache_dir: Path = Path(".kernelbook-cache")
    #: Progress of long stages: a live display on a terminal, plain periodic lines otherwise.
    kernelbook_progress: Literal["auto", "live", "plain"] = "auto"

    # Hugging Face Hub publishing.
    hf_token: SecretStr | None = None
    hf_filtered_repo: str | None = None
    hf_unique_repo: str | None = None
    hf_synthetic_repo: str | None = None

    @property
    def has_llm_key(self) -> bool:
        return self.prime_api_key is not None and bool(self.prime_api_key.get_secret_value().strip())


def load_settings() -> Settings:
    """Read the settings; a bad value is a :class:`UserError` naming the variable, never the value."""
    try:
        # KERNELBOOK_ENV_FILE points at another .env (the tests point it at nothing).
        return Settings(_env_file=os.environ.get("KERNELBOOK_ENV_FILE", ".env"))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise UserError(f"invalid configuration (environment or .env): {problems}") from None
