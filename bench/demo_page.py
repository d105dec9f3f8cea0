"""`metahmr demo screenshot`: a picture of the demo page with a result, for the README.

It starts `metahmr serve` on a free port (or uses `--server`), runs the bundled example photo
through the API once (the worker loads its model), then takes `/demo?example=1`, the page that
submits the example itself, with Debian's headless Chromium (`chromium --headless
--screenshot`). Headless Chromium runs the page's timers on a virtual clock but stops that
clock while a request is out, so a large `--virtual-time-budget` lets the page's polls follow
the real job to its end; the page's DOM (`--dump-dom`, same budget) is checked to have reached
"succeeded" the same way.

`chromium_flags` is shared with the browser tests (tests/browser/); the stack is
`bench.serve_stack.serve_subprocess`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.serve_stack import serve_subprocess

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "service" / "static" / "demo" / "example.jpg"
EXAMPLE_OPTIONS = {"return": ["mesh", "overlay"]}
DEFAULT_OUT = Path("docs/img/demo.png")


def register(sub: Any, groups: dict[str, Any]) -> None:
    del groups
    parser = sub.add_parser("demo", help="the demo page (/demo): screenshots")
    demo = parser.add_subparsers(dest="demo", metavar="WHAT", required=True)
    shot = demo.add_parser(
        "screenshot",
        help="run the example photo, then screenshot /demo with its result (headless Chromium)",
    )
    shot.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    shot.add_argument(
        "--server", help="a running service without API keys (default: start `metahmr serve`)"
    )
    shot.add_argument("--width", type=int, default=1200, help="window width, CSS pixels")
    shot.add_argument("--height", type=int, default=1500, help="window height, CSS pixels")
    shot.add_argument("--chromium", help="the browser binary (default: chromium on PATH)")
    shot.add_argument("--timeout", type=float, default=300.0, help="seconds for start and job")
    shot.set_defaults(func=_screenshot)


def find_chromium(given: str | None = None) -> str | None:
    """The headless browser: `given`, else Debian's `chromium` (apt install chromium)."""
    for name in (given, "chromium", "chromium-browser", "google-chrome"):
        if name and (found := shutil.which(name)):
            return found
    return None


def chromium_flags(width: int, height: int) -> list[str]:
    """Flags for headless Chromium here: no sandbox as root (containers), WebGL through
    SwiftShader (there is no GPU; Chromium no longer falls back to it by itself), and every
    host name but 127.0.0.1 unresolvable, so a page that reaches for a CDN fails visibly."""
    flags = [
        "--headless=new",
        "--disable-dev-shm-usage",
        "--enable-unsafe-swiftshader",
        "--use-angle=swiftshader",
        "--hide-scrollbars",
        "--no-first-run",
        f"--window-size={width},{height}",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")
    return flags


def run_example(url: str, timeout_s: float) -> str:
    """The example photo through the API; returns the id of the succeeded job."""
    from service.client import MetahmrClient

    with MetahmrClient(url) as client:
        job_id = client.submit(EXAMPLE, EXAMPLE_OPTIONS)
        client.wait(job_id, timeout_s=timeout_s)
    return job_id


def screenshot(
    chromium: str, page: str, out: Path, width: int, height: int, budget_ms: int = 15000
) -> None:
    """`chromium --headless --screenshot` of `page`, after `budget_ms` of the page's
    (virtual) time: enough for it to fetch a finished job's files and draw them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        chromium, *chromium_flags(width, height), f"--virtual-time-budget={budget_ms}",
        f"--screenshot={out.resolve()}", page,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, timeout=300)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr.decode()[-2000:]}")


# Virtual milliseconds of the page's timers: its polls (every 0.4 s virtual) pause the
# clock while they are out, so this is about 1,500 polls, however long the real job takes.
EXAMPLE_BUDGET_MS = 600_000


def page_dom(chromium: str, page: str, width: int, height: int) -> str:
    """The DOM of `page` after EXAMPLE_BUDGET_MS of its virtual time (`--dump-dom`)."""
    cmd = [
        chromium, *chromium_flags(width, height), f"--virtual-time-budget={EXAMPLE_BUDGET_MS}",
        "--dump-dom", page,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, timeout=300)
    return done.stdout.decode(errors="replace")


def _screenshot(args: argparse.Namespace) -> int:
    chromium = find_chromium(args.chromium)
    if chromium is None:
        log.error("no Chromium found: `apt-get install chromium` (make install does, as root)")
        return 2
    with contextlib.ExitStack() as stack:
        url = args.server
        if url is None:
            # Its own settings: none of this shell's METAHMR_* (API keys, a Redis URL).
            env = {k: v for k, v in os.environ.items() if not k.startswith("METAHMR_")}
            logs = stack.enter_context(tempfile.NamedTemporaryFile(suffix="-serve.log"))
            log.info("starting metahmr serve (its log: %s)", logs.name)
            try:
                url = stack.enter_context(serve_subprocess(env, logs, args.timeout)).url
            except (RuntimeError, TimeoutError) as exc:
                log.error("%s; its log:\n%s", exc, Path(logs.name).read_text()[-3000:])
                return 1
        url = url.rstrip("/")
        job_id = run_example(url, args.timeout)  # the worker has its model from here on
        log.info("warm-up job %s succeeded; taking %s/demo?example=1", job_id, url)
        page = f"{url}/demo?example=1"
        screenshot(chromium, page, args.out, args.width, args.height, EXAMPLE_BUDGET_MS)
        if "succeeded" not in page_dom(chromium, page, args.width, args.height):
            log.error("the page's own job did not reach 'succeeded' within its time budget")
            return 1
    log.info("wrote %s (%d bytes)", args.out, args.out.stat().st_size)
    return 0
