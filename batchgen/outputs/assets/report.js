// The report page: everything from window.BATCHGEN_REPORT (data.js beside this file).
// Every value from the run is set as text (textContent, attributes), never parsed as markup.
"use strict";
(function () {
  const PAGE = 60; // sheet rows rendered per step; more as the reader scrolls
  const FAILED_FIRST = 10; // failed rows listed at first: the grid stays within reach
  const FAILED_STEP = 200;
  const data = window.BATCHGEN_REPORT;
  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "?";
    let s = Math.round(seconds);
    if (s < 60) return s + "s";
    let m = Math.floor(s / 60); s %= 60;
    if (m < 60) return m + "m" + String(s).padStart(2, "0") + "s";
    const h = Math.floor(m / 60); m %= 60;
    return h + "h" + String(m).padStart(2, "0") + "m";
  }

  function number(value, digits) {
    if (value === null || value === undefined) return "?";
    return digits ? Number(value).toFixed(digits) : Number(value).toLocaleString("en");
  }

  function cell(row, text, numeric) {
    row.append(el("td", numeric ? "num" : "", text));
  }

  function summary() {
    const s = data.summary;
    document.title = "batchgen report: " + data.job;
    $("title").textContent = "batchgen report: " + data.job;
    $("generated").textContent = "written " + data.generated_at + " from " + data.out_dir +
      (s.state === "running" ? " while the run was going (it refreshes this page's data; reload to see more)" : "");
    const cards = [
      ["ok", s.ok], ["failed", s.failed], ["not run", s.not_run], ["images", s.images],
      ["duration", duration(s.duration_s)], ["images/s", number(s.images_per_s, 2)], ["run", s.state],
    ];
    for (const [label, value] of cards) {
      const card = el("div", "card" + (label === "failed" && value ? " bad" : ""));
      card.append(el("b", "", typeof value === "number" ? number(value) : value ?? "?"), label);
      $("counts").append(card);
    }
    const body = $("endpoints").tBodies[0];
    for (const e of data.endpoints) {
      const row = body.insertRow();
      cell(row, e.name);
      cell(row, number(e.rows), true);
      cell(row, number(e.images), true);
      cell(row, number(e.images_per_s, 2), true);
      cell(row, number(e.switches), true);
      cell(row, number(e.failed), true);
    }
    for (const [model, count] of data.models) {
      $("models").append(el("li", "", model + " (" + count.toLocaleString("en") + " rows)"));
    }
  }

  function failedRows() {
    const failed = data.rows.filter((r) => r.status !== "ok");
    if (!failed.length) return;
    $("failed").hidden = false;
    $("retry").textContent = data.retry_command;
    $("copy").addEventListener("click", () => navigator.clipboard.writeText(data.retry_command));
    const errors = new Map(); // the same message on many rows is said once, with its count
    for (const r of failed) errors.set(r.error, (errors.get(r.error) || 0) + 1);
    const common = [...errors.entries()].sort((a, b) => b[1] - a[1]);
    for (const [error, count] of common.slice(0, 10)) {
      $("errors").append(el("li", "", count.toLocaleString("en") + " \u00d7 " + error));
    }
    if (common.length > 10) $("errors").append(el("li", "muted", (common.length - 10) + " other messages"));
    const body = $("failed-rows").tBodies[0];
    const show = (count) => {
      body.replaceChildren();
      for (const r of failed.slice(0, count)) {
        const row = body.insertRow();
        cell(row, r.row, true);
        cell(row, r.error);
        cell(row, r.endpoint);
        cell(row, r.attempts, true);
      }
      const more = failed.length - Math.min(count, failed.length);
      $("failed-more").replaceChildren();
      if (!more) return;
      const button = el("button", "", "show " + more.toLocaleString("en") + " more");
      button.type = "button";
      button.addEventListener("click", () => show(count + FAILED_STEP));
      $("failed-more").append(button, " or choose status \"failed\" below to see them with their images");
    };
    show(FAILED_FIRST);
  }

  function options(select, values) {
    for (const value of values) {
      const option = el("option", "", value);
      option.value = value;
      select.append(option);
    }
  }

  const notes = {}; // note column -> its filter control
  function filters() {
    options($("f-model"), data.filters.models);
    options($("f-sampler"), data.filters.samplers);
    for (const [column, values] of Object.entries(data.filters.notes)) {
      const label = el("label", "", column + " ");
      let control;
      if (values) {
        control = el("select");
        options(control, [""].concat(values));
        control.options[0].textContent = "all";
      } else {
        control = el("input");
        control.type = "search";
        control.placeholder = "contains";
      }
      notes[column] = control;
      label.append(control);
      $("f-notes").append(label);
    }
    let timer = null;
    $("filters").addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(render, 120);
    });
    $("filters").addEventListener("submit", (event) => event.preventDefault());
  }

  function matches(r, wanted) {
    if (wanted.status && r.status !== wanted.status) return false;
    if (wanted.model && r.model !== wanted.model) return false;
    if (wanted.sampler && r.sampler !== wanted.sampler) return false;
    for (const [column, control] of Object.entries(notes)) {
      const value = control.value.trim().toLowerCase();
      if (!value) continue;
      const note = String(r.notes[column] ?? "").toLowerCase();
      if (control.tagName === "SELECT" ? note !== value : !note.includes(value)) return false;
    }
    return !wanted.text || wanted.text.every((word) => r.search.includes(word));
  }

  let groups = []; // [row number, records] of the rows that pass the filters
  let rendered = 0;
  let observer = null;
  function render() {
    const text = $("f-text").value.trim().toLowerCase();
    const wanted = {
      status: $("f-status").value, model: $("f-model").value, sampler: $("f-sampler").value,
      text: text ? text.split(/\s+/) : null,
    };
    const byRow = new Map();
    let records = 0;
    for (const r of data.rows) {
      if (!matches(r, wanted)) continue;
      records += 1;
      if (!byRow.has(r.row)) byRow.set(r.row, []);
      byRow.get(r.row).push(r);
    }
    groups = [...byRow.entries()].sort((a, b) => a[0] - b[0]);
    $("shown").textContent = groups.length.toLocaleString("en") + " sheet rows (" +
      records.toLocaleString("en") + " records) of " + data.sheet_rows.toLocaleString("en");
    $("grid").replaceChildren();
    rendered = 0;
    more();
  }

  function more() {
    const end = Math.min(rendered + PAGE, groups.length);
    const batch = document.createDocumentFragment();
    for (; rendered < end; rendered++) batch.append(card(...groups[rendered]));
    $("grid").append(batch);
    if (observer) { // a fresh look: the sentinel may still be in view after a short batch
      observer.unobserve($("more"));
      observer.observe($("more"));
    }
  }

  function card(rowNumber, records) {
    const failed = records.some((r) => r.status !== "ok");
    const group = el("article", "group" + (failed ? " failed" : ""));
    group.dataset.row = rowNumber;
    const head = el("header");
    head.append(el("span", "", "row " + rowNumber), el("span", "badge", failed ? "failed" : "ok"));
    group.append(head);
    const images = records.flatMap((r) => r.images.map((image, index) => [r, image, index]));
    if (images.length) {
      const thumbs = el("div", "thumbs" + (images.length === 1 ? " one" : ""));
      for (const [r, image, index] of images) {
        if (!image.thumb) {
          thumbs.append(el("div", "missing", "no thumbnail"));
          continue;
        }
        const img = el("img");
        img.loading = "lazy";
        img.decoding = "async";
        img.src = image.thumb;
        img.alt = "row " + r.row + ", seed " + image.seed;
        img.addEventListener("click", () => detail(r, index));
        thumbs.append(img);
      }
      group.append(thumbs);
    }
    const first = records[0];
    group.append(el("p", "prompt", first.prompt));
    const seeds = images.map(([, image]) => image.seed).join(", ");
    const meta = [first.model, first.sampler, seeds && "seed " + seeds].filter(Boolean).join(" · ");
    group.append(el("div", "meta", meta));
    for (const r of records) {
      if (r.status !== "ok") {
        const error = el("p", "error", r.error + " (" + r.endpoint + ", " + r.attempts + " attempts)");
        error.addEventListener("click", () => detail(r, -1));
        group.append(error);
      }
    }
    return group;
  }

  function infotext(r, index) {
    if (r.infotexts && r.infotexts[index]) return r.infotexts[index];
    const p = r.request;
    const image = r.images[index];
    const parts = [
      ["Steps", p.steps], ["Sampler", p.sampler_name], ["Schedule type", p.scheduler],
      ["CFG scale", p.cfg_scale], ["Seed", image ? image.seed : p.seed],
      ["Size", p.width && p.height ? p.width + "x" + p.height : null],
      ["Model hash", r.model_hash], ["Model", r.model], ["Version", r.version],
    ].filter(([, value]) => value !== null && value !== undefined && value !== "");
    return [p.prompt ?? "", p.negative_prompt ? "Negative prompt: " + p.negative_prompt : null,
      parts.map(([k, v]) => k + ": " + v).join(", ") + "\n(rebuilt from the request: the run did not record the server's infotext)"]
      .filter((line) => line !== null).join("\n");
  }

  function detail(r, index) {
    const image = r.images[index];
    $("d-title").textContent = "row " + r.row + (image ? ", image " + (index + 1) + ", seed " + image.seed : "") +
      " · " + r.status;
    const full = $("d-image");
    full.hidden = !image;
    if (image) {
      full.src = image.src;
      full.alt = "row " + r.row + ", seed " + image.seed;
    }
    $("d-infotext").textContent = image ? infotext(r, index) : r.error;
    $("d-request").textContent = JSON.stringify(r.request, null, 2);
    const record = {
      row: r.row, key: r.key, status: r.status, error: r.error, endpoint: r.endpoint,
      attempts: r.attempts, model: r.model, model_hash: r.model_hash, version: r.version, ...r.record,
    };
    $("d-record").textContent = JSON.stringify(record, null, 2);
    $("detail").showModal();
  }

  if (!data) {
    $("nodata").hidden = false;
    return;
  }
  for (const r of data.rows) r.search = String(r.prompt ?? "").toLowerCase();
  summary();
  failedRows();
  filters();
  observer = new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting) && rendered < groups.length) more();
  }, { rootMargin: "800px" });
  render();
})();
