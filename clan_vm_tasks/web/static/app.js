// The dashboard page: the VM table kept live from /api/events, actions through the JSON
// API, a VM's detail and its serial console (xterm.js over a websocket).
// Everything shown is set as text, never as HTML: names, errors and console lines come
// from definitions and guests we do not trust.
import { Terminal } from "/static/vendor/xterm/xterm.mjs";
import { FitAddon } from "/static/vendor/addon-fit/addon-fit.mjs";

const $ = (selector) => document.querySelector(selector);
const vms = new Map(); // name -> the row of list --json
const running = new Map(); // vm -> the action under way (from "action" events)
let selected = null;
let drawnOnce = false;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const hostName = (host) => (host ? host.split("?")[0] : "this machine");

// --- the table -------------------------------------------------------------------------------

function buttonsFor(vm) {
  const s = vm.state;
  const list = [];
  const add = (action, label, extra = {}) => list.push({ action, label, ...extra });
  if (["stopped", "crashed", "not-created"].includes(s)) add("start", "start");
  if (["running", "paused"].includes(s)) {
    add("stop", "stop");
    add("force-stop", "force stop", { danger: true });
  }
  if (s === "running") {
    add("restart", "restart");
    add("pause", "pause");
  }
  if (s === "paused") add("resume", "resume");
  if (!["not-created", "eval-error", "unreachable", "starting"].includes(s)) {
    add("delete", "delete", { danger: true });
  }
  return list;
}

function rowFor(vm) {
  const busy = running.has(vm.name);
  const cells = [
    el("td", {}, el("button", { class: "name-link", onclick: () => select(vm.name) }, vm.name)),
    el("td", {}, hostName(vm.host)),
    el(
      "td",
      {},
      el("span", { class: `state ${vm.state}` }, vm.state === "not-created" ? "not created" : vm.state),
      vm.pid ? el("span", { class: "muted" }, ` pid ${vm.pid}`) : null,
      vm.last_stop && vm.state === "stopped" ? el("div", { class: "muted" }, `last stop: ${vm.last_stop}`) : null,
      vm.error ? el("div", { class: "error-text" }, vm.error) : null,
      vm.eval_error ? el("div", { class: "error-text" }, vm.eval_error.split("\n")[0]) : null,
    ),
    el("td", {}, vm.cpus ?? "-"),
    el("td", {}, vm.memory == null ? "-" : `${vm.memory} MiB`),
    el("td", {}, (vm.forwards || []).join(", ") || "-"),
    el("td", { class: "flake-col" }, vm.declared ? "declared" : "-"),
  ];
  const actions = el("td", { class: "actions" });
  for (const b of buttonsFor(vm)) {
    actions.append(
      el(
        "button",
        {
          class: b.danger ? "danger" : "",
          dataset: { action: b.action },
          onclick: () => rowAction(vm.name, b.action),
          ...(busy ? { disabled: "" } : {}),
        },
        b.label,
      ),
    );
  }
  actions.append(el("span", { class: "note" }));
  const tr = el("tr", { dataset: { vm: vm.name, state: vm.state } }, ...cells, actions);
  if (vm.name === selected) tr.classList.add("selected");
  return tr;
}

function noteOf(name) {
  return document.querySelector(`#vms tr[data-vm="${CSS.escape(name)}"] .note`);
}

const notes = new Map(); // vm -> [kind, text] shown under its buttons (kept across redraws)

function setNote(node, kind, text) {
  if (!node) return;
  node.className = `note ${kind}`;
  node.textContent = text;
}

function drawRow(name) {
  const vm = vms.get(name);
  const old = document.querySelector(`#vms tr[data-vm="${CSS.escape(name)}"]`);
  if (!vm) {
    old?.remove();
    return;
  }
  const row = rowFor(vm);
  if (old) old.replaceWith(row);
  else {
    const body = $("#vms tbody");
    const after = [...body.children].find((tr) => tr.dataset.vm > name);
    body.insertBefore(row, after || null);
  }
  const note = notes.get(name);
  if (note) setNote(row.querySelector(".note"), note[0], note[1]);
}

