// Neuron view: q_i, every k_j, q_i (x) k_j, q_i . k_j, softmax, and the model's weights.
HV.neuron = function (root, data) {
  var state = {head: data.initial.head, query: data.initial.query};
  var ROW = HV.ROW || 18;
  root.innerHTML = "";
  var bar = HV.el("div", {"class": "hv-bar"}, root);
  HV.el("span", null, bar, "Type" + data.type + ": " + data.query + " \u2190 " + data.key +
    " \u00b7 " + data.label + " \u00b7 head ");
  var select = HV.el("select", {"class": "nv-head"}, bar);
  for (var h = 0; h < data.heads; h++) HV.el("option", {value: h}, select, String(h));
  select.addEventListener("change", function () { state.head = +select.value; render(); });
  var note = HV.el("div", {"class": "hv-note"}, root);
  var scroll = HV.el("div", {"class": "nv-scroll"}, root);

  function dot(a, b) { var s = 0; for (var t = 0; t < a.length; t++) s += a[t] * b[t]; return s; }

  function render() {
    select.value = String(state.head);
    var Q = data.q[state.head], K = data.k[state.head], A = data.attention[state.head];
    var d = data.depth, nq = Q.length, nk = K.length, i = state.query, q = Q[i];
    var cw = Math.max(3, Math.min(12, Math.floor(256 / d)));
    var vecScale = 0;
    [Q, K].forEach(function (V) {
      V.forEach(function (v) { v.forEach(function (x) { vecScale = Math.max(vecScale, Math.abs(x)); }); });
    });
    vecScale = vecScale || 1;
    var products = K.map(function (k) { return k.map(function (x, t) { return q[t] * x; }); });
    var prodScale = 0;
    products.forEach(function (p) { p.forEach(function (x) { prodScale = Math.max(prodScale, Math.abs(x)); }); });
    prodScale = prodScale || 1;
    var scores = K.map(function (k) { return dot(q, k) * data.scale; });
    var top = Math.max.apply(null, scores), sum = 0;
    var soft = scores.map(function (s) { var e = Math.exp(s - top); sum += e; return e; });
    soft = soft.map(function (e) { return e / sum; });
    note.textContent = "query token #" + i + " \u201c" + data.query_tokens[i] + "\u201d \u00b7 " +
      "d = " + d + " \u00b7 scores q\u00b7k/\u221ad; the model's weights also hold its masks " +
      "and position biases" + (data.note ? " \u00b7 " + data.note : "") +
      " \u00b7 click a query token to change it";

    var qW = Math.max(HV.textWidth(data.query_tokens, 24), 7 * (data.query.length + 9));
    var kW = Math.max(HV.textWidth(data.key_tokens, 24), 7 * (data.key.length + 7));
    var gap = 24, vecW = d * cw, numW = 64, barW = 70;
    var xK = qW + gap + kW + 6, xP = xK + vecW + 16, xS = xP + vecW + 16;
    var xSoft = xS + numW, xA = xSoft + barW + 72;
    var header = 2 * ROW + 6, rows = Math.max(nq, nk);
    var svg = HV.svg("svg", {"class": "nv-svg", width: xA + barW + 72,
      height: header + rows * ROW + 6, "data-head": state.head, "data-query": i}, null);
    var y = function (r) { return header + r * ROW + ROW / 2; };
    var titles = [[qW - 4, "query (" + data.query + ")", "end"], [xK, "k_j", "start"],
      [xP, "q_i \u2299 k_j", "start"], [xS, "q\u00b7k/\u221ad", "start"],
      [xSoft, "softmax", "start"], [xA, "A (model)", "start"],
      [qW + gap + kW, "key (" + data.key + ")", "end"]];
    titles.forEach(function (t) {
      HV.svg("text", {"class": "hv-header", x: t[0], y: ROW / 2, "text-anchor": t[2]}, svg, t[1]);
    });
    HV.svg("text", {"class": "hv-header", x: xK - 6, y: ROW * 1.5, "text-anchor": "end"}, svg,
      "q_i");
    q.forEach(function (x, t) {
      HV.title(HV.svg("rect", {"class": "nv-q", x: xK + t * cw, y: ROW + 2, width: cw - 0.5,
        height: ROW - 4, fill: HV.heat(x / vecScale, true)}, svg), "q[" + t + "] = " + HV.fmt(x));
    });

    data.query_tokens.forEach(function (label, r) {
      var picked = r === i;
      var text = HV.svg("text", {"class": "hv-token nv-query" + (picked ? " hv-selected" : ""),
        x: qW - 4, y: y(r), "text-anchor": "end", "data-index": r}, svg, HV.clip(label, 24));
      HV.title(text, label + " (query #" + r + ")");
      text.addEventListener("click", function () { state.query = r; render(); });
    });
    K.forEach(function (k, j) {
      var yy = header + j * ROW;
      HV.title(HV.svg("text", {"class": "hv-token nv-key", x: qW + gap + kW, y: y(j),
        "text-anchor": "end", "data-index": j}, svg, HV.clip(data.key_tokens[j], 24)),
        data.key_tokens[j] + " (key #" + j + ")");
      k.forEach(function (x, t) {
        HV.title(HV.svg("rect", {"class": "nv-k", x: xK + t * cw, y: yy + 2, width: cw - 0.5,
          height: ROW - 4, fill: HV.heat(x / vecScale, true)}, svg), "k[" + t + "] = " + HV.fmt(x));
        var p = products[j][t];
        HV.title(HV.svg("rect", {"class": "nv-prod", x: xP + t * cw, y: yy + 2, width: cw - 0.5,
          height: ROW - 4, fill: HV.heat(p / prodScale, true)}, svg),
          "q[" + t + "]\u00b7k[" + t + "] = " + HV.fmt(p));
      });
      HV.svg("text", {"class": "nv-score", x: xS, y: y(j)}, svg, HV.fmt(scores[j]));
      [[xSoft, soft[j], "nv-soft"], [xA, A[i][j], "nv-attn"]].forEach(function (b) {
        HV.svg("rect", {"class": b[2], x: b[0], y: yy + 3, width: Math.max(0.5, b[1] * barW),
          height: ROW - 6, fill: b[2] === "nv-attn" ? "#3b6fb6" : "#8aa9d6"}, svg);
        HV.svg("text", {x: b[0] + barW + 4, y: y(j), "class": "nv-value"}, svg, HV.fmt(b[1]));
      });
    });
    scroll.innerHTML = "";
    scroll.appendChild(svg);
  }

  render();
  return {render: render, state: state};
};
