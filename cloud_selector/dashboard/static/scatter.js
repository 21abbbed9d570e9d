// scatter.js: a small WebGL point renderer for the embedding map, with a Canvas2D overlay for
// the lasso and box. Written here because regl (under regl-scatterplot) compiles its draw
// commands with Function(), which this dashboard's Content-Security-Policy (script-src 'self',
// no 'unsafe-eval') refuses. 100k points draw in one gl.drawArrays; hover and selection scan the
// points on the CPU (a few ms at 100k). Without WebGL it falls back to Canvas2D (slower).
//
//   const s = new Scatter(container, {onHover(i, x, y), onSelect(indices), onClick(i)});
//   s.setData(xs, ys, rgba)   Float32Array x and y in [0, 1], Uint8Array of 4 bytes per point
//   s.setColors(rgba); s.setMode("lasso" | "box" | "pan"); s.setSelection([...]); s.resetView()
//   s.selectedIndices(), s.screenPosition(i) -> [x, y] in CSS px from the container's corner
"use strict";

const SCATTER_VERTEX = `attribute vec2 a_pos; attribute vec4 a_color; varying vec4 v_color;
uniform vec2 u_center; uniform vec2 u_scale; uniform float u_size;
void main() { gl_Position = vec4((a_pos - u_center) * u_scale, 0.0, 1.0); gl_PointSize = u_size; v_color = a_color; }`;
// Round points; the selection's second pass (u_ring) draws them with a dark ring.
const SCATTER_FRAGMENT = `precision mediump float; varying vec4 v_color; uniform float u_ring;
void main() {
  vec2 c = gl_PointCoord - 0.5; float r = dot(c, c);
  if (r > 0.25) discard;
  gl_FragColor = (u_ring > 0.5 && r > 0.1) ? vec4(0.08, 0.09, 0.13, 1.0) : v_color;
}`;

class Scatter {
  constructor(container, handlers = {}) {
    this.container = container;
    this.handlers = { onHover() {}, onSelect() {}, onClick() {}, ...handlers };
    this.canvas = document.createElement("canvas");
    this.overlay = document.createElement("canvas");
    this.overlay.className = "rv-overlay";
    container.append(this.canvas, this.overlay);
    this.gl = this.canvas.getContext("webgl", { antialias: false, preserveDrawingBuffer: true });
    this.renderer = this.gl ? "webgl" : "canvas2d";  // WebGL off (a policy, an old GPU): Canvas2D
    this.ctx = this.gl ? null : this.canvas.getContext("2d");
    this.octx = this.overlay.getContext("2d");
    Object.assign(this, { n: 0, x: new Float32Array(0), y: new Float32Array(0), rgba: new Uint8Array(0),
                          selected: new Uint8Array(0), mode: "lasso", view: null, drag: null, frame: 0 });
    if (this.gl) this.initGL();
    this.resize();
    new ResizeObserver(() => this.resize()).observe(container);
    this.listen();
  }

