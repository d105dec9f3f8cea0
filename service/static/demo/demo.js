// The demo page: submit a photo to POST /recover, poll GET /jobs/{id}, show the result.
// It uses the API as any client does (ARCHITECTURE.md §5). URL parameters:
//   ?example=1  run the bundled example photo on load (for a one-look screenshot)
//   ?job=ID     show a job that was already submitted (the page sets it once it has one)
// <body data-state> tells a test where the page is: idle, running, done or failed.
import { Viewer, personColor, webglAvailable } from "./viewer.js";

const POLL_MS = 400;
const KEY_STORAGE = "metahmr.apiKey";
const $ = (id) => document.getElementById(id);

// A plain-words lead for each error status; the API's own message follows it.
const STATUS_WORDS = {
  400: "The request could not be read",
  401: "This service needs a valid API key",
  404: "Not found",
  409: "Not ready yet",
  413: "The file is too large",
  415: "That file is not a picture the service can read (JPEG, PNG or WebP)",
  422: "Some input is not valid",
  429: "Too many submissions",
  500: "The service failed on its side",
  503: "The service is not ready (its queue or job store is down); try again in a moment",
};

class ApiProblem extends Error {}

let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";
let viewer = null;
let current = null; // { jobId, stop }
let blobUrls = [];

function setState(state) {
  document.body.dataset.state = state;
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
  if (text) setState("failed");
}

// fetch() on this server with the API key; an error response becomes an ApiProblem whose
// message a person can read.
async function api(path, init = {}) {
  const headers = new Headers(init.headers || {});
  if (apiKey) headers.set("X-API-Key", apiKey);
  let response;
  try {
    response = await fetch(path, { ...init, headers });
  } catch (err) {
    throw new ApiProblem(
      `Could not reach the service at ${location.origin} (${err.message}). Is it running?`);
  }
  if (response.ok) return response;
  let message = "";
  try {
    const body = await response.json();
    message = body?.error?.message || JSON.stringify(body);
  } catch {
    message = response.statusText;
  }
  if (response.status === 401) askForKey(apiKey ? "That API key was not accepted." : "");
  const lead = STATUS_WORDS[response.status] || `The service answered ${response.status}`;
  const retry = response.headers.get("Retry-After");
  const wait = response.status === 429 && retry ? ` Try again in ${retry} s.` : "";
  throw new ApiProblem(`${lead}: ${message}.${wait}`.replace(/\.\./g, "."));
}

function askForKey(why) {
  $("key-form").hidden = false;
  $("key-why").textContent = why || "This service needs an API key.";
  $("api-key").focus();
}

// --- the form -------------------------------------------------------------------------

function chosenFile() {
  return $("image").files[0] || null;
}

function showChosen(file) {
  // A video's result is best seen moving: ask for animation.glb.
  if (file && file.type.startsWith("video/")) {
    document.querySelector('input[name="return"][value="animation"]').checked = true;
  }
  const chosen = $("chosen");
  chosen.textContent = file ? `${file.name} (${Math.round(file.size / 1024)} kB)` : "No file chosen.";
  if (file && file.type.startsWith("image/")) {
    const img = document.createElement("img");
    img.alt = "The chosen photo";
    img.src = URL.createObjectURL(file);
    chosen.append(img);
  }
}

function setFile(file) {
  const transfer = new DataTransfer();
  transfer.items.add(file);
  $("image").files = transfer.files;
  showChosen(file);
}

async function readOptions() {
  const options = {};
  const kpFile = $("keypoints").files[0];
  if (kpFile) {
    let parsed;
    try {
      parsed = JSON.parse(await kpFile.text());
    } catch (err) {
      throw new ApiProblem(`The keypoints file ${kpFile.name} is not valid JSON: ${err.message}`);
    }
    const list = Array.isArray(parsed) ? parsed : [parsed];
    options.people = list.map((keypoints) => ({ keypoints }));
  }
  const steps = $("steps").value.trim();
  if (steps !== "") {
    const n = Number(steps);
    if (!Number.isInteger(n) || n < 0 || n > 30) {
      throw new ApiProblem(`TTO steps must be a whole number from 0 to 30, not "${steps}".`);
    }
    options.tto = { steps: n };
  }
  const focal = $("focal").value.trim();
  if (focal !== "") {
    const f = Number(focal);
    if (!(f > 0)) throw new ApiProblem(`The focal length must be a positive number of pixels.`);
    options.focal_length = f;
  }
  options.return = [...document.querySelectorAll('input[name="return"]:checked')].map((c) => c.value);
  return options;
}

async function submit(file, options) {
  stopCurrent();
  showError("");
  $("result").hidden = true;
  setState("running");
  showStatus("Uploading…", 0);
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("options", JSON.stringify(options));
  const response = await api("recover", { method: "POST", body: form });
  const accepted = await response.json();
  follow(accepted.job_id);
}

