"""`metahmr` sub-commands owned by this package: `serve` and `recover`.

Parsers only at import; the handlers import what they need (uvicorn, httpx) when they run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
DEFAULT_SERVER = "http://127.0.0.1:8000"


def register(sub: Any, groups: dict[str, Any]) -> None:
    del groups  # `metahmr bench service` is registered by bench/
    serve = sub.add_parser("serve", help="run the API, workers and (embedded) Redis")
    serve.add_argument("--host", default="127.0.0.1")
    # A string default goes through `type` like a typed value: a bad METAHMR_PORT is a usage
    # error of `serve`, not a crash of every command.
    serve.add_argument(
        "--port", type=int, default=os.environ.get("METAHMR_PORT", "8000"),
        help="TCP port (default: $METAHMR_PORT, else 8000)",
    )  # fmt: skip
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.set_defaults(func=_serve)

    rec = sub.add_parser("recover", help="send an image to a running service, save the result")
    rec.add_argument("image", type=Path)
    rec.add_argument("--server", default=os.environ.get("METAHMR_SERVER", DEFAULT_SERVER))
    rec.add_argument("--api-key", default=os.environ.get("METAHMR_API_KEY"))
    rec.add_argument("--keypoints", type=Path, help="JSON: {format, points} or a list of them")
    rec.add_argument("--bbox", help="x0,y0,x1,y1 in pixels (one person)")
    rec.add_argument("--focal-length", type=float)
    rec.add_argument("--steps", type=int, help="TTO steps (0-30)")
    rec.add_argument("--out", type=Path, help="result JSON (default: standard output)")
    rec.add_argument("--mesh", type=Path, help="mesh file, .glb or .obj")
    rec.add_argument("--overlay", type=Path, help="overlay PNG")
    rec.add_argument("--animation", type=Path, help="skinned, animated glTF (animation.glb)")
    rec.add_argument("--bvh", type=Path, help="the skeleton's motion as BVH (animation.bvh)")
    rec.add_argument("--smpl-npz", type=Path, help="SMPL parameters, AMASS layout (smpl.npz)")
    rec.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")
    rec.set_defaults(func=_recover)


def _serve(args: argparse.Namespace) -> int:
    from service.config import get_settings
    from service.jobs import configure_logging
    from service.serve import LocalStack

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    if args.workers < 1:
        log.error("--workers must be at least 1")
        return 2
    return LocalStack(settings, host=args.host, port=args.port, workers=args.workers).run()


def recover_options(args: argparse.Namespace) -> dict[str, Any]:
    """The request options built from `metahmr recover`'s flags."""
    people: list[dict[str, Any]] = []
    if args.keypoints is not None:
        loaded = json.loads(args.keypoints.read_text())
        kps = loaded if isinstance(loaded, list) else [loaded]
        people = [{"keypoints": kp} for kp in kps]
    if args.bbox:
        try:
            box = [float(v) for v in args.bbox.split(",")]
        except ValueError:
            box = []
        if len(box) != 4:
            raise ValueError(f"--bbox {args.bbox!r}: expected x0,y0,x1,y1")
        if len(people) > 1:
            raise ValueError("--bbox names one person but --keypoints has several")
        people = [{**(people[0] if people else {}), "bbox": box}]
    options: dict[str, Any] = {}
    if people:
        options["people"] = people
    if args.focal_length is not None:
        options["focal_length"] = args.focal_length
    if args.steps is not None:
        options["tto"] = {"steps": args.steps}
    wanted = [name for name, flag in (("mesh", args.mesh), ("overlay", args.overlay)) if flag]
    from service.contract import EXPORT_FILES

    # The export flags are named after their `return` names (--smpl-npz: smpl_npz).
    wanted += [kind for kind in EXPORT_FILES if getattr(args, kind, None) is not None]
    if wanted:
        options["return"] = wanted
    return options


def _recover(args: argparse.Namespace) -> int:
    import httpx

    from service.client import ApiError, JobFailed, MetahmrClient

    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.mesh is not None and args.mesh.suffix.lower() not in (".glb", ".obj"):
        log.error("--mesh must end in .glb or .obj")
        return 2
    try:
        options = recover_options(args)
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    try:
        with MetahmrClient(args.server, api_key=args.api_key) as client:
            job = client.recover(args.image, options, timeout_s=args.timeout)
            _save(client, job, args)
    except httpx.TransportError as exc:
        log.error("no service at %s (%s); start one with `metahmr serve`", args.server, exc)
        return 2
    except (ApiError, JobFailed, TimeoutError, OSError) as exc:
        log.error("%s", exc)
        return 1
    return 0


def _save(client: Any, job: dict[str, Any], args: argparse.Namespace) -> None:
    from service.contract import EXPORT_FILES

    text = json.dumps(job["result"], indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
        log.info("result written to %s", args.out)
    else:
        sys.stdout.write(text + "\n")
    if args.mesh is not None:
        args.mesh.write_bytes(client.download(job["job_id"], "mesh" + args.mesh.suffix.lower()))
        log.info("mesh written to %s", args.mesh)
    if args.overlay is not None:
        args.overlay.write_bytes(client.download(job["job_id"], "overlay.png"))
        log.info("overlay written to %s", args.overlay)
    for kind, name in EXPORT_FILES.items():
        path = getattr(args, kind, None)
        if path is not None:
            path.write_bytes(client.download(job["job_id"], name))
            log.info("%s written to %s", name, path)
