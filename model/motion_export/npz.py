"""smpl.npz: the tracks' SMPL parameters in the layout AMASS-style tools read.

Keys for the first track (an image job: the first person; a video job: its first track),
as AMASS names them:

- `poses` (T, 72) float64 axis-angle, global orientation first (AMASS's SMPL-H files have
  156 columns: their first 66 are the same joints; SMPL's hands are columns 66:72);
- `trans` (T, 3) float64 metres; `betas` (10,) float64; `mocap_framerate` () float64;
- `gender` "neutral"; `surface_model_type` "smpl"; `body_model` the body model's id
  (`BodyModel.id`: its name and file hash), which the parameters only make sense with.

Plus `frames` (T,) int64 (which source frames the rows are) and `track_id` () int64. The
parameters are the JSON result's: camera frame (x right, y down, z forward), so
`body(poses, betas) + trans` lands where the person was seen.

Several tracks: `track_ids` (N,) lists them, and each track's `poses`, `trans`, `betas` and
`frames` are also stored as `poses_{id}`, `trans_{id}`, `betas_{id}`, `frames_{id}` (the
first track's too); an AMASS reader sees the first track, a multi-person reader loops over
`track_ids`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from model.motion import MotionTrack


def _arrays(track: MotionTrack) -> dict[str, np.ndarray]:
    return {
        "poses": track.poses.astype(np.float64),
        "trans": track.trans.astype(np.float64),
        "betas": track.betas.astype(np.float64),
        "frames": track.frames.astype(np.int64),
    }


def smpl_npz(tracks: Sequence[MotionTrack], body_model_id: str) -> bytes:
    """The tracks as one compressed `.npz` (see the module doc). Raises ValueError when
    `tracks` is empty."""
    if not tracks:
        raise ValueError("smpl_npz needs at least one track")
    main = tracks[0]
    arrays: dict[str, np.ndarray] = {
        **_arrays(main),
        "mocap_framerate": np.float64(main.fps),  # type: ignore[dict-item]
        "gender": np.array("neutral"),
        "surface_model_type": np.array("smpl"),
        "body_model": np.array(body_model_id),
        "track_id": np.int64(main.track_id),  # type: ignore[dict-item]
    }
    if len(tracks) > 1:
        arrays["track_ids"] = np.array([t.track_id for t in tracks], dtype=np.int64)
        for track in tracks:
            for key, value in _arrays(track).items():
                arrays[f"{key}_{track.track_id}"] = value
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()
