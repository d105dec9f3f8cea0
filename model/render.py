"""Headless rendering of posed meshes over an image: RGB, mask, depth and per-mesh instances.

Meshes come in the camera frame of `model.geometry` (OpenCV: x right, y down, z forward,
metres) and are seen through a pinhole camera with the given focal length and principal
point, so a vertex lands on the pixel `model.geometry.perspective_projection` gives it
(continuous pixel coordinates, pixel (i, j) covering [j, j+1) x [i, i+1)).

The OpenGL platform is chosen once per process, before PyOpenGL is imported:
``PYOPENGL_PLATFORM`` if set, else ``egl`` when an EGL display initialises, else ``osmesa``.
PyOpenGL cannot switch platforms after import, so set the variable explicitly to force one.

Each render is two passes over the same scene: a shaded, 4x multisampled colour pass
(smooth edges; its alpha composites the meshes onto the image) and a flat, single-sample
segmentation pass that colours each mesh with its index (exact instance ids, mask and
depth, one pass however many meshes).

Shading is Lambertian (ambient + directional, the diffuse part of pyrender's own
metallic-roughness shading with the same light units) through our shaders in
`model/assets/shaders/`: pyrender's full PBR fragment shader is most of the cost of a
software-rasterised frame. Colours are linear and the output is gamma-encoded (1/2.2).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Near/far planes in metres: 24-bit depth keeps ~0.2 mm resolution at 5 m with these.
_ZNEAR = 0.01
_ZFAR = 200.0
_DEFAULT_COLOR = (0.65, 0.74, 0.86)
_EGL_PLATFORM_DEVICE_EXT = 0x313F
_SHADERS = Path(__file__).resolve().parent / "assets" / "shaders"
# OpenCV camera (y down, z forward) -> OpenGL camera (y up, z backward): flip y and z.
# It is a rotation (det +1), so face winding and normal orientation are preserved.
_CV_TO_GL = np.array([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class MeshSpec:
    """One mesh to draw.

    vertices: (V, 3) camera-frame (OpenCV) positions in metres.
    faces: (F, 3) vertex indices, counter-clockwise seen from outside.
    color: (3,) RGB in [0, 1] for the whole mesh (ignored when vertex_colors is given).
    vertex_colors: (V, 3) RGB, float in [0, 1] or uint8.
    """

    vertices: np.ndarray
    faces: np.ndarray
    color: tuple[float, float, float] | np.ndarray = _DEFAULT_COLOR
    vertex_colors: np.ndarray | None = None


@dataclass(frozen=True)
class LightSpec:
    """A directional light plus ambient light.

    direction: (3,) direction the light travels, in the camera (OpenCV) frame; (0, 0, 1)
        shines from the camera into the scene.
    intensity: directional intensity (pyrender units; ~3 is a well-lit studio).
    color: (3,) RGB in [0, 1].
    ambient: ambient light level added to every surface, times its base colour.
    """

    direction: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 1.0)
    intensity: float = 3.0
    color: tuple[float, float, float] | np.ndarray = (1.0, 1.0, 1.0)
    ambient: float = 0.3


@dataclass(frozen=True)
class RenderResult:
    """What a render produced, all (H, W) at the image's resolution.

    rgb: (H, W, 3) uint8, the meshes composited over the image (or background).
    mask: (H, W) bool, a mesh covers the pixel centre.
    depth: (H, W) float32 camera-frame z in metres of the nearest mesh, 0 where empty.
    instance: (H, W) int16 index into the meshes sequence of the visible mesh, -1 elsewhere.
    alpha: (H, W) float32 anti-aliased coverage in [0, 1], used for the compositing.
    """

    rgb: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    instance: np.ndarray
    alpha: np.ndarray


def _egl_works() -> bool:
    """Whether an EGL device display initialises (ctypes only, before PyOpenGL loads).

    Uses the device platform (EGL_EXT_platform_device) the way pyrender does: the default
    display needs an X server, which headless machines lack.
    """
    try:
        egl = ctypes.CDLL(ctypes.util.find_library("EGL") or "libEGL.so.1")
    except OSError:
        return False
    egl.eglGetProcAddress.restype = ctypes.c_void_p
    egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]
    query_address = egl.eglGetProcAddress(b"eglQueryDevicesEXT")
    display_address = egl.eglGetProcAddress(b"eglGetPlatformDisplayEXT")
    if not query_address or not display_address:
        return False
    int_p = ctypes.POINTER(ctypes.c_int)
    query_devices = ctypes.CFUNCTYPE(ctypes.c_uint, ctypes.c_int, ctypes.c_void_p, int_p)(
        query_address
    )
    get_display = ctypes.CFUNCTYPE(
        ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p
    )(display_address)
    count = ctypes.c_int()
    if not query_devices(0, None, ctypes.byref(count)) or count.value < 1:
        return False
    devices = (ctypes.c_void_p * count.value)()
    query_devices(count.value, devices, ctypes.byref(count))
    device = devices[min(int(os.environ.get("EGL_DEVICE_ID", "0")), count.value - 1)]
    display = get_display(_EGL_PLATFORM_DEVICE_EXT, device, None)
    if not display:
        return False
    egl.eglInitialize.argtypes = [ctypes.c_void_p, int_p, int_p]
    egl.eglTerminate.argtypes = [ctypes.c_void_p]
    major, minor = ctypes.c_int(), ctypes.c_int()
    ok = bool(egl.eglInitialize(display, ctypes.byref(major), ctypes.byref(minor)))
    if ok:
        egl.eglTerminate(display)
    return ok


def select_platform() -> str:
    """Pick the headless OpenGL platform (sets PYOPENGL_PLATFORM if unset) and return it."""
    platform = os.environ.get("PYOPENGL_PLATFORM")
    if platform:
        return platform
    if _egl_works():
        platform = "egl"
    elif ctypes.util.find_library("OSMesa"):
        platform = "osmesa"
    else:
        raise RuntimeError(
            "No headless OpenGL found: install libegl1 + libgl1-mesa-dri or libosmesa6 "
            "(`make install` does when run as root), or set PYOPENGL_PLATFORM."
        )
    os.environ["PYOPENGL_PLATFORM"] = platform
    log.info("rendering with PYOPENGL_PLATFORM=%s", platform)
    return platform


def _import_pyrender() -> Any:
    select_platform()
    # pyrender 0.1.45 still uses np.infty, which numpy 2 removed; alias it before import.
    if not hasattr(np, "infty"):
        np.infty = np.inf  # type: ignore[attr-defined]
    import pyrender
    from pyrender.platforms.osmesa import OSMesaPlatform

    # pyrender assumes OSMesa has no framebuffer objects and then renders single-sampled,
    # without alpha, and rebuilds the context on every size change. Its OSMesa context is
    # OpenGL 3.3 core, where framebuffer objects are mandatory, so take the same
    # multisampled offscreen path as EGL: identical output on both platforms.
    OSMesaPlatform.supports_framebuffers = lambda self: True
    return pyrender


def _lambert_shader_cache(pyrender: Any) -> Any:
    """pyrender's shader cache, with our Lambert shaders standing in for its mesh shaders."""
    from pyrender.shader_program import ShaderProgramCache

    class LambertShaderCache(ShaderProgramCache):  # type: ignore[misc]
        def get_program(
            self,
            vertex_shader: str,
            fragment_shader: str,
            geometry_shader: str | None = None,
            defines: dict[str, Any] | None = None,
        ) -> Any:
            if (vertex_shader, fragment_shader) == ("mesh.vert", "mesh.frag"):
                # Absolute paths: the cache joins them onto its directory unchanged.
                vertex_shader = str(_SHADERS / "lambert.vert")
                fragment_shader = str(_SHADERS / "lambert.frag")
            return super().get_program(vertex_shader, fragment_shader, geometry_shader, defines)

    return LambertShaderCache()


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals: vertices (V, 3), faces (F, 3) -> (V, 3) float32;
    +y for a vertex on no face (glTF wants every normal of unit length)."""
    v = vertices[faces]  # (F, 3, 3)
    face_normals = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    normals = np.zeros((len(vertices), 3))
    for corner in range(3):
        for axis in range(3):
            normals[:, axis] += np.bincount(
                faces[:, corner], weights=face_normals[:, axis], minlength=len(vertices)
            )
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    unit = np.where(norm > 1e-12, normals / np.maximum(norm, 1e-12), [0.0, 1.0, 0.0])
    return unit.astype(np.float32)


def _check_mesh(index: int, mesh: MeshSpec) -> tuple[np.ndarray, np.ndarray]:
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"mesh {index}: vertices must be (V, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"mesh {index}: faces must be integer (F, 3), got {faces.shape}")
    if mesh.vertex_colors is not None and np.shape(mesh.vertex_colors) != vertices.shape:
        raise ValueError(
            f"mesh {index}: vertex_colors must be (V, 3) = {vertices.shape}, "
            f"got {np.shape(mesh.vertex_colors)}"
        )
    return vertices, faces


def _vertex_colors(mesh: MeshSpec) -> np.ndarray | None:
    if mesh.vertex_colors is None:
        return None
    colors = np.asarray(mesh.vertex_colors)
    if colors.dtype == np.uint8:
        colors = colors / 255.0
    return np.concatenate([colors, np.ones((len(colors), 1))], axis=1).astype(np.float32)


def _light_pose(direction: np.ndarray) -> np.ndarray:
    """A node pose whose -z axis (where pyrender's lights shine) is `direction` (GL frame)."""
    z = -direction / np.linalg.norm(direction)
    helper = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    return pose


class Renderer:
    """A reusable offscreen renderer; the viewport follows each call's image size.

    Holds one OpenGL context: use it from the thread that created it, and `close()` it
    (or use it as a context manager) to free the context.
    """

    def __init__(self, width: int, height: int) -> None:
        self._pyrender = _import_pyrender()
        self._renderer = self._pyrender.OffscreenRenderer(int(width), int(height))
        # Swapped in before the first draw, so no pyrender mesh program is ever compiled.
        self._renderer._renderer._program_cache = _lambert_shader_cache(self._pyrender)

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.delete()
            self._renderer = None

    def render(
        self,
        meshes: Sequence[MeshSpec],
        *,
        image: np.ndarray | None = None,
        image_hw: tuple[int, int] | None = None,
        focal_length: float | tuple[float, float],
        camera_center: tuple[float, float] | None = None,
        light: LightSpec | None = None,
        background: tuple[int, int, int] | np.ndarray | None = None,
    ) -> RenderResult:
        """Render `meshes` over `image` (H, W, 3) uint8, or over a blank `image_hw` canvas.

        focal_length: f or (fx, fy) in pixels. camera_center: (cx, cy), default (W/2, H/2).
        light: default `LightSpec()` (from the camera). background: (3,) uint8 RGB of the
        blank canvas when no image is given (default black).
        """
        if self._renderer is None:
            raise RuntimeError("this Renderer was closed; create a new one")
        canvas = _canvas(image, image_hw, background)
        height, width = canvas.shape[:2]
        pyrender = self._pyrender
        fx, fy = np.broadcast_to(np.asarray(focal_length, dtype=np.float64), (2,))
        cx, cy = (width / 2, height / 2) if camera_center is None else camera_center
        scene = pyrender.Scene(bg_color=(0.0, 0.0, 0.0, 0.0), ambient_light=np.zeros(3))
        scene.add(
            pyrender.IntrinsicsCamera(fx, fy, cx, cy, znear=_ZNEAR, zfar=_ZFAR), pose=np.eye(4)
        )
        light = light or LightSpec()
        scene.ambient_light = np.full(3, light.ambient) * np.asarray(light.color)
        direction_gl = np.asarray(light.direction, dtype=np.float64) * _CV_TO_GL
        scene.add(
            pyrender.DirectionalLight(color=np.asarray(light.color), intensity=light.intensity),
            pose=_light_pose(direction_gl),
        )
        if len(meshes) > np.iinfo(np.int16).max:
            raise ValueError(f"at most {np.iinfo(np.int16).max} meshes per render")
        seg_map = {}
        for index, mesh in enumerate(meshes):
            node = scene.add(self._pyrender_mesh(index, mesh))
            # Instance index + 1 spread over 24 bits of RGB (0 stays background).
            seg_map[node] = np.array([(index + 1) >> s & 255 for s in (0, 8, 16)])

        self._renderer.viewport_width, self._renderer.viewport_height = width, height
        flags = pyrender.RenderFlags
        rgba, _ = self._renderer.render(scene, flags=flags.RGBA)
        seg, depth = self._renderer.render(scene, flags=flags.SEG, seg_node_map=seg_map)
        ids = seg[..., 0].astype(np.int32) | seg[..., 1].astype(np.int32) << 8
        ids |= seg[..., 2].astype(np.int32) << 16
        instance = (ids - 1).astype(np.int16)
        alpha = rgba[..., 3].astype(np.float32) / 255.0
        return RenderResult(
            rgb=_composite(canvas, rgba, alpha),
            mask=instance >= 0,
            depth=np.asarray(depth, dtype=np.float32),  # pyrender already gives 0 where empty
            instance=instance,
            alpha=alpha,
        )

    def _pyrender_mesh(self, index: int, mesh: MeshSpec) -> Any:
        pyrender = self._pyrender
        vertices, faces = _check_mesh(index, mesh)
        positions = (vertices * _CV_TO_GL).astype(np.float32)
        colors = _vertex_colors(mesh)
        base = (1.0, 1.0, 1.0) if colors is not None else tuple(np.asarray(mesh.color, float))
        material = pyrender.MetallicRoughnessMaterial(
            baseColorFactor=(*base, 1.0), metallicFactor=0.0, roughnessFactor=0.8
        )
        # Built from a Primitive directly: Mesh.from_trimesh re-processes the mesh (merging,
        # caching) which costs more than the draw itself at SMPL resolution.
        primitive = pyrender.Primitive(
            positions=positions,
            normals=vertex_normals(positions, faces),
            indices=faces.astype(np.uint32),
            color_0=colors,
            material=material,
            mode=pyrender.constants.GLTF.TRIANGLES,
        )
        return pyrender.Mesh(primitives=[primitive])


def _canvas(
    image: np.ndarray | None, image_hw: tuple[int, int] | None, background: Any
) -> np.ndarray:
    """The (H, W, 3) uint8 picture the meshes are composited onto (a new array)."""
    if image is not None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        return image.copy()
    if image_hw is None:
        raise ValueError("give either image (H, W, 3) uint8 or image_hw=(H, W)")
    canvas = np.zeros((int(image_hw[0]), int(image_hw[1]), 3), dtype=np.uint8)
    if background is not None:
        canvas[:] = np.asarray(background, dtype=np.uint8)
    return canvas


def _composite(canvas: np.ndarray, rgba: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend the render over `canvas` in place, only inside the covered rectangle (a person
    covers a small part of the frame; full-frame float blending cost ~10 ms).

    The multisample resolve averaged mesh samples with the cleared (0, 0, 0, 0) background,
    so the colour is already multiplied by coverage: "over" is rgb + (1 - alpha) * canvas.
    """
    rows = np.flatnonzero(alpha.any(axis=1))
    cols = np.flatnonzero(alpha.any(axis=0))
    if rows.size == 0:
        return canvas
    window = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    a = alpha[window][..., None]
    blended = canvas[window] * (1 - a) + rgba[window][..., :3]
    canvas[window] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return canvas


_local = threading.local()


def render_meshes(
    meshes: Sequence[MeshSpec],
    *,
    image: np.ndarray | None = None,
    image_hw: tuple[int, int] | None = None,
    focal_length: float | tuple[float, float],
    camera_center: tuple[float, float] | None = None,
    light: LightSpec | None = None,
    background: tuple[int, int, int] | np.ndarray | None = None,
) -> RenderResult:
    """`Renderer.render` on a renderer kept per thread (contexts are bound to a thread, and
    creating one costs more than a render)."""
    renderer = getattr(_local, "renderer", None)
    if renderer is None:
        renderer = _local.renderer = Renderer(640, 480)
    return renderer.render(
        meshes,
        image=image,
        image_hw=image_hw,
        focal_length=focal_length,
        camera_center=camera_center,
        light=light,
        background=background,
    )
