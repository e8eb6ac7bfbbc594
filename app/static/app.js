// The page talks to the same JSON API as everyone else; no build step, no dependencies.
"use strict";

const API = "/api/v1/images";
const PAGE_SIZE = 12;
const KEY_STORAGE = "image-similarity-api-key";
const $ = (id) => document.getElementById(id);
let galleryPage = 0;
let shownImageId = null;

// The API key, when the service asks for one (AUTH_REQUIRED): kept for this tab only.
function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function withKey(options = {}) {
  const key = apiKey();
  if (!key) return options;
  return { ...options, headers: { ...(options.headers || {}), "X-API-Key": key } };
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const response = await fetch(path, withKey(options));
  if (response.status === 204) return null;
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    // The API's own words: every error carries a readable `detail`.
    const hint = response.status === 401 || response.status === 403 ? " (see API key above)" : "";
    throw new Error((body.detail || `The service answered ${response.status}`) + hint);
  }
  return body;
}

function thumbnail(id, size = 240) {
  return `${API}/${id}/thumbnail?size=${size}`;
}

// An <img> cannot send a header: with a key, the picture is fetched and shown from memory.
function showImage(img, url) {
  if (!apiKey()) {
    img.src = url;
    return;
  }
  fetch(url, withKey()).then((response) => (response.ok ? response.blob() : null)).then((blob) => {
    if (!blob) return;
    img.src = URL.createObjectURL(blob);
    img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
  }).catch(() => {});
}

function card(image, caption, onOpen) {
  const item = document.createElement("li");
  item.className = "card";
  const button = document.createElement("button");
  button.type = "button";
  button.setAttribute("aria-label", `Open ${image.filename}`);
  const img = document.createElement("img");
  showImage(img, thumbnail(image.id));
  img.alt = image.filename;
  img.loading = "lazy";
  const text = document.createElement("div");
  text.className = "caption";
  text.append(...caption);
  button.append(img, text);
  button.addEventListener("click", () => onOpen(image.id));
  item.append(button);
  return item;
}

function matchCaption(match) {
  const badge = document.createElement("span");
  badge.className = `badge ${match.match}`;
  badge.textContent = match.match.replace("_", " ");
  const score = document.createElement("div");
  score.textContent = `${match.similarity_score.toFixed(3)} · ${match.filename}`;
  return [badge, score];
}

function showMatches(list, matches) {
  list.replaceChildren(...matches.map((m) => card(m, matchCaption(m), openDetails)));
}

function searchParams() {
  const limit = $("limit");
  if (limit.value === "" || !limit.checkValidity()) {
    throw new Error(`"Results" must be a whole number from ${limit.min} to ${limit.max}.`);
  }
  return { threshold: $("threshold").value, limit: limit.value };
}

// What the results show, searched again when the slider or "Results" change: the picked file,
// and its id once it is stored.
let lastQuery = null;
let searchRun = 0;

async function handleFile(file) {
  if (!file) return;
  lastQuery = { file, storedId: null };
  if (!$("search-only").checked) {
    setStatus(`Uploading ${file.name}…`);
    const form = new FormData();
    form.append("file", file);
    try {
      lastQuery.storedId = (await api(`${API}/upload`, { method: "POST", body: form })).id;
    } catch (error) {
      lastQuery = null;
      $("results").replaceChildren();
      setStatus(`${file.name}: ${error.message}`, true);
      return;
    }
    loadGallery(); // it is stored, whatever the search below answers
    loadDuplicates(); // duplicates.js
  }
  await search();
}

async function search() {
  if (!lastQuery) return;
  const { file, storedId } = lastQuery;
  const run = ++searchRun; // an answer to an older search must not overwrite a newer one
  try {
    const { threshold, limit } = searchParams();
    let answer;
    if (storedId) {
      answer = await api(`${API}/${storedId}/similar?threshold=${threshold}&limit=${limit}`);
    } else {
      setStatus(`Searching with ${file.name}…`);
      const form = new FormData();
      form.append("file", file);
      form.append("threshold", threshold);
      form.append("limit", limit);
      answer = await api(`${API}/search`, { method: "POST", body: form });
    }
    if (run !== searchRun) return;
    showMatches($("results"), answer.similar_images);
    setStatus(`${answer.total_results} similar picture(s) for ${file.name}.`);
  } catch (error) {
    if (run !== searchRun) return;
    $("results").replaceChildren();
    const what = storedId ? `${file.name} is stored, but the search failed` : file.name;
    setStatus(`${what}: ${error.message}`, true);
  }
}

