// The duplicates section: groups of copies side by side, the suggested keeper checked; resolve
// keeps the checked pictures and deletes the others. Uses app.js's api(), card() and loadGallery().
"use strict";

const DUPLICATES = "/api/v1/duplicates";
const GROUPS_PER_PAGE = 5;
let groupsPage = 0;

function setDuplicatesStatus(text, isError = false) {
  $("duplicates-status").textContent = text;
  $("duplicates-status").classList.toggle("error", isError);
}

function kilobytes(bytes) {
  return `${(bytes / 1000).toFixed(1)} kB`;
}

function memberCard(group, member) {
  const badge = document.createElement("span");
  badge.className = "badge keeper";
  badge.textContent = "suggested keeper";
  const details = document.createElement("div");
  details.textContent = `${member.width} × ${member.height} · ${kilobytes(member.file_size)} · ${member.filename}`;
  const item = card(member, member.suggested_keeper ? [badge, details] : [details], openDetails);
  item.classList.toggle("keeper", member.suggested_keeper);
  const actions = document.createElement("div");
  actions.className = "member-actions";
  const keep = document.createElement("label");
  const box = document.createElement("input");
  box.type = "checkbox";
  box.className = "keep";
  box.value = member.id;
  box.checked = member.suggested_keeper;
  keep.append(box, " Keep");
  const notCopy = document.createElement("button");
  notCopy.type = "button";
  notCopy.className = "not-duplicate";
  notCopy.textContent = "Not a copy";
  notCopy.setAttribute("aria-label", `${member.filename} is not a copy of the others`);
  notCopy.addEventListener("click", () => markNotCopy(group, member));
  actions.append(keep, notCopy);
  item.append(actions);
  return item;
}

function groupItem(group) {
  const item = document.createElement("li");
  item.className = "group";
  item.dataset.groupId = group.id;
  const title = document.createElement("h3");
  const best = group.links.length ? group.links[0].similarity_score.toFixed(3) : "";
  title.textContent = `${group.size} copies` + (best ? ` · best match ${best}` : "");
  const members = document.createElement("ol");
  members.className = "cards";
  members.setAttribute("aria-label", `${group.size} copies of one picture`);
  members.append(...group.members.map((member) => memberCard(group, member)));
  const resolve = document.createElement("button");
  resolve.type = "button";
  resolve.className = "resolve danger";
  resolve.textContent = "Keep the checked pictures, delete the others";
  resolve.addEventListener("click", () => resolveGroup(group, item));
  item.append(title, members, resolve);
  return item;
}

async function loadDuplicates() {
  try {
    const page = await api(`${DUPLICATES}?skip=${groupsPage * GROUPS_PER_PAGE}&limit=${GROUPS_PER_PAGE}`);
    if (page.total && !page.items.length && groupsPage > 0) {
      groupsPage -= 1; // the last page emptied by a resolve
      return loadDuplicates();
    }
    $("duplicate-groups").replaceChildren(...page.items.map(groupItem));
    const pages = Math.max(1, Math.ceil(page.total / GROUPS_PER_PAGE));
    $("groups-info").textContent = `Page ${groupsPage + 1} of ${pages} (${page.total} groups)`;
    $("previous-groups").disabled = groupsPage === 0;
    $("next-groups").disabled = groupsPage + 1 >= pages;
    let text = page.total ? "" : "No copies found.";
    if (page.rebuild_needed) {
      text += " The groups are out of date: run python -m app duplicates --rebuild.";
    }
    setDuplicatesStatus(text.trim());
  } catch (error) {
    setDuplicatesStatus(error.message, true);
  }
}

function sameMembers(a, b) {
  const ids = (group) => group.members.map((m) => m.id).sort().join();
  return ids(a) === ids(b);
}

async function resolveGroup(group, item) {
  const keep = [...item.querySelectorAll("input.keep:checked")].map((box) => box.value);
  if (!keep.length) {
    setDuplicatesStatus("Check at least one picture to keep.", true);
    return;
  }
  const doomed = group.size - keep.length;
  const question = doomed
    ? `Delete ${doomed} picture(s) and keep ${keep.length}? This cannot be undone.`
    : "Keep all of them? They will not be shown as copies again.";
  if (!window.confirm(question)) return;
  try {
    // Resolve the group as the person saw it: if it changed meanwhile, show it again instead.
    const response = await fetch(`${DUPLICATES}/${group.id}`, withKey());
    const current = await response.json();
    if (!response.ok || !sameMembers(current, group)) {
      setDuplicatesStatus("This group changed meanwhile; here it is again.", true);
      loadDuplicates();
      return;
    }
    const result = await api(`${DUPLICATES}/${group.id}/resolve`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "If-Match": response.headers.get("ETag") },
      body: JSON.stringify({ keep }),
    });
    setDuplicatesStatus(`Kept ${result.kept.length}, deleted ${result.deleted.length}.`);
    loadGallery();
    loadDuplicates();
  } catch (error) {
    setDuplicatesStatus(error.message, true);
  }
}

async function markNotCopy(group, member) {
  const pairs = group.members.filter((m) => m.id !== member.id).map((m) => [member.id, m.id]);
  try {
    await api(`${DUPLICATES}/not-duplicates`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ pairs }),
    });
    setDuplicatesStatus(`${member.filename} will not be shown as a copy of those pictures again.`);
    loadDuplicates();
  } catch (error) {
    setDuplicatesStatus(error.message, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("previous-groups").addEventListener("click", () => { groupsPage -= 1; loadDuplicates(); });
  $("next-groups").addEventListener("click", () => { groupsPage += 1; loadDuplicates(); });
  $("key-form").addEventListener("submit", () => loadDuplicates());
  loadDuplicates();
});
