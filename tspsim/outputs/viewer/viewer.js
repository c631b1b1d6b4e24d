// tspsim timeline viewer: decodes one run's data block when the run is selected, plots it, and redraws
// the stream lanes, link bins and memory stack at the resolution of the visible window after every zoom.
// The decimation rules are those of tspsim/outputs/viewer/decimate.py (same names, same results).
(function () {
  'use strict';
  performance.mark('tspsim-script');
  const config = window.TSPSIM_PLOTLY_CONFIG || {};
  const state = {};
  let current = -1;

  // ------------------------------------------------------------------------------------------ decoding
  function base64Bytes(text) {
    const bin = atob(text.trim());
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  async function decode(id) {
    if (typeof DecompressionStream === 'undefined') {
      throw new Error('this browser cannot decompress the page data (no DecompressionStream): open the page ' +
                      'in a recent Chrome, Edge, Firefox or Safari');
    }
    const el = document.getElementById(id);
    const stream = new Blob([base64Bytes(el.textContent)]).stream().pipeThrough(new DecompressionStream('gzip'));
    return JSON.parse(await new Response(stream).text());
  }

  function nextFrame() {
    return new Promise(function (resolve) { requestAnimationFrame(function () { setTimeout(resolve, 0); }); });
  }

  // ------------------------------------------------------------------------------------------ helpers
  function upperBound(a, v) { let lo = 0, hi = a.length; while (lo < hi) { const m = (lo + hi) >> 1; if (a[m] <= v) lo = m + 1; else hi = m; } return lo; }
  function lowerBound(a, v) { let lo = 0, hi = a.length; while (lo < hi) { const m = (lo + hi) >> 1; if (a[m] < v) lo = m + 1; else hi = m; } return lo; }

  function niceWidth(width) {
    if (!(width > 0) || !isFinite(width)) return 1;
    const exp = Math.floor(Math.log10(width));
    for (const m of [1, 2, 5, 10]) { const w = m * Math.pow(10, exp); if (w >= width * (1 - 1e-12)) return w; }
    return Math.pow(10, exp + 1);
  }
  function fmtG(v) { return String(parseFloat(v.toPrecision(6))); }
  function binText(width) {
    return 'mean and max per ' + (width >= 1 ? fmtG(width) + ' ms' : fmtG(width * 1e3) + ' µs') + ' bin';
  }
  function fmtTime(seconds) {
    const us = seconds * 1e6;
    return us < 1000 ? us.toFixed(1) + ' µs' : (seconds * 1e3).toFixed(3) + ' ms';
  }

  // ------------------------------------------------------------------------------------------ spans
  function rasterSpans(S, nCats, x0, x1, n) {
    const w = (x1 - x0) / n;
    const out = [];
    for (let c = 0; c < nCats; c++) out.push({lane: [], start: [], end: [], count: [], busy: [], mix: []});
    const cover = new Float64Array(nCats * n), first = new Float64Array(n), last = new Float64Array(n);
    const starts = new Int32Array(n);
    const N = S.start.length;
    let k = 0;
    while (k < N) {
      const lane = S.lane[k];
      let m = k;
      while (m < N && S.lane[m] === lane) m++;
      cover.fill(0); first.fill(Infinity); last.fill(-Infinity); starts.fill(0);
      let any = false;
      for (let q = k; q < m; q++) {
        if (S.end[q] < x0 || S.start[q] > x1) continue;
        any = true;
        const s = Math.max(S.start[q], x0), e = Math.min(S.end[q], x1), c = S.cat[q];
        const i = Math.min(Math.max(Math.floor((s - x0) / w), 0), n - 1);
        const j = Math.min(Math.max(Math.ceil((e - x0) / w) - 1, i), n - 1);
        starts[i]++;
        if (i === j) {
          cover[c * n + i] += e - s; first[i] = Math.min(first[i], s); last[i] = Math.max(last[i], e);
          continue;
        }
        cover[c * n + i] += x0 + (i + 1) * w - s;
        cover[c * n + j] += e - (x0 + j * w);
        for (let b = i + 1; b < j; b++) {
          cover[c * n + b] += w;
          first[b] = Math.min(first[b], x0 + b * w); last[b] = Math.max(last[b], x0 + (b + 1) * w);
        }
        first[i] = Math.min(first[i], s); last[i] = Math.max(last[i], x0 + (i + 1) * w);
        first[j] = Math.min(first[j], x0 + j * w); last[j] = Math.max(last[j], e);
      }
      if (any) mergeColumns(out, lane, cover, first, last, starts, nCats, n);
      k = m;
    }
    return out;
  }

  function mergeColumns(out, lane, cover, first, last, starts, nCats, n) {
    const dom = new Int32Array(n);
    for (let b = 0; b < n; b++) {
      let best = 0;
      for (let c = 1; c < nCats; c++) if (cover[c * n + b] > cover[best * n + b]) best = c;
      dom[b] = best;
    }
    let k = 0;
    while (k < n) {
      if (!isFinite(first[k])) { k++; continue; }
      const c = dom[k];
      let m = k;
      while (m + 1 < n && isFinite(first[m + 1]) && dom[m + 1] === c) m++;
      const seg = out[c];
      let count = 0, busy = 0;
      const mix = {};
      for (let b = k; b <= m; b++) {
        count += starts[b];
        for (let cc = 0; cc < nCats; cc++) {
          const v = cover[cc * n + b];
          if (v > 0) { mix[cc] = (mix[cc] || 0) + v; busy += v; }
        }
      }
      seg.lane.push(lane); seg.start.push(first[k]); seg.end.push(last[m]);
      seg.count.push(count); seg.busy.push(busy); seg.mix.push(mix);
      k = m + 1;
    }
  }

  function segmentHover(seg, k, labels, where) {
    const length = seg.end[k] - seg.start[k];
    const busy = length > 0 ? seg.busy[k] / length * 100 : 100;
    const mix = Object.entries(seg.mix[k]).map(function (kv) { return [Number(kv[0]), kv[1]]; })
      .sort(function (a, b) { return b[1] - a[1] || a[0] - b[0]; }).slice(0, 3);
    const parts = seg.busy[k] ? mix.map(function (kv) { return labels[kv[0]] + ' ' + (kv[1] / seg.busy[k] * 100).toFixed(0) + '%'; }).join(' · ') : '';
    const n = seg.count[k];
    return [n.toLocaleString('en-US') + ' span' + (n !== 1 ? 's' : '') + ' merged (less than a pixel apart)', where,
            'busy ' + busy.toFixed(0) + '% of ' + fmtTime(length / 1e3) + (parts ? ': ' + parts : ''),
            'start ' + seg.start[k].toFixed(4) + ' ms · end ' + seg.end[k].toFixed(4) + ' ms', 'zoom in to see each op'];
  }

  // One SVG line path per category: each segment's ends plus a vertex at most `step` apart (plotly hovers
  // the nearest vertex), then a gap — as segment_vertices in spans.py.
  function segmentArrays(starts, ends, lanes, hover, step) {
    const xs = [], ys = [], cd = [];
    for (let k = 0; k < starts.length; k++) {
      const s = starts[k], e = ends[k];
      const parts = step > 0 ? Math.max(1, Math.ceil((e - s) / step)) : 1;
      for (let j = 0; j <= parts; j++) { xs.push(s + j / parts * (e - s)); ys.push(lanes[k]); cd.push(hover[k]); }
      xs.push(NaN); ys.push(NaN); cd.push(null);
    }
    return [xs, ys, cd];
  }

  async function spanUpdates(st, x0, x1, px, push, layout) {
    const S = st.refine.spans;
    const title = function (text) { layout['annotations[0].text'] = S.title_prefix + text; };
    const N = S.start.length;
    const step = S.hover_px * (x1 - x0) / px;
    let count = 0;
    for (let q = 0; q < N; q++) if (S.end[q] >= x0 && S.start[q] <= x1) count++;
    if (count <= S.exact_limit) {
      if (!st.hover) st.hover = decode('hover-' + st.index);
      const hover = await st.hover;
      const per = S.cats.map(function () { return {s: [], e: [], l: [], h: []}; });
      for (let q = 0; q < N; q++) {
        if (S.end[q] < x0 || S.start[q] > x1) continue;
        const p = per[S.cat[q]];
        p.s.push(S.start[q]); p.e.push(S.end[q]); p.l.push(S.lane[q]); p.h.push(hover[q]);
      }
      S.cats.forEach(function (c, i) {
        const a = segmentArrays(per[i].s, per[i].e, per[i].l, per[i].h, step);
        push(c.trace, a[0], a[1], a[2]);
      });
      title(count.toLocaleString('en-US') + ' in view, every one drawn)');
      return 'exact';
    }
    const labels = S.cats.map(function (c) { return c.label; });
    const segs = rasterSpans(S, S.cats.length, x0, x1, px);
    S.cats.forEach(function (c, i) {
      const seg = segs[i];
      const hover = seg.start.map(function (_, k) { return segmentHover(seg, k, labels, S.where[seg.lane[k]]); });
      const a = segmentArrays(seg.start, seg.end, seg.lane, hover, step);
      push(c.trace, a[0], a[1], a[2]);
    });
    title(count.toLocaleString('en-US') + ' in view, decimated per pixel: zoom in to see each span)');
    return 'raster';
  }

  // ------------------------------------------------------------------------------------------ links
  function linkView(x, y, x0, x1, width) {
    const lo = upperBound(x, x0), hi = lowerBound(x, x1);
    const nBins = Math.ceil((x1 - x0) / width - 1e-9);
    if (hi - lo <= nBins) {
      const before = lo > 0 ? y[lo - 1] : 0;
      const xs = [x0].concat(Array.from(x.subarray(lo, hi)), [x1]);
      const ys = [before].concat(y.slice(lo, hi), [hi > lo ? y[hi - 1] : before]);
      return {exact: true, xs: xs, mean: ys, mx: [], maxY: []};
    }
    const n = Math.max(1, nBins), xs = [], mean = [], peak = [];
    let p = upperBound(x, x0) - 1;
    const val = function (i) { return i >= 0 ? y[i] : 0; };
    for (let k = 0; k < n; k++) {
      const a = Math.min(x0 + k * width, x1), b = Math.min(x0 + (k + 1) * width, x1);
      while (p + 1 < x.length && x[p + 1] <= a) p++;
      let t = a, area = 0, mx = val(p);
      while (p + 1 < x.length && x[p + 1] < b) {
        area += val(p) * (x[p + 1] - t); t = x[p + 1]; p++; mx = Math.max(mx, val(p));
      }
      area += val(p) * (b - t);
      xs.push(a); mean.push(b > a ? area / (b - a) : 0); peak.push(mx);
    }
    xs.push(x1); mean.push(mean[mean.length - 1]); peak.push(peak[peak.length - 1]);
    return {exact: false, xs: xs, mean: mean, mx: xs.slice(), maxY: peak};
  }

  // ------------------------------------------------------------------------------------------ memory
  function decimateSteps(t, total, x0, x1, n, always) {
    const N = t.length, lo = lowerBound(t, x0), hi = upperBound(t, x1);
    const keep = new Set();
    always.forEach(function (i) { if (i >= 0 && i < N) keep.add(i); });
    if (lo > 0) keep.add(lo - 1);
    if (hi < N) keep.add(hi);
    if (hi - lo <= 2 * n) {
      for (let i = lo; i < hi; i++) keep.add(i);
    } else {
      const w = (x1 - x0) / n;
      let a = lo;
      while (a < hi) {
        const col = Math.min(Math.floor((t[a] - x0) / w), n - 1);
        let b = a, best = a;
        while (b + 1 < hi && Math.min(Math.floor((t[b + 1] - x0) / w), n - 1) === col) {
          b++;
          if (total[b] > total[best]) best = b;
        }
        keep.add(best); keep.add(b);
        a = b + 1;
      }
    }
    return Array.from(keep).sort(function (p, q) { return p - q; });
  }

  // Times arrive as whole-nanosecond deltas (figure.py ns_deltas): back to milliseconds.
  function fromDeltas(deltas) {
    const out = new Float64Array(deltas.length);
    let ns = 0;
    for (let k = 0; k < deltas.length; k++) { ns += deltas[k]; out[k] = ns / 1e6; }
    return out;
  }

  function unpack(R) {
    if (R.spans) {
      const S = R.spans;
      S.start = fromDeltas(S.start_ns_deltas);
      S.end = new Float64Array(S.start.length);
      for (let k = 0; k < S.start.length; k++) S.end[k] = S.start[k] + S.dur_ns[k] / 1e6;
    }
    R.links.forEach(function (g) { g.x = fromDeltas(g.x_ns_deltas); });
    R.memory.forEach(function (m) {
      m.x = fromDeltas(m.x_ns_deltas);
      m.total = new Float64Array(m.x.length);
      for (const y of m.ys) for (let k = 0; k < y.length; k++) m.total[k] += y[k];
    });
  }

  // ------------------------------------------------------------------------------------------ refine
  function schedule(i) {
    const st = state[i];
    clearTimeout(st.timer);
    st.timer = setTimeout(function () { refine(i).catch(function (err) { console.error(err); }); }, 60);
  }

  async function refine(i) {
    const st = state[i];
    const div = document.getElementById('plot-' + i);
    if (!st || !st.plotted || current !== i) return;
    const R = st.refine;
    const xa = div._fullLayout.xaxis;
    const x0 = Math.max(0, Number(xa.range[0])), x1 = Math.min(R.x_end, Number(xa.range[1]));
    if (!(x1 > x0)) return;
    const px = Math.max(50, Math.round(xa._length));
    const key = x0 + ':' + x1 + ':' + px;
    if (key === st.key) return;
    st.key = key;
    const idx = [], xs = [], ys = [], cds = [];
    const push = function (trace, x, y, cd) { idx.push(trace); xs.push(x); ys.push(y); cds.push(cd); };
    let mode = div.dataset.mode;
    const layout = {};
    if (R.spans) {
      mode = await spanUpdates(st, x0, x1, px, push, layout);
      if (st.key !== key || !st.plotted) return;  // a newer zoom or another run took over
    }
    const width = niceWidth((x1 - x0) / Math.max(1, Math.floor(px / R.bin_px)));
    const exactPanels = R.link_panels.map(function () { return true; });
    R.links.forEach(function (g) {
      const v = linkView(g.x, g.y, x0, x1, width);
      push(g.max, v.mx, v.maxY, null);
      push(g.mean, v.xs, v.mean, null);
      exactPanels[g.panel] = exactPanels[g.panel] && v.exact;
    });
    R.link_panels.forEach(function (p, k) {
      layout['annotations[' + p.annotation + '].text'] = p.prefix + (exactPanels[k] ? 'exact (every change drawn)' : binText(width));
    });
    R.memory.forEach(function (m) {
      const keep = decimateSteps(m.x, m.total, x0, x1, px, [m.peak]);
      const tx = keep.map(function (k) { return m.x[k]; }), tt = keep.map(function (k) { return m.total[k]; });
      m.traces.forEach(function (trace, c) { push(trace, tx, keep.map(function (k) { return m.ys[c][k]; }), tt); });
    });
    await Plotly.update(div, {x: xs, y: ys, customdata: cds}, layout, idx);
    div.dataset.mode = mode;
    div.dataset.refined = String(Number(div.dataset.refined || 0) + 1);
  }

  // ------------------------------------------------------------------------------------------ runs
  async function showRun(i) {
    current = i;
    document.querySelectorAll('section.run').forEach(function (s) {
      const j = Number(s.dataset.index);
      if (j === i) return;
      s.hidden = true;
      if (state[j] && state[j].plotted) { Plotly.purge(document.getElementById('plot-' + j)); state[j].plotted = false; }
    });
    const section = document.querySelector('section.run[data-index="' + i + '"]');
    const loading = document.getElementById('loading-' + i);
    const div = document.getElementById('plot-' + i);
    section.hidden = false;
    loading.hidden = false;
    await nextFrame();  // paint the loading indicator before the work starts
    try {
      if (!state[i]) {
        performance.mark('tspsim-decode-start-' + i);
        const doc = await decode('data-' + i);
        performance.mark('tspsim-decoded-' + i);
        unpack(doc.refine);
        state[i] = {index: i, figure: doc.figure, refine: doc.refine, hover: null, plotted: false, key: null};
      }
      const st = state[i];
      if (current !== i) return;
      const fig = structuredClone(st.figure);
      await Plotly.newPlot(div, fig.data, fig.layout, config);
      if (current !== i) { Plotly.purge(div); return; }
      performance.mark('tspsim-plotted-' + i);
      st.plotted = true;
      st.key = null;
      const S = st.refine.spans;
      div.dataset.mode = S ? (S.decimated ? 'raster' : 'exact') : 'bars';
      div.dataset.refined = '0';
      div.on('plotly_relayout', function () { schedule(i); });
      loading.hidden = true;
      div.dataset.ready = '1';
      if (S && !st.hover) st.hover = decode('hover-' + i);  // hover rows for the exact view, in the background
      schedule(i);  // redraw at the real plot width; fills the memory traces of the other GPUs
    } catch (err) {
      loading.textContent = 'Could not draw run ' + i + ': ' + (err && err.message ? err.message : err);
      loading.classList.add('failed');
      loading.hidden = false;
    }
  }

  const sel = document.getElementById('run-select');
  if (sel) { sel.addEventListener('change', function (e) { showRun(Number(e.target.value)); }); }
  showRun(0);
})();
