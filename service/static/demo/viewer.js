// The 3D view: a job's mesh.glb (one node per person, "person_<i>") or animation.glb, seen
// first through the photo's own camera (so the people stand where they are in the photo),
// then orbitable. The files are in the glTF camera frame: the camera at the origin looking
// down -z, y up, which is three.js's default camera pose.
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";

// One colour per person, in result order; the worker's overlay uses the same list
// (worker/stages/files.py PERSON_COLORS; a test holds the two equal).
export const PERSON_COLORS = [
  "#a6bddb", "#f4a261", "#8fd18f", "#e88a9a", "#c3a6e0", "#f1d36b", "#7fd1c9", "#c9a27e",
];
export const BACKGROUND = "#eef1f5";

export function personColor(index) {
  return PERSON_COLORS[index % PERSON_COLORS.length];
}

export function webglAvailable() {
  try {
    const canvas = document.createElement("canvas");
    return Boolean(canvas.getContext("webgl2") || canvas.getContext("webgl"));
  } catch {
    return false;
  }
}

// The person or track a mesh belongs to, from its node's name: mesh.glb has "person_<i>",
// animation.glb "track_<id>". Returns ["person" | "track", number] or null.
function owner(object) {
  for (let o = object; o; o = o.parent) {
    const match = /^(person|track)_(\d+)$/.exec(o.name || "");
    if (match) return [match[1], Number(match[2])];
  }
  return null;
}

export class Viewer {
  constructor(canvas) {
    this.canvas = canvas;
    // preserveDrawingBuffer: the pixels stay readable after a frame (tests read them).
    this.renderer = new THREE.WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
    this.scene = new THREE.Scene();
    this.scene.background = new THREE.Color(BACKGROUND);
    this.camera = new THREE.PerspectiveCamera(50, 4 / 3, 0.01, 1000);
    this.scene.add(this.camera);
    this.scene.add(new THREE.HemisphereLight(0xffffff, 0x8d8d8d, 1.6));
    const key = new THREE.DirectionalLight(0xffffff, 1.8);
    key.position.set(0.5, 1, 1);
    this.camera.add(key); // the light follows the view, so the side you look at is lit
    this.controls = new OrbitControls(this.camera, canvas);
    this.controls.addEventListener("change", () => this.render());
    this.content = null;
    this.mixer = null;
    this.clip = null;
    this.home = null;
    new ResizeObserver(() => this.resize()).observe(canvas);
  }

  // Show a glb (ArrayBuffer). `image`: the result's {width, height, focal_length};
  // `colourOf(kind, n)`: the colour index of person or track n (default: n itself).
  async show(buffer, image, colourOf = (kind, n) => n) {
    const gltf = await new GLTFLoader().parseAsync(buffer, "");
    if (this.content) this.scene.remove(this.content);
    this.content = gltf.scene;
    let order = 0;
    this.content.traverse((object) => {
      if (!object.isMesh) return;
      const found = owner(object);
      const index = found ? colourOf(...found) : order;
      order += 1;
      if (!object.geometry.attributes.normal) object.geometry.computeVertexNormals();
      object.material = new THREE.MeshStandardMaterial({
        color: personColor(index ?? order - 1), roughness: 0.65, metalness: 0.0,
        side: THREE.DoubleSide,
      });
    });
    this.scene.add(this.content);
    this.mixer = null;
    this.clip = gltf.animations[0] || null;
    if (this.clip) {
      this.mixer = new THREE.AnimationMixer(this.content);
      const action = this.mixer.clipAction(this.clip);
      // Frames are shown by time; a looping action would wrap the last one to the first.
      action.setLoop(THREE.LoopOnce, 1);
      action.clampWhenFinished = true;
      action.play();
      this.mixer.setTime(0); // pose the bodies before the camera frames them
    }
    this.content.updateMatrixWorld(true);
    this.content.traverse((object) => {
      if (!object.isSkinnedMesh) return;
      // Bounds of the posed body, not of the rest mesh at the origin; the pose changes
      // with the frame, so no culling by stale bounds either.
      object.skeleton.update();
      object.computeBoundingBox();
      object.frustumCulled = false;
    });
    this.setCamera(image);
    this.render();
    return { meshes: order, animated: Boolean(this.clip) };
  }

  // The photo's camera: vertical field of view from the focal length, canvas shaped like
  // the photo, orbiting about the bodies' centre.
  setCamera(image) {
    const { width, height, focal_length: focal } = image;
    this.canvas.style.aspectRatio = `${width} / ${height}`;
    this.camera.fov = THREE.MathUtils.radToDeg(2 * Math.atan(height / (2 * focal)));
    this.camera.position.set(0, 0, 0);
    this.camera.up.set(0, 1, 0);
    const box = new THREE.Box3().setFromObject(this.content);
    const centre = box.isEmpty() ? new THREE.Vector3(0, 0, -3) : box.getCenter(new THREE.Vector3());
    this.camera.near = 0.01;
    this.camera.far = Math.max(100, centre.length() * 10);
    this.controls.target.copy(centre);
    this.controls.update();
    this.home = { position: this.camera.position.clone(), target: centre.clone() };
    this.resize();
  }

  resetView() {
    if (!this.home) return;
    this.camera.position.copy(this.home.position);
    this.controls.target.copy(this.home.target);
    this.controls.update();
    this.render();
  }

  // The key-frame times of the animation, or [] for a still mesh.
  frameTimes() {
    if (!this.clip || this.clip.tracks.length === 0) return [];
    return Array.from(this.clip.tracks[0].times);
  }

  showTime(seconds) {
    if (!this.mixer) return;
    this.mixer.setTime(seconds);
    this.render();
  }

  resize() {
    const { clientWidth: w, clientHeight: h } = this.canvas;
    if (w === 0 || h === 0) return;
    this.renderer.setSize(w, h, false);
    this.camera.aspect = w / h;
    this.camera.updateProjectionMatrix();
    this.render();
  }

  render() {
    this.renderer.render(this.scene, this.camera);
  }
}
