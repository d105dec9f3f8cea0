"""The demo page in a real browser (headless Chromium) against `metahmr serve` with the
shipped model and API keys on: upload the docs' example photo, give the key when asked, and
see the overlay, the 3D bodies in the viewer, the fit numbers and the downloads, with no
request to another host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from demo_browser import API_KEY, EXAMPLE, same_origin
from PIL import Image

EXAMPLE_KEYPOINTS = EXAMPLE.with_name("example_keypoints.json")

pytestmark = pytest.mark.e2e

# Canvas pixels that differ from the viewer's background (#eef1f5), the bodies: their count
# and mean column.
_MESH_PIXELS_JS = """
const canvas = document.getElementById('viewer');
const copy = document.createElement('canvas');
copy.width = canvas.width; copy.height = canvas.height;
const ctx = copy.getContext('2d');
ctx.drawImage(canvas, 0, 0);
const data = ctx.getImageData(0, 0, copy.width, copy.height).data;
let mesh = 0, column = 0;
for (let i = 0; i < data.length; i += 4) {
  const d = Math.abs(data[i] - 0xee) + Math.abs(data[i + 1] - 0xf1) + Math.abs(data[i + 2] - 0xf5);
  if (d > 40) { mesh += 1; column += (i / 4) % copy.width; }
}
return [mesh, copy.width * copy.height, column / Math.max(mesh, 1)];
"""


def _give_key(page) -> None:  # type: ignore[no-untyped-def]
    assert page.wait_for_state("failed") == "failed"
    assert page.driver.find_element("id", "key-form").is_displayed()
    assert "API key" in page.driver.find_element("id", "error").text
    page.driver.find_element("id", "api-key").send_keys(API_KEY)
    page.driver.find_element("css selector", "#key-form button[type=submit]").click()


def _check_result(page, base: str) -> None:  # type: ignore[no-untyped-def]
    state = page.wait_for_state("done", "failed")
    assert state == "done", page.driver.find_element("id", "error").text
    overlay = page.driver.find_element("id", "overlay")
    assert overlay.is_displayed()
    assert page.js("return [arguments[0].complete, arguments[0].naturalWidth]", overlay) == [
        True,
        640,
    ]
    assert page.driver.find_element("id", "viewer").is_displayed()
    mesh, total, _ = page.js(_MESH_PIXELS_JS)
    assert total > 10_000 and 0.02 < mesh / total < 0.9, (mesh, total)
    rows = page.driver.find_elements("css selector", "#people tbody tr")
    assert len(rows) == 1
    cells = [c.text for c in rows[0].find_elements("tag name", "td")]
    assert cells[0] == "Person 1" and cells[1] == "blazepose"
    assert int(cells[2]) >= 1 and float(cells[5]) > 0  # steps run, reprojection error px
    links = page.driver.find_elements("css selector", "#downloads a")
    assert {a.text for a in links} >= {"result.json", "mesh.glb", "mesh.obj", "overlay.png"}
    assert all(a.get_attribute("href").startswith("blob:") for a in links)
    urls = page.requested_urls()
    assert any("/recover" in u for u in urls) and any(u.endswith("/mesh.glb") for u in urls)
    assert [u for u in urls if not same_origin(u, base)] == []


def test_upload_asks_for_the_key_then_shows_the_bodies(served: str, open_page) -> None:  # type: ignore[no-untyped-def]
    page = open_page()
    page.driver.get(f"{served}/demo")
    assert page.driver.title.startswith("metahmr")
    page.driver.find_element("id", "image").send_keys(str(EXAMPLE))
    assert "example.jpg" in page.driver.find_element("id", "chosen").text
    page.driver.find_element("id", "submit").click()
    _give_key(page)  # the service answered 401: the page asks, then submits again
    _check_result(page, served)
    assert "job=" in page.driver.current_url  # a reload shows the same job


def test_example_on_load_at_phone_width(served: str, open_page) -> None:  # type: ignore[no-untyped-def]
    page = open_page(width=375, height=800)
    page.driver.get(f"{served}/demo?example=1")
    _give_key(page)
    _check_result(page, served)
    # Usable at 375 px: nothing wider than the window, every input labelled.
    assert page.js("return document.documentElement.scrollWidth") <= 375
    for name in ("overlay", "viewer"):
        assert page.driver.find_element("id", name).size["width"] <= 375
    unlabelled = page.js(
        "return [...document.querySelectorAll('input')].filter(i => !i.labels.length"
        " && !i.getAttribute('aria-label')).map(i => i.id || i.name)"
    )
    assert unlabelled == []


def test_drop_a_file_and_plain_errors(served: str, open_page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    page = open_page()
    page.driver.get(f"{served}/demo")
    page.driver.find_element("id", "submit").click()
    assert page.wait_for_state("failed") == "failed"
    assert "Choose a photo first" in page.driver.find_element("id", "error").text
    # Drop a text file on the box: it is chosen, and the API's 415 reads as plain words.
    page.js(
        "const t = new DataTransfer();"
        "t.items.add(new File(['not a picture'], 'notes.txt', {type: 'text/plain'}));"
        "document.getElementById('drop').dispatchEvent("
        "  new DragEvent('drop', {dataTransfer: t, bubbles: true, cancelable: true}));"
    )
    assert "notes.txt" in page.driver.find_element("id", "chosen").text
    page.js(f"sessionStorage.setItem('metahmr.apiKey', '{API_KEY}')")
    page.driver.refresh()
    page.js(
        "const t = new DataTransfer();"
        "t.items.add(new File(['not a picture'], 'notes.txt', {type: 'text/plain'}));"
        "document.getElementById('drop').dispatchEvent("
        "  new DragEvent('drop', {dataTransfer: t, bubbles: true, cancelable: true}));"
    )
    page.driver.find_element("id", "submit").click()
    assert page.wait_for_state("failed") == "failed"
    error = page.driver.find_element("id", "error").text
    assert error.startswith("That file is not a picture the service can read"), error
    assert page.driver.find_element("id", "key-form").is_displayed() is False
    # Not "failed" any more: otherwise the next wait could return on this error, before the
    # page has handled the next click (it did, on a loaded machine).
    page.js("document.body.dataset.state = 'idle'")
    # Keypoints: a file that is not JSON (caught in the page), then too few points (the API's 422).
    page.driver.find_element("id", "image").send_keys(str(EXAMPLE))
    page.driver.find_element("css selector", "details summary").click()
    for text, start in (
        ("{not json", "The keypoints file bad.json is not valid JSON"),
        ('{"format": "coco17", "points": [[1, 2, 1]]}', "Some input is not valid: "),
    ):
        (tmp_path / "bad.json").write_text(text)
        page.driver.find_element("id", "keypoints").send_keys(str(tmp_path / "bad.json"))
        page.driver.find_element("id", "submit").click()
        assert page.wait_for_state("failed") == "failed"
        error = page.driver.find_element("id", "error").text
        assert error.startswith(start), error
        page.js("document.body.dataset.state = 'idle'")
    assert "17 keypoints" in error


# The bodies' pixels in the left and right halves of a drawn element (the overlay <img> or
# the viewer's canvas): mean red minus blue of each half. Body pixels: those that differ
# from `arguments[1]` (the photo, for the overlay) or from the viewer's background.
_HALVES_JS = """
const [el, under] = arguments;
const w = el.naturalWidth || el.width, h = el.naturalHeight || el.height;
function pixels(source) {
  const copy = document.createElement('canvas');
  copy.width = w; copy.height = h;
  const ctx = copy.getContext('2d');
  if (source) ctx.drawImage(source, 0, 0, w, h);
  else { ctx.fillStyle = '#eef1f5'; ctx.fillRect(0, 0, w, h); }
  return ctx.getImageData(0, 0, w, h).data;
}
const drawn = pixels(el), base = pixels(under);
const sums = [0, 0], counts = [0, 0];
for (let i = 0; i < drawn.length; i += 4) {
  const d = Math.abs(drawn[i] - base[i]) + Math.abs(drawn[i + 1] - base[i + 1])
    + Math.abs(drawn[i + 2] - base[i + 2]);
  if (d < 60) continue;
  const half = (i / 4) % w < w / 2 ? 0 : 1;
  sums[half] += drawn[i] - drawn[i + 2];
  counts[half] += 1;
}
return [sums[0] / Math.max(counts[0], 1), sums[1] / Math.max(counts[1], 1), counts];
"""


def test_two_people_from_a_keypoints_file_in_two_colours(
    served: str, open_page, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # The example photo twice side by side, and its keypoints for each copy.
    photo = Image.open(EXAMPLE).convert("RGB")
    pair = Image.new("RGB", (2 * photo.width, photo.height))
    pair.paste(photo, (0, 0))
    pair.paste(photo, (photo.width, 0))
    pair.save(tmp_path / "two.jpg", quality=92)
    keypoints = json.loads(EXAMPLE_KEYPOINTS.read_text())
    moved = [[x + photo.width, y, c] for x, y, c in keypoints["points"]]
    (tmp_path / "two.json").write_text(json.dumps([keypoints, {**keypoints, "points": moved}]))

    page = open_page()
    page.driver.get(f"{served}/demo")
    page.js(f"sessionStorage.setItem('metahmr.apiKey', '{API_KEY}')")
    page.driver.refresh()
    page.driver.find_element("id", "image").send_keys(str(tmp_path / "two.jpg"))
    page.driver.find_element("css selector", "details summary").click()
    page.driver.find_element("id", "keypoints").send_keys(str(tmp_path / "two.json"))
    page.driver.find_element("id", "steps").send_keys("3")
    page.driver.find_element("id", "submit").click()
    state = page.wait_for_state("done", "failed")
    assert state == "done", page.driver.find_element("id", "error").text
    rows = page.driver.find_elements("css selector", "#people tbody tr")
    assert [r.find_element("tag name", "td").text for r in rows] == ["Person 1", "Person 2"]
    assert all(r.find_elements("tag name", "td")[1].text == "request" for r in rows)
    swatches = page.js(
        "return [...document.querySelectorAll('#people .swatch')].map(s => s.style.background)"
    )
    assert len(set(swatches)) == 2
    # Person 1 (left) light blue, person 2 (right) orange, in the overlay and the 3D view.
    photo = page.driver.find_element("css selector", "#chosen img")
    for element, under in (("overlay", photo), ("viewer", None)):
        left, right, counts = page.js(_HALVES_JS, page.driver.find_element("id", element), under)
        assert min(counts) > 300, (element, counts)
        assert left < -10 and right > 40, (element, left, right)


@pytest.mark.slow
def test_a_video_plays_in_the_viewer_frame_by_frame(served: str, open_page, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from training.synth.motion import MotionConfig, encode_video, make_clip

    clip = make_clip(MotionConfig(frames=20, fps=10.0, image_hw=(240, 320)), seed=0)
    video = tmp_path / "walk.mp4"
    video.write_bytes(encode_video(clip.frames, clip.fps))
    page = open_page()
    page.driver.get(f"{served}/demo")
    page.js(f"sessionStorage.setItem('metahmr.apiKey', '{API_KEY}')")
    page.driver.refresh()
    page.driver.find_element("id", "image").send_keys(str(video))
    animation = page.driver.find_element("css selector", 'input[name="return"][value="animation"]')
    assert animation.is_selected()  # chosen for a video
    page.driver.find_element("id", "submit").click()
    state = page.wait_for_state("done", "failed", timeout_s=240)
    assert state == "done", page.driver.find_element("id", "error").text
    assert "Track" in page.driver.find_element("css selector", "#people tbody tr").text
    slider = page.driver.find_element("id", "frame")
    assert slider.is_displayed() and slider.get_attribute("max") == "19"
    seen = []
    for frame in (0, 19):
        page.js(
            "const s = document.getElementById('frame'); s.value = arguments[0];"
            "s.dispatchEvent(new Event('input'));",
            frame,
        )
        seen.append(page.js(_MESH_PIXELS_JS))
    assert all(mesh > 500 for mesh, _, _ in seen)  # a body at both ends
    assert seen[0] != seen[1]  # and it moved
    assert [u for u in page.requested_urls() if not same_origin(u, served)] == []
