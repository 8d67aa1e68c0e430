// "Sign in with wallet": an EIP-1193 provider (window.ethereum, injected by a wallet extension) signs an
// EIP-4361 message naming a server nonce; POST /api/v1/auth/session trades it for a Bearer token, which is
// then kept exactly like a pasted one. The message must match the grammar api/wallet.py accepts, line by line.

import { api, setToken } from "./lib.js";
import { checksumAddress } from "./keccak.js";

export const STATEMENT = "Sign in to echelon-verify.";
const SESSION_S = 3600; // the server caps its token at this, and at the message's Expiration Time

export class WalletError extends Error {}

const rfc3339 = (date) => date.toISOString().replace(/\.\d{3}Z$/, "Z");

/** The EIP-4361 text: header, address, statement, then the fields in the order the grammar fixes. */
export function siweMessage({ domain, address, statement, uri, chainId, nonce, issuedAt, expirationTime }) {
  const lines = [`${domain} wants you to sign in with your Ethereum account:`, address, ""];
  lines.push(statement || "", ""); // no statement: two blank lines, as EIP-4361 writes it
  lines.push(`URI: ${uri}`, "Version: 1", `Chain ID: ${chainId}`, `Nonce: ${nonce}`, `Issued At: ${issuedAt}`);
  if (expirationTime) lines.push(`Expiration Time: ${expirationTime}`);
  return lines.join("\n");
}

const utf8Hex = (text) =>
  "0x" + Array.from(new TextEncoder().encode(text), (b) => b.toString(16).padStart(2, "0")).join("");

/** Wallet errors in words: 4001 is EIP-1193's "the user rejected the request". */
function walletFailure(error) {
  if (error && error.code === 4001) return new WalletError("You declined the request in your wallet.");
  return new WalletError(`The wallet answered with an error: ${error?.message || error}`);
}

async function ask(provider, method, params) {
  try {
    return await provider.request(params ? { method, params } : { method });
  } catch (error) {
    throw walletFailure(error);
  }
}

/** Sign in with the page's wallet; resolves to the session (the token is stored). `say` reports progress. */
export async function signInWithWallet(say = () => {}, provider = window.ethereum) {
  if (!provider || typeof provider.request !== "function") {
    throw new WalletError(
      "No wallet found in this browser. Signing in with a wallet needs a wallet extension (for example " +
        "MetaMask or Rabby) that provides window.ethereum; or paste a token above.",
    );
  }
  say("Asking your wallet for an account…");
  const accounts = await ask(provider, "eth_requestAccounts");
  if (!Array.isArray(accounts) || !accounts.length) throw new WalletError("The wallet shared no account.");
  const address = checksumAddress(accounts[0]);
  const issued = await api("/api/v1/auth/nonce", { auth: false });
  const walletChain = parseInt(await ask(provider, "eth_chainId").catch(() => "0x0"), 16);
  const chainId = issued.chain_ids.includes(walletChain) ? walletChain : issued.chain_ids[0];
  const now = new Date();
  const message = siweMessage({
    domain: issued.domain,
    address,
    statement: STATEMENT,
    uri: issued.uri,
    chainId,
    nonce: issued.nonce,
    issuedAt: rfc3339(now),
    expirationTime: rfc3339(new Date(now.getTime() + SESSION_S * 1000)),
  });
  // Wallets warn when a message names another site than the page's: say why before they do.
  const elsewhere = issued.domain !== location.host ? ` (this server signs in for ${issued.domain})` : "";
  say(`Sign the message in your wallet to sign in as ${address}${elsewhere}…`);
  const signature = await ask(provider, "personal_sign", [utf8Hex(message), address]);
  const session = await api("/api/v1/auth/session", {
    method: "POST",
    body: { address, message, signature },
    auth: false,
  });
  setToken(session.access_token);
  return session;
}
