// tgw console: sign in, the live fleet on a map and in a list, one car's panel with lock and
// unlock, alerts, and the commands of the whole fleet as they happen.
import { Api, ApiError } from "./api.js";
import { COLORS, carStatus, createFleetLayer } from "./fleetlayer.js";

const TOKEN_KEY = "tgw.token";
const CENTER = [48.137154, 11.576124]; // Marienplatz
const ROW = 52;
const TRACK_MINUTES = 30;
const ALERT_LABELS = {
  offline: "Offline",
  door_open_parked: "Door open while parked",
  low_fuel: "Low fuel",
  low_charge: "Low charge",
  low_battery: "12 V battery low",
};
const STEPS = ["queued", "sent", "accepted", "executed", "verified"];
const GOOD = new Set(["executed", "verified"]);
const BAD = new Set(["rejected", "failed", "expired", "timed_out"]);
const FINAL = new Set([...GOOD, ...BAD]);

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text != null) node.textContent = text;
  return node;
};

const state = {
  api: null,
  me: null,
  cars: new Map(),
  fields: [],
  filter: "all",
  search: "",
  selected: null,
  command: null, // {id, vin, action, status}
  recentEvents: new Map(), // command_id -> [events] (events may overtake the POST's answer)
  streams: [],
  updates: 0,
  lastServerTime: 0,
};
// For tests and curious operators: the live state, read-only by convention.
window.tgwConsole = state;

// ---------------------------------------------------------------- sign-in

function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY);
}

function showSignIn(message = "") {
  for (const stream of state.streams) stream.stop();
  state.streams = [];
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message;
  $("token").focus();
}

async function signIn(token, remember) {
  const api = new Api(token);
  const me = await api.get("/v1/whoami");
  sessionStorage.setItem(TOKEN_KEY, token);
  if (remember) localStorage.setItem(TOKEN_KEY, token);
  api.onUnauthorized = (problem) => {
    sessionStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(TOKEN_KEY);
    showSignIn((problem && problem.detail) || "Your token is no longer valid: sign in again.");
  };
  state.api = api;
  state.me = me;
  start();
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  $("signin-button").disabled = true;
  $("signin-error").textContent = "";
  try {
    await signIn(token, $("remember").checked);
    $("token").value = "";
  } catch (error) {
    $("signin-error").textContent =
      error instanceof ApiError && error.status === 401
        ? "That token is unknown or revoked."
        : `Cannot sign in: ${error.message}`;
  } finally {
    $("signin-button").disabled = false;
  }
});

$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(TOKEN_KEY);
  location.reload();
});

// ---------------------------------------------------------------- map

let map = null;
let fleetLayer = null;
let trackLine = null;

function initMap() {
  if (map) return;
  map = L.map("map", {
    center: CENTER, zoom: 12, minZoom: 10, maxZoom: 18, attributionControl: false,
    zoomSnap: 0.5,
  });
  fetch("munich.json").then((r) => r.json()).then(drawBaseMap).catch(() => {});
  const FleetLayer = createFleetLayer(L);
  fleetLayer = new FleetLayer();
  fleetLayer.addTo(map);
  fleetLayer.onSelect(select);
  state.layer = fleetLayer;
  const legend = L.control({ position: "bottomleft" });
  legend.onAdd = () => {
    const box = el("div", "legend");
    const names = { ok: "Parked, locked", unlocked: "Unlocked", driving: "Driving", alert: "Alert", offline: "Offline" };
    for (const [key, label] of Object.entries(names)) {
      const line = el("div");
      const dot = el("i");
      dot.style.background = COLORS[key];
      line.append(dot, label);
      box.append(line);
    }
    return box;
  };
  legend.addTo(map);
}

function drawBaseMap(geojson) {
  const styles = {
    river: { color: "#7fb2e5", weight: 5, opacity: 0.9 },
    ring: { color: "#ffffff", weight: 6, opacity: 1 },
    main: { color: "#ffffff", weight: 4, opacity: 1 },
    rail: { color: "#9aa3ad", weight: 2, dashArray: "6 4", opacity: 0.9 },
    park: { color: "#b5d9a5", weight: 1, fillColor: "#cfe8c4", fillOpacity: 0.9 },
  };
  L.geoJSON(geojson, {
    interactive: false,
    style: (feature) => styles[feature.properties.kind] || { color: "#ccc", weight: 1 },
    pointToLayer: (feature, latlng) =>
      L.marker(latlng, {
        interactive: false,
        keyboard: false,
        icon: L.divIcon({
          className: "map-label-icon",
          html: `<span class="map-label ${feature.properties.kind}"></span>`,
          iconSize: [0, 0],
        }),
      }).on("add", (event) => {
        const span = event.target.getElement().querySelector("span");
        span.textContent = feature.properties.name;
      }),
  }).addTo(map);
  fleetLayer.bringToFront?.();
}

