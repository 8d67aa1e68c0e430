from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio
import respx

from echelon_platform.errors import IngestError
from pipeline_workers.ingest.base import SourceSpec
from pipeline_workers.ingest.github import GitHubIngester

from .helpers import GH_API, GH_REPO, SleepRecorder, gh_diff, gh_file, gh_link, gh_pull, gh_rate_headers

NOW = 1_714_564_800.0  # 2024-05-01T12:00:00Z
TOKEN = "ghp_R3allySecretT0kenValue1234567890abcd"
PULLS = f"{GH_API}/repos/{GH_REPO}/pulls"
PAGED = f"{GH_API}/repositories/7654321/pulls"  # GitHub's Link headers use the numeric repo id


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


@pytest.fixture
def gh() -> Any:
    with respx.mock(assert_all_called=False) as router:
        yield router


def ingester(client: httpx.AsyncClient, sleeps: SleepRecorder, **kw: Any) -> GitHubIngester:
    return GitHubIngester(client, sleep=sleeps, clock=lambda: NOW, **kw)


def spec(**kw: Any) -> SourceSpec:
    return SourceSpec(repo_url=f"https://github.com/{GH_REPO}", **kw)


def serve_details(gh: Any, numbers: list[int], files: dict[int, list[dict[str, Any]]] | None = None) -> None:
    """Diff and file routes for each pull request number."""
    for n in numbers:
        gh.get(f"{PULLS}/{n}").mock(return_value=httpx.Response(200, text=gh_diff(n)))
        entries = (files or {}).get(n) or [gh_file(f"src/widget_{n}.py")]
        gh.get(f"{PULLS}/{n}/files").mock(return_value=httpx.Response(200, json=entries))


def page_url(page: int, per_page: int) -> str:
    return f"{PAGED}?state=closed&sort=updated&direction=desc&per_page={per_page}&page={page}"


def at(day: int, hour: int = 12) -> str:
    return f"2024-04-{day:02d}T{hour:02d}:00:00Z"


async def test_paginates_until_limit_and_stops_early(gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder) -> None:
    page1 = [
        gh_pull(30, merged_at=at(30), updated_at=at(30)),
        gh_pull(29, merged_at=None, updated_at=at(29)),  # closed without merging
        gh_pull(28, merged_at=at(28), updated_at=at(28)),
    ]
    page2 = [
        gh_pull(27, merged_at=at(27), updated_at=at(27)),
        gh_pull(26, merged_at=None, updated_at=at(26)),
        gh_pull(25, merged_at=at(25), updated_at=at(25)),
    ]
    page3 = [gh_pull(24, merged_at=at(24), updated_at=at(24))]
    first = gh.get(PULLS).mock(
        return_value=httpx.Response(
            200, json=page1, headers={"Link": gh_link(next=page_url(2, 3), last=page_url(3, 3))}
        )
    )
    second = gh.get(PAGED, params={"page": "2"}).mock(
        return_value=httpx.Response(
            200,
            json=page2,
            headers={"Link": gh_link(prev=page_url(1, 3), next=page_url(3, 3), last=page_url(3, 3))},
        )
    )
    third = gh.get(PAGED, params={"page": "3"}).mock(return_value=httpx.Response(200, json=page3))
    serve_details(gh, [30, 28, 27, 25, 24])

    result = await ingester(client, sleeps).fetch(spec(limit=3))

    assert first.call_count == 1 and second.call_count == 1
    assert third.call_count == 0  # 3 merged PRs found and page 3 can only hold older ones
    params = first.calls.last.request.url.params
    assert dict(params) == {"state": "closed", "sort": "updated", "direction": "desc", "per_page": "3"}
    assert [r.id for r in result.records] == ["30", "28", "27"]
    assert result.ground_truth_source == "github"
    assert result.commit_range == f"{27:040x}..{30:040x}"  # chronological: oldest..newest
    top = result.records[0]
    assert top.url == f"https://github.com/{GH_REPO}/pull/30"
    assert top.author == "octocat"
    assert top.timestamp == datetime(2024, 4, 30, 12, tzinfo=UTC)
    assert top.diff_content == gh_diff(30)
    assert top.repo == GH_REPO and top.sha == f"{30:040x}"
    assert sleeps.calls == []