async function openDetails(id) {
  try {
    const image = await api(`${API}/${id}`);
    const { threshold, limit } = searchParams();
    const similar = await api(`${API}/${id}/similar?threshold=${threshold}&limit=${limit}`)
      .catch((error) => ({ similar_images: [], error }));
    shownImageId = id;
    $("details").hidden = false;
    $("details-title").textContent = image.filename;
    showImage($("details-image"), thumbnail(id, 512));
    $("details-image").alt = image.filename;
    const rows = {
      Size: `${image.width} × ${image.height}`, Format: image.format, Bytes: image.file_size,
      Uploaded: new Date(image.upload_timestamp).toLocaleString(), Id: image.id,
      ...Object.fromEntries(Object.entries(image.metadata.exif || {}).map(([k, v]) => [k.replace("_", " "), v])),
    };
    $("details-metadata").replaceChildren(...Object.entries(rows).flatMap(([key, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = key;
      const dd = document.createElement("dd");
      dd.textContent = value;
      return [dt, dd];
    }));
    showMatches($("details-similar"), similar.similar_images);
    $("details").scrollIntoView({ behavior: "smooth" });
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function deleteShown() {
  if (!shownImageId || !window.confirm("Delete this picture? This cannot be undone.")) return;
  try {
    await api(`${API}/${shownImageId}`, { method: "DELETE" });
    $("details").hidden = true;
    if (lastQuery && lastQuery.storedId === shownImageId) {
      lastQuery = null;
      $("results").replaceChildren();
    } else {
      search(); // the deleted picture may be among the results
    }
    shownImageId = null;
    setStatus("Picture deleted.");
    loadGallery();
    loadDuplicates();
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function loadGallery() {
  try {
    const page = await api(`${API}/?skip=${galleryPage * PAGE_SIZE}&limit=${PAGE_SIZE}`);
    $("gallery").replaceChildren(...page.items.map((image) => card(image, [image.filename], openDetails)));
    const pages = Math.max(1, Math.ceil(page.total / PAGE_SIZE));
    $("page-info").textContent = `Page ${galleryPage + 1} of ${pages} (${page.total} pictures)`;
    $("previous-page").disabled = galleryPage === 0;
    $("next-page").disabled = galleryPage + 1 >= pages;
  } catch (error) {
    setStatus(error.message, true);
  }
}

function setUp() {
  const zone = $("drop-zone");
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    setStatus($("api-key").value.trim() ? "The key will be sent with every request." : "No key.");
    loadGallery();
  });
  $("file-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = ""; // so that picking the same file again is a change too
    handleFile(file);
  });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    handleFile(event.dataTransfer.files[0]);
  });
  $("threshold").addEventListener("input", () => {
    $("threshold-value").textContent = Number($("threshold").value).toFixed(2);
  });
  // "change": once the slider is let go (or moved a step by the keyboard), once a number is in.
  $("threshold").addEventListener("change", search);
  $("limit").addEventListener("change", search);
  // Enter in "Results" submits the form: search instead of reloading the page.
  $("find-form").addEventListener("submit", (event) => { event.preventDefault(); search(); });
  $("delete-button").addEventListener("click", deleteShown);
  $("previous-page").addEventListener("click", () => { galleryPage -= 1; loadGallery(); });
  $("next-page").addEventListener("click", () => { galleryPage += 1; loadGallery(); });
  fetch("/info").then((r) => r.json()).then((info) => {
    $("threshold").value = info.similarity_threshold;
    $("threshold").dispatchEvent(new Event("input"));
    $("limit").value = info.max_similar_results;
    // What this instance accepts; extensions too, for systems that know no HEIC or AVIF type.
    const upload = info.upload;
    $("file-input").accept = [...upload.accepted_content_types, ...upload.allowed_extensions].join(",");
  }).catch(() => {});
  loadGallery();
}

document.addEventListener("DOMContentLoaded", setUp);
