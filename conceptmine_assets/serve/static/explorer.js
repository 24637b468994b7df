// conceptmine explorer: vanilla JS over the JSON endpoints of `conceptmine serve` (see serve/app.py).
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { mode: "browse", cursor: null, query: "", similarOf: null, selected: null, facets: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c.nodeType ? c : String(c));
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function showError(err) {
  const box = $("#error");
  if (!err) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = err.message || String(err);
  box.hidden = false;
}

const fmt = (v, digits = 2) => (typeof v === "number" ? v.toFixed(digits) : v ?? "–");
const cropPath = (c) => `/api/crops/${encodeURIComponent(c.scene_name)}/${encodeURIComponent(c.detection_id)}`;

function filters() {
  const out = {};
  document.querySelectorAll("[data-filter]").forEach((s) => { if (s.value) out[s.dataset.filter] = s.value; });
  return out;
}

function fillSelect(select, values, extra = []) {
  const current = select.value;
  select.replaceChildren(el("option", { value: "" }, "all"));
  for (const [value, label] of extra) select.append(el("option", { value }, label));
  for (const [value, n] of values) select.append(el("option", { value }, n === null ? value : `${value} (${n})`));
  select.value = current;
}

async function loadFacets() {
  const f = await api("/api/facets");
  state.facets = f;
  fillSelect($("#f-scene"), f.scenes.map((s) => [s, null]));
  fillSelect($("#f-group"), Object.entries(f.group));
  fillSelect($("#f-class"), Object.entries(f.class));
  fillSelect($("#f-concept"), Object.entries(f.concept));
  fillSelect($("#f-reason"), Object.entries(f.reason), [["any", "any reason (mined)"], ["none", "not mined"]]);
  fillSelect($("#f-detector"), Object.entries(f.detector), [["any", "any detector"], ["none", "not an outlier"]]);
}

function card(c) {
  const group = c.group ? el("span", { class: `badge g-${c.group}` }, c.group) : null;
  const detectors = (c.outlier_detectors || []);
  const node = el("div", { class: "card", "data-id": c.detection_id, onclick: () => openDetail(c) },
    el("div", { class: "thumb" }, el("img", { src: `${cropPath(c)}/image`, loading: "lazy", alt: c.class_name })),
    el("div", { class: "meta" },
      el("div", { class: "title" }, c.top_concept || c.class_name,
        c.score !== undefined ? el("span", { class: "score", title: "similarity to the query" }, `  match ${fmt(c.score, 2)}`) : null),
      el("div", {}, el("span", { class: "badge" }, c.class_name), group,
        detectors.length ? el("span", { class: "badge outlier", title: "outlier detectors" }, detectors.join("+")) : null,
        c.reason ? el("span", { class: "badge mined", title: "its sample is in the mined split" }, c.reason) : null),
      el("div", { class: "muted" }, c.scene_name)),
    el("div", { class: "actions" },
      el("button", { type: "button", class: "similar", onclick: (e) => { e.stopPropagation(); moreLikeThis(c); } },
        "more like this")));
  if (state.selected === c.detection_id) node.classList.add("selected");
  return node;
}

function setStatus(...parts) { $("#status").replaceChildren(...parts); }

async function loadCrops(append = false) {
  showError(null);
  const params = new URLSearchParams({ ...filters(), limit: "60" });
  if (append && state.cursor) params.set("cursor", state.cursor);
  try {
    const page = await api(`/api/crops?${params}`);
    if (!append) $("#grid").replaceChildren();
    page.crops.forEach((c) => $("#grid").append(card(c)));
    state.cursor = page.next_cursor;
    $("#more").hidden = !page.next_cursor;
    const active = Object.entries(filters()).map(([k, v]) => el("span", { class: "chip" }, `${k}: ${v}`));
    setStatus(`${$("#grid").children.length} crops${page.next_cursor ? " (more below)" : ""}`, ...active);
  } catch (err) { showError(err); }
}