// --- the job --------------------------------------------------------------------------

function showStatus(text, fraction) {
  $("status").hidden = false;
  $("status-text").textContent = text;
  const bar = $("progress");
  if (fraction === null) bar.removeAttribute("value");
  else bar.value = fraction;
}

function describe(job) {
  const p = job.progress;
  const where = p ? ` · ${p.stage} ${p.step}/${p.total}` : "";
  return `Job ${job.job_id.slice(0, 8)}: ${job.status}${where}`;
}

function stopCurrent() {
  if (current) current.stop = true;
  current = null;
  $("cancel").hidden = true;
}

function follow(jobId) {
  const me = { jobId, stop: false };
  current = me;
  setState("running");
  $("cancel").hidden = false;
  const url = new URL(location.href);
  url.searchParams.delete("example");
  url.searchParams.set("job", jobId);
  history.replaceState(null, "", url);
  const tick = async () => {
    if (me.stop) return;
    let job;
    try {
      job = await (await api(`jobs/${encodeURIComponent(jobId)}`)).json();
    } catch (err) {
      $("cancel").hidden = true;
      showError(err.message);
      return;
    }
    if (me.stop) return;
    const p = job.progress;
    showStatus(describe(job), job.status === "succeeded" ? 1 : p && p.total ? p.step / p.total : null);
    if (job.status === "queued" || job.status === "running") {
      setTimeout(tick, POLL_MS);
      return;
    }
    $("cancel").hidden = true;
    current = null;
    if (job.status === "succeeded") {
      await showResult(job).catch((err) => showError(`Could not show the result: ${err.message}`));
    } else if (job.status === "failed") {
      const e = job.error || {};
      showError(`The job failed: ${e.message || "no reason given"}${e.code ? ` (${e.code})` : ""}.`);
    } else {
      showError(`The job was ${job.status}.`);
    }
  };
  tick();
}

async function cancel() {
  if (!current) return;
  const { jobId } = current;
  stopCurrent();
  try {
    await api(`jobs/${encodeURIComponent(jobId)}`, { method: "DELETE" });
    showStatus(`Job ${jobId.slice(0, 8)}: canceled`, 0);
    setState("idle");
  } catch (err) {
    showError(err.message);
  }
}

// --- the result -----------------------------------------------------------------------

function fmt(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function mean(values) {
  const known = values.filter((v) => v !== null && v !== undefined);
  return known.length ? known.reduce((a, b) => a + b, 0) / known.length : null;
}

function tableRow(colour, label, cells) {
  const row = document.createElement("tr");
  const who = document.createElement("td");
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  swatch.style.background = personColor(colour);
  who.append(swatch, label);
  row.append(who);
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    row.append(td);
  }
  return row;
}

function fitTable(result) {
  const body = $("people").querySelector("tbody");
  body.replaceChildren();
  (result.people || []).forEach((person, i) => {
    const fit = person.fit || {};
    body.append(tableRow(i, `Person ${i + 1}`, [
      person.keypoint_source || "–",
      fit.skipped ? `0 (${fit.skipped})` : fmt(fit.steps_run, 0),
      fmt(fit.loss_start, 5),
      fmt(fit.loss_end, 5),
      fmt(fit.reprojection_error_px, 1),
    ]));
  });
  // A video: one row per track, its per-frame fits averaged.
  (result.tracks || []).forEach((track, i) => {
    const fits = track.people.map((p) => p.fit || {});
    body.append(tableRow(i, `Track ${track.track_id} (${track.frames.length} frames, mean)`, [
      track.people[0]?.keypoint_source || "–",
      fmt(mean(fits.map((f) => f.steps_run)), 1),
      fmt(mean(fits.map((f) => f.loss_start)), 5),
      fmt(mean(fits.map((f) => f.loss_end)), 5),
      fmt(mean(fits.map((f) => f.reprojection_error_px)), 1),
    ]));
  });
  const m = result.model || {};
  const total = result.timings_ms?.total;
  const v = result.video;
  $("model").textContent =
    `Model ${m.name || "?"} ${m.version || ""}, body model ${m.body_model || "?"}, ` +
    `TTO scope ${m.tto_scope || "?"}; ${v ? "video" : "image"} ` +
    `${result.image?.width}×${result.image?.height} px` +
    (v ? `, ${v.frames} frames at ${fmt(v.fps, 1)} fps` : "") +
    (total !== undefined ? `; ${Math.round(total)} ms in the worker.` : ".");
}

function addDownload(name, href, note) {
  const li = document.createElement("li");
  const a = document.createElement("a");
  a.href = href;
  a.download = name;
  a.textContent = name;
  li.append(a);
  if (note) li.append(` ${note}`);
  $("downloads").append(li);
}

async function fileBlob(path) {
  const blob = await (await api(path)).blob();
  const url = URL.createObjectURL(blob);
  blobUrls.push(url);
  return { blob, url };
}

