"""Library functions wrapped as Prefect tasks.

Importing this package first configures Prefect's environment (before anything imports
prefect), so every ``import tasks.x`` / ``import flows.x`` gets a quiet, reliable local mode.
"""

from tasks.runtime import configure_prefect_env

configure_prefect_env()

from kernelbook_lib.settings import silence_dotenv_repeats_if_unparsable  # noqa: E402  (after the environment is set)

silence_dotenv_repeats_if_unparsable()  # Prefect reads .env hundreds of times at import
