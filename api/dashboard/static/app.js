// Hash routing: each view renders into <main> and returns a clean-up (closing its live streams).

import { h, showWho } from "./lib.js";
import { certificatePage, certificatesPage, comparePage } from "./views/certificates.js";
import { leaderboardPage } from "./views/leaderboard.js";
import { runPage } from "./views/run.js";
import { runsPage } from "./views/runs.js";
import { signinPage } from "./views/signin.js";
import { submitPage } from "./views/submit.js";

const ROUTES = [
  [/^\/runs\/([^/]+)$/, runPage, "runs"],
  [/^\/runs$/, runsPage, "runs"],
  [/^\/submit$/, submitPage, "submit"],
  [/^\/certificates\/([^/]+)$/, certificatePage, "certificates"],
  [/^\/certificates$/, certificatesPage, "certificates"],
  [/^\/compare\/([^/]+)\/([^/]+)$/, comparePage, "certificates"],
  [/^\/leaderboard$/, leaderboardPage, "leaderboard"],
  [/^\/signin$/, signinPage, "signin"],
];

let cleanup = () => {};

async function route() {
  const path = (location.hash.replace(/^#/, "") || "/runs").split("?")[0];
  cleanup();
  cleanup = () => {};
  const main = document.getElementById("view");
  main.replaceChildren();
  const match = ROUTES.map(([re, view, nav]) => [path.match(re), view, nav]).find(([m]) => m);
  if (!match) {
    main.append(h("p", {}, "Nothing here. ", h("a", { href: "#/runs" }, "Runs")));
    return;
  }
  const [m, view, nav] = match;
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === nav);
  const params = m.slice(1).map(decodeURIComponent);
  try {
    cleanup = (await view(main, ...params)) || (() => {});
  } catch (error) {
    main.append(h("div.error", { role: "alert" }, String(error.message || error)));
  }
  main.dataset.view = nav; // set last: tests wait on it
}

window.addEventListener("hashchange", route);
showWho();
route();
