// All cars on one canvas: one path per colour per frame, positions eased between updates.
// Leaflet's own markers (one DOM node or canvas object each) do not stay smooth at 10,000 cars.

export const COLORS = {
  offline: "#8c959f",
  alert: "#cf222e",
  driving: "#1f6feb",
  unlocked: "#c76a00",
  ok: "#1a7f37",
};
const EASE_MS = 900;

export function carStatus(car) {
  if (!car.online) return "offline";
  if (car.alerts && car.alerts.length) return "alert";
  if ((car.speed || 0) > 1 || car.ignition) return "driving";
  if (car.locked === false) return "unlocked";
  return "ok";
}

export function createFleetLayer(L) {
  return L.Layer.extend({
    initialize() {
      this._cars = new Map(); // vin -> {car, x0, y0 (from latlng), t0}
      this._selected = null;
      this._visible = () => true;
      this._frame = null;
      this._animUntil = 0;
      this._hits = { xs: new Float32Array(0), ys: new Float32Array(0), vins: [] };
    },

    onAdd(map) {
      this._map = map;
      const canvas = (this._canvas = L.DomUtil.create("canvas", "fleet-canvas leaflet-zoom-hide"));
      canvas.style.position = "absolute";
      canvas.style.pointerEvents = "none";
      map.getPane("overlayPane").appendChild(canvas);
      map.on("moveend resize zoomend viewreset", this._reset, this);
      map.on("click", this._onClick, this);
      map.on("mousemove", this._onMove, this);
      this._reset();
    },

    onRemove(map) {
      map.off("moveend resize zoomend viewreset", this._reset, this);
      map.off("click", this._onClick, this);
      map.off("mousemove", this._onMove, this);
      this._canvas.remove();
    },

    // cars: iterable of car objects ({vin, lat, lon, ...}); moved ones ease to their new place.
    update(cars) {
      const now = performance.now();
      for (const car of cars) {
        const entry = this._cars.get(car.vin);
        if (entry && entry.car.lat != null && car.lat != null &&
            (entry.car.lat !== car.lat || entry.car.lon !== car.lon)) {
          const [lat, lon] = this._position(entry, now);
          entry.fromLat = lat; entry.fromLon = lon; entry.t0 = now;
          entry.car = car;
          this._animUntil = now + EASE_MS;
        } else if (entry) {
          entry.car = car;
        } else {
          this._cars.set(car.vin, { car, fromLat: car.lat, fromLon: car.lon, t0: 0 });
        }
      }
      this.redraw();
    },

    clear() { this._cars.clear(); this.redraw(); },
    // How many cars the last frame drew (tests and diagnostics).
    drawnCount() { return this._hits.vins.length; },
    select(vin) { this._selected = vin; this.redraw(); },
    filter(predicate) { this._visible = predicate; this.redraw(); },
    onSelect(callback) { this._onSelectCallback = callback; },

    redraw() {
      if (this._frame || !this._map) return;
      this._frame = L.Util.requestAnimFrame(() => { this._frame = null; this._draw(); });
    },

    _position(entry, now) {
      const { car } = entry;
      const t = entry.t0 ? Math.min((now - entry.t0) / EASE_MS, 1) : 1;
      if (t >= 1 || entry.fromLat == null) return [car.lat, car.lon];
      const e = t * (2 - t);
      return [entry.fromLat + (car.lat - entry.fromLat) * e, entry.fromLon + (car.lon - entry.fromLon) * e];
    },

    _reset() {
      const map = this._map;
      const size = map.getSize();
      const ratio = window.devicePixelRatio || 1;
      const canvas = this._canvas;
      L.DomUtil.setPosition(canvas, map.containerPointToLayerPoint([0, 0]));
      canvas.width = size.x * ratio;
      canvas.height = size.y * ratio;
      canvas.style.width = `${size.x}px`;
      canvas.style.height = `${size.y}px`;
      this._draw();
    },

    _radius() {
      const zoom = this._map.getZoom();
      return zoom <= 11 ? 2.5 : zoom <= 12 ? 3.5 : zoom <= 13 ? 4.5 : 5.5;
    },

    _draw() {
      const map = this._map;
      if (!map) return;
      const canvas = this._canvas;
      const ctx = canvas.getContext("2d");
      const ratio = window.devicePixelRatio || 1;
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      const size = map.getSize();
      ctx.clearRect(0, 0, size.x, size.y);
      const now = performance.now();
      const r = this._radius();
      const batches = { offline: [], ok: [], unlocked: [], driving: [], alert: [] };
      const xs = new Float32Array(this._cars.size);
      const ys = new Float32Array(this._cars.size);
      const vins = [];
      let selected = null;
      for (const entry of this._cars.values()) {
        const { car } = entry;
        if (car.lat == null || car.lon == null || !this._visible(car)) continue;
        const [lat, lon] = this._position(entry, now);
        const p = map.latLngToContainerPoint([lat, lon]);
        if (p.x < -10 || p.y < -10 || p.x > size.x + 10 || p.y > size.y + 10) continue;
        batches[carStatus(car)].push(p.x, p.y);
        xs[vins.length] = p.x; ys[vins.length] = p.y; vins.push(car.vin);
        if (car.vin === this._selected) selected = p;
      }
      this._hits = { xs, ys, vins };
      ctx.lineWidth = 1;
      ctx.strokeStyle = "rgba(255,255,255,0.9)";
      for (const status of ["offline", "ok", "unlocked", "driving", "alert"]) {
        const points = batches[status];
        if (!points.length) continue;
        ctx.beginPath();
        for (let i = 0; i < points.length; i += 2) {
          ctx.moveTo(points[i] + r, points[i + 1]);
          ctx.arc(points[i], points[i + 1], r, 0, Math.PI * 2);
        }
        ctx.fillStyle = COLORS[status];
        ctx.fill();
        if (r >= 3.5) ctx.stroke();
      }
      if (selected) {
        ctx.beginPath();
        ctx.arc(selected.x, selected.y, r + 5, 0, Math.PI * 2);
        ctx.lineWidth = 3;
        ctx.strokeStyle = "#111826";
        ctx.stroke();
      }
      if (now < this._animUntil) this.redraw();
    },

    _nearest(point) {
      const { xs, ys, vins } = this._hits;
      const limit = Math.max(10, this._radius() + 6);
      let best = null;
      let bestD = limit * limit;
      for (let i = 0; i < vins.length; i++) {
        const dx = xs[i] - point.x;
        const dy = ys[i] - point.y;
        const d = dx * dx + dy * dy;
        if (d <= bestD) { bestD = d; best = vins[i]; }
      }
      return best;
    },

    _onClick(event) {
      const vin = this._nearest(event.containerPoint);
      if (vin && this._onSelectCallback) this._onSelectCallback(vin);
    },

    _onMove(event) {
      if (this._moveQueued) return;
      this._moveQueued = true;
      L.Util.requestAnimFrame(() => {
        this._moveQueued = false;
        const hit = this._nearest(event.containerPoint);
        this._map.getContainer().style.cursor = hit ? "pointer" : "";
      });
    },
  });
}
