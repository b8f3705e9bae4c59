// captum_hetattn views: shared helpers. Inlined into every view's script, inside a function scope
// (nothing global); no network access, no external library.
var HV = {};
HV.SVG_NS = ["http:", "", "www.w3.org", "2000", "svg"].join("/");  // a namespace name, not a URL

HV.el = function (tag, attrs, parent, text) {
  var node = document.createElement(tag);
  HV.attrs(node, attrs);
  if (text !== undefined && text !== null) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
};

HV.svg = function (tag, attrs, parent, text) {
  var node = document.createElementNS(HV.SVG_NS, tag);
  HV.attrs(node, attrs);
  if (text !== undefined && text !== null) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
};

HV.attrs = function (node, attrs) {
  if (!attrs) return node;
  Object.keys(attrs).forEach(function (key) {
    if (attrs[key] !== undefined && attrs[key] !== null) node.setAttribute(key, attrs[key]);
  });
  return node;
};

HV.title = function (node, text) {  // an SVG tooltip
  HV.svg("title", null, node, text);
  return node;
};

HV.PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf"];

HV.headColour = function (head, heads) {
  if (heads <= HV.PALETTE.length) return HV.PALETTE[head % HV.PALETTE.length];
  return "hsl(" + Math.round(head * 360 / heads) + ",65%,45%)";
};

HV.POSITIVE = [214, 39, 40];
HV.NEGATIVE = [31, 119, 180];
HV.SEQUENTIAL = [217, 72, 1];

// colour of a value already scaled to [-1, 1] (signed) or [0, 1]: white to full colour
HV.heatRGB = function (t, signed) {
  var c = signed ? (t < 0 ? HV.NEGATIVE : HV.POSITIVE) : HV.SEQUENTIAL;
  var a = Math.min(1, Math.abs(t));
  return [Math.round(255 + (c[0] - 255) * a), Math.round(255 + (c[1] - 255) * a),
    Math.round(255 + (c[2] - 255) * a)];
};

HV.heat = function (t, signed) {
  var c = HV.heatRGB(t, signed);
  return "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")";
};

HV.fmt = function (x) {
  if (x === 0) return "0";
  var a = Math.abs(x);
  if (a >= 1e4 || a < 1e-3) return x.toExponential(2);
  return Number(x.toPrecision(3)).toString();
};

HV.clip = function (label, n) {
  label = String(label);
  return label.length > n ? label.slice(0, n - 1) + "\u2026" : label;
};

HV.textWidth = function (labels, n) {  // a column wide enough for the longest (clipped) label
  var longest = 1;
  labels.forEach(function (l) { longest = Math.max(longest, Math.min(String(l).length, n)); });
  return Math.max(40, Math.min(240, longest * 7 + 14));
};

// a grid of patch cells coloured by values[token] / scale (token = prefix + row-major cell)
HV.patchGrid = function (parent, grid, values, scale, signed, labels, selected, onClick, caption) {
  var prefix = grid[0], rows = grid[1], cols = grid[2];
  var cell = Math.max(8, Math.min(24, Math.floor(180 / Math.max(rows, cols))));
  var box = HV.el("div", {"class": "hv-grid-box"}, parent, caption);
  var node = HV.el("div", {"class": "hv-grid", style: "grid-template-columns:repeat(" + cols +
    "," + cell + "px);grid-auto-rows:" + cell + "px;width:" + (cols * (cell + 1) + 1) + "px"}, box);
  for (var r = 0; r < rows; r++) {
    for (var c = 0; c < cols; c++) {
      var token = prefix + r * cols + c;
      var v = values[token] || 0;
      var div = HV.el("div", {"class": "hv-cell" + (token === selected ? " hv-selected" : ""),
        "data-token": token, title: labels[token] + " (#" + token + "): " + HV.fmt(v),
        style: "background:" + HV.heat(v / scale, signed)}, node);
      if (onClick) div.addEventListener("click", onClick.bind(null, token));
    }
  }
  return box;
};
