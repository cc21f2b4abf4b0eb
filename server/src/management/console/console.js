// The console: reads the node's /status twice a second and draws it; its buttons call the
// management API with the node's token. Every text from the node is put in as text, never as
// markup (app, queue and cache names come from apps).
"use strict";

const REFRESH_MS = 500;
// The other members are asked less often: each question crosses the cluster.
const MEMBERS_REFRESH_MS = 2000;
const TOKEN_KEY = "immutant-management-token";

// The token comes in the URL's fragment (never sent to the server), and is kept for this tab.
function takeToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const given = fragment.get("token");
  if (given) {
    sessionStorage.setItem(TOKEN_KEY, given);
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}
let token = takeToken();

// An element with attributes and children (strings become text).
function el(tag, attributes, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "onclick") element.addEventListener("click", value);
    else if (value !== undefined && value !== null) element.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function span(ms) {
  const seconds = Math.max(0, ms / 1000);
  if (seconds < 60) return seconds.toFixed(1) + " s";
  const whole = Math.floor(seconds);
  if (whole < 3600) return `${Math.floor(whole / 60)}m ${whole % 60}s`;
  if (whole < 86400) return `${Math.floor(whole / 3600)}h ${Math.floor((whole % 3600) / 60)}m`;
  return `${Math.floor(whole / 86400)}d ${Math.floor((whole % 86400) / 3600)}h`;
}

function mebibytes(bytes) {
  return bytes === null || bytes === undefined ? "-" : (bytes / 1048576).toFixed(1) + " MiB";
}

// Fills `table` with a heading and rows; `empty` says what none means.
function fill(table, headings, rows, empty) {
  const body = [el("tr", {}, headings.map((heading) => el("th", {}, heading)))];
  if (rows.length === 0) {
    body.push(el("tr", {}, el("td", { class: "none", colspan: headings.length }, empty)));
  }
  table.replaceChildren(...body, ...rows);
}

function cell(value, className) {
  return el("td", { class: className }, value);
}

function number(value) {
  return cell(value, "number");
}

// A line of the queue's depth over the last minutes.
function sparkline(history) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "history");
  svg.setAttribute("viewBox", "0 0 160 28");
  svg.setAttribute("preserveAspectRatio", "none");
  if (!history || history.length < 2) return svg;
  const first = history[0][0];
  const last = history[history.length - 1][0];
  const highest = Math.max(1, ...history.map((sample) => sample[1]));
  const points = history.map(([at, depth]) => {
    const x = ((at - first) / Math.max(1, last - first)) * 158 + 1;
    const y = 27 - (depth / highest) * 25;
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" "));
  svg.append(line);
  const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
  title.textContent = `highest ${highest} over the last ${span(last - first)}`;
  svg.append(title);
  return svg;
}

function say(text, isError) {
  const message = document.getElementById("message");
  message.textContent = text;
  message.className = isError ? "error" : "";
  message.hidden = false;
}

// POSTs an operation with the token; says how it went.
async function operate(path, done) {
  if (!token) {
    document.getElementById("token-form").hidden = false;
    say("This needs the node's management token (below).", true);
    return;
  }
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: { Authorization: "Bearer " + token },
    });
    const text = (await response.text()).trim();
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      token = null;
      document.getElementById("token-form").hidden = false;
    }
    say(response.ok ? done : text, !response.ok);
  } catch (error) {
    say(`The node did not answer: ${error}`, true);
  }
  refresh();
}

// A button that asks to be clicked twice before it acts.
function dangerous(label, action) {
  const button = el("button", { class: label.toLowerCase() }, label);
  let armed = null;
  const disarm = () => {
    clearTimeout(armed);
    armed = null;
    button.textContent = label;
    button.classList.remove("really");
  };
  button.addEventListener("click", () => {
    if (armed) {
      disarm();
      action();
      return;
    }
    button.textContent = `Really ${label.toLowerCase()}?`;
    button.classList.add("really");
    armed = setTimeout(disarm, 4000);
  });
  return button;
}

// Buttons are kept across redraws while armed, so that a second click lands.
function keepArmed(table, render) {
  if (table.querySelector("button.really")) return;
  render();
}

