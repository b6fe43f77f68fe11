// The list of posts, live from the derived table post_with_comments_counts, and the form
// that creates a post and opens it once the operator has derived it.
import { client, api, showState, flash, plural } from "/static/common.js";

showState();
const list = document.getElementById("posts");
const empty = document.getElementById("posts-empty");
const posts = new Map(); // id -> {li, link, count}

function upsert(row, animate) {
  let p = posts.get(row.id);
  if (!p) {
    const li = document.createElement("li");
    li.dataset.postId = row.id;
    const link = document.createElement("a");
    link.href = `/posts/${row.id}`;
    const count = document.createElement("span");
    count.className = "count";
    li.append(link, count);
    p = { li, link, count };
    posts.set(row.id, p);
    const next = [...list.children].find((el) => Number(el.dataset.postId) < row.id); // newest first
    list.insertBefore(li, next ?? null);
  }
  p.link.textContent = row.title;
  p.count.textContent = plural(row.comments_count ?? 0, "comment");
  if (animate) flash(p.li);
  empty.hidden = posts.size > 0;
}

function remove(id) {
  posts.get(id)?.li.remove();
  posts.delete(id);
  empty.hidden = posts.size > 0;
}

// The rows and the changes after them, with no gap and no duplicate: load reads the
// derived table in one database snapshot and subscribes from that snapshot's token.
function showRows(rows) {
  const ids = new Set(rows.map((r) => r.id));
  for (const id of [...posts.keys()]) if (!ids.has(id)) remove(id);
  for (const row of rows) upsert(row, false);
}
function apply(ev) {
  if (ev.type === "delete") remove(ev.old_record.id);
  else if (ev.type === "truncate") reload();
  else upsert(ev.new_record, true);
}
function load() {
  return client.load("post_with_comments_counts", { snapshot: showRows, event: apply, resync: reload }).catch((err) => {
    empty.hidden = false;
    empty.textContent = err.message;
  });
}
// Events were lost for good (retention), or the table was truncated: load it again.
function reload() {
  client.unsubscribe("post_with_comments_counts").then(load);
}
load();

const form = document.getElementById("new-post");
const status = document.getElementById("form-status");
const publish = document.getElementById("publish");
form.addEventListener("submit", async (e) => {
  e.preventDefault();
  publish.disabled = true;
  // Every event after this position is replayed to waitFor, so the derived row's insert
  // cannot be missed however fast the operator is.
  const after = client.position;
  try {
    status.textContent = "Saving…";
    const { id } = await api("POST", "/api/posts", { title: document.getElementById("title").value, body: document.getElementById("body").value });
    status.textContent = `Saved in posts as ${id}; waiting for the operator to derive post_with_comments_counts/${id}…`;
    await client.waitFor(`post_with_comments_counts/${id}`, "insert", {
      after,
      timeout: 15000,
      // Asked once subscribed, and again if the gateway cannot replay from after (resync).
      exists: async () => (await fetch(`/api/posts/${id}`)).ok,
    });
    location.assign(`/posts/${id}`);
  } catch (err) {
    status.textContent = err.message;
    publish.disabled = false;
  }
});
