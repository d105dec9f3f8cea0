"""Video uploads at the edge: the container check (no decoding), limits from settings, and
POST /recover queueing a video job whose record says it is one."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.jobs import JobStore
from service.uploads import UploadError
from service.video import VideoLimits, check_video, sniff_video

pytest.importorskip("av")  # the tests make their videos with PyAV (the worker extra)
from broker_checks import broker_messages

from training.synth.motion import encode_video  # noqa: E402

LIMITS = VideoLimits(max_bytes=10**7, max_seconds=20.0, max_frames=900, max_pixels=10**6)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (15, 48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def videos(frames: np.ndarray) -> dict[str, bytes]:
    return {c: encode_video(frames, 30.0, c) for c in ("mp4", "mov", "webm")}


def test_containers_are_known_by_their_first_bytes(videos: dict[str, bytes]) -> None:
    assert {c: sniff_video(v) for c, v in videos.items()} == {"mp4": "mp4", "mov": "mov", "webm": "webm"}
    assert sniff_video(b"\xff\xd8\xff\xe0 a jpeg") is None
    assert sniff_video(b"") is None


def test_mp4_header_gives_size_and_duration(videos: dict[str, bytes]) -> None:
    for container in ("mp4", "mov"):
        checked = check_video(videos[container], LIMITS)
        assert (checked.format, checked.width, checked.height) == (container, 64, 48)
        assert checked.duration_s == pytest.approx(0.5, abs=0.04)
        meta = checked.meta()
        assert meta["kind"] == "video" and meta["limits"]["max_frames"] == 900
    webm = check_video(videos["webm"], LIMITS)  # EBML: the worker measures it
    assert webm.width is None and webm.duration_s is None


@pytest.mark.parametrize(
    ("cut", "limits", "status", "code"),
    [
        ("half", LIMITS, 422, "corrupt_video"),
        ("header", LIMITS, 422, "corrupt_video"),
        ("no-moov", LIMITS, 422, "corrupt_video"),
        (None, VideoLimits(10**7, 0.25, 900, 10**6), 413, "video_too_long"),
        (None, VideoLimits(10**7, 20.0, 900, 64 * 47), 413, "too_many_pixels"),
        (None, VideoLimits(1000, 20.0, 900, 10**6), 413, "upload_too_large"),
    ],
)
def test_bad_mp4s_are_refused(videos: dict[str, bytes], cut, limits, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    data = videos["mp4"]
    if cut == "half":
        data = data[: len(data) // 2]
    elif cut == "header":
        data = data[:36]  # ftyp + 4 bytes of the next box's header
    elif cut == "no-moov":
        ftyp = struct.unpack(">I", data[:4])[0]
        data = data[:ftyp] + struct.pack(">I4s", 16, b"free") + bytes(8)
    with pytest.raises(UploadError) as err:
        check_video(data, limits)
    assert (err.value.status, err.value.code) == (status, code), err.value.message


def _post(api: TestClient, data: bytes, options: dict | None = None):  # type: ignore[no-untyped-def]
    extra = {"data": {"options": json.dumps(options)}} if options is not None else {}
    return api.post("/recover", files={"image": ("clip.mp4", data, "video/mp4")}, **extra)


def test_a_video_is_queued_as_a_video_job(api: TestClient, store: JobStore, videos: dict[str, bytes]) -> None:
    for container, data in videos.items():
        response = _post(api, data, {"video": {"one_euro": {"enabled": True}}})
        assert response.status_code == 202, response.text
        record = store.get(response.json()["job_id"])
        assert record is not None
        assert record.image["kind"] == "video" and record.image["format"] == container
        assert record.options["video"]["one_euro"]["enabled"] is True
        assert store.image(record.job_id) == data


def test_bad_videos_get_clear_4xx(
    make_client: Callable[..., TestClient], store: JobStore, videos: dict[str, bytes]
) -> None:
    api = make_client(max_video_s=0.25)
    depth = broker_messages(store.client, "metahmr")
    cases = [
        (videos["mp4"], None, 413, "video_too_long"),
        (videos["mp4"][:-500], None, 422, "corrupt_video"),
        (videos["webm"], {"people": [{"bbox": [0, 0, 10, 10]}]}, 422, "invalid_options"),
        (videos["webm"], {"video": {"temporal": {"window": 1}}}, 422, "invalid_options"),
        (b"\x00\x00\x00\x10ftypisom" + b"\x00" * 4, None, 422, "corrupt_video"),
    ]
    for data, options, status, code in cases:
        response = _post(api, data, options)
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
    assert broker_messages(store.client, "metahmr") == depth


def test_video_limits_come_from_settings(make_client: Callable[..., TestClient], videos: dict[str, bytes]) -> None:
    small = make_client(max_video_mb=0.001)
    response = _post(small, videos["mp4"])
    assert response.status_code == 413 and response.json()["error"]["code"] == "upload_too_large"