// ---------------------------------------------------------------- live fleet

function rowToCar(row) {
  const car = {};
  state.fields.forEach((name, i) => { car[name] = row[i]; });
  return car;
}

function applyRows(rows, replace) {
  const changed = [];
  if (replace) { state.cars.clear(); sortedSize = -1; }
  for (const row of rows) {
    const car = rowToCar(row);
    state.cars.set(car.vin, car);
    changed.push(car);
  }
  state.updates += 1;
  if (replace) fleetLayer.clear();
  fleetLayer.update(changed);
  scheduleRender();
  if (state.selected && changed.some((car) => car.vin === state.selected)) {
    renderVehicle();
    const car = state.cars.get(state.selected);
    if (trackLine && car && car.lat != null) trackLine.addLatLng([car.lat, car.lon]);
  }
}

function start() {
  $("signin").hidden = true;
  $("app").hidden = false;
  $("whoami").textContent = `${state.me.name} · ${state.me.role}`;
  initMap();
  setTimeout(() => map.invalidateSize(), 0);
  const setLive = (on) => $("live").classList.toggle("on", on);
  state.streams.push(
    state.api.stream("/v1/fleet/stream", {
      snapshot: (data) => {
        state.fields = data.fields;
        state.lastServerTime = data.server_time;
        applyRows(data.rows, true);
        fitOnce();
      },
      changes: (data) => {
        state.lastServerTime = data.server_time;
        applyRows(data.rows, false);
        fitOnce();
      },
    }, setLive),
    state.api.stream("/v1/commands/events", { transition: onCommandEvent }),
  );
}

let fitted = false;
function fitOnce() {
  // The first time cars arrive, show them all (the fleet may not be where the map starts).
  if (fitted) return;
  const points = [...state.cars.values()].filter((car) => car.lat != null).map((car) => [car.lat, car.lon]);
  if (!points.length) return;
  fitted = true;
  map.fitBounds(L.latLngBounds(points).pad(0.05), { maxZoom: 14, animate: false });
}

// ---------------------------------------------------------------- list, stats, alerts

let renderQueued = false;
let lastRender = 0;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  const wait = Math.max(0, 400 - (performance.now() - lastRender));
  setTimeout(() => requestAnimationFrame(() => {
    renderQueued = false;
    lastRender = performance.now();
    renderStats();
    renderList();
    renderAlerts();
  }), wait);
}

function matches(car) {
  const f = state.filter;
  if (f === "alerts" && !(car.alerts && car.alerts.length)) return false;
  if (f === "driving" && carStatus(car) !== "driving") return false;
  if (f === "unlocked" && car.locked !== false) return false;
  if (f === "offline" && car.online) return false;
  if (state.search) {
    const q = state.search;
    if (!car.vin.includes(q) && !(car.model || "").toUpperCase().includes(q)) return false;
  }
  return true;
}

// VINs in list order; re-sorted only when cars join, since sorting 10,000 every render is waste.
let sortedVins = [];
let sortedSize = -1;
let visibleVins = [];
let layerFilter = null;
function renderList() {
  if (sortedSize !== state.cars.size) {
    sortedVins = [...state.cars.keys()].sort();
    sortedSize = state.cars.size;
  }
  const everything = state.filter === "all" && !state.search;
  visibleVins = everything ? sortedVins : sortedVins.filter((vin) => matches(state.cars.get(vin)));
  const wanted = everything ? null : `${state.filter}|${state.search}`;
  if (wanted !== layerFilter) {
    layerFilter = wanted;
    fleetLayer.filter(everything ? null : matches);
  }
  drawRows();
}

