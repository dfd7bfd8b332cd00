// twinfer's page: pick a model (GET v1/models), send it an image (POST v1/models/{name}/{task})
// and draw the answer. Every URL is relative to the page, so it works below any route prefix.
"use strict";

{
  const $ = (id) => document.getElementById(id);
  const SVG_NS = "http://www.w3.org/2000/svg";
  const LABEL_PX = 13; // box labels' size on screen, whatever the photo's scale

  const state = {
    apiKey: "", // memory only: never stored, gone on reload
    models: new Map(), // served name -> GET v1/models entry
    file: null,
    photoUrl: "",
    size: null, // [width, height] of the photo as the browser decoded it
    detections: null, // the detect answer's detections, filtered by the slider as it moves
    controller: null, // the request in flight, aborted when a newer one starts
  };

  class ApiError extends Error {
    constructor(code, message, status) {
      super(message);
      this.code = code;
      this.status = status;
    }
  }

  // ---- HTTP ---------------------------------------------------------------------------------
  async function call(url, options = {}) {
    const headers = { ...(options.headers || {}) };
    if (state.apiKey) headers.Authorization = `Bearer ${state.apiKey}`;
    let response;
    try {
      response = await fetch(url, { ...options, headers });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError("network", `Could not reach the server (${error.message}).`, 0);
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON: an answer from a proxy in front of the app, e.g. a timeout page
    }
    if (!response.ok) {
      const error = body && body.error;
      if (error) throw new ApiError(error.code, error.message, response.status);
      throw new ApiError(`http_${response.status}`, `The server answered ${response.status} ${response.statusText}.`, response.status);
    }
    return body;
  }

  // ---- messages -----------------------------------------------------------------------------
  function setStatus(text) {
    $("status").textContent = text;
  }

  function showError(error) {
    const box = $("error");
    const code = document.createElement("span");
    code.className = "code";
    code.textContent = error.code || "error";
    const message = document.createElement("span");
    message.className = "message";
    message.textContent = error.message;
    box.replaceChildren(code, document.createTextNode(": "), message);
    box.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").replaceChildren();
  }

  function showKeyForm() {
    $("key-form").hidden = false;
    $("api-key").focus();
  }

  // ---- models -------------------------------------------------------------------------------
  async function loadModels() {
    setStatus("Loading models…");
    try {
      const { models } = await call("v1/models");
      fillModels(models);
      clearError();
      setStatus(`${models.length} model${models.length === 1 ? "" : "s"} served here.`);
    } catch (error) {
      setStatus("");
      showError(error);
      if (error.status === 401) showKeyForm();
    }
  }

  function fillModels(models) {
    const select = $("model");
    const previous = select.value;
    state.models = new Map(models.map((m) => [m.name, m]));
    const groups = new Map();
    for (const m of models) {
      if (!groups.has(m.task)) {
        const group = document.createElement("optgroup");
        group.label = m.task;
        groups.set(m.task, group);
      }
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = m.name === m.model ? m.name : `${m.name} (${m.model})`;
      groups.get(m.task).append(option);
    }
    select.replaceChildren(...groups.values());
    select.disabled = models.length === 0;
    if (state.models.has(previous)) select.value = previous;
    modelChanged();
  }

  function selectedModel() {
    return state.models.get($("model").value) || null;
  }

  function modelChanged() {
    const model = selectedModel();
    $("top-k-field").hidden = !model || model.task !== "classify";
    $("threshold-field").hidden = !model || model.task !== "detect";
    $("model-info").textContent = model ? describe(model) : "";
    updateRunButton();
    if (model && state.file) run();
  }

  function describe(m) {
    const size = m.task === "embed" ? `${m.dim} dimensions` : `${m.labels} classes`;
    return `${m.task} · ${m.model} · ${size} · ${m.device} · ${m.precision}`;
  }

  // ---- running a model ----------------------------------------------------------------------
  const TASKS = {
    classify: { params: () => ({ top_k: $("top-k").value }), render: renderClassify },
    // every detection the model gives; the slider filters them here, without asking again
    detect: { params: () => ({ score_threshold: 0 }), render: renderDetect },
    embed: { params: () => ({}), render: renderEmbed },
  };

  function chooseFile(file) {
    if (!file) return;
    state.file = file;
    if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
    state.photoUrl = URL.createObjectURL(file);
    state.size = null;
    $("photo").src = state.photoUrl;
    $("photo").alt = `The chosen image, ${file.name}`;
    updateRunButton();
    run();
  }

  function updateRunButton() {
    $("run").disabled = !state.file || !selectedModel();
  }

  async function run() {
    const model = selectedModel();
    const file = state.file;
    if (!model || !file) return;
    if (state.controller) state.controller.abort();
    const controller = (state.controller = new AbortController());
    const task = TASKS[model.task];
    const query = new URLSearchParams(task ? task.params() : {});
    const url = `v1/models/${encodeURIComponent(model.name)}/${encodeURIComponent(model.task)}?${query}`;
    clearError();
    clearAnswer();
    $("result").setAttribute("aria-busy", "true");
    setStatus(`Sending ${file.name} to ${model.name}…`);
    const started = performance.now();
    try {
      const body = await call(url, {
        method: "POST",
        body: file,
        headers: { "Content-Type": "application/octet-stream" },
        signal: controller.signal,
      });
      await showPhoto();
      (task ? task.render : renderRaw)(body);
      $("result").dataset.task = model.task;
      $("result").hidden = false;
      setStatus(`${model.name} answered ${file.name} in ${Math.round(performance.now() - started)} ms.`);
    } catch (error) {
      if (error.name === "AbortError") return;
      $("result").hidden = true;
      setStatus("");
      showError(error);
      if (error.status === 401) showKeyForm();
    } finally {
      if (state.controller === controller) {
        state.controller = null;
        $("result").removeAttribute("aria-busy");
      }
    }
  }

  function clearAnswer() {
    delete $("result").dataset.task;
    state.detections = null;
    for (const id of ["predictions", "detections", "embedding", "raw"]) $(id).hidden = true;
    $("boxes").replaceChildren();
    $("caption").textContent = "";
  }

  async function showPhoto() {
    const photo = $("photo");
    try {
      await photo.decode();
      state.size = [photo.naturalWidth, photo.naturalHeight];
      $("figure").hidden = false;
    } catch {
      state.size = null; // a format this browser cannot show (the server may still read it)
      $("figure").hidden = true;
    }
  }

  // ---- answers ------------------------------------------------------------------------------
  function renderClassify(body) {
    const list = $("predictions");
    list.replaceChildren(
      ...body.predictions.map((p) => {
        const item = document.createElement("li");
        const label = span("label", p.label);
        const track = span("track");
        track.setAttribute("aria-hidden", "true");
        const fill = span("fill");
        fill.style.width = `${(p.score * 100).toFixed(2)}%`;
        track.append(fill);
        const score = span("score", percent(p.score));
        score.title = `score ${p.score}, class index ${p.index}`;
        item.append(label, track, score);
        return item;
      }),
    );
    list.hidden = false;
    $("caption").textContent = `Top ${body.predictions.length} classes from ${body.model}.`;
  }

  function renderDetect(body) {
    state.detections = body.detections;
    drawDetections();
    $("detections").hidden = false;
  }

  function drawDetections() {
    const threshold = Number($("threshold").value);
    $("threshold-value").textContent = threshold.toFixed(2);
    if (!state.detections) return;
    const shown = state.detections.filter((d) => d.score >= threshold);
    const svg = $("boxes");
    svg.replaceChildren();
    if (state.size) {
      // the viewBox is the image's own pixels and the SVG covers the displayed image exactly,
      // so boxes in original pixels land where they belong at any displayed size
      const [width, height] = state.size;
      svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
      const font = LABEL_PX * (width / Math.max($("photo").clientWidth, 1)); // in image pixels
      for (const d of shown) svg.append(box(d, font));
    }
    svg.dataset.count = String(state.size ? shown.length : 0);
    svg.setAttribute("aria-label", `${shown.length} detection boxes drawn over the image`);
    $("detections").querySelector("tbody").replaceChildren(
      ...shown.map((d) => {
        const row = document.createElement("tr");
        row.append(cell(d.label), cell(d.score.toFixed(3), "num"), cell(`[${d.box.map((v) => Math.round(v)).join(", ")}]`));
        return row;
      }),
    );
    $("caption").textContent = `${shown.length} of ${state.detections.length} detections score at least ${threshold.toFixed(2)}.`;
    $("detections-summary").textContent = `The ${shown.length} detection${shown.length === 1 ? "" : "s"} as a table`;
  }

  function box(d, font) {
    const [x1, y1, x2, y2] = d.box;
    const colour = `hsl(${(d.index * 47) % 360} 85% 42%)`;
    const text = `${d.label} ${d.score.toFixed(2)}`;
    const group = svgElement("g", { class: "detection" });
    const title = svgElement("title");
    title.textContent = text;
    const baseline = y1 >= font * 1.3 ? y1 - font * 0.3 : y1 + font; // above the box when there is room
    group.append(
      title,
      svgElement("rect", { class: "box", x: x1, y: y1, width: x2 - x1, height: y2 - y1, stroke: colour }),
      svgElement("rect", { class: "tag", x: x1, y: baseline - font, width: text.length * font * 0.6 + font * 0.4, height: font * 1.3, fill: colour }),
    );
    const label = svgElement("text", { x: x1 + font * 0.2, y: baseline, "font-size": font });
    label.textContent = text;
    group.append(label);
    return group;
  }

  function renderEmbed(body) {
    const values = body.embedding;
    const norm = Math.sqrt(values.reduce((sum, v) => sum + v * v, 0));
    $("embedding-summary").textContent = `${body.dim} dimensions, L2 norm ${norm.toFixed(3)}.`;
    $("embedding-head").textContent = `[${values.slice(0, 8).map((v) => v.toFixed(4)).join(", ")}${values.length > 8 ? ", …" : ""}]`;
    const top = Math.max(...values.map(Math.abs), 1e-9);
    const line = svgElement("polyline", { points: values.map((v, i) => `${i},${(top - v).toFixed(5)}`).join(" ") });
    const spark = $("sparkline");
    spark.setAttribute("viewBox", `0 0 ${Math.max(values.length - 1, 1)} ${2 * top}`);
    spark.setAttribute("aria-label", `The ${body.dim} values of the embedding, in order`);
    spark.replaceChildren(line);
    $("embedding").hidden = false;
    $("caption").textContent = `Embedding from ${body.model}.`;
  }

  function renderRaw(body) {
    $("raw").textContent = JSON.stringify(body, null, 1);
    $("raw").hidden = false;
  }

  // ---- small helpers ------------------------------------------------------------------------
  function span(className, text) {
    const element = document.createElement("span");
    element.className = className;
    if (text !== undefined) element.textContent = text;
    return element;
  }

  function cell(text, className) {
    const element = document.createElement("td");
    element.textContent = text;
    if (className) element.className = className;
    return element;
  }

  function svgElement(name, attributes = {}) {
    const element = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
    return element;
  }

  function percent(score) {
    return `${(score * 100).toFixed(1)} %`;
  }

  // ---- wiring -------------------------------------------------------------------------------
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.apiKey = $("api-key").value.trim();
    loadModels();
  });
  $("run-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
  $("model").addEventListener("change", modelChanged);
  $("top-k").addEventListener("change", run);
  $("threshold").addEventListener("input", drawDetections);
  new ResizeObserver(drawDetections).observe($("photo")); // labels keep their size on screen
  $("file").addEventListener("change", () => chooseFile($("file").files[0]));

  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) return;
    try {
      $("file").files = files; // the input then names the dropped file
    } catch {
      // read-only in some browsers: the dropped file is used all the same
    }
    chooseFile(files[0]);
  });
  // a file dropped outside the box must not make the browser leave the page to open it
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());

  loadModels();
}