function drawAll() {
  const body = $("#vms tbody");
  body.replaceChildren(...[...vms.keys()].sort().map((name) => rowFor(vms.get(name))));
  for (const [name, note] of notes) setNote(noteOf(name), note[0], note[1]);
  afterDraw();
}

function afterDraw() {
  $("#empty").hidden = vms.size > 0;
  const flake = [...vms.values()].some((vm) => "declared" in vm);
  document.body.classList.toggle("with-flake", flake);
  for (const node of document.querySelectorAll(".flake-col")) node.hidden = !flake;
  if (!drawnOnce) {
    drawnOnce = true;
    performance.mark("vms-drawn");
    document.body.dataset.drawn = String(vms.size);
  }
}

// --- actions ---------------------------------------------------------------------------------

const CONFIRM = {
  "force-stop": (name) => [`Force stop VM '${name}'? The guest gets no chance to shut down.`, "force stop"],
  delete: (name) => [`Delete VM '${name}'? Its disk image is kept unless you tick the box.`, "delete"],
  revert: (name, snap) => [`Revert VM '${name}' to snapshot '${snap}'? What changed since is lost.`, "revert"],
  "snapshot-delete": (name, snap) => [`Delete snapshot '${snap}' of VM '${name}'?`, "delete"],
};

function confirmDialog(text, ok, extra) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = ok;
  $("#confirm-extra").hidden = !extra;
  $("#confirm-check").checked = false;
  $("#confirm-extra-text").textContent = extra || "";
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => resolve(dialog.returnValue === "ok" ? { checked: $("#confirm-check").checked } : null),
      { once: true },
    );
  });
}

async function call(method, path, body) {
  try {
    const response = await fetch(path, {
      method,
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    return response.ok ? { ok: true, data } : { ok: false, error: data.error || `HTTP ${response.status}` };
  } catch (error) {
    return { ok: false, error: `the server did not answer (${error})` };
  }
}

async function perform(name, method, path, body, node) {
  notes.set(name, ["busy", "working"]);
  setNote(node, "busy", "working");
  const result = await call(method, path, body);
  const note = result.ok ? ["ok", result.data.message] : ["error", result.error];
  if (node === noteOf(name) || !node?.isConnected) notes.set(name, note);
  setNote(node?.isConnected ? node : noteOf(name), note[0], note[1]);
  if (name === selected) refreshDetail();
  return result;
}

async function rowAction(name, action) {
  const url = `/api/vms/${encodeURIComponent(name)}`;
  let body = {};
  if (CONFIRM[action]) {
    const [text, ok] = CONFIRM[action](name);
    const answer = await confirmDialog(text, ok, action === "delete" ? "also remove its disk image (and stop it if it runs)" : null);
    if (!answer) return;
    if (action === "delete") body = { force: answer.checked };
  }
  if (action === "delete") return perform(name, "DELETE", url, body, noteOf(name));
  if (action === "force-stop") return perform(name, "POST", `${url}/stop`, { force: true }, noteOf(name));
  return perform(name, "POST", `${url}/${action}`, body, noteOf(name));
}

// --- the live stream -------------------------------------------------------------------------

function onAction(event) {
  const a = JSON.parse(event.data);
  if (a.state === "running") running.set(a.vm, a);
  else running.delete(a.vm);
  const elapsed = Math.max(0, Math.round(Date.now() / 1000 - a.started));
  const text =
    a.state === "running" ? `${a.progress || a.action} (${elapsed}s)` : a.message || a.action;
  const kind = a.state === "running" ? "busy" : a.state === "ok" ? "ok" : "error";
  notes.set(a.vm, [kind, text]);
  drawRow(a.vm);
}

setInterval(() => {
  for (const a of running.values()) {
    const elapsed = Math.max(0, Math.round(Date.now() / 1000 - a.started));
    const note = [`busy`, `${a.progress || a.action} (${elapsed}s)`];
    notes.set(a.vm, note);
    setNote(noteOf(a.vm), ...note);
  }
}, 1000);

function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    $("#live").textContent = "live";
    $("#live").className = "live on";
  });
  source.addEventListener("error", () => {
    $("#live").textContent = "reconnecting";
    $("#live").className = "live off";
  });
  source.addEventListener("vms", (event) => {
    vms.clear();
    for (const vm of JSON.parse(event.data)) vms.set(vm.name, vm);
    drawAll();
    if (selected) refreshDetail();
  });
  source.addEventListener("changes", (event) => {
    const { changed, removed } = JSON.parse(event.data);
    for (const vm of changed) {
      vms.set(vm.name, vm);
      drawRow(vm.name);
    }
    for (const name of removed) {
      vms.delete(name);
      drawRow(name);
    }
    afterDraw();
    if (selected && (changed.some((vm) => vm.name === selected) || removed.includes(selected))) {
      refreshDetail();
    }
  });
  source.addEventListener("action", onAction);
  source.addEventListener("problem", (event) => {
    const { error } = JSON.parse(event.data);
    $("#problem").hidden = !error;
    $("#problem").textContent = error || "";
  });
}

