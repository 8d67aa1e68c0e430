import { claims, h, setToken, showWho } from "../lib.js";
import { signInWithWallet } from "../wallet.js";

const signedIn = () => {
  showWho();
  location.hash = "#/runs";
};

function walletSection() {
  const status = h("p.muted#wallet-status", { role: "status" });
  const error = h("div.error#wallet-error", { role: "alert" });
  const button = h("button#wallet-signin", {
    type: "button",
    onclick: async () => {
      button.disabled = true;
      error.textContent = "";
      try {
        await signInWithWallet((text) => { status.textContent = text; });
        signedIn();
      } catch (failure) {
        status.textContent = "";
        error.textContent = String(failure.message || failure);
      } finally {
        button.disabled = false;
      }
    },
  }, "Sign in with wallet");
  return h("div.wallet#wallet", {},
    h("h2", {}, "Or sign with a wallet"),
    h("p.muted", {}, "Your wallet signs a Sign-In-with-Ethereum message (no transaction, no fee); you are then ",
      h("code", {}, "wallet:<address>"), " for an hour."),
    button, status, error);
}

export async function signinPage(main) {
  const current = claims();
  const input = h("textarea#token", { rows: 4, cols: 70, placeholder: "eyJhbGciOi…", autocomplete: "off" });
  const error = h("div.error");
  const form = h(
    "form.stack#signin-form",
    {
      onsubmit: (event) => {
        event.preventDefault();
        const value = input.value.trim();
        setToken(value);
        if (!claims()) {
          setToken(null);
          error.textContent = "That is not a JWT (three dot-separated parts).";
          return;
        }
        signedIn();
      },
    },
    h("label", { for: "token" }, "Bearer token (JWT)"),
    input,
    h("span"),
    h("button#signin", { type: "submit" }, "Sign in"),
  );
  main.append(h("div", {},
    h("h1", {}, "Sign in"),
    current
      ? h("p", {}, `Signed in as ${current.sub}. `, h("button#signout", {
          type: "button",
          onclick: () => {
            setToken(null);
            showWho();
            location.hash = "#/runs";
          },
        }, "Sign out"))
      : null,
    h("p.muted", {}, "Paste a token (e.g. from ", h("code", {}, "echelon token USER"),
      "). It is kept in this tab only (sessionStorage). Certificates and the leaderboard need no sign-in."),
    form,
    error,
    walletSection(),
  ));
}