function draw(status) {
  const now = Date.now();
  const cluster = status.cluster;
  document.getElementById("node").textContent =
    `node ${status.name}` + (cluster ? ` of cluster ${cluster.name}` : " (standalone)") +
    ` · ${status.version} · up ${span(status.uptime_ms)} · ${mebibytes(status.memory_bytes)}` +
    (status.load ? ` · load ${status.load[0].toFixed(2)}` : "");
  document.title = `Immutant console: ${status.name}`;
  // A clustered node's deployments are the cluster's; an app kept to the install is not.
  const everywhere = cluster ? "every member of the cluster" : "every node of the install";

  const members = cluster ? cluster.view : [{ name: status.name, address: status.bind_address, started_ms: status.started_ms, apps: status.deployments.map((d) => d.name) }];
  fill(document.getElementById("nodes"), ["Node", "Address", "Up", "Apps running", ""],
    members.map((member) => {
      const here = member.name === status.name;
      // Addresses come from the cluster's gossip: only plain web ones become links.
      const linkable = !here && /^https?:\/\//.test(member.management || "");
      const link = linkable
        ? el("a", { href: member.management + "/console" }, "its console") : (here ? "this node" : "");
      return el("tr", { "data-node": member.name },
        cell(member.name), cell(member.address), cell(span(now - member.started_ms)),
        cell(member.apps.join(", ")), cell(link));
    }), "no node");

  keepArmed(document.getElementById("apps"), () => fill(document.getElementById("apps"),
    ["App", "Status", "Restarts", "Process", "Singletons on", "Web", ""],
    status.deployments.map((app) => el("tr", { "data-app": app.name },
      cell(app.name), cell(app.status + (app.reason ? `: ${app.reason}` : ""), `status ${app.status}`),
      number(app.restarts), cell(app.pid || "-"), cell(app.singletons_on || "-"),
      cell(app.web || "-"),
      el("td", {},
        el("button", { class: "redeploy", onclick: () => operate(`/deployments/${encodeURIComponent(app.name)}/redeploy`, `Redeploying ${app.name} on ${everywhere}.`) }, "Redeploy"),
        dangerous("Undeploy", () => operate(`/deployments/${encodeURIComponent(app.name)}/undeploy`, `Undeployed ${app.name} from ${everywhere}.`))))),
    "nothing is deployed"));

  fill(document.getElementById("singletons"), ["App", "Runs on", "Epoch"],
    status.singletons.map((s) => el("tr", { "data-singleton": s.app }, cell(s.app), cell(s.node), number(s.epoch))),
    "no singletons run");

  fill(document.getElementById("queues"),
    ["Queue", "Depth", "Last minutes", "In/s", "Out/s", "Consumers", "In flight", "Dead letters"],
    status.queues.map((q) => el("tr", { "data-queue": q.name },
      cell(q.name), el("td", { class: "number depth" }, q.depth), el("td", {}, sparkline(q.depth_history)),
      number(q.rate_in.toFixed(1)), number(q.rate_out.toFixed(1)), number(q.consumers),
      number(q.in_flight), number(q.dead_lettered))),
    "no queues");

  const jobs = status.deployments.flatMap((app) => app.jobs.map((job) => ({ app: app.name, ...job })));
  fill(document.getElementById("jobs"), ["Job", "Schedule", "Fires here", "Next", "Last run"],
    jobs.map((job) => el("tr", { "data-job": `${job.app}/${job.name}` },
      cell(`${job.app}/${job.name}`), cell(job.schedule), cell(job.fires_here ? "yes" : "no"),
      cell(job.next_ms ? `in ${span(job.next_ms - now)}` : (job.done ? "done" : "-")),
      cell(job.last ? `#${job.last.run} ${span(now - job.last.fired_ms)} ago: ${job.last.outcome}` : "-"))),
    "no jobs");

  fill(document.getElementById("caches"), ["Cache", "Mode", "Entries here", "Hit ratio", "Held by"],
    status.caches.map((c) => {
      const reads = c.hits + c.misses;
      return el("tr", { "data-cache": c.name }, cell(c.name), cell(c.mode), number(c.entries),
        number(reads ? `${Math.round((100 * c.hits) / reads)}%` : "-"), cell(c.held_by.join(", ")));
    }), "no caches");

  keepArmed(document.getElementById("web"), () => fill(document.getElementById("web"),
    ["Context", "App", "Serving", "Balancers send", "In flight", ""],
    status.web.map((w) => {
      const control = (action, done) => () => operate(`/web/${action}?context=${encodeURIComponent(w.context_path)}`, done);
      return el("tr", { "data-context": w.context_path },
        cell(w.context_path), cell(w.app), cell(w.serving ? "yes" : "no", w.serving ? "yes" : "no"),
        cell(w.control, w.control), number(w.in_flight),
        el("td", {},
          el("button", { class: "enable", onclick: control("enable", `Balancers send ${w.context_path} every request again.`) }, "Enable"),
          el("button", { class: "disable", onclick: control("disable", `Balancers send ${w.context_path} no new sessions.`) }, "Disable"),
          dangerous("Stop", control("stop", `Balancers send ${w.context_path} nothing.`))));
    }), "no web contexts"));

  fill(document.getElementById("balancers"), ["Balancer", "Up to date"],
    status.balancers.map((b) => el("tr", {}, cell(b.address), cell(b.up_to_date ? "yes" : "not yet", b.up_to_date ? "yes" : "no"))),
    "no balancer has heard of this node");

  // Only a node serving HTTPS has certificates; one expiring within 14 days says so in red.
  document.getElementById("certificates-section").hidden = (status.certificates || []).length === 0;
  fill(document.getElementById("certificates"), ["Names", "File", "Expires"],
    (status.certificates || []).map((c) => {
      const soon = c.days_left < 14;
      const date = new Date(c.not_after * 1000).toISOString().slice(0, 10);
      return el("tr", { "data-certificate": c.file }, cell(c.names.join(", ")), cell(c.file),
        cell(c.days_left < 0 ? `${date} (expired: renew it)` : `${date} (in ${c.days_left} days${soon ? ": renew it" : ""})`, soon ? "no" : "yes"));
    }), "no certificates");
}