function drawRows() {
  const list = $("list");
  const inner = $("list-inner");
  inner.style.height = `${visibleVins.length * ROW}px`;
  const first = Math.max(0, Math.floor(list.scrollTop / ROW) - 5);
  const last = Math.min(visibleVins.length, first + Math.ceil(list.clientHeight / ROW) + 10);
  const rows = [];
  for (let i = first; i < last; i++) rows.push(carRow(state.cars.get(visibleVins[i]), i));
  if (!visibleVins.length) rows.push(el("div", "empty", state.cars.size ? "No car matches." : "Waiting for cars…"));
  inner.replaceChildren(...rows);
}

function carRow(car, index) {
  const row = el("div", `row${car.vin === state.selected ? " sel" : ""}`);
  row.style.top = `${index * ROW}px`;
  row.dataset.vin = car.vin;
  const dot = el("span", "dot");
  dot.style.background = COLORS[carStatus(car)];
  const mid = el("div");
  mid.append(el("div", "l1", car.vin));
  const l2 = el("div", "l2", `${car.model || "?"} · ${describe(car)}`);
  mid.append(l2);
  const right = el("div", "r");
  right.append(energyText(car));
  for (const alert of car.alerts || []) right.append(el("span", `tag${alert === "offline" ? "" : " bad"}`, short(alert)));
  row.append(dot, mid, right);
  return row;
}

function short(alert) {
  return { offline: "offline", door_open_parked: "door", low_fuel: "fuel", low_charge: "charge", low_battery: "12V" }[alert] || alert;
}

function describe(car) {
  if (!car.online) return `offline · seen ${ago(car.last_seen)}`;
  if ((car.speed || 0) > 1) return `driving ${Math.round(car.speed)} km/h`;
  if (car.ignition) return "ignition on, standing";
  return car.locked === false ? "parked, unlocked" : car.locked ? "parked, locked" : "parked";
}

function energyText(car) {
  if (car.soc != null && car.fuel == null) return `charge ${Math.round(car.soc)}%`;
  return car.fuel != null ? `fuel ${Math.round(car.fuel)}%` : "";
}

function renderStats() {
  let online = 0, driving = 0, alerts = 0;
  for (const car of state.cars.values()) {
    if (car.online) online += 1;
    if (carStatus(car) === "driving") driving += 1;
    if (car.alerts && car.alerts.length) alerts += 1;
  }
  const stats = $("stats");
  const item = (label, value, cls = "") => {
    const span = el("span", cls);
    const b = el("b", null, String(value));
    span.append(b, ` ${label}`);
    return span;
  };
  stats.replaceChildren(
    item("cars", state.cars.size),
    item("online", online),
    item("driving", driving, "s-opt"),
    item("alerts", alerts, "s-alert"),
  );
  $("alert-count").textContent = alerts ? String(alerts) : "";
}

function renderAlerts() {
  if ($("alerts").closest("[data-panel]").hidden) return;
  const groups = new Map(Object.keys(ALERT_LABELS).map((kind) => [kind, []]));
  for (const car of state.cars.values()) for (const kind of car.alerts || []) groups.get(kind)?.push(car);
  const nodes = [];
  for (const [kind, cars] of groups) {
    if (!cars.length) continue;
    const group = el("div", "alert-group");
    group.append(el("h4", null, `${ALERT_LABELS[kind]} (${cars.length})`));
    cars.sort((a, b) => (a.vin < b.vin ? -1 : 1));
    for (const car of cars.slice(0, 200)) {
      const item = el("div", "alert-item");
      item.dataset.vin = car.vin;
      item.append(el("div", "l1", car.vin), el("div", "muted", alertDetail(kind, car)));
      group.append(item);
    }
    if (cars.length > 200) group.append(el("div", "empty", `… and ${cars.length - 200} more (use the list's filter)`));
    nodes.push(group);
  }
  if (!nodes.length) nodes.push(el("div", "empty", "No alerts. All cars are fine."));
  $("alerts").replaceChildren(...nodes);
}

function alertDetail(kind, car) {
  switch (kind) {
    case "offline": return car.connected ? "connected but silent (dead zone?)" : `offline since ${ago(car.last_seen)}`;
    case "low_fuel": return `fuel ${Math.round(car.fuel)} %`;
    case "low_charge": return `charge ${Math.round(car.soc)} %`;
    case "low_battery": return `12 V battery ${car.batt_v} V`;
    case "door_open_parked": {
      const names = { door_fl_open: "front left", door_fr_open: "front right", door_rl_open: "rear left", door_rr_open: "rear right", trunk_open: "trunk" };
      return `${Object.keys(names).filter((k) => car[k]).map((k) => names[k]).join(", ")} open while parked`;
    }
    default: return kind;
  }
}

