// Offline viewer behaviour: heatmaps over X-ray thumbnails, index search and sort. No network use.
"use strict";
(function () {
  function drawHeatmap(fig) {
    var data = JSON.parse(document.getElementById(fig.dataset.heatmap).textContent);
    var canvas = fig.querySelector("canvas.heatmap");
    var ctx = canvas.getContext("2d");
    var cw = canvas.width / data.cols, ch = canvas.height / data.rows;
    var max = 0;
    data.values.forEach(function (v) { if (v > max) max = v; });
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (max > 0) {
      for (var i = 0; i < data.values.length; i++) {
        var a = data.values[i] / max;
        if (a <= 0) continue;
        ctx.fillStyle = "rgba(255," + Math.round(200 - 170 * a) + ",0," + (0.15 + 0.6 * a).toFixed(3) + ")";
        ctx.fillRect((i % data.cols) * cw, Math.floor(i / data.cols) * ch, Math.ceil(cw), Math.ceil(ch));
      }
    }
    canvas.dataset.drawn = "1";
    canvas.dataset.maxValue = String(max);
  }
  document.querySelectorAll("figure.xray[data-heatmap]").forEach(drawHeatmap);

  var table = document.getElementById("features");
  if (!table) return;
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var search = document.getElementById("search");
  search.addEventListener("input", function () {
    var q = search.value.trim().toLowerCase();
    rows.forEach(function (r) {
      var hit = !q || r.dataset.f === q || r.dataset.explanation.toLowerCase().indexOf(q) >= 0;
      r.classList.toggle("hidden", !hit);
    });
  });
  table.querySelectorAll("th[data-sort]").forEach(function (th) {
    th.addEventListener("click", function () {
      var key = th.dataset.sort, num = th.dataset.type === "num";
      var desc = !th.classList.contains("desc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(desc ? "desc" : "asc");
      rows.sort(function (a, b) {
        var x = a.dataset[key], y = b.dataset[key];
        var c = num ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
        return desc ? -c : c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
})();