// --- a VM's detail ---------------------------------------------------------------------------

function select(name) {
  if (selected !== name) closeConsole();
  selected = name;
  $("#detail").hidden = false;
  $("#detail-name").textContent = name;
  for (const tr of document.querySelectorAll("#vms tr.selected")) tr.classList.remove("selected");
  document.querySelector(`#vms tr[data-vm="${CSS.escape(name)}"]`)?.classList.add("selected");
  refreshDetail();
  $("#detail").scrollIntoView({ behavior: "smooth", block: "start" });
}

let refreshing = null;
function refreshDetail() {
  clearTimeout(refreshing);
  refreshing = setTimeout(loadDetail, 150);
}

function pairs(target, entries) {
  target.replaceChildren(
    ...entries.flatMap(([key, value]) => [
      el("dt", {}, key),
      el("dd", {}, value === null || value === undefined || value === "" ? "-" : String(value)),
    ]),
  );
}

async function loadDetail() {
  const name = selected;
  if (!name) return;
  const base = `/api/vms/${encodeURIComponent(name)}`;
  const vm = vms.get(name);
  const shown = await call("GET", base);
  if (name !== selected) return;
  const state = vm ? vm.state : "gone";
  $("#detail-state").className = `state ${state}`;
  $("#detail-state").textContent = state;
  if (!shown.ok) {
    pairs($("#definition"), [["error", shown.error]]);
    $("#disks tbody").replaceChildren();
  } else if (vm && vm.state === "not-created") {
    const d = shown.data;
    pairs($("#definition"), Object.entries(d).map(([k, v]) => [k, typeof v === "object" && v !== null ? JSON.stringify(v) : v]));
    $("#disks tbody").replaceChildren();
  } else {
    const info = shown.data;
    const c = info.config || {};
    pairs($("#definition"), [
      ["host", info.uri ? `${info.uri} (domain ${info.domain})` : "this machine"],
      ["accel", info.accel],
      ["cpus", info.cpus],
      ["memory", `${info.memory} MiB`],
      ["kernel", c.kernel],
      ["initrd", c.initrd],
      ["append", c.append],
      ["machine", c.machine],
      ["network", `${info.network}, mac ${info.mac}`],
      ["forwards", (info.forwards || []).join(", ")],
      ["qemu args", (c.qemu_args || []).join(" ")],
      ["guest agent", info.agent === null ? "-" : info.agent ? "answers" : "does not answer"],
      ["console log", info.console_log],
      ["directory", info.directory],
      ["created", info.created_at],
    ]);
    $("#disks tbody").replaceChildren(
      ...(info.disks || []).map((d) =>
        el("tr", {}, el("td", {}, d.path), el("td", {}, d.format || "-"),
          el("td", {}, d.virtual_size == null ? "-" : `${d.virtual_size} MiB`),
          el("td", {}, d.backing_file || "-")),
      ),
    );
  }
  const exists = vm && !["not-created", "eval-error"].includes(vm.state);
  $("#snapshot-form").hidden = !exists;
  $("#console-attach").disabled = !vm || !["running", "paused"].includes(vm.state);
  const [snaps, history] = exists
    ? await Promise.all([call("GET", `${base}/snapshots`), call("GET", `${base}/history?limit=50`)])
    : [{ ok: true, data: [] }, { ok: true, data: [] }];
  if (name !== selected) return;
  $("#snapshots tbody").replaceChildren(
    ...(snaps.ok ? snaps.data : []).map((s) =>
      el("tr", { dataset: { snapshot: s.name } }, el("td", {}, s.name), el("td", {}, s.date),
        el("td", {}, s.memory ? "yes" : "no"),
        el("td", {},
          el("button", { class: "small", dataset: { action: "revert" }, onclick: () => snapshotAction(name, s.name, "revert") }, "revert"),
          el("button", { class: "small danger", dataset: { action: "snapshot-delete" }, onclick: () => snapshotAction(name, s.name, "snapshot-delete") }, "delete"))),
    ),
  );
  if (!snaps.ok) setNote($("#snapshot-note"), "error", snaps.error);
  $("#history tbody").replaceChildren(
    ...(history.ok ? history.data : []).map((e) =>
      el("tr", { class: e.result === "ok" ? "" : "failed" }, el("td", {}, e.timestamp.replace("T", " ").slice(0, 19)),
        el("td", {}, e.action + (e.result === "ok" ? "" : " (failed)")), el("td", {}, e.details)),
    ),
  );
}