$("list").addEventListener("scroll", () => requestAnimationFrame(drawRows));
for (const container of [$("list"), $("alerts"), $("activity")]) {
  container.addEventListener("click", (event) => {
    const target = event.target.closest("[data-vin]");
    if (target) select(target.dataset.vin);
  });
}
$("search").addEventListener("input", (event) => {
  state.search = event.target.value.trim().toUpperCase();
  $("list").scrollTop = 0;
  renderList();
});
$("chips").addEventListener("click", (event) => {
  const chip = event.target.closest("[data-filter]");
  if (!chip) return;
  state.filter = chip.dataset.filter;
  for (const other of $("chips").children) other.classList.toggle("on", other === chip);
  $("list").scrollTop = 0;
  renderList();
});
document.querySelector(".tabs").addEventListener("click", (event) => {
  const tab = event.target.closest("[data-tab]");
  if (!tab) return;
  for (const button of document.querySelectorAll(".tabs [data-tab]")) button.setAttribute("aria-selected", String(button === tab));
  for (const panel of document.querySelectorAll("[data-panel]")) panel.hidden = panel.dataset.panel !== tab.dataset.tab;
  if (tab.dataset.tab === "alerts") renderAlerts();
  if (tab.dataset.tab === "cars") drawRows();
});

// ---------------------------------------------------------------- one car

async function select(vin) {
  state.selected = vin;
  fleetLayer.select(vin);
  $("vehicle").hidden = false;
  if (state.command && state.command.vin !== vin) state.command = null;
  renderCommand();
  renderVehicle();
  drawRows();
  const car = state.cars.get(vin);
  if (car && car.lat != null && !map.getBounds().pad(-0.1).contains([car.lat, car.lon])) {
    map.panTo([car.lat, car.lon]);
  }
  loadDetails(vin);
  loadTrack(vin);
  loadCommands(vin);
}

$("vehicle-close").addEventListener("click", () => {
  state.selected = null;
  fleetLayer.select(null);
  $("vehicle").hidden = true;
  if (trackLine) { trackLine.remove(); trackLine = null; }
  drawRows();
});

async function loadDetails(vin) {
  try {
    const details = await state.api.get(`/v1/vehicles/${vin}`);
    if (state.selected !== vin) return;
    state.details = details;
    renderVehicle();
  } catch (error) { /* the stream's data is shown meanwhile */ }
}

async function loadTrack(vin) {
  const from = new Date(Date.now() - TRACK_MINUTES * 60000).toISOString();
  try {
    const history = await state.api.get(`/v1/vehicles/${vin}/telemetry?from=${encodeURIComponent(from)}&max_points=400`);
    if (state.selected !== vin) return;
    if (trackLine) trackLine.remove();
    const points = history.points.filter((p) => p.lat != null).map((p) => [p.lat, p.lon]);
    trackLine = L.polyline(points, { color: "#111826", weight: 3, opacity: 0.7, interactive: false }).addTo(map);
  } catch (error) { /* no track: the panel still works */ }
}

async function loadCommands(vin) {
  try {
    const page = await state.api.get(`/v1/vehicles/${vin}/commands?limit=10`);
    if (state.selected !== vin) return;
    const items = page.items.map((command) => {
      const li = el("li");
      const status = el("span", GOOD.has(command.status) ? "st-good" : BAD.has(command.status) ? "st-fail" : "st-busy", command.status);
      li.append(el("span", null, `${command.action} · ${clock(command.created_at)} · ${command.requested_by}`), status);
      const why = reasonText(command);
      if (why) li.append(el("span", "why", why));
      return li;
    });
    if (!items.length) items.push(el("li", "muted", "No commands yet."));
    $("v-commands").replaceChildren(...items);
  } catch (error) {
    $("v-commands").replaceChildren(el("li", "muted", `Cannot load commands: ${error.message}`));
  }
}

