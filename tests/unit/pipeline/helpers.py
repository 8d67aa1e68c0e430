"""Test helpers: realistic payloads and fakes for the outside world (HTTP, DNS, clocks, sleep)."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import respx

from echelon_platform.domain.values import GroundTruthRecord
from pipeline_workers.scoring.messages_api import ApiAnswer, MessagesClient

SAMPLE_DIFF = """\
diff --git a/textkit/text.py b/textkit/text.py
index 3b18e51..a9c1f2d 100644
--- a/textkit/text.py
+++ b/textkit/text.py
@@ -10,3 +10,10 @@ def word_count(text: str) -> int:
     \"\"\"Number of whitespace-separated words.\"\"\"
     return len(text.split())
+
+
+def truncate(text: str, width: int, suffix: str = "...") -> str:
+    \"\"\"Shorten text to at most width characters, marking the cut with suffix.\"\"\"
+    if len(text) <= width:
+        return text
+    return text[: max(0, width - len(suffix))] + suffix
diff --git a/textkit/__init__.py b/textkit/__init__.py
index 41c3c1e..0d5e0a4 100644
--- a/textkit/__init__.py
+++ b/textkit/__init__.py
@@ -1,3 +1,3 @@
-from textkit.text import slugify
+from textkit.text import slugify, truncate, word_count
 # names re-exported for callers
-__all__ = ["slugify"]
+__all__ = ["slugify", "truncate", "word_count"]
"""


def make_record(**overrides: Any) -> GroundTruthRecord:
    fields: dict[str, Any] = {
        "id": "7",
        "title": "Add truncate() and export all helpers",
        "description": "truncate shortens text to a width with a suffix.",
        "diff_content": SAMPLE_DIFF,
        "files_changed": ["textkit/text.py", "textkit/__init__.py"],
        "timestamp": datetime(2024, 3, 1, 16, tzinfo=UTC),
        "author": "ada",
        "url": "https://github.com/octo/textkit/pull/7",
        "repo": "octo/textkit",
        "sha": "78259a7ae7bf49ee0e1160ced8d68b477157596e",
    }
    fields.update(overrides)
    return GroundTruthRecord(**fields)


class SleepRecorder:
    """Injected in place of asyncio.sleep: records the waits instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def anthropic_via_respx(router: respx.MockRouter, api_key: str = "sk-ant-test-key-0123456789") -> MessagesClient:
    """A Messages API client whose HTTP exchanges go to ``router``: respx does not patch aiohttp, so each request
    is handed over as an httpx request and the route's httpx response comes back as the API's answer.
    Everything above the exchange (headers, JSON, status and error handling) is the client's own code."""

    async def send(url: str, headers: Mapping[str, str], body: bytes) -> ApiAnswer:
        resp = await router.async_handler(httpx.Request("POST", url, headers=dict(headers), content=body))
        return ApiAnswer(resp.status_code, resp.headers, await resp.aread())

    return MessagesClient(api_key, send=send)


def anthropic_message(text: str, *, input_tokens: int = 1200, output_tokens: int = 180) -> dict[str, Any]:
    """A Messages API response body as the API returns it."""
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        },
    }


def anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


class FakeDns:
    """A resolver with a mutable table, so a test can change an answer between two lookups."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[host])


GH_API = "https://api.github.com"
GH_REPO = "octo/widgets"


def gh_pull(
    number: int,
    *,
    merged_at: str | None,
    updated_at: str,
    title: str | None = None,
    closed_at: str | None = None,
    labels: tuple[str, ...] = (),
    login: str = "octocat",
    body: str | None = "Body of the pull request.",
) -> dict[str, Any]:
    """A pull request as returned by GET /repos/{owner}/{repo}/pulls (fields the API really sends)."""
    closed = closed_at or merged_at or updated_at
    return {
        "url": f"{GH_API}/repos/{GH_REPO}/pulls/{number}",
        "id": 1_900_000_000 + number,
        "node_id": f"PR_kwDOAbCdE{number:05d}",
        "html_url": f"https://github.com/{GH_REPO}/pull/{number}",
        "diff_url": f"https://github.com/{GH_REPO}/pull/{number}.diff",
        "number": number,
        "state": "closed",
        "locked": False,
        "title": title or f"Change number {number}",
        "user": {"login": login, "id": 583231, "type": "User", "site_admin": False},
        "body": body,
        "labels": [
            {"id": 100 + i, "node_id": f"LA_{i}", "name": name, "color": "a2eeef", "default": False}
            for i, name in enumerate(labels)
        ],
        "created_at": "2024-01-02T09:00:00Z",
        "updated_at": updated_at,
        "closed_at": closed,
        "merged_at": merged_at,
        "merge_commit_sha": f"{number:040x}",
        "draft": False,
        "head": {"label": "octo:feature", "ref": "feature", "sha": f"{number + 5000:040x}"},
        "base": {"label": "octo:main", "ref": "main", "sha": f"{number + 9000:040x}"},
        "author_association": "MEMBER",
        "auto_merge": None,
    }


def gh_file(
    filename: str,
    *,
    status: str = "modified",
    patch: str | None = "@@ -1 +1 @@\n-old\n+new",
    previous_filename: str | None = None,
) -> dict[str, Any]:
    """An entry of GET /repos/{owner}/{repo}/pulls/{n}/files."""
    entry: dict[str, Any] = {
        "sha": "bbcd538c8e72b8c175046e27cc8f907076331401",
        "filename": filename,
        "status": status,
        "additions": 1,
        "deletions": 1,
        "changes": 2,
        "blob_url": f"https://github.com/{GH_REPO}/blob/abc/{filename}",
        "raw_url": f"https://github.com/{GH_REPO}/raw/abc/{filename}",
        "contents_url": f"{GH_API}/repos/{GH_REPO}/contents/{filename}?ref=abc",
    }
    if patch is not None:
        entry["patch"] = patch
    if previous_filename is not None:
        entry["previous_filename"] = previous_filename
    return entry


def gh_diff(number: int) -> str:
    return (
        f"diff --git a/src/widget_{number}.py b/src/widget_{number}.py\n"
        "index 83db48f..bf269f4 100644\n"
        f"--- a/src/widget_{number}.py\n+++ b/src/widget_{number}.py\n"
        "@@ -1,2 +1,3 @@\n def spin():\n-    return 1\n+    return 2\n"
    )


def gh_link(**rels: str) -> str:
    """A Link header, e.g. gh_link(next=url, last=url)."""
    return ", ".join(f'<{url}>; rel="{rel}"' for rel, url in rels.items())


def gh_rate_headers(remaining: int, reset: int, limit: int = 60) -> dict[str, str]:
    return {
        "x-ratelimit-limit": str(limit),
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-reset": str(reset),
        "x-ratelimit-used": str(limit - remaining),
        "x-ratelimit-resource": "core",
    }
