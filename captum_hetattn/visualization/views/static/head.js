// Head view: query tokens (left) -> key tokens (right), one line per (head, query, key) weight.
HV.ROW = 18;          // fixed row height: long streams scroll, the font never shrinks
HV.HEADER = 26;
HV.LINK_WIDTH = 170;
HV.MIN_OPACITY = 0.02;  // lines fainter than this are not drawn
HV.MAX_LINES = 6000;    // the strongest lines only, beyond this

HV.head = function (root, data, options) {
  options = options || {};
  var init = data.initial || {};
  var state = {
    call: options.call != null ? options.call : (init.call || 0),
    head: options.head !== undefined ? options.head : (init.head == null ? null : init.head),
    map: options.map || init.map || data.maps[0],
    pick: null  // {side: "query" | "key", index}
  };
  root.innerHTML = "";
  var bar = HV.el("div", {"class": "hv-bar"}, root);
  var select = HV.el("select", {"class": "hv-call", title: "attention call (layer)"}, bar);
  data.calls.forEach(function (c, i) {
    HV.el("option", {value: i}, select,
      i + ": " + c.short + " [Type" + c.type + ": " + c.query + " \u2190 " + c.key + "]");
  });
  if (data.calls.length < 2) select.disabled = true;
  var toggle = HV.el("span", {"class": "hv-toggle"}, bar);
  var mapButtons = {};
  data.maps.forEach(function (name) {
    var b = HV.el("button", {type: "button", "class": "hv-map", "data-map": name}, toggle,
      data.titles[name] || name);
    b.addEventListener("click", function () { state.map = name; render(); });
    mapButtons[name] = b;
  });
  var heads = HV.el("span", {"class": "hv-heads"}, bar);
  var note = HV.el("div", {"class": "hv-note"}, root);
  var grids = HV.el("div", {"class": "hv-grids"}, root);
  var scroll = HV.el("div", {"class": "hv-scroll"}, root);

  select.addEventListener("change", function () {
    state.call = +select.value;
    state.pick = null;
    if (state.head != null && state.head >= data.calls[state.call].heads) state.head = null;
    render();
  });

  function pickToken(side, index) {
    if (state.pick && state.pick.side === side && state.pick.index === index) state.pick = null;
    else state.pick = {side: side, index: index};
    render();
  }

  function selectedHeads(c) {
    if (state.head != null) return [state.head];
    var all = [];
    for (var h = 0; h < c.heads; h++) all.push(h);
    return all;
  }

  function renderHeads(c) {
    heads.innerHTML = "";
    var all = HV.el("span", {"class": "hv-head hv-all" + (state.head == null ? "" : " hv-off"),
      "data-head": "all", title: "all heads"}, heads, "all");
    all.addEventListener("click", function () { state.head = null; render(); });
    for (var h = 0; h < c.heads; h++) {
      var on = state.head == null || state.head === h;
      var square = HV.el("span", {"class": "hv-head" + (on ? "" : " hv-off"), "data-head": h,
        title: "head " + h + (state.head === h ? " (click again for all heads)" : ""),
        style: "background:" + HV.headColour(h, c.heads)}, heads);
      square.addEventListener("click", (function (head) {
        return function () { state.head = state.head === head ? null : head; render(); };
      })(h));
    }
  }

  // per-token totals of the drawn map over the selected heads: what the grids show
  function totals(c, M, hs, side, signed) {
    var n = side === "query" ? M[0].length : M[0][0].length;
    var out = new Array(n).fill(0);
    var other = state.pick && state.pick.side !== side ? state.pick.index : null;
    hs.forEach(function (h) {
      var rows = M[h];
      for (var i = 0; i < rows.length; i++) {
        if (side === "key" && other != null && i !== other) continue;
        var row = rows[i];
        for (var j = 0; j < row.length; j++) {
          if (side === "query" && other != null && j !== other) continue;
          var v = signed ? row[j] : Math.abs(row[j]);
          if (side === "query") out[i] += v; else out[j] += v;
        }
      }
    });
    return out;
  }

  function renderGrids(c, M, hs, signed) {
    grids.innerHTML = "";
    [["query", c.query], ["key", c.key]].forEach(function (pair) {
      var side = pair[0], stream = pair[1], grid = data.grids[stream];
      if (!grid) return;
      var values = totals(c, M, hs, side, signed);
      var scale = 0;
      values.forEach(function (v) { scale = Math.max(scale, Math.abs(v)); });
      var selected = state.pick && state.pick.side === side ? state.pick.index : null;
      var caption = (side === "key" ? "keys" : "queries") + " (" + stream + ")" +
        (side === "key" ? ": weight received" : ": weight given") +
        (state.pick && state.pick.side !== side ? " (selected token)" : "");
      HV.patchGrid(grids, grid, values, scale || 1, signed, data.tokens[stream], selected,
        function (token) { pickToken(side, token); }, caption)
        .setAttribute("data-side", side);
    });
  }

  function render() {
    var c = data.calls[state.call];
    select.value = String(state.call);
    Object.keys(mapButtons).forEach(function (name) {
      mapButtons[name].className = "hv-map" + (name === state.map ? " hv-on" : "");
    });
    renderHeads(c);
    var M = c.maps[state.map], scale = c.scale[state.map], signed = c.signed[state.map];
    var hs = selectedHeads(c);
    var qTok = data.tokens[c.query], kTok = data.tokens[c.key];
    note.textContent = "Type" + c.type + ": " + c.query + " \u2190 " + c.key + " \u00b7 " +
      c.label + " \u00b7 " + (data.titles[state.map] || state.map) +
      (signed ? " (red positive, blue negative)" : "") + " \u00b7 opacity = |value| / " +
      HV.fmt(scale) + (data.note ? " \u00b7 " + data.note : "");
    renderGrids(c, M, hs, signed);

    var qW = Math.max(HV.textWidth(qTok, 28), 7.5 * (c.query.length + 8));
    var kW = Math.max(HV.textWidth(kTok, 28), 7.5 * (c.key.length + 6)), link = HV.LINK_WIDTH;
    var rows = Math.max(qTok.length, kTok.length);
    var width = qW + link + kW + 8, height = HV.HEADER + rows * HV.ROW + 4;
    scroll.innerHTML = "";
    var svg = HV.svg("svg", {"class": "hv-svg", width: width, height: height,
      "data-call": state.call, "data-map": state.map,
      "data-head": state.head == null ? "all" : state.head}, scroll);
    HV.svg("text", {"class": "hv-header", x: qW - 6, y: HV.HEADER / 2, "text-anchor": "end"},
      svg, "query: " + c.query);
    HV.svg("text", {"class": "hv-header", x: qW + link + 6, y: HV.HEADER / 2}, svg,
      "key: " + c.key);
    var y = function (i) { return HV.HEADER + i * HV.ROW + HV.ROW / 2; };

    var lines = [];
    hs.forEach(function (h) {
      for (var i = 0; i < qTok.length; i++) {
        if (state.pick && state.pick.side === "query" && state.pick.index !== i) continue;
        var row = M[h][i];
        for (var j = 0; j < kTok.length; j++) {
          if (state.pick && state.pick.side === "key" && state.pick.index !== j) continue;
          var o = Math.abs(row[j]) / scale;
          if (o >= HV.MIN_OPACITY) lines.push([o, h, i, j, row[j]]);
        }
      }
    });
    if (lines.length > HV.MAX_LINES) {
      lines.sort(function (a, b) { return b[0] - a[0]; });
      lines.length = HV.MAX_LINES;
    }
    var group = HV.svg("g", {"class": "hv-lines"}, svg);
    lines.forEach(function (l) {
      var colour = signed ? (l[4] < 0 ? "rgb(31,119,180)" : "rgb(214,39,40)")
        : HV.headColour(l[1], c.heads);
      HV.svg("line", {x1: qW, y1: y(l[2]), x2: qW + link, y2: y(l[3]), stroke: colour,
        "stroke-width": 2, "stroke-opacity": Math.min(1, l[0]).toFixed(3),
        "data-head": l[1]}, group);
    });
    svg.setAttribute("data-lines", lines.length);

    function column(tokens, side, x, anchor) {
      var stream = side === "query" ? c.query : c.key;
      var g = HV.svg("g", {"class": "hv-column", "data-side": side}, svg);
      tokens.forEach(function (label, i) {
        var picked = state.pick && state.pick.side === side && state.pick.index === i;
        var dim = state.pick && state.pick.side === side && !picked;
        var readout = data.readout && data.readout.stream === stream && data.readout.token === i;
        var text = HV.svg("text", {"class": "hv-token" + (picked ? " hv-selected" : "") +
          (dim ? " hv-dim" : "") + (readout ? " hv-readout" : ""), x: x, y: y(i),
          "text-anchor": anchor, "data-side": side, "data-index": i}, g, HV.clip(label, 28));
        HV.title(text, label + " (" + side + " #" + i + (readout ? ", the readout token" : "") +
          ")");
        text.addEventListener("click", function () { pickToken(side, i); });
      });
    }
    column(qTok, "query", qW - 6, "end");
    column(kTok, "key", qW + link + 6, "start");
  }

  render();
  return {render: render, state: state};
};
