"""Settings come from METAHMR_* variables, are checked at once, and say what is wrong."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.config import Settings, get_settings


def test_settings_read_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAHMR_MAX_UPLOAD_MB", "2.5")
    monkeypatch.setenv("METAHMR_API_KEYS", "alpha, beta")
    monkeypatch.setenv("METAHMR_REDIS_URL", "redis://cache:6379/1")
    settings = get_settings()
    assert settings.max_upload_bytes == int(2.5 * 1024 * 1024)
    assert settings.api_keys == ["alpha", "beta"]
    assert settings.broker_url == "redis://cache:6379/1"


def test_api_keys_accept_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAHMR_API_KEYS", '["k1", "k,2"]')
    assert get_settings().api_keys == ["k1", "k,2"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("METAHMR_MAX_UPLOAD_MB", "-1"),
        ("METAHMR_MAX_PIXELS", "0"),
        ("METAHMR_REDIS_URL", "http://localhost"),
        ("METAHMR_RATE_LIMIT_PER_MIN", "many"),
        ("METAHMR_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_values_fail_at_start(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as exc:
        get_settings()
    field = name.removeprefix("METAHMR_").lower()
    assert field in str(exc.value) or name in str(exc.value)


def test_unix_socket_url_becomes_a_kombu_socket_url() -> None:
    settings = Settings(redis_url="unix:///tmp/x/redis.sock")
    assert settings.broker_url == "redis+socket:///tmp/x/redis.sock"


def test_missing_redis_url_says_how_to_get_one() -> None:
    with pytest.raises(RuntimeError, match="metahmr serve"):
        Settings(redis_url=None).require_redis_url()


def test_min_side_above_max_side_is_refused() -> None:
    with pytest.raises(ValidationError, match="MIN_IMAGE_SIDE"):
        Settings(min_image_side=100, max_image_side=50)
