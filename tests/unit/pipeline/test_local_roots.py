"""Local repositories are read only under the operator's allowed roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from echelon_platform.domain.repo_refs import check_local_repo_allowed
from echelon_platform.errors import IngestError, RequestRejected
from pipeline_workers.fixtures import materialise_sample_repo
from pipeline_workers.ingest.base import SourceSpec
from pipeline_workers.ingest.local_git import LocalGitIngester


def test_paths_inside_a_root_pass_and_others_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "repos"
    (root / "a").mkdir(parents=True)
    check_local_repo_allowed(str(root / "a"), [root])
    check_local_repo_allowed(f"file://{root / 'a'}", [root])
    check_local_repo_allowed("https://github.com/acme/widgets", [])
    for escape in (str(tmp_path / "elsewhere"), str(root / ".." / "elsewhere"), "/etc"):
        with pytest.raises(RequestRejected, match="ECHELON_LOCAL_REPO_ROOTS"):
            check_local_repo_allowed(escape, [root])


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "repos"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(RequestRejected):
        check_local_repo_allowed(str(root / "link"), [root])


async def test_a_plain_directory_is_not_read_as_the_repository_around_it(tmp_path: Path) -> None:
    # An allowed root inside some checkout: git must not walk up from a plain directory into that checkout.
    outer = await materialise_sample_repo(tmp_path / "checkout")
    plain = outer / "data" / "plain"
    plain.mkdir(parents=True)
    assert check_local_repo_allowed(str(plain), [outer / "data"]) == plain.resolve()
    with pytest.raises(IngestError, match="is not a git repository"):
        await LocalGitIngester().fetch(SourceSpec(repo_url=str(plain)))
