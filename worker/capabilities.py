"""The worker's side of `service.jobs.capabilities`: publish what its loaded pipeline's model
can run (its TTO scope), so that the API refuses a scope no worker has."""

from __future__ import annotations

import logging

import redis

from service.jobs import JobStore
from service.jobs.capabilities import publish
from worker.pipeline import Pipeline

log = logging.getLogger(__name__)


def publish_pipeline(store: JobStore, worker_id: str, pipeline: Pipeline) -> None:
    """Publish `pipeline`'s TTO scope; nothing for a pipeline without a model (echo)."""
    checkpoint = getattr(pipeline, "ckpt", None)
    scope = getattr(checkpoint, "tto_scope", None)
    if scope is None:
        return
    try:
        publish(store, worker_id, [str(scope)])
    except redis.RedisError as exc:  # the worker still runs; the API just cannot pre-check
        log.warning("could not publish the model's capabilities: %s", exc)
