"""The worker's settings read the same METAHMR_* variables as the API's for what they share
(Redis, queue, result TTL, logging), with the same defaults and checks, without importing
the service's settings class."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.config import Settings
from worker.config import WorkerSettings, get_worker_settings

SHARED = ("redis_url", "queue_name", "result_ttl_s", "log_json", "log_level")


def test_shared_fields_have_the_api_names_and_defaults() -> None:
    assert not issubclass(WorkerSettings, Settings)
    for name in SHARED:
        assert name in Settings.model_fields, name
        assert getattr(WorkerSettings(), name) == getattr(Settings(), name), name


def test_one_environment_configures_api_and_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"METAHMR_REDIS_URL": "unix:///run/redis.sock", "METAHMR_QUEUE_NAME": "gpu",
           "METAHMR_RESULT_TTL_S": "60", "METAHMR_LOG_JSON": "false", "METAHMR_LOG_LEVEL": "debug"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("METAHMR_MAX_BATCH", "4")
    worker, api = get_worker_settings(), Settings()
    assert {n: getattr(worker, n) for n in SHARED} == {n: getattr(api, n) for n in SHARED}
    assert worker.log_level == "DEBUG" and worker.max_batch == 4
    assert worker.broker_url == api.broker_url == "redis+socket:///run/redis.sock"


@pytest.mark.parametrize(
    ("name", "value"), [("METAHMR_REDIS_URL", "http://cache"), ("METAHMR_LOG_LEVEL", "LOUD"),
                        ("METAHMR_QUEUE_NAME", ""), ("METAHMR_RESULT_TTL_S", "0")],
)  # fmt: skip
def test_bad_shared_values_are_refused_by_both(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("METAHMR_").lower()) as worker:
        get_worker_settings()
    with pytest.raises(ValidationError) as api:
        Settings()
    assert str(worker.value).split("\n")[2] == str(api.value).split("\n")[2]  # same message


def test_missing_redis_url_says_how_to_get_one() -> None:
    with pytest.raises(RuntimeError, match="metahmr serve"):
        WorkerSettings(redis_url=None).require_redis_url()
