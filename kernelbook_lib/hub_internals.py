"""Every place this project leans on a ``huggingface_hub`` interface that is not public API (the
twin of ``tasks/prefect_internals.py``, here because the Hub code lives in ``kernelbook_lib``).

Each item names what it relies on; ``tests/lib/test_hub_internals.py`` checks each one against the
installed ``huggingface_hub``, so an upgrade that removes or changes one fails that test, naming
the symbol, instead of misbehaving at run time.
"""

from __future__ import annotations

from typing import Any


# --- 1. The default HTTP client ----------------------------------------------------------------
# Relies on: `huggingface_hub.utils._http.default_client_factory`, the factory of the client the
# library uses when no other is set (it adds the offline-mode check and request ids). The public
# `set_client_factory` replaces the factory, and there is no public way to get the default back
# to build on it: kernelbook_lib/hub.py wraps it to add a timeout.


def default_client() -> Any:
    """A client as ``huggingface_hub`` makes by default (an ``httpx2.Client``); also a client
    factory to give back to ``set_client_factory``."""
    from huggingface_hub.utils._http import default_client_factory

    return default_client_factory()