function renderVehicle() {
  const vin = state.selected;
  if (!vin) return;
  const car = state.cars.get(vin) || {};
  const details = state.details && state.details.vin === vin ? state.details : {};
  $("v-vin").textContent = vin;
  const firmware = details.firmware ? ` · fw ${details.firmware}` : "";
  $("v-sub").textContent = `${car.model || details.model || "unknown model"} · ${car.online ? "online" : "offline"}${firmware}`;
  $("v-alerts").replaceChildren(...(car.alerts || []).map((kind) => el("div", null, `${ALERT_LABELS[kind]}: ${alertDetail(kind, car)}`)));
  setFact("v-lock", car.locked == null ? "–" : car.locked ? "Locked" : "Unlocked", car.locked ? "ok" : car.locked === false ? "warn" : "");
  setFact("v-speed", car.speed == null ? "–" : `${Math.round(car.speed)} km/h`);
  const electric = car.fuel == null && car.soc != null;
  $("v-energy-label").textContent = electric ? "Charge" : "Fuel";
  const level = electric ? car.soc : car.fuel;
  setFact("v-energy", level == null ? "–" : `${Math.round(level)} %`, level != null && level < 15 ? "bad" : "");
  setFact("v-seen", ago(car.last_seen), car.online ? "" : "bad");
  setFact("v-ignition", car.ignition == null ? "–" : car.ignition ? "On" : "Off");
  setFact("v-batt", car.batt_v == null ? "–" : `${car.batt_v.toFixed(1)} V`, car.batt_v != null && car.batt_v < 11.8 ? "bad" : "");
  for (const door of document.querySelectorAll("#v-doors [data-door]")) {
    door.classList.toggle("open", Boolean(car[door.dataset.door]));
    door.title = car[door.dataset.door] ? "open" : car[door.dataset.door] === false ? "closed" : "unknown";
  }
  const canCommand = state.me && state.me.role !== "viewer";
  const busy = state.command && state.command.vin === vin && !FINAL.has(state.command.status);
  const capabilities = details.capabilities || ["lock", "unlock"];
  // The action that changes the car's state is the prominent one.
  $("btn-unlock").classList.toggle("primary", car.locked !== false);
  $("btn-lock").classList.toggle("primary", car.locked === false);
  $("btn-lock").disabled = !canCommand || busy || !capabilities.includes("lock");
  $("btn-unlock").disabled = !canCommand || busy || !capabilities.includes("unlock");
  $("v-readonly").hidden = canCommand;
}

function setFact(id, text, cls = "") {
  const node = $(id);
  node.textContent = text;
  node.className = `v ${cls}`;
}

// ---------------------------------------------------------------- commands

$("btn-unlock").addEventListener("click", () => sendCommand("unlock"));
$("btn-lock").addEventListener("click", () => sendCommand("lock"));

function newKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `k-${Date.now()}-${Math.random().toString(36).slice(2)}`;
}

async function sendCommand(action) {
  const vin = state.selected;
  state.command = { id: null, vin, action, status: "sending", events: [] };
  renderCommand();
  renderVehicle();
  try {
    const record = await state.api.post(`/v1/vehicles/${vin}/commands`, { action }, { "Idempotency-Key": newKey() });
    if (!state.command || state.command.vin !== vin) return;
    state.command.id = record.command_id;
    state.command.record = record;
    applyCommandStatus(record.status, record);
    // Events that overtook this answer on the live stream (a copy: the stream keeps adding).
    for (const event of [...(state.recentEvents.get(record.command_id) || [])]) {
      applyCommandStatus(event.status, event);
    }
    watchCommand(record.command_id);
  } catch (error) {
    state.command.status = "refused";
    state.command.message = error.message;
    renderCommand();
    renderVehicle();
  }
}

// The live stream normally finishes the story; this poll covers a stream that broke meanwhile.
async function watchCommand(id) {
  const deadline = Date.now() + 90000;
  while (state.command && state.command.id === id && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 3000));
    if (!state.command || state.command.id !== id) return;
    if (state.command.status === "verified" || BAD.has(state.command.status)) return;
    try {
      const record = await state.api.get(`/v1/commands/${id}`);
      if (state.command && state.command.id === id) applyCommandStatus(record.status, record);
    } catch (error) { /* try again */ }
  }
}

function onCommandEvent(event) {
  const list = state.recentEvents.get(event.command_id) || [];
  list.push(event);
  state.recentEvents.set(event.command_id, list);
  if (state.recentEvents.size > 300) state.recentEvents.delete(state.recentEvents.keys().next().value);
  addActivity(event);
  if (state.command && state.command.id === event.command_id) applyCommandStatus(event.status, event);
  if (state.selected === event.vin && FINAL.has(event.status)) loadCommands(event.vin);
}

