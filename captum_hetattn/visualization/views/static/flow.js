// Relevance flow: stacked bars, one per step of the layer graph, one colour per source.
HV.flow = function (root, data) {
  var state = {mode: "relevance", step: null};
  var LABEL_CHARS = 44;  // longer step labels end in an ellipsis (the tooltip has them whole)
  var colours = {};
  data.sources.forEach(function (s, i) { colours[s] = HV.PALETTE[i % HV.PALETTE.length]; });
  root.innerHTML = "";
  var bar = HV.el("div", {"class": "hv-bar"}, root);
  var toggle = HV.el("span", {"class": "hv-toggle"}, bar);
  var buttons = {};
  [["relevance", "relevance"], ["fraction", "fraction of it"]].forEach(function (m) {
    var b = HV.el("button", {type: "button", "class": "rf-mode", "data-mode": m[0]}, toggle, m[1]);
    b.addEventListener("click", function () { state.mode = m[0]; render(); });
    buttons[m[0]] = b;
  });
  var legend = HV.el("div", {"class": "rf-legend"}, bar);
  data.sources.forEach(function (s) {
    var item = HV.el("span", {"class": "rf-legend-item", "data-source": s}, legend);
    HV.el("span", {"class": "rf-swatch", style: "background:" + colours[s]}, item);
    HV.el("span", null, item, s);
  });
  var identity = Object.keys(data.identity).map(function (s) {
    return s + " " + HV.fmt(data.identity[s]);
  }).join(", ");
  HV.el("div", {"class": "hv-note"}, root, "Relevance of the readout row on each source's " +
    "tokens after each step, without the readout token's identity entry (" + identity +
    ") \u00b7 letters: node type (A self, B cross, C fused self, J junction)" +
    (data.note ? " \u00b7 " + data.note : ""));
  var holder = HV.el("div", {"class": "hv-scroll"}, root);
  var info = HV.el("div", {"class": "rf-info"}, root, "Hover or click a step for its numbers.");

  function valuesOf(step) {
    var v = {}, total = 0;
    data.sources.forEach(function (s) { total += Math.abs(step.values[s]); });
    data.sources.forEach(function (s) {
      v[s] = state.mode === "fraction" ? (total ? step.values[s] / total : 0) : step.values[s];
    });
    return v;
  }

  function showInfo(step) {
    info.innerHTML = "";
    HV.el("div", null, info, "step " + step.index + " (" + step.kind + "): " + step.label);
    var table = HV.el("table", {"class": "rf-table", "data-step": step.index}, info);
    var total = 0;
    data.sources.forEach(function (s) { total += Math.abs(step.values[s]); });
    data.sources.forEach(function (s) {
      var tr = HV.el("tr", null, table);
      var td = HV.el("td", null, tr);
      HV.el("span", {"class": "rf-swatch", style: "background:" + colours[s]}, td);
      HV.el("span", null, td, s);
      HV.el("td", {"class": "rf-value"}, tr, HV.fmt(step.values[s]));
      HV.el("td", null, tr, total ? (100 * Math.abs(step.values[s]) / total).toFixed(1) + "%" : "");
    });
  }

  function render() {
    Object.keys(buttons).forEach(function (m) {
      buttons[m].className = "rf-mode" + (m === state.mode ? " hv-on" : "");
    });
    var steps = data.steps, all = steps.map(valuesOf);
    var top = 0, bottom = 0;
    all.forEach(function (v) {
      var up = 0, down = 0;
      data.sources.forEach(function (s) { if (v[s] > 0) up += v[s]; else down += v[s]; });
      top = Math.max(top, up); bottom = Math.min(bottom, down);
    });
    if (top === bottom) top = 1;
    // room for the step labels, rotated by 55 degrees below the bars (10 px text, ~6 px a
    // character): down for the longest and to the left of the first, so none is cut off
    var longest = 0;
    steps.forEach(function (s) { longest = Math.max(longest, Math.min(String(s.short).length,
      LABEL_CHARS)); });
    var reach = 6 * longest, bw = 22, gap = 10, plotH = 220, pad = 16;
    var left = Math.max(64, Math.ceil(reach * Math.cos(55 * Math.PI / 180)) - bw / 2 + 8);
    var labelsH = Math.max(60, Math.ceil(reach * Math.sin(55 * Math.PI / 180)) + 40);
    var width = left + steps.length * (bw + gap) + 20, height = pad + plotH + labelsH;
    var yOf = function (v) { return pad + plotH * (top - v) / (top - bottom); };
    holder.innerHTML = "";
    var svg = HV.svg("svg", {"class": "rf-svg", width: width, height: height,
      "data-mode": state.mode}, holder);
    [top, 0, bottom].forEach(function (t, k) {
      if (k === 2 && bottom === 0) return;
      HV.svg("line", {x1: left - 4, x2: width - 10, y1: yOf(t), y2: yOf(t),
        stroke: t === 0 ? "#888" : "#ddd"}, svg);
      HV.svg("text", {x: left - 8, y: yOf(t), "text-anchor": "end", "class": "rf-tick"}, svg,
        state.mode === "fraction" ? (100 * t).toFixed(0) + "%" : HV.fmt(t));
    });
    steps.forEach(function (step, i) {
      var x = left + i * (bw + gap), v = all[i];
      var g = HV.svg("g", {"class": "rf-step" + (state.step === i ? " rf-selected" : ""),
        "data-step": i}, svg);
      HV.svg("rect", {"class": "rf-back", x: x - gap / 2, y: pad, width: bw + gap,
        height: plotH + labelsH - 4, fill: "transparent"}, g);
      var up = 0, down = 0;
      data.sources.forEach(function (s) {
        var value = v[s], y0, y1;
        if (value >= 0) { y0 = yOf(up + value); y1 = yOf(up); up += value; }
        else { y0 = yOf(down); y1 = yOf(down + value); down += value; }
        HV.title(HV.svg("rect", {"class": "rf-bar", "data-source": s, x: x, y: y0, width: bw,
          height: Math.max(0, y1 - y0), fill: colours[s]}, g),
          s + ": " + HV.fmt(step.values[s]));
      });
      var kind = step.kind === "start" ? "\u00b7" : step.kind === "junction" ? "J" : step.kind;
      HV.svg("text", {x: x + bw / 2, y: pad + plotH + 10, "text-anchor": "middle",
        "class": "rf-kind"}, g, kind);
      var lx = x + bw / 2, ly = pad + plotH + 22;
      HV.title(HV.svg("text", {x: lx, y: ly, "text-anchor": "end", "class": "rf-label",
        transform: "rotate(-55 " + lx + " " + ly + ")"}, g, HV.clip(step.short, LABEL_CHARS)),
        step.label);
      g.addEventListener("mouseenter", function () { showInfo(step); });
      g.addEventListener("mouseleave", function () {
        if (state.step != null) showInfo(steps[state.step]);
      });
      g.addEventListener("click", function () {
        state.step = state.step === i ? null : i;
        render();
        if (state.step != null) showInfo(step);
      });
    });
  }

  render();
  return {render: render, state: state};
};