async function snapshotAction(name, snap, action) {
  const [text, ok] = CONFIRM[action](name, snap);
  if (!(await confirmDialog(text, ok, null))) return;
  const base = `/api/vms/${encodeURIComponent(name)}/snapshots/${encodeURIComponent(snap)}`;
  if (action === "revert") await perform(name, "POST", `${base}/revert`, {}, $("#snapshot-note"));
  else await perform(name, "DELETE", base, undefined, $("#snapshot-note"));
}

$("#snapshot-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = selected;
  const snap = $("#snapshot-name").value.trim();
  const result = await perform(name, "POST", `/api/vms/${encodeURIComponent(name)}/snapshots`, { name: snap }, $("#snapshot-note"));
  if (result.ok) $("#snapshot-name").value = "";
});

$("#detail-close").addEventListener("click", () => {
  closeConsole();
  selected = null;
  $("#detail").hidden = true;
  for (const tr of document.querySelectorAll("#vms tr.selected")) tr.classList.remove("selected");
});

// --- the console -----------------------------------------------------------------------------

let term = null;
let socket = null;
let fit = null;

function closeConsole() {
  if (socket) socket.close();
  socket = null;
  $("#console-attach").hidden = false;
  $("#console-detach").hidden = true;
}

function openConsole() {
  closeConsole();
  const name = selected;
  if (!term) {
    term = new Terminal({ cursorBlink: true, fontSize: 13, scrollback: 5000, convertEol: false });
    fit = new FitAddon();
    term.loadAddon(fit);
    term.open($("#terminal"));
    window.addEventListener("resize", () => fit.fit());
    term.onData((data) => {
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(new TextEncoder().encode(data));
    });
  }
  fit.fit();
  term.reset();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/api/vms/${encodeURIComponent(name)}/console`);
  ws.binaryType = "arraybuffer";
  socket = ws;
  setNote($("#console-note"), "busy", "attaching");
  ws.addEventListener("message", (event) => {
    if (typeof event.data !== "string") {
      term.write(new Uint8Array(event.data));
      return;
    }
    const note = JSON.parse(event.data);
    if (note.attached) {
      setNote($("#console-note"), "ok", "attached: type into the terminal (press Enter for a prompt)");
      $("#console-attach").hidden = true;
      $("#console-detach").hidden = false;
      term.focus();
    } else if (note.error) {
      setNote($("#console-note"), "error", note.error);
    } else if (note.closed) {
      setNote($("#console-note"), "", note.closed);
    }
  });
  ws.addEventListener("close", () => {
    if (socket === ws) {
      socket = null;
      $("#console-attach").hidden = false;
      $("#console-detach").hidden = true;
      if ($("#console-note").classList.contains("ok")) setNote($("#console-note"), "", "detached");
    }
  });
}

$("#console-attach").addEventListener("click", openConsole);
$("#console-detach").addEventListener("click", () => {
  closeConsole();
  setNote($("#console-note"), "", "detached");
});

connect();
