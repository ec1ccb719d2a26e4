// The page of `bsmamba2 serve`: choose files, create a job, upload each file, start it,
// poll its progress, then play, picture and download the stems. No libraries, no build.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const POLL_MS = 400;
let info = null;
let chosen = [];

function element(tag, attributes = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value);
  }
  el.append(...children);
  return el;
}

// Every request that changes something carries X-BSMamba2 (the server's CSRF check).
async function api(method, url, body = undefined, headers = {}) {
  const response = await fetch(url, { method, body, headers: { "X-BSMamba2": "1", ...headers } });
  const data = response.status === 204 ? {} : await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(data.error || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

const seconds = (s) => (s >= 60 ? `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, "0")}` : `${s.toFixed(1)} s`);
const megabytes = (bytes) => `${Math.round(bytes / 2 ** 20)} MB`;
const minutes = (s) => (s >= 60 ? `${+(s / 60).toFixed(1)} min` : `${s} s`);

// -- choosing files and options ------------------------------------------------------------

function choose(files) {
  chosen.push(...files);
  $("#chosen").replaceChildren(...chosen.map((f) => element("li", { text: `${f.name} (${megabytes(f.size)})` })));
  $("#separate").disabled = chosen.length === 0;
  $("#error").textContent = "";
}

// "90", "1:30" or "0:01:30" in seconds; empty: null.
function parseTime(text, what) {
  if (!text.trim()) return null;
  const fields = text.trim().split(":").map(Number);
  if (fields.length > 3 || fields.some((f) => !Number.isFinite(f) || f < 0)) {
    throw new Error(`preview ${what}: expected seconds such as 90 or 1:30, got "${text}"`);
  }
  return fields.reduce((total, f) => total * 60 + f, 0);
}

function options() {
  const stems = [...document.querySelectorAll("#stems input:checked")].map((box) => box.value);
  const value = (id) => ($(id).disabled ? null : $(id).value || null);
  const bitrate = value("#bitrate");
  return { model: $("#model-choice").value, stems, format: $("#format").value, bit_depth: value("#bit-depth"), bitrate: bitrate && Number(bitrate),
    picture: $("#picture").checked, tta: $("#tta").checked, start: parseTime($("#start").value, "start") || 0,
    duration: parseTime($("#duration").value, "length") };
}

// Bit depths are for WAV and FLAC, bitrates for MP3 and Opus.
function formatChanged() {
  const format = $("#format").value;
  $("#bit-depth").disabled = !info.bit_depth_formats.includes(format);
  $("#bitrate").disabled = !info.bitrate_formats.includes(format);
}

// "tiny — mamba2, 13 MB, loaded": what the picker says of each model before it is chosen.
function describe(model) {
  const where = model.loaded ? "loaded" : model.cached ? "cached" : "downloaded on first use";
  const size = model.size === null ? "" : model.size < 2 ** 20 ? `, ${Math.ceil(model.size / 1024)} KB` : `, ${megabytes(model.size)}`;
  return `${model.name} — ${model.mixer}${size}, ${where}`;
}

// After a job the server may hold other models loaded: the picker's labels follow.
async function refreshModels() {
  const fresh = await api("GET", "/api/info").catch(() => null);
  if (!fresh) return;
  info.models = fresh.models;
  for (const option of $("#model-choice").options) {
    option.textContent = describe(info.models.find((m) => m.name === option.value));
  }
}

// The stems to choose from are the chosen model's.
function modelChanged() {
  const model = info.models.find((m) => m.name === $("#model-choice").value);
  $("#stems").replaceChildren(element("span", { class: "label", text: "Stems" }), ...model.stems.map((stem) =>
    element("label", {}, element("input", { type: "checkbox", value: stem, checked: "" }), ` ${stem}`)));
  $("#model").textContent = `model ${model.name} on ${info.device}`;
}

async function setUp() {
  info = await api("GET", "/api/info");
  $("#model-choice").append(...info.models.map((m) => element("option", { value: m.name, text: describe(m) })));
  $("#model-choice").value = info.model;
  $("#model-choice").addEventListener("change", modelChanged);
  $("#format").append(...info.formats.map((f) => element("option", { value: f, text: f })));
  $("#bit-depth").append(...info.bit_depths.map((d) => element("option", { value: d, text: d })));
  $("#bitrate").append(...[96, 128, 192, 256, 320].map((k) => element("option", { value: k, text: `${k} kbps` })));
  $("#picture").disabled = !info.picture;  // needs the plot extra
  $("#tta").checked = info.tta;
  $("#tta").disabled = !info.tta_choice;
  $("#format").addEventListener("change", formatChanged);
  formatChanged();
  $("#files").accept = ["audio/*", ...info.suffixes].join(",");
  const limits = info.limits;
  $("#limits").textContent =
    `Limits of this server: ${megabytes(limits.max_bytes)} and ${minutes(limits.max_seconds)} per file, ` +
    `${limits.max_files} files per job. Results are deleted once their zip is downloaded, ` +
    `${minutes(limits.keep_seconds)} after their job finished, or when the server stops.`;
  const drop = $("#drop");
  $("#files").addEventListener("change", (event) => { choose([...event.target.files]); event.target.value = ""; });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    choose([...event.dataTransfer.files]);
  });
  $("#separate").addEventListener("click", separate);
  modelChanged();  // last: the page is ready
}