async def test_follows_all_pages_and_orders_by_merge_time(
    gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder
) -> None:
    # #50 was updated recently (a late comment) but merged long ago; #41 on page 3 merged later.
    page1 = [gh_pull(50, merged_at=at(1), updated_at=at(29)), gh_pull(49, merged_at=at(20), updated_at=at(28))]
    page2 = [gh_pull(45, merged_at=None, updated_at=at(20)), gh_pull(44, merged_at=at(15), updated_at=at(16))]
    page3 = [gh_pull(41, merged_at=at(10), updated_at=at(10))]
    gh.get(PULLS).mock(return_value=httpx.Response(200, json=page1, headers={"Link": gh_link(next=page_url(2, 4))}))
    gh.get(PAGED, params={"page": "2"}).mock(
        return_value=httpx.Response(200, json=page2, headers={"Link": gh_link(next=page_url(3, 4))})
    )
    last = gh.get(PAGED, params={"page": "3"}).mock(return_value=httpx.Response(200, json=page3))
    serve_details(gh, [50, 49, 44, 41])

    result = await ingester(client, sleeps).fetch(spec(limit=4))

    assert last.call_count == 1
    assert [r.id for r in result.records] == ["49", "44", "41", "50"]  # newest merge first
    assert result.commit_range == f"{50:040x}..{49:040x}"


async def test_label_since_and_unmerged_filters(gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder) -> None:
    pulls = [
        gh_pull(9, merged_at=at(25), updated_at=at(25), labels=("Bug",)),
        gh_pull(8, merged_at=None, closed_at=at(24), updated_at=at(24), labels=("bug",)),
        gh_pull(7, merged_at=at(23), updated_at=at(23), labels=("docs",)),
        gh_pull(6, merged_at=at(5), updated_at=at(22), labels=("bug",)),
    ]
    gh.get(PULLS).mock(return_value=httpx.Response(200, json=pulls))
    serve_details(gh, [9, 8, 7, 6])
    since = datetime(2024, 4, 10, tzinfo=UTC)

    merged = await ingester(client, sleeps).fetch(spec(labels=["bug"], since=since))
    assert [r.id for r in merged.records] == ["9"]
    assert merged.records[0].labels == ["Bug"]

    everything = await ingester(client, sleeps).fetch(spec(labels=["bug"], since=since, include_unmerged=True))
    assert [r.id for r in everything.records] == ["9", "8"]
    assert everything.records[1].sha == ""  # an unmerged PR has no merge commit in history


async def test_requests_diff_and_paginated_files_with_auth(
    gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder
) -> None:
    gh.get(PULLS).mock(return_value=httpx.Response(200, json=[gh_pull(12, merged_at=at(2), updated_at=at(2))]))
    diff = gh.get(f"{PULLS}/12").mock(return_value=httpx.Response(200, text=gh_diff(12)))
    files_page2 = f"{GH_API}/repositories/7654321/pulls/12/files?per_page=100&page=2"
    gh.get(f"{PULLS}/12/files").mock(
        return_value=httpx.Response(
            200,
            json=[gh_file("src/app.py"), gh_file("assets/logo.png", status="added", patch=None)],
            headers={"Link": gh_link(next=files_page2, last=files_page2)},
        )
    )
    gh.get(f"{GH_API}/repositories/7654321/pulls/12/files", params={"page": "2"}).mock(
        return_value=httpx.Response(
            200,
            json=[
                gh_file("src/old_module.py", status="removed", patch="@@ -1 +0,0 @@\n-x = 1"),
                gh_file("src/new_name.py", status="renamed", previous_filename="src/old_name.py", patch=None),
            ],
        )
    )

    result = await ingester(client, sleeps).fetch(spec(token=TOKEN))

    assert result.records[0].files_changed == [
        "src/app.py",
        "assets/logo.png",
        "src/old_module.py",
        "src/old_name.py",
        "src/new_name.py",
    ]
    sent = diff.calls.last.request.headers
    assert sent["accept"] == "application/vnd.github.v3.diff"
    assert sent["authorization"] == f"Bearer {TOKEN}"
    assert all(call.request.headers["authorization"] == f"Bearer {TOKEN}" for call in gh.calls)
    assert TOKEN not in result.model_dump_json()


async def test_too_large_diff_is_rebuilt_from_file_patches(
    gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder
) -> None:
    gh.get(PULLS).mock(return_value=httpx.Response(200, json=[gh_pull(3, merged_at=at(2), updated_at=at(2))]))
    gh.get(f"{PULLS}/3").mock(
        return_value=httpx.Response(
            406, json={"message": "Sorry, the diff exceeded the maximum number of files (300).", "status": "406"}
        )
    )
    gh.get(f"{PULLS}/3/files").mock(
        return_value=httpx.Response(200, json=[gh_file("big.py", patch="@@ -1 +1 @@\n-a = 1\n+a = 2")])
    )
    result = await ingester(client, sleeps).fetch(spec())
    assert result.records[0].diff_content == (
        "diff --git a/big.py b/big.py\n--- a/big.py\n+++ b/big.py\n@@ -1 +1 @@\n-a = 1\n+a = 2\n"
    )


