// The `coa serve` page: a form that starts a run (POST /v1/runs), follows its event stream
// (GET /v1/runs/{id}/events, parsed from fetch() so that it can carry the Authorization
// header) and draws each model call as a card. Everything that comes from the document, the
// model or the server goes into the page with textContent, never as markup.
"use strict";

(function () {
  const KEY_STORAGE = "coa.apiKey";
  const MAX_RECONNECTS = 5;

  const $ = (id) => document.getElementById(id);
  const form = $("run-form");
  const documentBox = $("document");
  const fileInput = $("file");
  const docInfo = $("doc-info");
  const taskSelect = $("task");
  const strategySelect = $("strategy");
  const strategyInfo = $("strategy-info");
  const questionInput = $("question");
  const questionLabel = $("question-label");
  const keyInput = $("api-key");
  const runButton = $("run");
  const cancelButton = $("cancel");
  const statusBox = $("status");
  const runIdBox = $("run-id");
  const errorBox = $("error");
  const callsList = $("calls");
  const answerBox = $("answer");
  const usageBox = $("usage");
  const supportBox = $("support");
  const citationsList = $("citations");
  const downloadButton = $("download");

  let models = [];            // GET /v1/models data
  let keyError = false;       // the error box shows a failure a (new) key may mend: 401, or no strategies
  let current = null;         // {id, controller, finished, documentText}
  const cards = new Map();    // "role:index" -> [card elements still running]

  // ---- helpers --------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function apiKey() {
    return keyInput.value.trim();
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const key = apiKey();
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  // The message of an error reply: OpenAI's {"error": {"message": ...}} shape, else the status.
  async function apiError(response) {
    let message = "";
    try {
      const body = await response.json();
      if (body && body.error) {
        message = typeof body.error === "string" ? body.error : String(body.error.message || "");
      } else if (body && body.detail) {
        message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      }
    } catch (e) {
      // not JSON
    }
    if (!message) message = "HTTP " + response.status + (response.statusText ? " " + response.statusText : "");
    return new ApiError(message, response.status);
  }

  async function api(path, options) {
    const opts = Object.assign({cache: "no-store", credentials: "same-origin"}, options || {});
    opts.headers = headers(opts.headers);
    const response = await fetch(path, opts);
    if (!response.ok) throw await apiError(response);
    return response;
  }

  function showError(message) {
    errorBox.textContent = message ? String(message) : "";
    errorBox.classList.toggle("visible", Boolean(message));
  }

  function setStatus(status) {
    const text = String(status || "idle");
    statusBox.textContent = text;
    statusBox.className = "status status-" + text.replace(/[^a-z0-9_-]/gi, "");
  }

  function formatNumber(n) {
    return typeof n === "number" && isFinite(n) ? n.toLocaleString("en-US") : "?";
  }

  function formatSeconds(s) {
    if (typeof s !== "number" || !isFinite(s)) return "";
    return s < 10 ? s.toFixed(2) + " s" : s.toFixed(1) + " s";
  }

  function safeClass(name) {
    return String(name || "call").toLowerCase().replace(/[^a-z0-9_-]/g, "-") || "call";
  }

  // ---- the form ---------------------------------------------------------------------------

  function describeDocument() {
    const text = documentBox.value;
    if (!text) {
      docInfo.textContent = "";
      return;
    }
    const words = text.trim() ? text.trim().split(/\s+/).length : 0;
    const bytes = new TextEncoder().encode(text).length;
    let info = formatNumber(words) + " words · " + formatNumber(bytes) + " bytes";
    const model = selectedModel();
    if (model && typeof model.max_document_bytes === "number" && bytes > model.max_document_bytes) {
      info += " — over the server's limit of " + formatNumber(model.max_document_bytes) + " bytes";
    }
    docInfo.textContent = info;
  }

  function selectedModel() {
    return models.find((m) => strategyName(m.id) === strategySelect.value) || null;
  }

  function strategyName(id) {
    const s = String(id || "");
    return s.startsWith("coa/") ? s.slice(4) : s;
  }

  function describeStrategy() {
    const model = selectedModel();
    if (!model) {
      strategyInfo.textContent = "";
      return;
    }
    let info = model.description ? String(model.description) : "";
    if (typeof model.window === "number") info += (info ? " · " : "") + "window " + formatNumber(model.window) + " tokens";
    strategyInfo.textContent = info;
    describeDocument();
  }

  function updateTask() {
    if (taskSelect.value === "summarize") {
      questionLabel.textContent = "Focus (optional)";
      questionInput.placeholder = "What the summary should be about, or leave empty.";
    } else {
      questionLabel.textContent = "Question";
      questionInput.placeholder = "What would you like to know about the document?";
    }
  }

  async function loadModels() {
    const previous = strategySelect.value;
    let body;
    try {
      body = await (await api("/v1/models", {headers: {Accept: "application/json"}})).json();
    } catch (e) {
      showError(e.message || String(e));
      keyError = true;
      return false;
    }
    models = Array.isArray(body && body.data) ? body.data : [];
    strategySelect.replaceChildren();
    for (const model of models) {
      const name = strategyName(model.id);
      const option = el("option", null, name);
      option.value = name;
      if (model.description) option.title = String(model.description);
      strategySelect.appendChild(option);
    }
    const names = models.map((m) => strategyName(m.id));
    if (names.includes(previous)) strategySelect.value = previous;
    else if (names.includes("coa")) strategySelect.value = "coa";
    describeStrategy();
    if (keyError) showError("");
    keyError = false;
    return true;
  }

  async function readFile() {
    const file = fileInput.files && fileInput.files[0];
    if (!file) return;
    try {
      documentBox.value = await file.text();
      describeDocument();
      docInfo.textContent = file.name + " · " + docInfo.textContent;
    } catch (e) {
      showError("Could not read " + file.name + ": " + (e.message || e));
    }
  }

  // ---- the cards --------------------------------------------------------------------------

  function resetRun() {
    callsList.replaceChildren();
    cards.clear();
    answerBox.textContent = "";
    answerBox.classList.remove("visible");
    usageBox.textContent = "";
    supportBox.textContent = "";
    citationsList.textContent = "";
    runIdBox.textContent = "";
    showError("");
    keyError = false;
    downloadButton.disabled = true;
  }

  function cardTitle(data) {
    const role = String(data.role || "call");
    const index = typeof data.index === "number" ? data.index : null;
    const total = typeof data.total === "number" ? data.total : null;
    if (index === null || (index === 0 && (total === null || total === 1) && role !== "worker")) return role;
    return role + " " + (index + 1) + (total !== null ? "/" + total : "");
  }

  function newCard(data) {
    const card = el("li", "card " + safeClass(data.role));
    const head = el("div", "card-head");
    head.appendChild(el("span", "card-title", cardTitle(data)));
    head.appendChild(el("span", "card-state", "running"));
    card.appendChild(head);
    card.appendChild(el("div", "card-stats"));
    card.appendChild(el("div", "card-body"));
    callsList.appendChild(card);
    return card;
  }

  function keyOf(data) {
    return String(data.role) + ":" + String(data.index);
  }

  function callStarted(data) {
    const card = newCard(data);
    card.classList.add("running");
    const key = keyOf(data);
    if (!cards.has(key)) cards.set(key, []);
    cards.get(key).push(card);
    card.scrollIntoView({block: "nearest"});
  }

  function stat(parent, label, value) {
    if (value === "" || value === null || value === undefined) return;
    const item = el("span", "stat");
    item.appendChild(el("span", "stat-label", label));
    item.appendChild(el("span", "stat-value", value));
    parent.appendChild(item);
  }

  function callFinished(data) {
    const waiting = cards.get(keyOf(data));
    const card = waiting && waiting.length ? waiting.shift() : newCard(data);
    card.classList.remove("running");
    card.classList.add("done");
    card.querySelector(".card-title").textContent = cardTitle(data);
    card.querySelector(".card-state").textContent = formatSeconds(data.seconds) || "done";

    const stats = card.querySelector(".card-stats");
    stats.replaceChildren();
    if (Array.isArray(data.span) && data.span.length === 2) {
      stat(stats, "span", formatNumber(data.span[0]) + "–" + formatNumber(data.span[1]));
    }
    stat(stats, "in", formatNumber(data.prompt_tokens));
    stat(stats, "out", formatNumber(data.completion_tokens));
    if (typeof data.cached_tokens === "number" && data.cached_tokens > 0) stat(stats, "cached", formatNumber(data.cached_tokens));

    const body = card.querySelector(".card-body");
    body.replaceChildren();
    const passed = data.cu !== null && data.cu !== undefined && data.cu !== "" ? data.cu : data.output;
    if (passed !== null && passed !== undefined) {
      const label = data.cu !== null && data.cu !== undefined && data.cu !== "" ? "passed on" : "output";
      body.appendChild(el("div", "card-label", label));
      body.appendChild(el("div", "card-text", typeof passed === "string" ? passed : JSON.stringify(passed)));
    }
    if (data.note) body.appendChild(el("div", "card-note", typeof data.note === "string" ? data.note : JSON.stringify(data.note)));
  }

  function showUsage(usage) {
    if (!usage) return;
    const parts = [];
    if (typeof usage.calls === "number") parts.push(formatNumber(usage.calls) + (usage.calls === 1 ? " call" : " calls"));
    if (typeof usage.prompt_tokens === "number") parts.push(formatNumber(usage.prompt_tokens) + " tokens in");
    if (typeof usage.completion_tokens === "number") parts.push(formatNumber(usage.completion_tokens) + " out");
    if (typeof usage.cached_tokens === "number" && usage.cached_tokens > 0) parts.push(formatNumber(usage.cached_tokens) + " cached");
    if (typeof usage.seconds === "number") parts.push(formatSeconds(usage.seconds));
    usageBox.textContent = parts.join(" · ");
  }

  function finish(run) {
    if (!current) return;
    current.finished = true;
    for (const list of cards.values()) {
      for (const card of list) {
        card.classList.remove("running");
        card.classList.add("stopped");
        card.querySelector(".card-state").textContent = "stopped";
      }
    }
    cards.clear();
    if (run) {
      setStatus(run.status);
      if (run.answer !== null && run.answer !== undefined) {
        answerBox.textContent = String(run.answer);
        answerBox.classList.add("visible");
      }
      if (run.error) showError(typeof run.error === "string" ? run.error : run.error.message || JSON.stringify(run.error));
      else if (run.status === "cancelled") showError("The run was cancelled.");
      showCitations(run.citations || [], run.supported);
      showUsage(run.usage);
    }
    downloadButton.disabled = false;
    runButton.disabled = false;
    cancelButton.hidden = true;
  }

  // A citation's offsets count code points (Python's str); a textarea counts UTF-16 units.
  function unitIndex(text, codePoints) {
    let i = 0;
    for (let n = 0; n < codePoints && i < text.length; n++) {
      i += text.codePointAt(i) > 0xffff ? 2 : 1;
    }
    return i;
  }

  function showCitations(citations, supported) {
    citationsList.textContent = "";
    supportBox.textContent = supported === true ? "Supported: every word the answer adds to the question is in a citation."
      : supported === false ? "Not supported: the answer has words that no citation holds."
      : "";
    const sent = current ? current.documentText : null;
    for (const c of citations) {
      if (typeof c.start !== "number" || typeof c.end !== "number") continue;
      const item = el("li", "citation");
      const button = el("button", "citation-link", "chars " + formatNumber(c.start) + "–" + formatNumber(c.end));
      button.type = "button";
      button.title = "Select this span in the document";
      button.addEventListener("click", () => {
        if (documentBox.value !== sent) {
          showError("The document was changed since the run: its citations no longer point into it.");
          return;
        }
        const start = unitIndex(sent, c.start);
        const end = start + unitIndex(sent.slice(start), c.end - c.start);
        documentBox.focus();
        documentBox.setSelectionRange(start, end);
        // Scroll the box so that the selection shows (a textarea does not do it on its own everywhere).
        const before = sent.slice(0, start).split("\n").length - 1;
        const lines = sent.split("\n").length;
        documentBox.scrollTop = Math.max(0, (before / Math.max(1, lines)) * documentBox.scrollHeight - documentBox.clientHeight / 3);
      });
      item.appendChild(button);
      item.appendChild(el("span", "citation-text", c.text));
      citationsList.appendChild(item);
    }
  }

  function handleEvent(type, data) {
    if (type === "status") {
      if (data && data.status) setStatus(data.status);
    } else if (type === "call") {
      if (!data) return;
      if (data.type === "started") callStarted(data);
      else callFinished(data);
    } else if (type === "done") {
      finish(data || null);
      return true;
    } else if (type === "error" && data) {
      showError(data.error ? data.error.message || JSON.stringify(data.error) : data.message || JSON.stringify(data));
    }
    return false;
  }

  // ---- the event stream --------------------------------------------------------------------

  // Reads one text/event-stream body, calling onEvent(type, data, id) for each event; returns
  // true once a `done` event arrived.
  async function readStream(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder("utf-8");
    let buffer = "";
    let type = "";
    let data = [];
    let id = null;
    let sawDone = false;

    function line(text) {
      if (text === "") {
        if (data.length) {
          const raw = data.join("\n");
          let parsed = raw;
          try {
            parsed = JSON.parse(raw);
          } catch (e) {
            // leave it as text
          }
          if (onEvent(type || "message", parsed, id)) sawDone = true;
        }
        type = "";
        data = [];
        return;
      }
      if (text.startsWith(":")) return; // a comment: `: ping`
      const colon = text.indexOf(":");
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? "" : text.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
      else if (field === "id" && !value.includes("\0")) id = value;
    }

    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      // A "\r" at the very end may be the first half of "\r\n": wait for the next piece.
      const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
      const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
      buffer = lines.pop() + buffer.slice(cut);
      for (const text of lines) line(text);
      if (sawDone) {
        try { await reader.cancel(); } catch (e) { /* closed already */ }
        return true;
      }
    }
    buffer += decoder.decode();
    if (buffer) for (const text of buffer.split(/\r\n|\r|\n/)) line(text);
    line("");
    return sawDone;
  }

  async function follow(run) {
    let lastId = null;
    for (let attempt = 0; attempt <= MAX_RECONNECTS; attempt++) {
      const extra = {Accept: "text/event-stream"};
      if (lastId !== null) extra["Last-Event-ID"] = lastId;
      let done = false;
      try {
        const response = await api("/v1/runs/" + encodeURIComponent(run.id) + "/events",
                                   {headers: extra, signal: run.controller.signal});
        done = await readStream(response, (type, data, id) => {
          if (run !== current) return true;
          if (id !== null) lastId = id;
          return handleEvent(type, data);
        });
      } catch (e) {
        if (run.controller.signal.aborted || run !== current) return;
        if (e instanceof ApiError && e.status < 500) throw e;
      }
      if (done || run !== current || run.finished) return;
      await new Promise((resolve) => setTimeout(resolve, 500 * (attempt + 1)));
    }
    // The stream kept breaking: ask for the run itself.
    const final = await (await api("/v1/runs/" + encodeURIComponent(run.id))).json();
    finish(final);
  }

  async function start(event) {
    event.preventDefault();
    if (current && !current.finished) return;
    resetRun();
    const task = taskSelect.value;
    const documentText = documentBox.value;
    const question = questionInput.value.trim();
    if (!documentText.trim()) {
      showError("Paste a document or choose a file first.");
      return;
    }
    if (task === "qa" && !question) {
      showError("Type a question first.");
      questionInput.focus();
      return;
    }
    const strategy = strategySelect.value || "coa";
    runButton.disabled = true;
    setStatus("starting");
    const run = {id: null, controller: new AbortController(), finished: false, documentText: documentText};
    current = run;
    try {
      const response = await api("/v1/runs", {
        method: "POST",
        headers: {"Content-Type": "application/json", Accept: "application/json"},
        body: JSON.stringify({document: documentText, question: question, task: task, strategy: strategy}),
        signal: run.controller.signal,
      });
      const created = await response.json();
      run.id = created.id;
      runIdBox.textContent = String(created.id);
      setStatus(created.status || "queued");
      cancelButton.hidden = false;
      await follow(run);
    } catch (e) {
      if (run !== current) return;
      if (!run.controller.signal.aborted) {
        showError(e.message || String(e));
        keyError = e instanceof ApiError && e.status === 401;
      }
      setStatus(run.id ? "unknown" : "error");
      run.finished = true;
      runButton.disabled = false;
      cancelButton.hidden = true;
      downloadButton.disabled = !run.id;
    }
  }

  async function cancel() {
    if (!current || !current.id || current.finished) return;
    cancelButton.disabled = true;
    try {
      await api("/v1/runs/" + encodeURIComponent(current.id), {method: "DELETE"});
    } catch (e) {
      showError(e.message || String(e));
    } finally {
      cancelButton.disabled = false;
    }
  }

  async function download() {
    if (!current || !current.id) return;
    downloadButton.disabled = true;
    try {
      const run = await (await api("/v1/runs/" + encodeURIComponent(current.id),
                                   {headers: {Accept: "application/json"}})).json();
      const blob = new Blob([JSON.stringify(run, null, 2) + "\n"], {type: "application/json"});
      const url = URL.createObjectURL(blob);
      const link = document.createElement("a");
      link.href = url;
      link.download = String(current.id).replace(/[^A-Za-z0-9_.-]/g, "_") + ".json";
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      showError(e.message || String(e));
    } finally {
      downloadButton.disabled = false;
    }
  }

  // ---- wiring -------------------------------------------------------------------------------

  try {
    keyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
  } catch (e) {
    // storage blocked: the key is simply not remembered
  }
  let keyTimer = null;
  keyInput.addEventListener("input", () => {
    try {
      if (apiKey()) sessionStorage.setItem(KEY_STORAGE, apiKey());
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (e) {
      // ignore
    }
    clearTimeout(keyTimer);
    keyTimer = setTimeout(loadModels, 300);
  });
  fileInput.addEventListener("change", readFile);
  documentBox.addEventListener("input", describeDocument);
  taskSelect.addEventListener("change", updateTask);
  strategySelect.addEventListener("change", describeStrategy);
  form.addEventListener("submit", start);
  cancelButton.addEventListener("click", cancel);
  downloadButton.addEventListener("click", download);

  updateTask();
  loadModels();
})();
