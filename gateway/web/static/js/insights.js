// tgw insights: utilisation as a heat map over the city, the service crew's list and route,
// and a car's trips with their tracks. Works at phone size (map on top, panel below).
import { Api } from "./api.js";

const TOKEN_KEY = "tgw.token";
const CENTER = [48.137154, 11.576124]; // Marienplatz
const DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const REASONS = {
  low_fuel: "Low fuel",
  low_charge: "Low charge",
  low_battery: "12 V low",
  door_open_parked: "Door open",
  offline: "Offline",
  not_rented: "Not rented",
};
const RAMP = ["#f7fbff", "#c6dbef", "#6baed6", "#2171b5", "#08306b"];
const TZ = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

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
  tab: "utilisation",
  days: 7,
  metric: "rented_share",
  utilisation: null, // {cells, models, cars}
  service: null,
  reason: "all",
  trips: [],
  trip: null,
  trackPoints: 0,
  cellsDrawn: 0,
  bounds: {}, // tab -> what its map shows, fitted on every visit and resize
};
window.tgwInsights = state; // for tests and the curious, read-only by convention

// ---------------------------------------------------------------- sign-in

function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY);
}

function showSignIn(message = "") {
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
  $("signin-button").disabled = true;
  try {
    await signIn($("token").value.trim(), $("remember").checked);
  } catch (error) {
    $("signin-error").textContent = error.message || "Sign-in failed";
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
let heatLayer = null;
let serviceLayer = null;
let tripLayer = null;

function initMap() {
  if (map) return;
  map = L.map("map", {
    center: CENTER, zoom: 12, minZoom: 9, maxZoom: 18, attributionControl: false, zoomSnap: 0.5,
  });
  fetch("munich.json").then((r) => r.json()).then(drawBaseMap).catch(() => {});
  heatLayer = L.layerGroup().addTo(map);
  serviceLayer = L.layerGroup();
  tripLayer = L.layerGroup();
  const legend = L.control({ position: "bottomleft" });
  legend.onAdd = () => {
    const box = el("div", "heat-legend");
    box.id = "heat-legend";
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
  const base = L.geoJSON(geojson, {
    interactive: false,
    style: (feature) => styles[feature.properties.kind] || { color: "#ccc", weight: 1 },
    filter: (feature) => feature.geometry.type !== "Point",
  }).addTo(map);
  base.bringToBack();
}

function showLayer(tab) {
  for (const [name, layer] of [["utilisation", heatLayer], ["service", serviceLayer], ["trips", tripLayer]]) {
    if (name === tab) layer.addTo(map);
    else layer.remove();
  }
  $("heat-legend").hidden = tab !== "utilisation";
}

// Show what the current tab is about: its cells, its stops, its track.
function fit(tab, bounds, maxZoom) {
  if (bounds) state.bounds[tab] = { bounds, maxZoom };
  const wanted = state.bounds[state.tab];
  if (tab !== state.tab || !wanted || !map) return;
  map.invalidateSize();
  map.fitBounds(wanted.bounds.pad(0.08), { maxZoom: wanted.maxZoom, animate: false });
}

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => fit(state.tab), 150);
});

function color(value, max) {
  if (value == null) return null;
  const x = max > 0 ? Math.min(value / max, 1) : 0;
  return RAMP[Math.min(RAMP.length - 1, Math.floor(x * RAMP.length))];
}

// ---------------------------------------------------------------- helpers

