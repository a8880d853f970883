"""The root keeps its connections to the node stores from one recovery's plan to the next
(``StoreLinks``): a connection per question cost a connect, a handshake and a thread in the
store, milliseconds of every failure's downtime on a loaded host. A kept connection that broke
is made once anew; a store that is gone is an answer the plan reads as a lost node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from real.agent.root import StoreLinks
from real.engine.protocol import make_token
from real.engine.store import NodeStore


@pytest.fixture
def counted(tmp_path: Path) -> Iterator[tuple[NodeStore, list[Any]]]:
    """A node store that counts the connections it serves."""
    store = NodeStore(0, TOKEN, shm_dir=tmp_path)
    served: list[Any] = []
    serve = store._serve

    def counting(conn: Any, peer: Any) -> None:
        served.append(peer)
        serve(conn, peer)

    store._serve = counting  # type: ignore[method-assign]
    store.start()
    try:
        yield store, served
    finally:
        store.stop()


TOKEN = make_token()


@pytest.fixture
def links() -> Iterator[StoreLinks]:
    made = StoreLinks(TOKEN, timeout_s=2.0)
    yield made
    made.close()


def test_plans_ask_each_store_over_one_kept_connection(counted: Any, links: StoreLinks) -> None:
    store, served = counted
    for _ in range(3):
        assert links.holdings(0, store.address, False) == {}
    assert len(served) == 1


def test_a_kept_connection_the_store_closed_is_made_anew(counted: Any, links: StoreLinks) -> None:
    store, served = counted
    assert links.holdings(0, store.address, False) == {}
    with store.lock:  # the store drops every client (as a store restarting would)
        for conn in list(store._connections):
            conn.shutdown(2)
    assert links.holdings(0, store.address, False) == {}
    assert len(served) == 2


def test_a_store_gone_is_an_answer_not_an_exception(counted: Any, links: StoreLinks) -> None:
    store, _ = counted
    assert links.holdings(0, store.address, False) == {}
    store.stop()
    assert isinstance(links.holdings(0, store.address, False), OSError)
    assert isinstance(links.holdings(0, store.address, False), OSError)  # none kept


def test_keep_closes_the_connections_of_stores_no_longer_asked(
    counted: Any, links: StoreLinks
) -> None:
    store, served = counted
    links.holdings(0, store.address, False)
    links.keep(set())
    links.holdings(0, store.address, False)
    assert len(served) == 2