function applyCommandStatus(status, info) {
  const command = state.command;
  const order = [...STEPS, "rejected", "failed", "expired", "timed_out"];
  // Events can arrive out of order with the poll: never step back.
  if (FINAL.has(command.status) && !(command.status === "executed" && status === "verified")) return;
  if (order.indexOf(status) < order.indexOf(command.status)) return;
  command.status = status;
  command.info = info;
  renderCommand();
  renderVehicle();
}

function renderCommand() {
  const box = $("command");
  const command = state.command;
  if (!command || command.vin !== state.selected) { box.hidden = true; return; }
  box.hidden = false;
  const steps = [];
  const reached = STEPS.indexOf(command.status);
  for (const [i, step] of STEPS.entries()) {
    let cls = "";
    if (BAD.has(command.status)) cls = i <= stepBefore(command) ? "done" : "";
    else if (i <= reached) cls = GOOD.has(step) ? "good" : "done";
    steps.push(el("li", cls, step));
  }
  if (BAD.has(command.status)) steps.push(el("li", "fail", command.status.replace("_", " ")));
  $("command-steps").replaceChildren(...steps);
  const outcome = $("command-outcome");
  const verb = command.action === "unlock" ? "Unlocked" : command.action === "lock" ? "Locked" : "Done";
  if (command.status === "sending") setOutcome(outcome, `Sending ${command.action}…`, "");
  else if (command.status === "refused") setOutcome(outcome, `Not sent: ${command.message}`, "fail");
  else if (command.status === "verified") setOutcome(outcome, `${verb} — confirmed by the car's telemetry.`, "good");
  else if (command.status === "executed") setOutcome(outcome, `${verb} — the car executed it.`, "good");
  else if (BAD.has(command.status)) setOutcome(outcome, `${command.action} ${command.status.replace("_", " ")}: ${reasonText(command.info || {}) || "no reason given"}`, "fail");
  else setOutcome(outcome, { queued: "Queued at the gateway…", sent: "Sent; waiting for the car…", accepted: "The car accepted it; acting…" }[command.status] || command.status, "");
}

function stepBefore(command) {
  const accepted = (state.recentEvents.get(command.id) || []).some((e) => e.status === "accepted");
  const sent = (state.recentEvents.get(command.id) || []).some((e) => e.status === "sent");
  return accepted ? 2 : sent ? 1 : 0;
}

function setOutcome(node, text, cls) {
  node.textContent = text;
  node.className = `outcome ${cls}`;
}

// Why a command did not work and, for a failed precondition, what to do (the API's advice).
function reasonText(info) {
  if (!info) return "";
  const pre = info.failed_preconditions || [];
  const reason = info.reason || "";
  let text = reason.replaceAll("_", " ");
  if (pre.length) text += ` (${pre.join(", ").replaceAll("_", " ")})`;
  if (info.detail && !pre.length) text += text ? `: ${info.detail}` : info.detail;
  const helps = info.advice || []; // what to do, as the API says it
  if (helps.length) text += `; ${helps.join("; ")}`;
  return text;
}

function addActivity(event) {
  const list = $("activity");
  const li = el("li");
  li.dataset.vin = event.vin;
  const cls = GOOD.has(event.status) ? "st-good" : BAD.has(event.status) ? "st-fail" : "st-busy";
  const line = el("div", "l1");
  line.append(`${clock(event.at)} ${event.vin} ${event.action} → `, el("span", cls, event.status));
  li.append(line);
  const why = reasonText(event);
  if (why) li.append(el("div", "l2", why));
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
}

// ---------------------------------------------------------------- time

function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function clock(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleTimeString([], { hour12: false });
}

setInterval(() => { if (state.selected) renderVehicle(); }, 1000);

// ---------------------------------------------------------------- boot

function boot() {
  // `tgw demo` prints a link with the token in the fragment (never sent to the server).
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    sessionStorage.setItem(TOKEN_KEY, fragment.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = storedToken();
  if (!token) { showSignIn(); return; }
  signIn(token, false).catch(() => showSignIn("Sign in again: the stored token was not accepted."));
}

if (window.L) boot();
else window.addEventListener("load", boot);
