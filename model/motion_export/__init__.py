"""Motion exports of `model.motion.MotionTrack`s, each a pure function returning the file's bytes.

- `animation_glb` (`gltf.py`): a skinned glTF 2.0 binary. Per track, the body model's rest
  mesh with the track's shape baked in, the 24 SMPL joints as a glTF skin (joint nodes,
  inverse bind matrices) and one animation with every joint's rotation and the root's
  translation per frame (keys at frame / fps seconds).
- `animation_bvh` (`bvh.py`): the same skeleton (offsets from the shaped rest joints) and
  motion as BVH, Euler angles in Z, Y, X channel order, Frame Time = 1 / fps.
- `smpl_npz` (`npz.py`): the SMPL parameters in the AMASS layout (`poses`, `trans`, `betas`,
  `mocap_framerate`, ...) plus the body-model id.

Frames: animation.glb and animation.bvh are in the frame of `mesh.glb`, the glTF camera frame
(x right, y up, the camera looking down -z; the camera frame turned 180° about x), so a
static camera's scene stays put and the bodies stand upright; metres. smpl.npz keeps the
SMPL parameters as the JSON result has them (camera frame, y down), as SMPL tools pose them.

Skinning is linear blend skinning, which is what the body model does for models without pose
correctives (the bundled open model: the exports reproduce its posed mesh). A real SMPL
file's pose correctives cannot be expressed in a glTF skin or a BVH and are left out.
"""

from model.motion_export.bvh import EULER_ORDER, animation_bvh
from model.motion_export.gltf import animation_glb
from model.motion_export.npz import smpl_npz
from model.motion_export.skeleton import CAMERA_TO_GL, RestBody, rest_body

__all__ = [
    "CAMERA_TO_GL",
    "EULER_ORDER",
    "RestBody",
    "animation_bvh",
    "animation_glb",
    "rest_body",
    "smpl_npz",
]