  initGL() {
    const gl = this.gl;
    const program = gl.createProgram();
    [[gl.VERTEX_SHADER, SCATTER_VERTEX], [gl.FRAGMENT_SHADER, SCATTER_FRAGMENT]].forEach(([type, source]) => {
      const shader = gl.createShader(type);
      gl.shaderSource(shader, source);
      gl.compileShader(shader);
      if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
      gl.attachShader(program, shader);
    });
    gl.linkProgram(program);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program));
    this.program = program;
    this.loc = {};
    ["a_pos", "a_color"].forEach((n) => { this.loc[n] = gl.getAttribLocation(program, n); });
    ["u_center", "u_scale", "u_size", "u_ring"].forEach((n) => { this.loc[n] = gl.getUniformLocation(program, n); });
    this.buffers = { pos: gl.createBuffer(), color: gl.createBuffer(), selPos: gl.createBuffer(), selColor: gl.createBuffer() };
    this.selCount = 0;
  }

  setData(x, y, rgba) {
    Object.assign(this, { n: x.length, x, y, selected: new Uint8Array(x.length) });
    if (this.gl) this.upload(this.buffers.pos, Float32Array.from({ length: 2 * this.n }, (_, j) => (j % 2 ? y : x)[j >> 1]));
    if (!this.view) this.resetView(false);
    this.setColors(rgba);
  }

  setColors(rgba) {
    this.rgba = rgba;
    if (this.gl) this.upload(this.buffers.color, rgba);
    this.updateSelectionBuffers();
    this.redraw();
  }

  upload(buffer, data) {
    this.gl.bindBuffer(this.gl.ARRAY_BUFFER, buffer);
    this.gl.bufferData(this.gl.ARRAY_BUFFER, data, this.gl.STATIC_DRAW);
  }

  setMode(mode) { this.mode = mode; this.container.classList.toggle("rv-pan", mode === "pan"); }

  resetView(draw = true) {  // k: CSS px per data unit
    this.view = { cx: 0.5, cy: 0.5, k: 0.92 * Math.min(this.w, this.h) };
    if (draw) this.redraw();
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, this.container.clientWidth);
    const h = Math.max(1, this.container.clientHeight);
    if (this.view && this.w) this.view.k *= Math.min(w, h) / Math.min(this.w, this.h);
    Object.assign(this, { w, h, dpr });
    [this.canvas, this.overlay].forEach((c) => { c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); });
    this.redraw();
  }

  pointSize() {
    const base = this.n > 30000 ? 2.5 : this.n > 3000 ? 4 : 7;
    const zoom = this.view ? this.view.k / (0.92 * Math.min(this.w, this.h)) : 1;
    return Math.min(14, base * Math.max(1, Math.sqrt(zoom)));
  }

  // CSS px from the container's top-left corner <-> data units ([0, 1] on both axes).
  screenPosition(i) { const v = this.view; return [this.w / 2 + (this.x[i] - v.cx) * v.k, this.h / 2 - (this.y[i] - v.cy) * v.k]; }

  toData(sx, sy) { const v = this.view; return [v.cx + (sx - this.w / 2) / v.k, v.cy - (sy - this.h / 2) / v.k]; }

  redraw() { if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.draw(); }); }

  draw() { if (this.view) (this.gl ? this.drawGL() : this.draw2d()); }

  drawGL() {
    const gl = this.gl;
    const v = this.view;
    gl.viewport(0, 0, this.canvas.width, this.canvas.height);
    gl.clearColor(1, 1, 1, 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    if (!this.n) return;
    gl.useProgram(this.program);
    gl.enable(gl.BLEND);  // points are a little transparent: dense regions read darker
    gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
    gl.uniform2f(this.loc.u_center, v.cx, v.cy);
    gl.uniform2f(this.loc.u_scale, (2 * v.k) / this.w, (2 * v.k) / this.h);
    const pass = (posBuffer, colorBuffer, count, size, ring) => {
      [[posBuffer, this.loc.a_pos, 2, gl.FLOAT, false], [colorBuffer, this.loc.a_color, 4, gl.UNSIGNED_BYTE, true]]
        .forEach(([buffer, at, width, type, normalised]) => {
          gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
          gl.enableVertexAttribArray(at);
          gl.vertexAttribPointer(at, width, type, normalised, 0, 0);
        });
      gl.uniform1f(this.loc.u_size, size * this.dpr);
      gl.uniform1f(this.loc.u_ring, ring ? 1 : 0);
      gl.drawArrays(gl.POINTS, 0, count);
    };
    const size = this.pointSize();
    pass(this.buffers.pos, this.buffers.color, this.n, size, false);
    if (this.selCount) pass(this.buffers.selPos, this.buffers.selColor, this.selCount, size + 4, true);
  }

  draw2d() {  // the fallback: one fillStyle per colour (100k style changes would be slow)
    const c = this.ctx;
    const size = this.pointSize();
    const square = (i, grow) => {
      const [sx, sy] = this.screenPosition(i);
      return [sx - size / 2 - grow, sy - size / 2 - grow, size + 2 * grow, size + 2 * grow];
    };
    c.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    c.clearRect(0, 0, this.w, this.h);
    const groups = new Map();
    for (let i = 0; i < this.n; i += 1) {
      const key = (this.rgba[4 * i] << 16) | (this.rgba[4 * i + 1] << 8) | this.rgba[4 * i + 2];
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(i);
    }
    groups.forEach((members, key) => {
      c.fillStyle = `#${key.toString(16).padStart(6, "0")}`;
      members.forEach((i) => c.fillRect(...square(i, 0)));
    });
    c.strokeStyle = "#15171f";
    this.selectedIndices().forEach((i) => c.strokeRect(...square(i, 1.5)));
  }

  updateSelectionBuffers() {
    const chosen = this.selectedIndices();
    this.selCount = chosen.length;
    if (!this.gl || !chosen.length) return;
    const [pos, col] = [new Float32Array(chosen.length * 2), new Uint8Array(chosen.length * 4)];
    chosen.forEach((i, j) => {
      pos.set([this.x[i], this.y[i]], 2 * j);
      col.set([this.rgba[4 * i], this.rgba[4 * i + 1], this.rgba[4 * i + 2], 255], 4 * j);
    });
    this.upload(this.buffers.selPos, pos);
    this.upload(this.buffers.selColor, col);
  }

  selectedIndices() { return this.selected.reduce((out, on, i) => (on ? (out.push(i), out) : out), []); }

  setSelection(indices, add = false) {
    if (!add) this.selected.fill(0);
    indices.forEach((i) => { this.selected[i] = 1; });
    this.updateSelectionBuffers();
    this.redraw();
    this.handlers.onSelect(this.selectedIndices());
  }

  nearest(sx, sy, radius = 8) {  // the point under (sx, sy), or -1
    let [best, bestD] = [-1, radius * radius];
    for (let i = 0; i < this.n; i += 1) {
      const [px, py] = this.screenPosition(i);
      const d = (px - sx) ** 2 + (py - sy) ** 2;
      if (d <= bestD) { bestD = d; best = i; }
    }
    return best;
  }

  inside(polygon) {
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    polygon.forEach(([x, y]) => { x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y); });
    const found = [];
    for (let i = 0; i < this.n; i += 1) {
      const [px, py] = this.screenPosition(i);
      if (px < x0 || px > x1 || py < y0 || py > y1) continue;
      let inPolygon = false;  // even-odd ray casting
      for (let a = 0, b = polygon.length - 1; a < polygon.length; b = a, a += 1) {
        const [ax, ay] = polygon[a];
        const [bx, by] = polygon[b];
        if ((ay > py) !== (by > py) && px < ((bx - ax) * (py - ay)) / (by - ay) + ax) inPolygon = !inPolygon;
      }
      if (inPolygon) found.push(i);
    }
    return found;
  }

  local(event) { const r = this.overlay.getBoundingClientRect(); return [event.clientX - r.left, event.clientY - r.top]; }

  paintShape(points) {
    const c = this.octx;
    c.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    c.clearRect(0, 0, this.w, this.h);
    if (!points || points.length < 2) return;
    c.beginPath();
    points.forEach(([x, y], i) => (i ? c.lineTo(x, y) : c.moveTo(x, y)));
    c.closePath();
    Object.assign(c, { fillStyle: "rgba(36, 87, 197, 0.10)", strokeStyle: "#2457c5", lineWidth: 1.5 });
    c.setLineDash([5, 4]);
    c.fill();
    c.stroke();
  }

  listen() {
    const o = this.overlay;
    o.addEventListener("wheel", (event) => {
      event.preventDefault();
      const [sx, sy] = this.local(event);
      const [dx, dy] = this.toData(sx, sy);
      this.view.k = Math.min(Math.max(this.view.k * Math.exp(-event.deltaY * 0.0015), 20), 1e6);
      this.view.cx = dx - (sx - this.w / 2) / this.view.k;
      this.view.cy = dy + (sy - this.h / 2) / this.view.k;
      this.redraw();
    }, { passive: false });
    o.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      o.setPointerCapture(event.pointerId);
      const at = this.local(event);
      this.drag = { start: at, last: at, path: [at], add: event.shiftKey, moved: false };
      hover(null);
    });
    let hoverAt = null;
    let hoverFrame = 0;
    const hover = (at) => {  // scans every point: at most once a frame
      hoverAt = at;
      if (!at) this.handlers.onHover(-1);
      else if (!hoverFrame) {
        hoverFrame = requestAnimationFrame(() => {
          hoverFrame = 0;
          if (hoverAt) this.handlers.onHover(this.nearest(...hoverAt), ...hoverAt);
        });
      }
    };
    o.addEventListener("pointermove", (event) => {
      const at = this.local(event);
      const d = this.drag;
      if (!d) { hover(at); return; }
      d.moved = d.moved || Math.hypot(at[0] - d.start[0], at[1] - d.start[1]) > 3;
      if (this.mode === "pan") {
        this.view.cx -= (at[0] - d.last[0]) / this.view.k;
        this.view.cy += (at[1] - d.last[1]) / this.view.k;
        this.redraw();
      } else if (this.mode === "box") {
        d.path = [d.start, [at[0], d.start[1]], at, [d.start[0], at[1]]];
      } else if (Math.hypot(at[0] - d.path[d.path.length - 1][0], at[1] - d.path[d.path.length - 1][1]) > 2) {
        d.path.push(at);
      }
      if (this.mode !== "pan") this.paintShape(d.path);
      d.last = at;
    });
    o.addEventListener("pointerup", (event) => {
      const d = this.drag;
      this.drag = null;
      if (!d) return;
      this.paintShape(null);
      if (!d.moved) {
        const i = this.nearest(d.start[0], d.start[1]);
        if (i >= 0) this.handlers.onClick(i, event);
        else if (this.mode !== "pan" && !d.add) this.setSelection([]);
      } else if (this.mode !== "pan" && d.path.length >= 3) {
        this.setSelection(this.inside(d.path), d.add);
      }
    });
    o.addEventListener("pointercancel", () => { this.drag = null; this.paintShape(null); });
    o.addEventListener("pointerleave", () => hover(null));
    o.addEventListener("dblclick", () => this.resetView());
  }
}

window.Scatter = Scatter;
