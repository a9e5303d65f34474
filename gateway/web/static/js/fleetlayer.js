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

// Web Mercator at zoom 0 in units of the world's width (Leaflet's EPSG:3857, without its objects).
function worldX(lon) { return lon / 360 + 0.5; }
function worldY(lat) {
  const phi = Math.max(Math.min(lat, 85.0511287798), -85.0511287798) * Math.PI / 180;
  return 0.5 - Math.log(Math.tan(Math.PI / 4 + phi / 2)) / (2 * Math.PI);
}
const MIN_FRAME_MS = 33;
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

// A CSS hex colour as one RGBA pixel of a Uint32Array view on ImageData.
function packColor(hex, alpha) {
  const r = parseInt(hex.slice(1, 3), 16);
  const g = parseInt(hex.slice(3, 5), 16);
  const b = parseInt(hex.slice(5, 7), 16);
  return LITTLE_ENDIAN
    ? ((alpha << 24) | (b << 16) | (g << 8) | r) >>> 0
    : ((r << 24) | (g << 16) | (b << 8) | alpha) >>> 0;
}

function stamp(pixels, width, height, cx, cy, offsets, color) {
  for (let k = 0; k < offsets.length; k += 2) {
    const x = cx + offsets[k];
    const y = cy + offsets[k + 1];
    if (x >= 0 && y >= 0 && x < width && y < height) pixels[y * width + x] = color;
  }
} // ease at up to 30 frames a second: smooth, and half the work of 60

export function createFleetLayer(L) {
  return L.Layer.extend({
    initialize() {
      // vin -> {car, wx, wy (world position), fx, fy (eased from), t0}; positions are projected
      // once per change, so a frame is arithmetic on numbers, not 10,000 LatLng objects.
      this._cars = new Map();
      this._selected = null;
      this._visible = null; // null: every car
      this._frame = null;
      this._lastFrame = 0;
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
        const has = car.lat != null && car.lon != null;
        const wx = has ? worldX(car.lon) : null;
        const wy = has ? worldY(car.lat) : null;
        if (!entry) {
          this._cars.set(car.vin, { car, status: carStatus(car), wx, wy, fx: wx, fy: wy, t0: 0 });
          continue;
        }
        if (has && entry.wx != null && (entry.wx !== wx || entry.wy !== wy)) {
          const [x, y] = this._eased(entry, now);
          entry.fx = x; entry.fy = y; entry.t0 = now;
          this._animUntil = now + EASE_MS;
        } else {
          entry.fx = wx; entry.fy = wy; entry.t0 = 0;
        }
        entry.car = car; entry.status = carStatus(car); entry.wx = wx; entry.wy = wy;
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
      this._frame = L.Util.requestAnimFrame((now) => {
        this._frame = null;
        if (now - this._lastFrame < MIN_FRAME_MS && now < this._animUntil) { this.redraw(); return; }
        this._lastFrame = now;
        this._draw();
      });
    },

    _eased(entry, now) {
      const t = entry.t0 ? Math.min((now - entry.t0) / EASE_MS, 1) : 1;
      if (t >= 1 || entry.fx == null) return [entry.wx, entry.wy];
      const e = t * (2 - t);
      return [entry.fx + (entry.wx - entry.fx) * e, entry.fy + (entry.wy - entry.fy) * e];
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
      const radius = zoom <= 11 ? 2.5 : zoom <= 12 ? 3.5 : zoom <= 13 ? 4.5 : 5.5;
      // A dense fleet drawn with big dots hides the map and itself: smaller until zoomed in.
      return this._cars.size > 3000 && zoom < 15 ? Math.min(radius, 2.5) : radius;
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
      // container = world * scale - pixelOrigin + mapPanePos (Leaflet's own chain, inlined).
      const scale = map.options.crs.scale(map.getZoom());
      const origin = map.getPixelOrigin();
      const topLeft = map.containerPointToLayerPoint([0, 0]);
      const ox = origin.x + topLeft.x;
      const oy = origin.y + topLeft.y;
      const batches = { offline: [], ok: [], unlocked: [], driving: [], alert: [] };
      const xs = new Float32Array(this._cars.size);
      const ys = new Float32Array(this._cars.size);
      const vins = [];
      const visible = this._visible;
      let selected = null;
      for (const entry of this._cars.values()) {
        if (entry.wx == null) continue;
        const { car } = entry;
        if (visible && !visible(car)) continue;
        let wx = entry.wx;
        let wy = entry.wy;
        if (entry.t0) [wx, wy] = this._eased(entry, now);
        const x = wx * scale - ox;
        const y = wy * scale - oy;
        if (x < -10 || y < -10 || x > size.x + 10 || y > size.y + 10) continue;
        batches[entry.status].push(x, y);
        xs[vins.length] = x; ys[vins.length] = y; vins.push(car.vin);
        if (car.vin === this._selected) selected = { x, y };
      }
      this._hits = { xs, ys, vins };
      this._paint(ctx, batches, r, ratio, size);
      if (selected) {
        ctx.beginPath();
        ctx.arc(selected.x, selected.y, r + 5, 0, Math.PI * 2);
        ctx.lineWidth = 3;
        ctx.strokeStyle = "#111826";
        ctx.stroke();
      }
      if (now < this._animUntil) this.redraw();
    },

    // Dots written straight into the pixels: at 10,000 cars, rasterising as many anti-aliased
    // paths (or copying as many images) is what costs, above all where the browser rasterises
    // in software; setting ~50 pixels per car in a typed array takes a few milliseconds.
    _paint(ctx, batches, r, ratio, size) {
      const width = Math.round(size.x * ratio);
      const height = Math.round(size.y * ratio);
      if (!this._image || this._image.width !== width || this._image.height !== height) {
        this._image = ctx.createImageData(width, height);
        this._pixels = new Uint32Array(this._image.data.buffer);
      }
      const pixels = this._pixels;
      pixels.fill(0);
      const { fill, ring } = this._disc(r * ratio, r >= 3.5 ? Math.max(1, Math.round(ratio)) : 0);
      const white = packColor("#ffffff", 230);
      for (const status of ["offline", "ok", "unlocked", "driving", "alert"]) {
        const points = batches[status];
        const color = packColor(COLORS[status], 255);
        for (let i = 0; i < points.length; i += 2) {
          const cx = Math.round(points[i] * ratio);
          const cy = Math.round(points[i + 1] * ratio);
          stamp(pixels, width, height, cx, cy, ring, white);
          stamp(pixels, width, height, cx, cy, fill, color);
        }
      }
      ctx.putImageData(this._image, 0, 0);
    },

    _disc(radius, border) {
      const key = `${radius}/${border}`;
      if (this._discKey === key) return this._discCache;
      const fill = [];
      const ring = [];
      const outer = radius + border;
      const reach = Math.ceil(outer);
      for (let dy = -reach; dy <= reach; dy++) {
        for (let dx = -reach; dx <= reach; dx++) {
          const d = Math.hypot(dx, dy);
          if (d <= radius) fill.push(dx, dy);
          else if (d <= outer) ring.push(dx, dy);
        }
      }
      this._discKey = key;
      this._discCache = { fill: Int16Array.from(fill), ring: Int16Array.from(ring) };
      return this._discCache;
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
