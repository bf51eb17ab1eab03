"""A malformed .env: one warning naming the lines, or a stop when a line sets our variable."""

from __future__ import annotations

import json
import logging
import os

import pytest

from kernelbook_lib import settings
from kernelbook_lib.errors import UserError


def write_env(tmp_path, text: str, monkeypatch):
    path = tmp_path / ".env"
    path.write_text(text)
    monkeypatch.setenv("KERNELBOOK_ENV_FILE", str(path))
    return path


def test_unparsable_lines_that_set_nothing_we_read_are_one_warning(tmp_path, monkeypatch):
    path = write_env(tmp_path, "# keys\nPRIME_API_KEY=\nmy notes here\nJUDGE_MODEL=m\n= oops\n", monkeypatch)
    check = settings.check_env_file()
    assert check.unparsable_lines == (3, 5)
    assert check.warning() == f"{path}: lines 3, 5 cannot be parsed (expected NAME=value) and set no variable this project reads; they are ignored"
    assert settings.load_settings().judge_model == "m"  # the rest is read


@pytest.mark.parametrize(
    "line",
    ["LLM_BASE_URL: https://my.host/v1", "LLM_BASE_URL='https://my.host/v1", "export HF_TOKEN hf_secret", 'PREFECT_API_URL="http://my.host" y'],
)
def test_an_unparsable_line_setting_a_known_variable_is_an_error_that_never_quotes_it(tmp_path, monkeypatch, line):
    path = write_env(tmp_path, f"PRIME_API_KEY=\n{line}\n", monkeypatch)
    with pytest.raises(UserError) as err:
        settings.check_env_file()
    name = line.split()[1] if line.startswith("export") else line.split(":")[0].split("=")[0].strip()
    assert str(err.value).startswith(f"{path}: line 2 sets {name} but cannot be parsed")
    assert "my.host" not in str(err.value) and "hf_secret" not in str(err.value)
    assert err.value.exit_code == 2


def test_a_base_url_that_swallowed_the_next_lines_is_refused(tmp_path, monkeypatch):
    """An unclosed quote makes python-dotenv read the following lines into the value."""
    write_env(tmp_path, 'LLM_BASE_URL="https://my.host/v1\nJUDGE_MODEL=x"\n', monkeypatch)
    assert settings.check_env_file().unparsable_lines == ()
    with pytest.raises(UserError, match="LLM_BASE_URL: .*http\\(s\\) URL"):
        settings.load_settings()


def test_the_warning_is_given_once_per_process_and_dotenv_repeats_are_silenced(tmp_path, monkeypatch, caplog):
    write_env(tmp_path, "PRIME_API_KEY=\nnot a variable\n", monkeypatch)
    monkeypatch.setattr(settings, "_silenced", False)
    monkeypatch.setattr(settings, "_warned", set())
    monkeypatch.setenv("UVICORN_LOG_CONFIG", "placeholder")
    monkeypatch.delenv("UVICORN_LOG_CONFIG")  # restored to unset after the test
    check = settings.check_env_file()
    assert settings.env_file_warning_once(check) is not None
    assert settings.env_file_warning_once(settings.check_env_file()) is None
    caplog.set_level(logging.WARNING, logger="dotenv.main")
    for _ in range(3):
        settings.load_settings()
    assert "could not parse" not in caplog.text
    # Prefect's temporary server (python -m uvicorn) gets uvicorn's logging plus a quiet dotenv.
    config = json.loads(open(os.environ["UVICORN_LOG_CONFIG"]).read())
    assert config["loggers"]["dotenv.main"] == {"level": "ERROR"} and "uvicorn.error" in config["loggers"]