async function showResult(job) {
  for (const url of blobUrls) URL.revokeObjectURL(url);
  blobUrls = [];
  const result = job.result || {};
  const files = job.links?.files || {};
  $("result").hidden = false;
  $("downloads").replaceChildren();
  fitTable(result);
  const json = new Blob([JSON.stringify(result, null, 2)], { type: "application/json" });
  const jsonUrl = URL.createObjectURL(json);
  blobUrls.push(jsonUrl);
  addDownload("result.json", jsonUrl, "(SMPL parameters, camera, keypoints, fit)");
  // Files are fetched with the key (an <img src> could not send it) and shown from blobs.
  const fetched = {};
  for (const [name, href] of Object.entries(files)) {
    const path = href.replace(/^\//, "");
    fetched[name] = await fileBlob(path);
    addDownload(name, fetched[name].url);
  }
  $("overlay-figure").hidden = !fetched["overlay.png"];
  if (fetched["overlay.png"]) {
    const img = $("overlay");
    const loaded = new Promise((resolve, reject) => {
      img.onload = resolve;
      img.onerror = () => reject(new Error("the overlay picture did not decode"));
    });
    img.src = fetched["overlay.png"].url;
    await loaded;
  }
  // A video's bodies move (animation.glb); a photo's stand still (mesh.glb).
  const glb = (result.video && fetched["animation.glb"]) || fetched["mesh.glb"] ||
    fetched["animation.glb"];
  const note = $("viewer-note");
  note.hidden = true;
  $("viewer-figure").hidden = !glb;
  if (glb && !webglAvailable()) {
    $("viewer-figure").hidden = true;
    note.hidden = false;
    note.textContent = "This browser cannot show 3D (WebGL is off); download the mesh below.";
  } else if (glb) {
    viewer = viewer || new Viewer($("viewer"));
    const trackColour = new Map((result.tracks || []).map((t, i) => [t.track_id, i]));
    const colourOf = (kind, n) => (kind === "track" ? trackColour.get(n) : n);
    const shown = await viewer.show(await glb.blob.arrayBuffer(), result.image, colourOf);
    frameSlider(shown.animated ? videoFrameTimes(result.video) : []);
  } else if (!result.people?.length) {
    note.hidden = false;
    note.textContent = "No people in the result.";
  }
  setState("done");
}

let playing = null;

// The time of each video frame in animation.glb (key k plays at frames[k] / fps).
function videoFrameTimes(video) {
  if (!video || !(video.fps > 0)) return viewer.frameTimes();
  return Array.from({ length: video.frames }, (_, i) => i / video.fps);
}

function frameSlider(times) {
  const slider = $("frame");
  const count = times.length;
  $("frames").hidden = count < 2;
  clearInterval(playing);
  playing = null;
  if (count < 2) return;
  slider.max = String(count - 1);
  slider.value = "0";
  const show = (i) => {
    slider.value = String(i);
    $("frame-number").textContent = String(i);
    viewer.showTime(times[i]);
  };
  slider.oninput = () => show(Number(slider.value));
  const fps = count > 1 ? (count - 1) / (times[count - 1] - times[0] || 1) : 25;
  const play = () => {
    playing = setInterval(() => show((Number(slider.value) + 1) % count), 1000 / fps);
    $("play").textContent = "Pause";
  };
  $("play").onclick = () => {
    if (playing) {
      clearInterval(playing);
      playing = null;
      $("play").textContent = "Play";
    } else {
      play();
    }
  };
  show(0);
  $("play").textContent = "Play";
}

// --- wiring ---------------------------------------------------------------------------

function wire() {
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer.files[0];
    if (file) setFile(file);
  });
  $("image").addEventListener("change", () => showChosen(chosenFile()));
  $("recover-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = chosenFile();
    if (!file) {
      showError("Choose a photo first (drop it on the box, or use the file button).");
      return;
    }
    try {
      await submit(file, await readOptions());
    } catch (err) {
      showError(err.message);
    }
  });
  $("cancel").addEventListener("click", cancel);
  $("reset-view").addEventListener("click", () => viewer && viewer.resetView());
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    apiKey = $("api-key").value.trim();
    sessionStorage.setItem(KEY_STORAGE, apiKey);
    $("key-form").hidden = true;
    showError("");
    setState("idle");
    const job = new URLSearchParams(location.search).get("job");
    if (job) follow(job);
    else if (chosenFile()) $("recover-form").requestSubmit();
  });
}

async function start() {
  wire();
  const params = new URLSearchParams(location.search);
  try {
    if (params.get("job")) {
      follow(params.get("job"));
    } else if (params.get("example")) {
      const response = await fetch("static/demo/example.jpg");
      const file = new File([await response.blob()], "example.jpg", { type: "image/jpeg" });
      setFile(file);
      await submit(file, await readOptions());
    }
  } catch (err) {
    showError(err.message);
  }
}

start();
