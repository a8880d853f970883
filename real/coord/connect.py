"""Connecting to the coordination kv store by URL: ``connect_kv`` picks the backend.

Its own module, so that the interface (``real.coord.kv``) and the two backends
(``real.coord.etcd_kv``, ``real.coord.embedded_kv``) import only downwards."""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from real.coord.kv import KeyValueStore, job_token, parse_kv_url


def import_kv_client(url: str) -> None:
    """Import the client modules of the store at ``url`` now. A node agent does so before its
    background imports (torch, the persistent tier) begin: two threads importing the same
    modules at once (``multiprocessing``, through etcd's client and through torch) can hand
    one of them a partially initialised module, and an agent died of it as it started
    (``AttributeError: partially initialized module 'multiprocessing.context'``, once in a CI
    run)."""
    etcd = parse_kv_url(url)[0] in ("etcd", "etcds")
    importlib.import_module("real.coord.etcd_kv" if etcd else "real.coord.embedded_kv")


def connect_kv(url: str, *, timeout_s: float = 5.0, token: str | None = None) -> KeyValueStore:
    """A client of the store at ``url``.

    Args:
        url: ``etcd://[USER@]HOST:PORT[/NAMESPACE]`` (etcd's HTTP gateway; ``etcds://``: over
            TLS; with a user: authenticated, see :mod:`real.coord.etcd_kv`) or
            ``tcpstore://HOST:PORT[/NAMESPACE]`` (an embedded store process, see
            :class:`~real.coord.kvserver.StoreServer`).
        timeout_s: how long one operation may take before :class:`KVError`.
        token: the job's secret (default: ``GEMINI_TOKEN``): the embedded store's key, and
            etcd's password source when no password is configured.

    Raises:
        ValueError: the URL is malformed, or a secret it needs is not set.
        KVError: nothing answers at the URL, or it refused our credentials, or it could not
            prove it belongs to the job (embedded store).
    """
    scheme, host, port, namespace = parse_kv_url(url)
    if scheme in ("etcd", "etcds"):
        from real.coord.etcd_kv import EtcdKV, etcd_options

        options = etcd_options(urlsplit(url).username, tls=scheme == "etcds", token=token)
        return EtcdKV(host, port, namespace=namespace, timeout_s=timeout_s, options=options)
    from real.coord.embedded_kv import EmbeddedKV

    return EmbeddedKV(host, port, namespace=namespace, timeout_s=timeout_s, token=job_token(token))