const pct = (x) => (x == null ? "–" : `${(x * 100).toFixed(x < 0.1 ? 1 : 0)} %`);
const num = (x, digits = 1) => (x == null ? "–" : Number(x).toFixed(digits));
const when = (iso) => new Date(iso).toLocaleString([], { weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });
function duration(seconds) {
  if (seconds == null) return "under way";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} days`;
}

function fact(label, value) {
  const box = el("div", "fact");
  box.append(el("span", "k", label), el("span", "v", value));
  return box;
}

// The last `days` days up to now. Longer ranges start at a UTC midnight: whole days come from
// the daily rollups, only today's hours from the hourly table (cheap on a big fleet).
function rangeParams(days) {
  const to = new Date();
  const from = new Date(to.getTime() - days * 86400 * 1000);
  if (days > 1) from.setTime(Date.UTC(to.getUTCFullYear(), to.getUTCMonth(), to.getUTCDate() - (days - 1)));
  return new URLSearchParams({ from: from.toISOString(), to: to.toISOString() });
}

function showError(target, error) {
  target.replaceChildren(el("p", "error", error.message || String(error)));
}

// ---------------------------------------------------------------- utilisation

async function loadUtilisation() {
  const params = rangeParams(state.days);
  params.set("tz", TZ);
  const get = (query) => state.api.get(`/v1/insights/utilisation?${params}&${query}`);
  try {
    // Every cell for the heat map; of the cars only the longest idle (the list shows 8).
    const [cells, models, cars] = await Promise.all([
      get("group=cell&limit=10000"), get("group=model"), get("group=car&sort=idle&limit=8"),
    ]);
    state.utilisation = { cells, models, cars };
    renderUtilisation();
  } catch (error) {
    showError($("u-facts"), error);
  }
}

function renderUtilisation() {
  const { cells, models, cars } = state.utilisation;
  const total = models.total;
  $("u-facts").replaceChildren(
    fact("Rented", pct(total.rented_share)),
    fact("Trips/car-day", num(total.trips_per_car_day)),
    fact("Trips", String(total.trips)),
  );
  $("stats").replaceChildren(
    el("span", null, `${cars.total.cars} cars`),
    el("span", "s-opt", `${total.trips} trips`),
    el("span", null, `${pct(total.rented_share)} rented`),
  );
  $("u-tz").textContent = `(${TZ})`;
  renderWeek(models.week);
  const body = $("u-models").querySelector("tbody");
  body.replaceChildren(...models.groups.map((g) => {
    const row = el("tr");
    for (const text of [g.key, String(g.cars), pct(g.rented_share), num(g.trips_per_car_day), num(g.km, 0)]) row.append(el("td", null, text));
    return row;
  }));
  const idle = cars.groups.filter((g) => g.idle_since_s != null);
  $("u-idle").replaceChildren(...idle.map((g) => {
    const item = el("li");
    item.append(el("span", "vin", g.key), el("span", "muted", `idle ${duration(g.idle_since_s)}`));
    item.addEventListener("click", () => openTrips(g.key));
    return item;
  }));
  $("u-note").textContent = cells.refreshed_at ? `Figures up to ${when(cells.refreshed_at)}.` : "Not computed yet: the gateway is deriving them (it refreshes every minute).";
  // A gateway that just started builds everything first: look again shortly.
  if (!cells.refreshed_at) setTimeout(() => { if (state.tab === "utilisation") loadUtilisation(); }, 3000);
  drawHeat();
}

function renderWeek(week) {
  const grid = $("u-week");
  const max = Math.max(0.0001, ...week.map((c) => c.rented_share || 0));
  const nodes = [el("span")];
  for (let h = 0; h < 24; h += 1) nodes.push(el("span", "h", h % 6 === 0 ? String(h) : ""));
  for (let d = 1; d <= 7; d += 1) {
    nodes.push(el("span", "d", DAYS[d - 1]));
    for (let h = 0; h < 24; h += 1) {
      const cell = week.find((c) => c.day === d && c.hour === h);
      const box = el("span", "c");
      const fill = color(cell && cell.rented_share, max);
      if (fill) box.style.background = fill;
      box.title = `${DAYS[d - 1]} ${h}:00: ${pct(cell && cell.rented_share)} rented, ${cell ? cell.trips : 0} trips`;
      nodes.push(box);
    }
  }
  grid.replaceChildren(...nodes);
}

function drawHeat() {
  if (!map || !state.utilisation) return;
  heatLayer.clearLayers();
  const groups = state.utilisation.cells.groups.filter((g) => g.bounds && g[state.metric] != null);
  const max = Math.max(0.0001, ...groups.map((g) => g[state.metric]));
  for (const g of groups) {
    const [south, west, north, east] = g.bounds;
    const rect = L.rectangle([[south, west], [north, east]], {
      weight: 1, color: "#ffffff", fillColor: color(g[state.metric], max), fillOpacity: 0.75,
      className: "heat-cell",
    });
    rect.bindTooltip(`${pct(g.rented_share)} rented · ${num(g.trips_per_car_day)} trips/car-day · ${g.trips} trips`, { sticky: true });
    heatLayer.addLayer(rect);
  }
  state.cellsDrawn = groups.length;
  const legend = $("heat-legend");
  const label = state.metric === "rented_share" ? "share of time rented" : "trips per car-day";
  const ends = el("div", "ends");
  ends.append(el("span", null, "0"), el("span", null, state.metric === "rented_share" ? pct(max) : num(max)));
  legend.replaceChildren(el("div", null, label), el("div", "bar"), ends);
  if (groups.length) {
    const bounds = L.latLngBounds(groups.map((g) => [[g.bounds[0], g.bounds[1]], [g.bounds[2], g.bounds[3]]]).flat());
    fit("utilisation", bounds, 13);
  }
}

function chips(containerId, attribute, onPick) {
  const container = $(containerId);
  container.addEventListener("click", (event) => {
    const chip = event.target.closest("button");
    if (!chip) return;
    for (const other of container.querySelectorAll("button")) other.classList.toggle("on", other === chip);
    onPick(chip.dataset[attribute]);
  });
}

chips("range-chips", "days", (days) => { state.days = Number(days); loadUtilisation(); });
chips("metric-chips", "metric", (metric) => { state.metric = metric; drawHeat(); });

// ---------------------------------------------------------------- service list

async function loadService(from = null) {
  const params = new URLSearchParams();
  if (from) params.set("from", `${from.lat.toFixed(5)},${from.lng.toFixed(5)}`);
  try {
    state.service = await state.api.get(`/v1/insights/service?${params}`);
    renderService();
  } catch (error) {
    showError($("service-list"), error);
  }
}

function renderService() {
  const list = state.service;
  $("service-count").textContent = list.items.length ? String(list.items.length) : "";
  const counts = {};
  for (const item of list.items) for (const r of item.reasons) counts[r.kind] = (counts[r.kind] || 0) + 1;
  const chipRow = $("reason-chips");
  const make = (key, label) => {
    const chip = el("button", `chip${state.reason === key ? " on" : ""}`, label);
    chip.dataset.reason = key;
    return chip;
  };
  chipRow.replaceChildren(
    make("all", `All ${list.items.length}`),
    ...Object.entries(REASONS).filter(([k]) => counts[k]).map(([k, label]) => make(k, `${label} ${counts[k]}`)),
  );
  const shown = list.items.filter((item) => state.reason === "all" || item.reasons.some((r) => r.kind === state.reason));
  const route = list.route;
  $("route-summary").textContent = route
    ? `Refuelling round: ${route.stops.length} stops, ${num(route.total_km)} km as the crow flies from ${num(route.start.lat, 4)}, ${num(route.start.lon, 4)}.`
    : "No car needs fuel or charge right now.";
  $("service-list").replaceChildren(...shown.map((item) => {
    const row = el("li");
    row.dataset.vin = item.vin;
    row.append(el("span", `stop${item.stop ? "" : " none"}`, item.stop ? String(item.stop) : "·"));
    const name = el("div");
    name.append(el("span", "vin", item.vin), el("span", "muted small", ` ${item.model || ""}`));
    row.append(name, el("span", "km", item.leg_km != null ? `+${num(item.leg_km)} km` : ""));
    const why = el("div", "why");
    for (const reason of item.reasons) {
      const tag = el("span", `reason ${reason.kind}`, reason.message);
      why.append(tag);
    }
    row.append(why);
    row.addEventListener("click", () => {
      if (item.lat != null) map.setView([item.lat, item.lon], Math.max(map.getZoom(), 15));
    });
    return row;
  }));
  drawService(shown);
}

function drawService(items) {
  serviceLayer.clearLayers();
  const placed = items.filter((item) => item.lat != null).map((item) => [item.lat, item.lon]);
  if (placed.length) fit("service", L.latLngBounds(placed), 15);
  const route = state.service.route;
  const byVin = new Map(state.service.items.map((item) => [item.vin, item]));
  if (route && (state.reason === "all" || ["low_fuel", "low_charge"].includes(state.reason))) {
    const points = [[route.start.lat, route.start.lon], ...route.stops.map((vin) => byVin.get(vin)).map((i) => [i.lat, i.lon])];
    serviceLayer.addLayer(L.polyline(points, { color: "#1f6feb", weight: 3, opacity: 0.8, dashArray: "6 6" }));
    serviceLayer.addLayer(L.circleMarker(points[0], { radius: 6, color: "#111826", fillColor: "#fff", fillOpacity: 1, weight: 3 }).bindTooltip("Start"));
  }
  for (const item of items) {
    if (item.lat == null) continue;
    const icon = L.divIcon({ className: "route-icon", html: "<span></span>", iconSize: [0, 0] });
    const marker = L.marker([item.lat, item.lon], { icon, keyboard: false });
    marker.on("add", () => {
      const span = marker.getElement().querySelector("span");
      span.textContent = item.stop ? String(item.stop) : "!";
      if (!item.stop) span.classList.add("other");
    });
    marker.bindTooltip(`${item.vin}: ${item.reasons.map((r) => r.message).join("; ")}`);
    serviceLayer.addLayer(marker);
  }
}

$("reason-chips").addEventListener("click", (event) => {
  const chip = event.target.closest("button");
  if (!chip) return;
  state.reason = chip.dataset.reason;
  renderService();
});
$("route-here").addEventListener("click", () => loadService(map.getCenter()));

// ---------------------------------------------------------------- trips

async function loadVins() {
  try {
    const page = await state.api.get("/v1/vehicles?limit=1000");
    $("vins").replaceChildren(...page.items.map((car) => {
      const option = el("option");
      option.value = car.vin;
      option.label = car.model || "";
      return option;
    }));
  } catch {
    // The list is a convenience: typing a VIN works without it.
  }
}

async function loadTrips(vin) {
  $("trip-detail").hidden = true;
  tripLayer.clearLayers();
  state.trip = null;
  const params = rangeParams(vin ? 30 : 1);
  params.set("limit", "100");
  const path = vin ? `/v1/vehicles/${encodeURIComponent(vin)}/trips?${params}` : `/v1/trips?${params}`;
  try {
    const page = await state.api.get(path);
    state.trips = page.items;
  } catch (error) {
    state.trips = [];
    showError($("trip-list"), error);
    $("trips-summary").textContent = "";
    return;
  }
  const km = state.trips.reduce((sum, t) => sum + t.distance_km, 0);
  $("trips-summary").textContent = `${state.trips.length} trips, ${num(km)} km${vin ? " in the last 30 days" : " in the last 24 h"}${state.trips.length === 100 ? " (newest 100)" : ""}.`;
  $("trip-list").replaceChildren(...state.trips.map((trip) => {
    const row = el("li");
    row.dataset.id = `${trip.vin}/${trip.id}`;
    row.append(el("span", `icon${trip.in_progress ? " live" : ""}`));
    const head = el("div");
    head.append(el("span", "when", when(trip.start_time)));
    if (!vin) head.append(el("span", "vin", ` ${trip.vin}`));
    row.append(head, el("span", "km", `${num(trip.distance_km)} km`));
    const used = trip.fuel_used_pct != null ? `fuel −${num(trip.fuel_used_pct)} %` : trip.charge_used_pct != null ? `charge −${num(trip.charge_used_pct)} %` : "";
    const sub = el("div", "sub", [duration(trip.duration_s), used, trip.max_speed != null ? `max ${Math.round(trip.max_speed)} km/h` : ""].filter(Boolean).join(" · "));
    if (trip.harsh_brakes) sub.prepend(el("span", "flag", `${trip.harsh_brakes}× harsh braking`));
    if (trip.harsh_accels) sub.prepend(el("span", "flag", `${trip.harsh_accels}× harsh accel.`));
    if (trip.door_ajar) sub.prepend(el("span", "flag", "door ajar"));
    if (trip.distance_check === "mismatch") sub.prepend(el("span", "flag", "odometer ≠ GNSS"));
    row.append(sub);
    row.addEventListener("click", () => showTrip(trip, row));
    return row;
  }));
  drawTripStarts();
}

function drawTripStarts() {
  tripLayer.clearLayers();
  const points = state.trips.filter((t) => t.start).map((t) => [t.start.lat, t.start.lon]);
  for (const point of points) tripLayer.addLayer(L.circleMarker(point, { radius: 4, color: "#1f6feb", weight: 1, fillOpacity: 0.6 }));
  if (points.length) fit("trips", L.latLngBounds(points), 14);
}

async function showTrip(trip, row) {
  for (const other of $("trip-list").querySelectorAll("li")) other.classList.toggle("sel", other === row);
  const full = await state.api.get(`/v1/vehicles/${trip.vin}/trips/${trip.id}?max_points=1500`);
  state.trip = full;
  tripLayer.clearLayers();
  const points = (full.track || []).map((p) => [p.lat, p.lon]);
  state.trackPoints = points.length;
  if (points.length) {
    tripLayer.addLayer(L.polyline(points, { color: "#1f6feb", weight: 4, opacity: 0.85 }));
    tripLayer.addLayer(L.circleMarker(points[0], { radius: 6, color: "#1a7f37", fillColor: "#1a7f37", fillOpacity: 1 }).bindTooltip("Start"));
    tripLayer.addLayer(L.circleMarker(points[points.length - 1], { radius: 6, color: "#cf222e", fillColor: "#cf222e", fillOpacity: 1 }).bindTooltip("End"));
    fit("trips", L.latLngBounds(points), 16);
  }
  const detail = $("trip-detail");
  detail.hidden = false;
  const facts = el("div", "facts");
  facts.append(
    fact("Distance", `${num(full.distance_km, 2)} km`),
    fact("GNSS", `${num(full.gnss_km, 2)} km`),
    fact("Duration", duration(full.duration_s)),
    fact("By", full.detected_by === "ignition" ? "ignition" : "unlock/lock"),
    fact("Samples", String(full.samples)),
    fact("Check", full.distance_check.replace("_", " ")),
  );
  detail.replaceChildren(el("h3", null, `${full.vin} · ${when(full.start_time)}`), facts);
}

$("trip-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const vin = $("trip-vin").value.trim().toUpperCase();
  location.hash = vin ? `trips/${vin}` : "trips";
});

function openTrips(vin) {
  location.hash = `trips/${vin}`;
}

// ---------------------------------------------------------------- tabs and routing

function selectTab(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll(".tabs button")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === tab));
  }
  for (const panel of document.querySelectorAll("[data-panel]")) panel.hidden = panel.dataset.panel !== tab;
  showLayer(tab);
  setTimeout(() => fit(tab), 0);
}

document.querySelector(".tabs").addEventListener("click", (event) => {
  const button = event.target.closest("button[data-tab]");
  if (button) location.hash = button.dataset.tab;
});

function route() {
  const [tab, vin] = (location.hash.replace(/^#/, "") || "utilisation").split("/");
  const known = ["utilisation", "service", "trips"].includes(tab) ? tab : "utilisation";
  selectTab(known);
  if (known === "utilisation" && !state.utilisation) loadUtilisation();
  if (known === "service") loadService();
  if (known === "trips") {
    $("trip-vin").value = vin || "";
    loadTrips(vin || null);
  }
}

window.addEventListener("hashchange", route);

function start() {
  $("signin").hidden = true;
  $("app").hidden = false;
  $("whoami").textContent = `${state.me.name} · ${state.me.role}`;
  initMap();
  loadVins();
  route();
  if (state.tab !== "service") loadService(); // the tab's badge shows the count at once
}

const token = storedToken();
if (token) {
  signIn(token, false).catch(() => showSignIn());
} else {
  showSignIn();
}
