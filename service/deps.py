"""Request dependencies: app state, API-key auth + rate limit, and upload validation.

Each check raises `ApiError`, which the app turns into `{"error": {"code", "message"}}`.
The order matters: who is calling (cheap) before reading a body, options (cheap) before
decoding the image.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service.config import Settings
from service.contract import RecoverOptions, format_validation_error
from service.jobs import JobRecord, JobStore
from service.jobs.capabilities import live_tto_scopes
from service.metrics import ApiMetrics
from service.queue import TaskQueue
from service.schemas import check_against_image
from service.uploads import CheckedImage, ImageLimits, UploadError, check_image
from service.video import CheckedVideo, VideoLimits, check_video, sniff_video

# Room for the `options` part and multipart framing on top of the image limit.
OPTIONS_MAX_BYTES = 1024 * 1024
FORM_PARTS = ("image", "options")
FORM_MAX_PARTS = 8


def clip(text: str, limit: int = 40) -> str:
    """`text` for an error message: a client's long string is cut, never echoed in full."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class AppState:
    settings: Settings
    store: JobStore
    queue: TaskQueue
    metrics: ApiMetrics

    @property
    def limits(self) -> ImageLimits:
        s = self.settings
        return ImageLimits(s.max_upload_bytes, s.max_pixels, s.min_image_side, s.max_image_side)

    @property
    def video_limits(self) -> VideoLimits:
        s = self.settings
        return VideoLimits(
            int(s.max_video_mb * 1024 * 1024), s.max_video_s, s.max_video_frames, s.max_video_pixels
        )


def get_state(request: Request) -> AppState:
    return request.app.state.metahmr  # type: ignore[no-any-return]


StateDep = Annotated[AppState, Depends(get_state)]
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


@dataclass(frozen=True)
class Caller:
    """Who is calling. `owner`: a keyed hash of its API key (None when no keys are
    configured), stored with the jobs it creates and compared on every read of them; never
    the key itself. `rate_key`: what its submissions are counted by."""

    owner: str | None
    rate_key: str

    def may_see(self, record: JobRecord) -> bool:
        """A job with an owner is its owner's alone; one created without keys is anyone's."""
        if record.owner is None:
            return True
        return self.owner is not None and hmac.compare_digest(self.owner, record.owner)


def owner_id(api_key: str, salt: bytes) -> str:
    """A stable id of an API key that does not reveal it: HMAC-SHA256 keyed by the store's
    random salt, so even a short key cannot be found from a job record by hashing guesses."""
    return "key:" + hmac.new(salt, api_key.encode(), hashlib.sha256).hexdigest()[:32]


def authenticate(
    state: StateDep, request: Request, api_key: Annotated[str | None, Depends(_api_key_header)]
) -> Caller:
    """The caller: its key's owner id when keys are configured, else its address."""
    if not state.settings.api_keys:
        return Caller(None, f"addr:{client_address(request, state.settings.trusted_proxies)}")
    key = check_api_key(state.settings.api_keys, api_key)
    owner = owner_id(key, state.store.owner_salt())
    return Caller(owner, owner)


@functools.lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The trusted proxies' networks, parsed once per setting, not on every request."""
    return [ipaddress.ip_network(p, strict=False) for p in proxies]


def client_address(request: Request, trusted_proxies: Sequence[str]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then the
    nearest X-Forwarded-For hop that is not one. Untrusted peers cannot choose their
    address (and so their rate-limit budget) by sending the header. The server must not
    rewrite the peer itself (`metahmr serve` runs uvicorn without proxy headers)."""
    peer = request.client.host if request.client else "unknown"
    networks = _networks(tuple(trusted_proxies))
    if not _within(peer, networks):
        return peer
    hops = [
        hop.strip()
        for header in request.headers.getlist("x-forwarded-for")
        for hop in header.split(",")
        if hop.strip()
    ]
    for hop in reversed(hops):
        if not _within(hop, networks):
            return hop
    return hops[0] if hops else peer


def _within(
    address: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def check_api_key(keys: list[str], api_key: str | None) -> str:
    """`api_key` if it is one of `keys`, else a 401."""
    if not api_key:
        raise ApiError(
            401,
            "missing_api_key",
            "send your API key in the X-API-Key header",
            {"WWW-Authenticate": "ApiKey"},
        )
    if not any(hmac.compare_digest(api_key.encode(), k.encode()) for k in keys):
        raise ApiError(
            401, "bad_api_key", "the X-API-Key is not valid", {"WWW-Authenticate": "ApiKey"}
        )
    return api_key


CallerDep = Annotated[Caller, Depends(authenticate)]


def metrics_reader(
    state: StateDep, api_key: Annotated[str | None, Depends(_api_key_header)]
) -> None:
    """/metrics wants a valid key when keys are set, unless the operator opened it
    (METAHMR_METRICS_PUBLIC, e.g. for a scraper on a private network). No Redis: a scrape
    must work while the store is down."""
    if state.settings.api_keys and not state.settings.metrics_public:
        check_api_key(state.settings.api_keys, api_key)


MetricsReaderDep = Annotated[None, Depends(metrics_reader)]


async def rate_limited(state: StateDep, caller: CallerDep) -> Caller:
    """Count a submission against the caller's per-minute budget (kept in Redis)."""
    limit = state.settings.rate_limit_per_min
    if limit > 0:
        allowed, retry_after = await run_in_threadpool(
            state.store.hit_rate_limit, caller.rate_key, limit
        )
        if not allowed:
            raise ApiError(
                429,
                "rate_limited",
                f"more than {limit} submissions this minute; retry in {retry_after} s",
                {"Retry-After": str(retry_after)},
            )
    return caller


@dataclass(frozen=True)
class RecoverRequest:
    image: CheckedImage | CheckedVideo  # a video: sent in the same 'image' part
    options: RecoverOptions
    caller: Caller


class _TooLarge(Exception):
    pass


async def _read_form(request: Request, limit: int) -> tuple[bytes, bytes | None]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send multipart/form-data with an 'image' file part and an optional 'options' JSON part",
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "upload_too_large", f"request body of {declared} bytes exceeds {limit}")
    received = 0

    # Count bytes as they arrive, so a body without Content-Length cannot exceed the limit.
    async def receive():  # type: ignore[no-untyped-def]
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise _TooLarge
        return message

    try:
        # A few parts more than the two we read, so that unknown ones can be named.
        form = await Request(request.scope, receive).form(
            max_files=FORM_MAX_PARTS, max_fields=FORM_MAX_PARTS, max_part_size=OPTIONS_MAX_BYTES
        )
    except _TooLarge as exc:
        raise ApiError(413, "upload_too_large", f"request body exceeds {limit} bytes") from exc
    try:
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise ApiError(400, "missing_image", "the request has no 'image' file part")
        _check_parts(form.multi_items())
        options = form.get("options")
        options_bytes = (
            await options.read()
            if isinstance(options, UploadFile)
            else (options.encode() if isinstance(options, str) else None)
        )
        return await image.read(), options_bytes
    finally:
        await form.close()


