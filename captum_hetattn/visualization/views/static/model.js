// Model view: one heat-map thumbnail per call x head; a click opens that head's head view.
HV.model = function (root, data) {
  var map = data.maps[0];
  root.innerHTML = "";
  HV.el("div", {"class": "hv-note"}, root, (data.titles[map] || map) +
    " per head; each thumbnail: rows = query tokens, columns = key tokens, scaled to its own " +
    "largest magnitude. Click a thumbnail for its head view." + (data.note ? " \u00b7 " +
    data.note : ""));
  var wrap = HV.el("div", {"class": "mv-grid-wrap"}, root);
  var detail = HV.el("div", {"class": "mv-detail", style: "display:none"}, root);
  var thumbs = [];

  function draw(canvas, M, signed) {
    var n = M.length, m = n ? M[0].length : 0;
    canvas.width = Math.max(m, 1);
    canvas.height = Math.max(n, 1);
    var top = 0;
    for (var i = 0; i < n; i++) for (var j = 0; j < m; j++) top = Math.max(top, Math.abs(M[i][j]));
    var ctx = canvas.getContext("2d");
    var image = ctx.createImageData(canvas.width, canvas.height);
    for (i = 0; i < n; i++) {
      for (j = 0; j < m; j++) {
        // an all-zero map is drawn grey (not white, which reads as a blank square)
        var c = top ? HV.heatRGB(M[i][j] / top, signed) : [214, 214, 214], k = 4 * (i * m + j);
        image.data[k] = c[0]; image.data[k + 1] = c[1]; image.data[k + 2] = c[2];
        image.data[k + 3] = 255;
      }
    }
    ctx.putImageData(image, 0, 0);
    return top;
  }

  function open(call, head) {
    thumbs.forEach(function (t) {
      t.classList.toggle("mv-selected", +t.getAttribute("data-call") === call &&
        +t.getAttribute("data-head") === head);
    });
    detail.style.display = "";
    detail.innerHTML = "";
    HV.el("div", {"class": "hv-note"}, detail, "Head view of " + data.calls[call].label +
      ", head " + head);
    var inner = HV.el("div", {"class": "mv-head-view"}, detail);
    HV.head(inner, data, {call: call, head: head, map: map});
    detail.setAttribute("data-call", call);
    detail.setAttribute("data-head", head);
  }

  data.sections.forEach(function (section) {
    var box = HV.el("div", {"class": "mv-section"}, wrap);
    HV.el("h4", {title: section.about}, box, section.title);
    section.calls.forEach(function (call) {
      var c = data.calls[call];
      var row = HV.el("div", {"class": "mv-row"}, box);
      var label = HV.el("span", {"class": "mv-row-label", title: c.label}, row,
        call + ": " + c.short);
      var largest = 0;
      for (var h = 0; h < c.heads; h++) {
        var canvas = HV.el("canvas", {"class": "mv-thumb", "data-call": call, "data-head": h},
          row);
        var top = draw(canvas, c.maps[map][h], c.signed[map]);
        largest = Math.max(largest, top);
        canvas.title = c.label + ", head " + h + " (" + c.query + " \u2190 " + c.key +
          "), max |value| " + HV.fmt(top);
        canvas.addEventListener("click", open.bind(null, call, h));
        thumbs.push(canvas);
      }
      if (!largest) {  // say why the squares are empty
        HV.el("span", {"class": "mv-empty"}, label, map === "attention" ? " \u2014 all zero" :
          " \u2014 all zero: no gradient reached this call");
      }
    });
  });
  return {open: open};
};
