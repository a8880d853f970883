"""An in-process key-value store without leases, for tests of the agents' bookkeeping (what
the injector and the root write), where a store server would only add time."""

from __future__ import annotations

from real.coord.kv import KeyValueStore, Lease


class DictKV(KeyValueStore):
    """An in-process key-value store without leases (what the injector writes to)."""

    url = "memory://"

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, v in self.data.items() if k.startswith(prefix)}

    def put(self, key: str, value: bytes, lease: Lease | None = None) -> None:
        self.data[key] = value

    def create(self, key: str, value: bytes, lease: Lease | None = None) -> bool:
        return self.data.setdefault(key, value) is value

    def replace(self, key: str, expected: bytes | None, value: bytes) -> bool:
        if self.data.get(key) != expected:
            return False
        self.data[key] = value
        return True

    def put_guarded(self, key: str, value: bytes, guard: str, held: bytes) -> bool:
        if self.data.get(guard) != held:
            return False
        self.data[key] = value
        return True

    def delete_guarded(self, key: str, guard: str, held: bytes, *, prefix: bool = False) -> bool:
        if self.data.get(guard) != held:
            return False
        self.delete(key, prefix=prefix)
        return True

    def delete(self, key: str, *, prefix: bool = False) -> int:
        doomed = [k for k in self.data if k == key or (prefix and k.startswith(key))]
        for k in doomed:
            del self.data[k]
        return len(doomed)

    def grant_lease(self, ttl_s: float) -> Lease:
        raise NotImplementedError