function showHits(title, result) {
  $("#grid").replaceChildren(...result.hits.map(card));
  $("#more").hidden = true;
  const back = el("button", { type: "button", id: "back", onclick: () => { state.mode = "browse"; loadCrops(); } },
    "back to the grid");
  setStatus(`${title} — ${result.hits.length} crops, mode ${result.mode}  `, back,
    ...(result.stale || []).map((s) => el("span", { class: "chip" }, `index older than the store: ${s}`)));
}

async function search(text) {
  showError(null);
  try {
    const result = await api(`/api/search?${new URLSearchParams({ q: text, k: "48" })}`);
    state.mode = "search";
    showTab("crops");
    showHits(`search "${text}"`, result);
  } catch (err) { showError(err); }
}

async function moreLikeThis(c) {
  showError(null);
  try {
    const result = await api(`${cropPath(c)}/similar?k=24`);
    state.mode = "similar";
    showTab("crops");
    showHits(`more like ${c.top_concept || c.class_name} ${c.detection_id}`, result);
  } catch (err) { showError(err); }
}

function row(label, ...value) { return el("tr", {}, el("td", {}, label), el("td", {}, ...value)); }

async function openDetail(c) {
  showError(null);
  state.selected = c.detection_id;
  document.querySelectorAll(".card").forEach((n) => n.classList.toggle("selected", n.dataset.id === c.detection_id));
  let d;
  try { d = await api(cropPath(c)); } catch (err) { showError(err); return; }
  const crop = d.crop;
  const concepts = el("table", {}, ...d.concepts.map((x) => row(x.concept,
    el("span", { class: "bar", style: `width:${Math.max(2, Math.round(120 * Math.max(0, x.score || 0)))}px` }), fmt(x.score, 3))));
  const o = d.outliers || {};
  const cap = d.caption || {};
  const body = el("div", {},
    el("h3", {}, `${crop.class_name} · ${(d.scores || {}).top_concept || "no concept yet"}`),
    el("div", { class: "muted" }, `${crop.scene_name} · ${crop.channel} · ${crop.detection_id}`),
    el("img", { class: "frame", src: `${cropPath(crop)}/frame`, alt: "camera frame with the boxes" }),
    el("div", { class: "why" }, d.why),
    el("h4", {}, "Caption"),
    el("table", {}, row("caption", cap.caption ?? "–"), row("status", `${cap.status ?? "–"} (${cap.backend ?? "–"})`),
      cap.description ? row("description", cap.description) : null, cap.vlm_class ? row("VLM class", cap.vlm_class) : null),
    el("h4", {}, "Concept scores"), concepts,
    el("table", {}, row("group", (d.scores || {}).group ?? "–"), row("margin", fmt((d.scores || {}).margin, 3)),
      row("score mode", (d.scores || {}).score_mode ?? "–")),
    el("h4", {}, "Outlier evidence"),
    el("table", {}, row("detectors", (o.outlier_detectors || []).join(", ") || "none"),
      ...["iforest", "lof", "knn", "small_cluster"].map((k) => row(k,  // score, percentile of the reference, flag
        `${fmt(o[`${k}_score`], 3)}${o[`${k}_pct`] == null ? "" : ` (${fmt(100 * o[`${k}_pct`], 0)}th pct)`} ${o[`${k}_flag`] ? "(flag)" : ""}`)),
      row("outlier evidence", o.outlier_evidence == null ? "–" : fmt(o.outlier_evidence, 2)),
      row("quality", (o.quality_flags || []).join(", ") || "none")),
    el("h4", {}, "LiDAR support and crop quality"),
    el("table", {}, row("points in box", d.lidar.points ?? "no LiDAR"), row("median depth", d.lidar.median_depth_m === null ? "–" : `${fmt(d.lidar.median_depth_m, 1)} m`),
      row("detector confidence", fmt(crop.confidence, 2)), row("brightness", fmt(crop.brightness, 2)),
      row("blur (Laplacian var.)", fmt(crop.blur_laplacian_var, 1))),
    el("h4", {}, "Review"), reviewBox(crop, d),
    el("button", { type: "button", class: "similar", onclick: () => moreLikeThis(crop) }, "more like this"));
  $("#detail-body").replaceChildren(body);
  $("#detail").hidden = false;
}

