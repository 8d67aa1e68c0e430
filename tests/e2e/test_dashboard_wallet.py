""" "Sign in with wallet" in a real browser (Debian's chromium via Playwright) against a real uvicorn server:
a fake EIP-1193 provider stands in for the wallet extension, but its `personal_sign` is a real signature
by an eth_account key (made in Python), so the server checks the page's EIP-4361 message for real."""

from __future__ import annotations

import json
from pathlib import Path

from api.app import create_app
from api.options import ApiOptions
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.e2e.browser import CHROMIUM_FLAGS
from tests.e2e.test_dashboard import TIMEOUT_MS, playwright_api
from tests.integration.test_api_support import free_port, new_account, serve, sign

# What a wallet extension injects, reduced to the calls the page makes. `personal_sign` gets the message as
# 0x hex of its UTF-8 bytes (as MetaMask takes it) and hands it to Python to sign.
FAKE_PROVIDER = """
window.ethereum = {
  request: async ({ method, params }) => {
    if (method === "eth_requestAccounts") return [%(address)s];
    if (method === "eth_chainId") return "0x1";
    if (method === "personal_sign") {
      if (window.declineSignature) throw Object.assign(new Error("User rejected the request."), { code: 4001 });
      return await window.walletSign(params[0], params[1]);
    }
    throw Object.assign(new Error(`unsupported method ${method}`), { code: 4200 });
  },
};
"""


async def test_sign_in_with_a_wallet(settings: Settings, services: Services, chromium: str, tmp_path: Path) -> None:
    port = free_port()
    # The server names its own address in the nonce answer; the page must sign a message for exactly it.
    settings = settings.model_copy(update={"api_host": "127.0.0.1", "api_port": port})
    app = create_app(settings, services, options=ApiOptions(runs_per_minute=100))
    account = new_account()
    address: str = account.address  # type: ignore[attr-defined]
    signed: list[tuple[str, str]] = []
    problems: list[str] = []

    def wallet_sign(hex_message: str, signer: str) -> str:
        text = bytes.fromhex(hex_message.removeprefix("0x")).decode()
        signed.append((text, signer))
        return sign(account, text)

    async with serve(app, port) as host, playwright_api.async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = await context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            await page.expose_function("walletSign", wallet_sign)
            # Wallets report lower-case addresses: the page must checksum it (EIP-55) for the message.
            await page.add_init_script(FAKE_PROVIDER % {"address": json.dumps(address.lower())})

            await page.goto(f"http://{host}/#/signin")
            await page.evaluate("window.declineSignature = true")
            await page.click("#wallet-signin")
            await page.locator("#wallet-error", has_text="declined").wait_for()

            await page.evaluate("window.declineSignature = false")
            await page.click("#wallet-signin")
            # Either signed in (the runs view) or refused (the server's reason, shown on the page).
            await page.wait_for_selector("main[data-view=runs], #wallet-error:not(:empty)")
            assert await page.locator("#wallet-error").count() == 0, await page.text_content("#wallet-error")
            await page.wait_for_selector("#runs-total:not(:empty)")  # GET /runs answered with the new token
            assert f"wallet:{address}" in (await page.text_content("#who") or "")
            assert await page.locator("main [role=alert]").count() == 0
            await page.screenshot(path=tmp_path / "wallet-signed-in.png")

            assert len(signed) == 1, signed  # the declined attempt reached no signature
            message, signer = signed[0]
            assert signer == address
            lines = message.split("\n")
            assert lines[:4] == [
                f"{host} wants you to sign in with your Ethereum account:",
                address,
                "",
                "Sign in to echelon-verify.",
            ]
            assert lines[5:8] == [f"URI: http://{host}", "Version: 1", "Chain ID: 1"]
            assert lines[9].startswith("Issued At: ") and lines[10].startswith("Expiration Time: ")

            bare = await context.new_page()  # no provider injected: a browser without a wallet extension
            await bare.goto(f"http://{host}/#/signin")
            await bare.click("#wallet-signin")
            await bare.locator("#wallet-error", has_text="wallet extension").wait_for()
            assert "Sign in" in (await bare.text_content("#who") or "")
        finally:
            await context.close()
    assert not problems, problems
