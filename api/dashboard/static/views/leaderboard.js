import { api, errorBox, fmtNum, h, query, scroller } from "../lib.js";

const SVG = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

/** Horizontal bars of mean composite (0–1) per group: inline SVG, no library. */
export function chart(rows) {
  const scored = rows.filter((r) => r.mean_composite !== null);
  const barH = 22, labelW = 190, width = 640, plotW = width - labelW - 60;
  const height = Math.max(1, scored.length) * barH + 24;
  const svg = s("svg", { class: "chart", id: "leaderboard-chart", width, height, viewBox: `0 0 ${width} ${height}`,
    role: "img", "aria-label": "mean composite score per group" });
  scored.forEach((row, i) => {
    const y = i * barH;
    svg.append(
      s("text", { x: labelW - 6, y: y + 15, "text-anchor": "end" }, (row.key ?? "(none)").slice(0, 28)),
      s("rect", { x: labelW, y: y + 3, width: Math.max(1, row.mean_composite * plotW), height: barH - 6, fill: "#2f6fde", "data-key": row.key ?? "" }),
      s("text", { x: labelW + row.mean_composite * plotW + 4, y: y + 15 }, fmtNum(row.mean_composite)));
  });
  const axisY = scored.length * barH + 4;
  svg.append(s("line", { x1: labelW, x2: labelW + plotW, y1: axisY, y2: axisY, stroke: "#999" }));
  for (const tick of [0, 0.5, 1]) svg.append(s("text", { x: labelW + tick * plotW, y: axisY + 14, "text-anchor": "middle" }, String(tick)));
  return svg;
}

export async function leaderboardPage(main) {
  const groupBy = h("select#group-by", {}, h("option", { value: "construct_id" }, "construct"), h("option", { value: "scoring_model" }, "judge model"));
  const body = h("div");
  async function load() {
    try {
      const stats = await api(`stats?${query({ group_by: groupBy.value, limit: 100 })}`, { auth: false });
      body.replaceChildren(
        chart(stats.rows),
        scroller(h("table#leaderboard", {}, h("thead", {}, h("tr", {}, ["#", "Group", "Runs", "Completed", "Failed", "Certificates", "Mean composite", "Best Brier", "Judge cost $", "Ratings", "Human–judge MAE"].map((t) => h("th", {}, t)))),
          h("tbody", {}, stats.rows.map((r, i) => h("tr", {}, h("td", {}, String(i + 1)), h("td", {}, r.key ?? "(no certificate)"),
            h("td", {}, String(r.runs)), h("td", {}, String(r.completed)), h("td", {}, String(r.failed)), h("td", {}, String(r.certificates)),
            h("td", {}, fmtNum(r.mean_composite)), h("td", {}, fmtNum(r.best_brier)), h("td", {}, fmtNum(r.total_cost_usd, 4)),
            h("td", {}, String(r.human_ratings)), h("td", {}, fmtNum(r.human_judge_mae))))))));
    } catch (e) {
      body.replaceChildren(errorBox(e));
    }
  }
  groupBy.addEventListener("change", load);
  main.append(h("h1", {}, "Leaderboard"), h("form.inline", {}, h("label", {}, "Group by", groupBy)), body);
  await load();
}