// -- one job -------------------------------------------------------------------------------

class JobCard {
  constructor(files, model) {
    this.rows = files.map((file) => ({ file, index: null, el: element("div", { class: "file" }), shown: false }));
    this.status = element("span", { class: "status", text: "uploading…" });
    this.message = element("p", { class: "error" });
    this.actions = element("div", { class: "actions" });
    const title = element("span", { class: "title", text: `${files.length} file(s), model ${model}` });
    this.el = element("article", { class: "job" }, element("h2", {}, title, this.status),
      this.message, ...this.rows.map((row) => row.el), this.actions);
    for (const row of this.rows) row.el.append(element("div", { class: "name", text: row.file.name }), element("div", { class: "line" }));
    $("#jobs").prepend(this.el);
  }

  line(row, text, error = false) {
    const line = $(".line", row.el);
    line.className = error ? "line error" : "line";
    line.textContent = text;
  }

  async run(opts) {
    const job = await api("POST", "/api/jobs", JSON.stringify(opts), { "Content-Type": "application/json" });
    this.id = job.id;
    for (const row of this.rows) {
      if (row.file.size > info.limits.max_bytes) {
        this.line(row, `${row.file.name}: larger than the server's limit of ${megabytes(info.limits.max_bytes)}`, true);
        continue;
      }
      this.line(row, "uploading…");
      try {
        const name = encodeURIComponent(row.file.name);
        row.index = (await api("PUT", `/api/jobs/${job.id}/files?name=${name}`, row.file)).index;
        this.line(row, "waiting");
      } catch (error) {
        this.line(row, error.message, true);
      }
    }
    if (!this.rows.some((row) => row.index !== null)) {
      this.status.textContent = "nothing to separate";
      await api("DELETE", `/api/jobs/${job.id}`);
      return;
    }
    await api("POST", `/api/jobs/${job.id}/start`);
    this.button("Cancel", "cancelled");
    await this.poll();
  }

