"""What the live workers' models can run, published by each worker once its pipeline is
loaded, so that the API (no torch, no model) can refuse options that no worker could run.

Layout: hash ``models`` (under the store's prefix): worker id -> JSON ``{"tto_scopes": [..]}``.
An entry counts only while its worker's heartbeat is fresh; dead workers' entries are
dropped when read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from service.jobs.store import JobStore


def _key(store: JobStore) -> str:
    return f"{store.prefix}models"


def publish(store: JobStore, worker_id: str, tto_scopes: Sequence[str]) -> None:
    """Record the TTO scopes `worker_id`'s model can run."""
    store.client.hset(_key(store), worker_id, json.dumps({"tto_scopes": sorted(tto_scopes)}))


def live_tto_scopes(store: JobStore) -> set[str] | None:
    """The TTO scopes some live worker can run; None when unknown (no live worker, or one
    that published nothing, e.g. the diagnostics pipeline): the API then lets the job
    through and the worker decides."""
    live = store.live_worker_ids()
    raw: dict[bytes, bytes] = store.client.hgetall(_key(store))  # type: ignore[assignment]
    entries = {k.decode(): json.loads(v) for k, v in raw.items()}
    dead = [w for w in entries if w not in live]
    if dead:
        store.client.hdel(_key(store), *dead)
    if not live or any(w not in entries for w in live):
        return None
    return {scope for w in live for scope in entries[w].get("tto_scopes", [])}