async def test_primary_rate_limit_waits_until_reset(gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder) -> None:
    limited = httpx.Response(
        403,
        json={"message": "API rate limit exceeded for 203.0.113.9.", "documentation_url": "https://docs.github.com"},
        headers=gh_rate_headers(remaining=0, reset=int(NOW) + 30),
    )
    ok = httpx.Response(200, json=[gh_pull(1, merged_at=at(1), updated_at=at(1))])
    route = gh.get(PULLS).mock(side_effect=[limited, ok])
    serve_details(gh, [1])

    result = await ingester(client, sleeps).fetch(spec())

    assert route.call_count == 2
    assert sleeps.calls == [31.0]  # until the reset second, plus one for clock skew
    assert [r.id for r in result.records] == ["1"]


async def test_rate_limit_reset_too_far_away_fails_with_reset_time(
    gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder
) -> None:
    gh.get(PULLS).mock(
        return_value=httpx.Response(
            429, json={"message": "API rate limit exceeded"}, headers=gh_rate_headers(0, int(NOW) + 3600)
        )
    )
    with pytest.raises(IngestError) as info:
        await ingester(client, sleeps, max_rate_limit_wait_s=60).fetch(spec())
    assert "resets at 2024-05-01T13:00:00Z" in str(info.value)
    assert "github_token" in str(info.value)
    assert sleeps.calls == []


async def test_secondary_rate_limit_honours_retry_after(
    gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder
) -> None:
    secondary = httpx.Response(
        403,
        json={"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."},
        headers={"retry-after": "7", **gh_rate_headers(remaining=4000, reset=int(NOW) + 900, limit=5000)},
    )
    gh.get(PULLS).mock(
        side_effect=[secondary, httpx.Response(200, json=[gh_pull(4, merged_at=at(4), updated_at=at(4))])]
    )
    serve_details(gh, [4])
    await ingester(client, sleeps).fetch(spec(token=TOKEN))
    assert sleeps.calls == [7.0]


async def test_server_errors_back_off_with_bounded_jitter(
    gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder
) -> None:
    route = gh.get(PULLS).mock(
        side_effect=[
            httpx.Response(502, text="<html>Bad Gateway</html>"),
            httpx.ConnectError("connection reset"),
            httpx.Response(503, json={"message": "Service Unavailable"}),
            httpx.Response(200, json=[gh_pull(5, merged_at=at(5), updated_at=at(5))]),
        ]
    )
    serve_details(gh, [5])
    await ingester(client, sleeps, backoff_base_s=1.0).fetch(spec())
    assert route.call_count == 4
    assert len(sleeps.calls) == 3
    for attempt, wait in enumerate(sleeps.calls, start=1):
        ceiling = 2 ** (attempt - 1)
        assert ceiling / 2 <= wait <= ceiling  # equal jitter within the exponential step


async def test_gives_up_after_max_attempts(gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder) -> None:
    route = gh.get(PULLS).mock(return_value=httpx.Response(500, json={"message": "Server Error"}))
    with pytest.raises(IngestError, match="failed after 5 attempts \\(HTTP 500\\)"):
        await ingester(client, sleeps).fetch(spec())
    assert route.call_count == 5
    assert len(sleeps.calls) == 4


async def test_not_found_message_says_what_to_fix(gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder) -> None:
    gh.get(PULLS).mock(
        return_value=httpx.Response(
            404, json={"message": "Not Found", "documentation_url": "https://docs.github.com/rest/pulls/pulls"}
        )
    )
    with pytest.raises(IngestError) as info:
        await ingester(client, sleeps).fetch(spec(token=TOKEN))
    assert str(info.value) == (
        f"repository {GH_REPO} not found or not visible: check the URL, or pass a github_token with access"
    )


