import { api, errorBox, h, token } from "../lib.js";

const FIELDS = [
  ["repo_url", "Repository", "sample", "a GitHub repository URL, a path the server may read, or sample"],
  ["construct_id", "Construct id", "dashboard-construct"],
  ["oracle_module", "Oracle module", "pipeline_workers.oracles.sample"],
  ["oracle_callable", "Oracle callable", "summarise"],
  ["oracle_url", "Oracle URL (http)", ""],
  ["limit", "Changes to replay", "5"],
  ["min_replays", "Minimum replays", "1"],
];

export async function submitPage(main) {
  main.append(h("h1", {}, "Submit a run"));
  if (!token()) {
    main.append(h("p", {}, h("a", { href: "#/signin" }, "Sign in"), " to submit runs."));
    return;
  }
  const type = h("select#oracle_type", { name: "oracle_type" },
    h("option", { value: "python" }, "python"), h("option", { value: "http" }, "http"));
  const inputs = Object.fromEntries(
    FIELDS.map(([name, , value, title]) => [name, h(`input#${name}`, { name, value, title })]),
  );
  const out = h("div");
  const button = h("button#submit-run", { type: "submit" }, "Submit");
  const form = h(
    "form.stack#submit-form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        out.replaceChildren();
        button.disabled = true;
        const v = (name) => inputs[name].value.trim();
        const body = {
          repo_url: v("repo_url"),
          construct_id: v("construct_id"),
          oracle_type: type.value,
          limit: Number(v("limit")),
          min_replays: Number(v("min_replays")),
        };
        if (type.value === "python") Object.assign(body, { oracle_module: v("oracle_module"), oracle_callable: v("oracle_callable") });
        else body.oracle_url = v("oracle_url");
        try {
          const created = await api("runs", { method: "POST", body });
          location.hash = `#/runs/${created.run_id}`;
        } catch (error) {
          out.append(errorBox(error));
          button.disabled = false;
        }
      },
    },
    h("label", { for: "oracle_type" }, "Oracle type"), type,
    FIELDS.flatMap(([name, label]) => [h("label", { for: name }, label), inputs[name]]),
    h("span"), button,
  );
  main.append(form, out);
}