function reviewBox(crop, d) {
  const current = d.review ? el("div", { class: "badge review" },
    `${d.review.verdict}${d.review.concept ? ": " + d.review.concept : ""} by ${d.review.reviewer}`) : el("div", { class: "muted" }, "not reviewed");
  const names = (d.scores && d.scores.concept_names) || (state.facets ? Object.keys(state.facets.concept) : []);
  const concept = el("select", { id: "relabel-concept" }, el("option", { value: "" }, "relabel as…"),
    ...names.map((n) => el("option", { value: n }, n)));
  const note = el("input", { type: "text", id: "review-note", placeholder: "why (optional)" });
  const send = (verdict) => async () => {
    showError(null);
    const reviewer = $("#reviewer").value.trim();
    if (!reviewer) { showError(new Error("enter your name under Reviewer (left) first")); return; }
    if (verdict === "relabel" && !concept.value) { showError(new Error("choose the concept to relabel as")); return; }
    localStorage.setItem("reviewer", reviewer);
    const item = { scene: crop.scene_name, detection_id: crop.detection_id,
      verdict: verdict === "relabel" ? `relabel:${concept.value}` : verdict, note: note.value };
    try {
      await api("/api/reviews", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ reviewer, items: [item] }) });
      openDetail(crop);
    } catch (err) { showError(err); }
  };
  return el("div", { class: "review-box" }, current, note,
    el("button", { type: "button", id: "review-confirm", onclick: send("confirmed") }, "Confirm"),
    el("button", { type: "button", id: "review-reject", onclick: send("reject") }, "Reject"),
    concept, el("button", { type: "button", id: "review-relabel", onclick: send("relabel") }, "Relabel"));
}

async function loadSplit() {
  showError(null);
  try {
    const page = await api("/api/split?limit=200");
    const noun = page.total === 1 ? "sample" : "samples";
    $("#split-status").textContent = `${page.total} ${noun} in the mined split (first ${page.samples.length} by rank)`;
    $("#split-table tbody").replaceChildren(...page.samples.map((s) => el("tr", {},
      el("td", {}, s.rank), el("td", {}, el("span", { class: "badge mined" }, s.reason)), el("td", {}, s.scene_name),
      el("td", { class: "muted" }, s.sample_token.slice(0, 12)), el("td", {}, (s.top_concepts || []).join(", ")),
      el("td", {}, (s.captions || []).join(" · ")), el("td", {}, (s.outlier_detectors || []).join(", ")),
      el("td", {}, ...(s.detection_ids || []).map((id) => el("a", {
        title: id, onclick: () => openDetail({ scene_name: s.scene_name, detection_id: id }) },
        el("img", { src: `${cropPath({ scene_name: s.scene_name, detection_id: id })}/image`, loading: "lazy", alt: id }),
        id.slice(0, 8))),
        (s.detection_ids || []).length ? null : el("span", { class: "muted" }, "random")))));
  } catch (err) { showError(err); }
}

function showTab(name) {
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.dataset.tab === name));
  $("#crops-view").hidden = name !== "crops";
  $("#split-view").hidden = name !== "split";
  if (name === "split") loadSplit();
}

function init() {
  $("#reviewer").value = localStorage.getItem("reviewer") || "";
  document.querySelectorAll("[data-filter]").forEach((s) => s.addEventListener("change", () => {
    state.mode = "browse"; state.cursor = null; showTab("crops"); loadCrops();
  }));
  $("#clear-filters").addEventListener("click", () => {
    document.querySelectorAll("[data-filter]").forEach((s) => { s.value = ""; });
    state.mode = "browse"; loadCrops();
  });
  $("#more").addEventListener("click", () => loadCrops(true));
  $("#search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("#search-q").value.trim();
    if (text) search(text); else { state.mode = "browse"; loadCrops(); }
  });
  $("#close-detail").addEventListener("click", () => { $("#detail").hidden = true; state.selected = null; });
  document.querySelectorAll(".tab").forEach((t) => t.addEventListener("click", () => showTab(t.dataset.tab)));
  loadCrops();  // the grid does not wait for the filters' values (a column scan each)
  loadFacets().catch(showError);
}

init();