async def test_bad_token_message_never_contains_the_token(
    gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder
) -> None:
    gh.get(PULLS).mock(
        return_value=httpx.Response(
            401, json={"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}
        )
    )
    with pytest.raises(IngestError) as info:
        await ingester(client, sleeps).fetch(spec(token=TOKEN))
    assert "invalid or expired" in str(info.value)
    chain: BaseException | None = info.value
    while chain is not None:  # nothing in the exception chain may carry the token
        assert TOKEN not in str(chain) and TOKEN not in repr(chain)
        chain = chain.__cause__ or chain.__context__
    assert TOKEN not in repr(spec(token=TOKEN))


async def test_pagination_link_to_another_host_is_refused(
    gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder
) -> None:
    evil = gh.get(url__regex=re.compile(r"https://evil\.example/.*")).mock(return_value=httpx.Response(200, json=[]))
    gh.get(PULLS).mock(
        return_value=httpx.Response(
            200,
            json=[gh_pull(2, merged_at=None, updated_at=at(2))],
            headers={"Link": gh_link(next="https://evil.example/pulls?page=2")},
        )
    )
    with pytest.raises(IngestError, match="outside the configured API URL"):
        await ingester(client, sleeps).fetch(spec(token=TOKEN))
    assert evil.call_count == 0


async def test_unexpected_payload_shape_is_an_ingest_error(
    gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder
) -> None:
    gh.get(PULLS).mock(return_value=httpx.Response(200, json=[{"number": "seven", "title": None}]))
    with pytest.raises(IngestError, match="unexpected GitHub response"):
        await ingester(client, sleeps).fetch(spec())


async def test_nothing_merged_is_an_ingest_error(gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder) -> None:
    gh.get(PULLS).mock(return_value=httpx.Response(200, json=[gh_pull(1, merged_at=None, updated_at=at(1))]))
    with pytest.raises(IngestError, match=f"no changes found in {GH_REPO}"):
        await ingester(client, sleeps).fetch(spec())


def crowded_pages(gh: Any, pages: int, per_page: int, merged_every: int) -> tuple[list[Any], list[int]]:
    """`pages` pages of recently updated PRs, each with rel=next, where one in `merged_every` was merged."""
    routes, merged = [], []
    number = pages * per_page
    for page in range(1, pages + 1):
        body = []
        for _ in range(per_page):
            hour = number % 24
            day = 1 + number // 24
            is_merged = number % merged_every == 0
            when = f"2024-{1 + day // 28:02d}-{1 + day % 28:02d}T{hour:02d}:00:00Z"
            body.append(gh_pull(number, merged_at=when if is_merged else None, updated_at=when))
            if is_merged:
                merged.append(number)
            number -= 1
        headers = {"Link": gh_link(next=page_url(page + 1, per_page))}
        route = gh.get(PULLS) if page == 1 else gh.get(PAGED, params={"page": str(page)})
        routes.append(route.mock(return_value=httpx.Response(200, json=body, headers=headers)))
    return routes, merged


async def test_follows_rel_next_past_ten_pages_of_mostly_unmerged_pull_requests(
    gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder
) -> None:
    # 12 pages of 20, one merged PR in 12: 240 PRs, 20 merged, the last three on pages 11 and 12.
    routes, merged = crowded_pages(gh, pages=12, per_page=20, merged_every=12)
    gh.get(PAGED, params={"page": "13"}).mock(return_value=httpx.Response(200, json=[]))
    serve_details(gh, merged)
    assert len(merged) == 20

    result = await ingester(client, sleeps).fetch(spec(limit=20))

    assert [r.call_count for r in routes] == [1] * 12  # every page read, not just the first 10
    assert sorted(int(r.id) for r in result.records) == sorted(merged)
    assert result.shortfall is None


async def test_page_budget_that_runs_out_is_reported_as_a_shortfall(
    gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder
) -> None:
    routes, merged = crowded_pages(gh, pages=12, per_page=20, merged_every=12)
    serve_details(gh, merged)

    result = await ingester(client, sleeps, max_list_pages=10).fetch(spec(limit=20))

    assert [r.call_count for r in routes] == [1] * 10 + [0, 0]
    assert len(result.records) == 17  # three merged PRs sit on pages 11 and 12
    assert result.shortfall is not None and "page budget of 10 pages" in result.shortfall


async def test_fewer_merged_pull_requests_than_asked_for_is_a_shortfall(
    gh: Any, client: httpx.AsyncClient, sleeps: SleepRecorder
) -> None:
    pulls = [gh_pull(3, merged_at=at(3), updated_at=at(3)), gh_pull(2, merged_at=None, updated_at=at(2))]
    gh.get(PULLS).mock(return_value=httpx.Response(200, json=pulls))
    serve_details(gh, [3])

    result = await ingester(client, sleeps).fetch(spec(limit=5))

    assert [r.id for r in result.records] == ["3"]
    assert result.shortfall == f"{GH_REPO} has no more pull requests matching limit=5"
