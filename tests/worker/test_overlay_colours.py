"""overlay.png draws each person in their own colour (the demo page's viewer uses the same
list): two spheres side by side over a grey picture."""

from __future__ import annotations

import io

import numpy as np
import trimesh
from PIL import Image

from worker.stages.files import PERSON_COLORS, overlay_png, person_color


def test_person_color_reads_the_hex_list() -> None:
    assert person_color(0) == (0xA6 / 255, 0xBD / 255, 0xDB / 255)
    assert person_color(len(PERSON_COLORS) + 1) == person_color(1)


def test_overlay_draws_two_people_in_two_colours() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    centres = np.array([[-0.6, 0.0, 3.0], [0.6, 0.0, 3.0]])  # camera frame, metres
    vertices = np.stack([sphere.vertices + c for c in centres]).astype(np.float32)
    image = np.full((240, 320, 3), 128, np.uint8)
    focal = 300.0
    png = overlay_png(image, vertices, np.asarray(sphere.faces), focal)
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float)
    assert rgb.shape == (240, 320, 3)
    seen = []
    for x, y, z in centres:
        u, v = int(160 + focal * x / z), int(120 + focal * y / z)
        patch = rgb[v - 3 : v + 4, u - 3 : u + 4].reshape(-1, 3).mean(axis=0)
        assert np.abs(patch - 128).max() > 20  # a body, not the grey picture
        seen.append(patch / patch.sum())
    want = [np.array(person_color(i)) / sum(person_color(i)) for i in range(2)]
    # Shading scales brightness; the colour's proportions tell the people apart.
    assert np.argmax(seen[0] - seen[1]) == np.argmax(want[0] - want[1]) == 2  # blue person 1
    assert np.argmax(seen[1] - seen[0]) == np.argmax(want[1] - want[0]) == 0  # orange person 2
