"""Write the empty Prefect database template for the installed Prefect version.

A new PREFECT_HOME needs a database: Prefect creates it by running its 115 Alembic migrations,
about 12 s of CPU, the largest part of a first run. A CLI run creates it instead from the SQL
this writes (``tasks/prefect_db/prefect-<version>.sql``: what those migrations produce, as an
SQLite dump), in milliseconds; see ``tasks.prefect_internals.seed_prefect_database``.
``tests/tasks/test_runtime.py`` checks the template against Prefect's own migrations.

Run it after upgrading Prefect (the old version's file can go):

    uv run python scripts/prefect_db_template.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIGRATE = "import asyncio; from prefect.server.database import provide_database_interface; asyncio.run(provide_database_interface().create_db())"


def migrate(home: Path) -> Path:
    """Create ``home/prefect.db`` with Prefect's own migrations (a process of its own, no
    Prefect settings but ``PREFECT_HOME``); returns its path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(home)
    subprocess.run([sys.executable, "-c", MIGRATE], env=env, check=True)
    return Path(home) / "prefect.db"


def main() -> None:
    from tasks.prefect_internals import database_dump, template_path

    with tempfile.TemporaryDirectory(prefix="prefect-db-template-") as home:
        dump = database_dump(migrate(Path(home)))
    target = template_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(dump)
    print(f"wrote {target.relative_to(ROOT)} ({len(dump):,} characters)")


if __name__ == "__main__":
    main()
