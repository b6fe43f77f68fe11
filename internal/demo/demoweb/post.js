// One post, live: the derived row post_with_comments_counts/<id> (title, comment count,
// deletion) and the comments of the scoped channel posts/<id>/comments. Opened before the
// operator has derived the row, the page subscribes, waits and renders when it arrives.
import { client, api, showState, live, flash, plural } from "/static/common.js";

showState();
const id = Number(location.pathname.split("/")[2]);
const $ = (name) => document.getElementById(name);
for (const el of document.querySelectorAll(".post-id")) el.textContent = id;
let deleted = false;

function showPost(row) {
  if (deleted) return;
  $("waiting").hidden = true;
  $("post").hidden = false;
  $("comments-section").hidden = false;
  $("post-title").textContent = row.title;
  document.title = `${row.title} · walflow demo`;
  $("post-body").textContent = row.body ?? "";
  $("post-meta").textContent = `posts/${row.id} · written ${new Date(row.inserted_at).toLocaleString()}`;
  $("post-count").textContent = plural(row.comments_count ?? 0, "comment");
}

function showDeleted() {
  deleted = true;
  $("deleted").hidden = false;
  $("waiting").hidden = true;
  document.body.classList.add("deleted");
  // Its comments went with it (ON DELETE CASCADE), and there is nothing left to do.
  $("comments-section").hidden = true;
  $("post-count").hidden = true;
  for (const el of document.querySelectorAll("button, textarea")) {
    el.disabled = true;
    if (el.id === "delete") el.hidden = true;
  }
}

function waiting(text) {
  if (deleted) return;
  $("waiting").textContent = text;
  $("waiting").hidden = false;
}

const post = live(async () => {
  try {
    showPost((await api("GET", `/api/posts/${id}`)).post);
  } catch (err) {
    if (err.status !== 404) throw err;
    // Not found: either not derived yet, or no such post. Either way the subscription is
    // in place, so the insert renders the post the moment the operator derives it.
    waiting(err.data?.exists
      ? `post_with_comments_counts/${id} does not exist yet: waiting for the operator to derive it from posts/${id}…`
      : `There is no post ${id} (yet?). Waiting for it…`);
  }
}, (ev) => {
  if (ev.type === "delete") showDeleted();
  else if (ev.new_record) showPost(ev.new_record);
});

const comments = new Map(); // id -> li
function upsertComment(row, animate) {
  if (row.post_id !== id) return removeComment(row.id); // moved to another post
  let li = comments.get(row.id);
  if (!li) {
    li = document.createElement("li");
    li.dataset.commentId = row.id;
    comments.set(row.id, li);
    const next = [...$("comments").children].find((el) => Number(el.dataset.commentId) > row.id); // oldest first
    $("comments").insertBefore(li, next ?? null);
  }
  li.textContent = row.body;
  if (animate) flash(li);
  $("comments-empty").hidden = comments.size > 0;
}
function removeComment(cid) {
  comments.get(cid)?.remove();
  comments.delete(cid);
  $("comments-empty").hidden = comments.size > 0;
}

// The comments and their changes, with no gap and no duplicate: load reads them in one
// database snapshot and subscribes from that snapshot's token.
function showComments(rows) {
  const ids = new Set(rows.map((r) => r.id));
  for (const cid of [...comments.keys()]) if (!ids.has(cid)) removeComment(cid);
  for (const row of rows) upsertComment(row, false);
}
function applyComment(ev) {
  if (ev.type === "delete") removeComment(ev.old_record.id);
  else if (ev.type === "truncate") reloadComments();
  else upsertComment(ev.new_record, true);
}
function loadComments() {
  return client.load(`posts/${id}/comments`, { snapshot: showComments, event: applyComment, resync: reloadComments });
}
// Events were lost for good (retention), or the table was truncated: load them again.
function reloadComments() {
  client.unsubscribe(`posts/${id}/comments`).then(loadComments).catch((err) => waiting(err.message));
}

const postSub = client.subscribe(`post_with_comments_counts/${id}`, { event: post.apply, resync: () => post.load() });
postSub.ready.then(() => post.load()).catch((err) => waiting(err.message));
loadComments().catch((err) => waiting(err.message));

$("delete").addEventListener("click", async () => {
  $("delete").disabled = true;
  try {
    await api("DELETE", `/api/posts/${id}`);
    // The banner comes with the delete event, as it does for a delete made elsewhere.
  } catch (err) {
    $("comment-status").textContent = err.message;
    $("delete").disabled = false;
  }
});

const form = $("new-comment");
form.addEventListener("submit", async (e) => {
  e.preventDefault();
  $("send").disabled = true;
  try {
    await api("POST", `/api/posts/${id}/comments`, { body: $("comment-body").value });
    $("comment-body").value = ""; // the comment itself arrives as an event
    $("comment-status").textContent = "";
  } catch (err) {
    $("comment-status").textContent = err.message;
  } finally {
    $("send").disabled = deleted;
  }
});