// What each other member says of itself, asked through this node: its apps, queues and caches.
const memberStatus = new Map();

async function askMembers(view, self) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const others = view.filter((member) => member.name !== self).map((member) => member.name);
  for (const name of memberStatus.keys()) if (!others.includes(name)) memberStatus.delete(name);
  await Promise.all(others.map(async (name) => {
    try {
      const response = await fetch(`/members/${encodeURIComponent(name)}/status`, { headers });
      if (!response.ok) throw new Error((await response.text()).trim() || response.statusText);
      memberStatus.set(name, await response.json());
    } catch (error) {
      memberStatus.set(name, { error: error.message });
    }
  }));
  drawMembers();
}

function plural(count, one, many) {
  return `${count} ${count === 1 ? one : (many || one + "s")}`;
}

function listed(items, empty) {
  return items.length ? el("ul", {}, items.map((item) => el("li", {}, item))) : el("span", { class: "none" }, empty);
}

function drawMembers() {
  const section = document.getElementById("members-section");
  section.hidden = memberStatus.size === 0;
  fill(document.getElementById("members"), ["Member", "Apps", "Queues", "Caches"],
    [...memberStatus.entries()].sort().map(([name, status]) => status.error
      ? el("tr", { "data-member": name }, cell(name), el("td", { class: "error", colspan: 3 }, `cannot be asked: ${status.error}`))
      : el("tr", { "data-member": name }, cell(name),
        el("td", { class: "member-apps" }, listed(status.deployments.map((app) =>
          `${app.name}: ${app.status}` + (app.reason ? ` (${app.reason})` : "")), "none")),
        el("td", { class: "member-queues" }, listed(status.queues.map((q) =>
          `${q.name}: ${q.depth} waiting, ${plural(q.consumers, "consumer")}`), "none")),
        el("td", { class: "member-caches" }, listed(status.caches.map((c) =>
          `${c.name} (${c.mode}): ${plural(c.entries, "entry", "entries")}`), "none")))),
    "no other member");
}

async function refreshMembersForever() {
  try {
    const view = lastStatus && lastStatus.cluster ? lastStatus.cluster.view : [];
    if (lastStatus) await askMembers(view, lastStatus.name);
  } catch (error) {
    say(`Cannot show the other members: ${error.message}`, true);
  } finally {
    setTimeout(refreshMembersForever, MEMBERS_REFRESH_MS);
  }
}
let lastStatus = null;

async function refresh() {
  const live = document.getElementById("live");
  try {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const response = await fetch("/status?history=true", { headers });
    // A node whose management port is beyond loopback shows nothing without the token.
    if (response.status === 401) document.getElementById("token-form").hidden = false;
    if (!response.ok) throw new Error((await response.text()).trim() || response.statusText);
    lastStatus = await response.json();
    draw(lastStatus);
    live.textContent = "live";
    live.className = "state live";
  } catch (error) {
    live.textContent = `cannot reach the node: ${error.message}`;
    live.className = "state lost";
  }
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const given = document.getElementById("token").value.trim();
  if (given) {
    sessionStorage.setItem(TOKEN_KEY, given);
    token = given;
    document.getElementById("token-form").hidden = true;
    say("Token kept for this tab.");
  }
});

// The next read is asked for once this one is drawn: a slow node is not asked again meanwhile.
async function refreshForever() {
  await refresh();
  setTimeout(refreshForever, REFRESH_MS);
}
refreshForever();
refreshMembersForever();
