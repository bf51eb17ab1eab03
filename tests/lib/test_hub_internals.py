"""The huggingface_hub internals ``kernelbook_lib/hub_internals.py`` relies on still work as it
assumes. An upgrade that removes or changes one fails here, naming the symbol."""

from __future__ import annotations

import httpx2

from kernelbook_lib import hub, hub_internals


def test_default_client_factory_makes_the_librarys_client():
    """Symbol: huggingface_hub.utils._http.default_client_factory, used by hub.hub_timeout."""
    from huggingface_hub.utils import _http

    assert callable(_http.default_client_factory)
    client = hub_internals.default_client()
    assert isinstance(client, httpx2.Client)
    client.close()


def test_hub_timeout_sets_a_timeout_and_gives_the_default_factory_back():
    from huggingface_hub.utils import _http, get_session

    with hub.hub_timeout(3.5):
        assert get_session().timeout.read == 3.5
    after = get_session()
    assert after.timeout.read != 3.5
    assert callable(_http.default_client_factory)