def _check_parts(items: list[tuple[str, str | UploadFile]]) -> None:
    """422 for form parts other than one `image` and at most one `options`: a misspelt
    part would otherwise be ignored without a word."""
    names = [name for name, _ in items]
    unknown = sorted({n for n in names if n not in FORM_PARTS})
    if unknown:
        raise ApiError(
            422,
            "unknown_form_fields",
            f"unknown form fields {', '.join(repr(clip(n)) for n in unknown)}; "
            f"send only {' and '.join(repr(p) for p in FORM_PARTS)}",
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ApiError(
            422,
            "repeated_form_fields",
            f"form fields {', '.join(repr(n) for n in repeated)} were sent more than once",
        )


async def _check_scope(state: AppState, options: RecoverOptions) -> None:
    """422 for a TTO scope that no live worker's model can run (workers publish theirs;
    when that is unknown, the worker decides and fails the job with the same advice)."""
    scope = options.tto.scope
    if scope is None:
        return
    scopes = await run_in_threadpool(live_tto_scopes, state.store)
    if scopes is not None and scope not in scopes:
        have = " or ".join(repr(s) for s in sorted(scopes))
        raise ApiError(
            422,
            "invalid_options",
            f"options.tto.scope: the workers' models were meta-trained for the {have} scope, "
            f"not {scope!r}, and the two must match; omit tto.scope or send {have}",
        )


def parse_options(raw: bytes | None) -> RecoverOptions:
    """400 for text that is not a JSON object, 422 for values that do not validate."""
    if raw is None or not raw.strip():
        return RecoverOptions()
    try:
        data = json.loads(raw)
    except RecursionError as exc:  # `[[[[...` thousands deep: the parser's stack guard
        raise ApiError(
            400, "bad_options", "'options' is nested too deeply to be valid options"
        ) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_options", f"'options' is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "bad_options", "'options' must be a JSON object")
    try:
        return RecoverOptions.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_options", format_validation_error(exc, "options")) from exc


async def valid_recover_request(
    request: Request, state: StateDep, caller: Annotated[Caller, Depends(rate_limited)]
) -> RecoverRequest:
    """The checked image and options of POST /recover, or an ApiError."""
    limit = max(state.settings.max_upload_bytes, state.video_limits.max_bytes) + OPTIONS_MAX_BYTES
    image_bytes, options_bytes = await _read_form(request, limit)
    options = parse_options(options_bytes)
    await _check_scope(state, options)
    if sniff_video(image_bytes):
        video = await run_in_threadpool(_checked_video, image_bytes, options, state)
        return RecoverRequest(image=video, options=options, caller=caller)
    try:
        image = await run_in_threadpool(check_image, image_bytes, state.limits)
        check_against_image(options, image.width, image.height, state.settings.max_people)
    except UploadError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc
    except ValueError as exc:
        raise ApiError(422, "invalid_options", str(exc)) from exc
    return RecoverRequest(image=image, options=options, caller=caller)


def _checked_video(data: bytes, options: RecoverOptions, state: AppState) -> CheckedVideo:
    """A video upload's container check (`service.video`); its people are found per frame."""
    if options.people:
        raise ApiError(
            422, "invalid_options", "options.people is for images; a video's people are found in every frame"
        )
    try:
        return check_video(data, state.video_limits)
    except UploadError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc


RecoverDep = Annotated[RecoverRequest, Depends(valid_recover_request)]