  async poll() {
    for (;;) {
      let state;
      try {
        state = await api("GET", `/api/jobs/${this.id}`);
      } catch (error) {
        if (error.status === 404) this.gone("removed");
        else this.message.textContent = error.message;
        return;
      }
      this.update(state);
      if (state.status === "done" || state.status === "cancelled") return;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  update(state) {
    if (this.over) return;
    const labels = { queued: state.ahead ? `queued: ${state.ahead} job(s) ahead` : "queued: next", running: "separating…",
      done: "done", cancelled: "cancelled" };
    this.status.textContent = labels[state.status] || state.status;
    const byIndex = new Map(this.rows.filter((row) => row.index !== null).map((row) => [row.index, row]));
    for (const file of state.files) {
      const row = byIndex.get(file.index);
      if (file.status === "separating") this.progress(row, file);
      else if (file.status === "error") this.line(row, file.error, true);
      else if (file.status === "cancelled") this.line(row, "cancelled");
      else if (file.status === "done" && !row.shown) this.results(row, file);
    }
    if (state.status === "done" && !this.finished) {
      this.finished = true;
      refreshModels();
      this.actions.replaceChildren();
      if (state.files.some((f) => f.status === "done")) {
        const zip = element("a", { class: "button", href: `/api/jobs/${this.id}/zip`, download: "", text: "Download all (zip)" });
        zip.addEventListener("click", () => this.untilGone());
        this.actions.append(zip);
      }
      this.button("Delete from server", "deleted");
    }
  }

  // Cancel (while queued or running) and delete (when done) are the same request.
  button(text, outcome) {
    const button = element("button", { type: "button", class: "quiet", text });
    button.addEventListener("click", async () => {
      await api("DELETE", `/api/jobs/${this.id}`).catch(() => {});
      this.gone(outcome);
    });
    this.actions.append(button);
  }

  // The server deletes a job once its zip has been sent: show that when it happened.
  async untilGone() {
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      try {
        await api("GET", `/api/jobs/${this.id}`);
      } catch (error) {
        if (error.status === 404) return this.gone("downloaded");
      }
    }
  }

  progress(row, file) {
    let bar = $("progress", row.el);
    if (!bar) row.el.append((bar = element("progress", { max: "1" })));
    const known = file.total !== null && file.total > 0;
    if (known) bar.value = Math.min(1, file.done / file.total);
    else bar.removeAttribute("value");
    const of = known ? ` / ${seconds(file.total)}` : "";
    this.line(row, `${file.stage || "starting"}: ${seconds(file.done)}${of}`);
  }

  async results(row, file) {
    row.shown = true;
    $("progress", row.el)?.remove();
    const ratio = file.done / file.seconds;
    const speed = file.seconds > 0 ? ` in ${seconds(file.seconds)} (${ratio >= 10 ? ratio.toFixed(0) : ratio.toPrecision(2)}× real time)` : "";
    this.line(row, `${seconds(file.done)} of audio${speed}`);
    for (const note of file.notes) row.el.append(element("p", { class: "note", text: note }));
    const peaks = await api("GET", `/api/jobs/${this.id}/files/${file.index}/peaks`);
    const loudest = Math.max(1e-6, ...Object.values(peaks).flat());  // stems drawn to one scale
    for (const stem of file.stems) {
      const url = `/api/jobs/${this.id}/files/${file.index}/stems/${encodeURIComponent(stem)}`;
      const audio = element("audio", { controls: "", preload: "metadata", src: url, "data-stem": stem });
      const canvas = element("canvas", { width: "1200", height: "96", "aria-label": `waveform of ${stem}` });
      const link = element("a", { class: "button quiet", href: `${url}?download=1`, download: "", text: "Download" });
      row.el.append(element("div", { class: "stem" }, element("span", { text: stem }), canvas, link, audio));
      waveform(canvas, (peaks[stem] || []).map((peak) => peak / loudest), audio);
    }
    if (file.picture) {
      row.el.append(element("img", { class: "picture", alt: `spectrograms of ${file.name}`,
        src: `/api/jobs/${this.id}/files/${file.index}/picture` }));
    }
  }

  gone(why) {
    if (this.over) return;
    this.over = true;
    this.status.textContent = why;
    this.actions.replaceChildren();
    for (const el of this.el.querySelectorAll(".stem, .picture")) el.remove();
    this.message.className = "";
    this.message.textContent = "The server has deleted this job's files.";
  }
}

// Bars of each stretch's peak (0..1); the played part darker; a click seeks there.
function waveform(canvas, peaks, audio) {
  const context = canvas.getContext("2d");
  const draw = () => {
    const { width, height } = canvas;
    const played = audio.duration ? audio.currentTime / audio.duration : 0;
    context.clearRect(0, 0, width, height);
    const bar = width / Math.max(1, peaks.length);
    peaks.forEach((peak, i) => {
      const h = Math.max(1, Math.min(1, peak) * height);
      context.fillStyle = i / peaks.length < played ? "#1f4e85" : "#9fb7d3";
      context.fillRect(i * bar, (height - h) / 2, Math.max(1, bar - 0.5), h);
    });
  };
  for (const event of ["timeupdate", "loadedmetadata", "seeked"]) audio.addEventListener(event, draw);
  canvas.addEventListener("click", (event) => {
    if (!audio.duration) return;
    const box = canvas.getBoundingClientRect();
    audio.currentTime = ((event.clientX - box.left) / box.width) * audio.duration;
    audio.play();
  });
  draw();
}

async function separate() {
  let opts;
  try {
    opts = options();
  } catch (error) {
    $("#error").textContent = error.message;
    return;
  }
  const files = chosen;
  chosen = [];
  choose([]);
  const card = new JobCard(files, opts.model);
  try {
    await card.run(opts);
  } catch (error) {
    card.status.textContent = "failed";
    card.message.textContent = error.message;
  }
}

setUp().catch((error) => { $("#error").textContent = `cannot reach the server: ${error.message}`; });
