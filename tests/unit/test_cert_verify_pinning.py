"""`echelon certificates verify`: an issuer's keys are trusted from --keys FILE, or as pinned on first use."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from echelon.cert_verify import verify_command
from echelon.cli import main as cli_main
from echelon_platform.adapters.signing_keys import GENERATED_KEY, Keyring, load_keyring
from echelon_platform.config import Settings
from tests.unit.pipeline.test_certificate_trust import write_key
from tests.unit.pipeline.test_certify import build, score


class Issuer:
    """A local HTTP server answering GET path with whatever `pages` holds for it (404 otherwise)."""

    def __init__(self) -> None:
        self.pages: dict[str, bytes] = {}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body or b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def serve(self, keyring: Keyring, *, run: str = "r1") -> str:
        """Publish keyring's keys and a certificate it signed; return the certificate's URL."""
        cert = keyring.sign(build([score(run), score(f"{run}-2", supported=0)]))
        self.pages["/.well-known/echelon-keys.json"] = json.dumps(keyring.well_known()).encode()
        self.pages[f"/certs/{run}.json"] = cert.model_dump_json().encode()
        return f"{self.url}/certs/{run}.json"


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    fake = Issuer()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    thread.join()


def verify(url: str, pins: Path, keys: str | None = None) -> tuple[bool, str, list[str]]:
    notes: list[str] = []
    valid, line = verify_command(url, keys, "http://127.0.0.1:9", known_issuers=pins, say=notes.append)
    return valid, line, notes


def test_first_use_pins_the_issuer_and_a_forger_at_that_address_is_refused(issuer: Issuer, tmp_path: Path) -> None:
    pins = tmp_path / "config" / "known_issuers.json"
    genuine = load_keyring(Settings(data_dir=tmp_path / "issuer"))
    url = issuer.serve(genuine)
    valid, line, notes = verify(url, pins)
    assert valid and f"key {genuine.key_id[:16]}, first use" in line
    assert notes == [f"pinned issuer {issuer.url} key {genuine.key_id} (first use; {pins})"]
    assert stat.S_IMODE(pins.stat().st_mode) == 0o600
    valid, line, notes = verify(url, pins)
    assert valid and f"key {genuine.key_id[:16]}, pinned on " in line and notes == []

    # Whoever answers at the issuer's address now serves a forged certificate with its own keys: once signed
    # by the forger's key, which /.well-known lists alone, then listed beside the genuine one.
    forger = load_keyring(Settings(data_dir=tmp_path / "forger"))
    forged_url = issuer.serve(forger, run="forged")
    valid, line, notes = verify(forged_url, pins)
    assert not valid and line.startswith("INVALID") and f"signature INVALID (key {forger.key_id[:16]}" in line
    assert "not a trusted key" in line
    assert any(f"now lists key {forger.key_id} that no pinned key endorsed: NOT trusted" in n for n in notes)
    both = {"keys": [*genuine.well_known()["keys"], *forger.well_known()["keys"]]}  # type: ignore[misc]
    issuer.pages["/.well-known/echelon-keys.json"] = json.dumps(both).encode()
    assert not verify(forged_url, pins)[0]
    assert verify(url, pins)[0]  # the genuine certificate still verifies with the pinned key
    assert forger.key_id not in pins.read_text()


def test_a_rotated_key_endorsed_by_the_pinned_one_is_followed(issuer: Issuer, tmp_path: Path) -> None:
    pins = tmp_path / "known_issuers.json"
    data_dir = tmp_path / "issuer"
    old = load_keyring(Settings(data_dir=data_dir))
    assert verify(issuer.serve(old), pins)[0]
    new = load_keyring(
        Settings(
            data_dir=data_dir,
            signing_key_file=write_key(tmp_path / "new.pem"),
            signing_retired_key_files=[data_dir / GENERATED_KEY],
        )
    )
    valid, line, notes = verify(issuer.serve(new, run="after"), pins)
    assert valid and f"key {new.key_id[:16]}, chains from pinned key {old.key_id[:16]}" in line
    assert notes == [f"pinned issuer {issuer.url} key {new.key_id} (endorsed by {old.key_id[:16]})"]
    assert new.key_id in pins.read_text()


def test_a_keys_file_is_trusted_as_given_and_named(issuer: Issuer, tmp_path: Path) -> None:
    keyring = load_keyring(Settings(data_dir=tmp_path / "issuer"))
    url = issuer.serve(keyring)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(keyring.well_known()))
    pins = tmp_path / "pins.json"
    valid, line, notes = verify(url, pins, str(keys))
    assert valid and f"key {keyring.key_id[:16]}, --keys FILE {keys}" in line and notes == []
    assert not pins.exists()  # an explicit key file pins nothing
    other = tmp_path / "other.json"
    other.write_text(json.dumps(load_keyring(Settings(data_dir=tmp_path / "other")).well_known()))
    assert not verify(url, pins, str(other))[0]


def test_the_cli_says_where_it_pinned_and_exits_by_the_verdict(
    issuer: Issuer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ECHELON_KNOWN_ISSUERS_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    keyring = load_keyring(Settings(data_dir=tmp_path / "issuer"))
    forger = load_keyring(Settings(data_dir=tmp_path / "forger"))
    url = issuer.serve(keyring)
    capsys.readouterr()  # the keys' generation logged
    with pytest.raises(SystemExit) as exited:
        cli_main(["certificates", "verify", url])
    out, err = capsys.readouterr()
    assert exited.value.code == 0 and out.startswith("VALID") and "first use" in out
    pins = tmp_path / "xdg" / "echelon" / "known_issuers.json"
    assert f"pinned issuer {issuer.url} key {keyring.key_id} (first use; {pins})" in err
    forged = issuer.serve(forger, run="forged")
    with pytest.raises(SystemExit) as exited:
        cli_main(["certificates", "verify", forged])
    assert exited.value.code == 1 and capsys.readouterr().out.startswith("INVALID")
    with pytest.raises(SystemExit) as exited:
        cli_main(["certificates", "verify", url, "--keys", f"{issuer.url}/.well-known/echelon-keys.json"])
    assert exited.value.code != 0 and "not a URL" in capsys.readouterr().err


def test_a_saved_api_view_names_the_signed_document_and_an_unreachable_issuer_names_its_url(
    tmp_path: Path,
) -> None:
    from echelon_platform.errors import EchelonError

    view = tmp_path / "cert.json"  # what a user saves from GET /certificates/{id}
    view.write_text(json.dumps({"id": "cert-R1", "run_id": "R1", "replay_scores": [], "composite_score": 0.5}))
    with pytest.raises(EchelonError) as refused:
        verify_command(str(view), None, "http://127.0.0.1:9", known_issuers=tmp_path / "pins.json")
    assert "API's view of certificate cert-R1" in str(refused.value)
    assert "http://127.0.0.1:9/api/v1/verification/certificates/cert-R1/document" in str(refused.value)

    document = tmp_path / "document.json"
    document.write_text(build([score("r1")]).model_dump_json())
    notes: list[str] = []
    with pytest.raises(EchelonError) as unreachable:
        verify_command(
            str(document), None, "http://127.0.0.1:9", known_issuers=tmp_path / "pins.json", say=notes.append
        )
    assert "could not read http://127.0.0.1:9/.well-known/echelon-keys.json" in str(unreachable.value)
    assert notes and "http://127.0.0.1:9/.well-known/echelon-keys.json" in notes[0], notes
