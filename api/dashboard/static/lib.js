// Shared helpers: DOM building, the signed-in token, JSON calls to the API, formatting.

export const API = "/api/v1/verification";
const TOKEN_KEY = "echelon.token";

/** h("tag.class#id", {attr: value, onclick: fn}, ...children) → an element; strings become text nodes. */
export function h(spec, attrs = {}, ...children) {
  const [, tag, rest] = spec.match(/^([a-z0-9]+)(.*)$/i);
  const el = document.createElement(tag);
  for (const part of rest.match(/[.#][^.#]+/g) || []) {
    if (part[0] === ".") el.classList.add(part.slice(1));
    else el.id = part.slice(1);
  }
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export const token = () => sessionStorage.getItem(TOKEN_KEY);
export const setToken = (value) =>
  value ? sessionStorage.setItem(TOKEN_KEY, value) : sessionStorage.removeItem(TOKEN_KEY);

/** The token's claims (not verified here: the server does that); null when absent or unreadable. */
export function claims() {
  const value = token();
  if (!value) return null;
  try {
    const part = value.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return null;
  }
}

// The header's "who is signed in" link (here, not in app.js, so the sign-in view need not import the app).
export function showWho() {
  const who = document.getElementById("who");
  const c = claims();
  who.textContent = c ? `${c.sub}${c.role === "admin" ? " (admin)" : ""} · sign out` : "Sign in";
  who.href = "#/signin";
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}

/** fetch + JSON; throws ApiError with the server's `detail` (validation lists joined into one line). */
export async function api(path, { method = "GET", body, auth = true } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (auth && token()) headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(path.startsWith("/") ? path : `${API}/${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    let detail = data.detail ?? response.statusText;
    if (Array.isArray(detail)) detail = detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    throw new ApiError(response.status, detail);
  }
  return data;
}

export const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
export const fmtNum = (x, digits = 3) => (x === null || x === undefined ? "—" : Number(x).toFixed(digits));
export const query = (params) =>
  new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v !== null && v !== undefined)).toString();

export function progressBar(run, big = false) {
  const total = run.total ?? 0;
  const pct = total ? Math.min(100, Math.round((100 * run.progress) / total)) : run.status === "COMPLETED" ? 100 : 0;
  return h(
    `div.bar.${run.status}${big ? ".big" : ""}`,
    { role: "progressbar", "aria-valuenow": pct, "data-progress": `${run.progress}/${run.total ?? "?"}` },
    h("span", { style: `width:${pct}%` }),
    h("em", {}, `${run.progress}/${run.total ?? "?"}`),
  );
}

export const badge = (status) => h(`span.badge.${status}`, { "data-status": status }, status);

export function errorBox(error) {
  return h("div.error", { role: "alert" }, error instanceof ApiError && error.status === 401
    ? "Sign in first (a token, on the Sign in page)."
    : String(error.message || error));
}

/** Time from an event's publication to the dashboard showing it: kept for scripts/measure_dashboard.py. */
export function noteShown(event) {
  const metrics = (window.echelonMetrics ||= { shown: [] });
  const at = performance.timeOrigin + performance.now();
  metrics.shown.push({ eventId: event.eventId, topic: event.topic, delayMs: at - Date.parse(event.timestamp) });
  if (metrics.shown.length > 5000) metrics.shown.splice(0, 1000);
}

/** A wide table inside a box that scrolls sideways, so a narrow screen never scrolls the whole page. */
export const scroller = (table) => h("div.scroll", {}, table);

/** Time of day to the millisecond (local), e.g. 14:03:27.412. */
export function fmtClock(iso) {
  if (!iso) return "—";
  const at = new Date(iso);
  const two = (n) => String(n).padStart(2, "0");
  return `${two(at.getHours())}:${two(at.getMinutes())}:${two(at.getSeconds())}.${String(at.getMilliseconds()).padStart(3, "0")}`;
}

/** A duration in ms as "840 ms", "2.31 s", "4 min 05 s". */
export function fmtDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(2)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
}

const SECRET_KEY = /token|secret|password|passwd|authorization|api[_-]?key|credential|cookie/i;

/** A copy of a payload safe to show: header maps become their names, secret-looking fields are hidden. */
export function redact(value, key = "") {
  if (Array.isArray(value)) return value.map((v) => redact(v));
  if (value && typeof value === "object") {
    if (/headers$/i.test(key)) return Object.keys(value).sort(); // names only, never values
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, redact(v, k)]));
  }
  if (SECRET_KEY.test(key) && value !== null && value !== undefined) return "(hidden)";
  if (typeof value === "string") return value.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@\s]*@/i, "$1(hidden)@"); // user:password@ in a URL
  return value;
}
