from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_workers.ingest.diffs import changed_lines, parse_diff, truncate_diff

MARKER = re.compile(r"^\.\.\. \[diff truncated: (\d+) bytes → (\d+) bytes; context lines removed[^\]]*\]$")


def big_diff(files: int, context: int, changes: int, text: str = "value") -> str:
    parts = []
    for f in range(files):
        parts += [
            f"diff --git a/pkg/mod_{f}.py b/pkg/mod_{f}.py",
            "index 1111111..2222222 100644",
            f"--- a/pkg/mod_{f}.py",
            f"+++ b/pkg/mod_{f}.py",
            f"@@ -1,{context + changes} +1,{context + changes} @@",
        ]
        parts += [f"     context line {i} {text}" for i in range(context)]
        parts += [f"-    old_{i} = '{text}'" for i in range(changes)]
        parts += [f"+    new_{i} = '{text}'" for i in range(changes)]
    return "\n".join(parts) + "\n"


def nbytes(s: str) -> int:
    return len(s.encode("utf-8"))


def test_small_diff_is_untouched() -> None:
    diff = big_diff(1, 3, 2)
    assert truncate_diff(diff, 10_000) == diff


def test_over_limit_drops_context_but_keeps_headers_and_changes() -> None:
    diff = big_diff(3, 200, 5)
    out = truncate_diff(diff, 4_000)
    assert nbytes(out) <= 4_000
    assert "context line 1" not in out
    for f in range(3):
        assert f"diff --git a/pkg/mod_{f}.py b/pkg/mod_{f}.py" in out
        assert f"+++ b/pkg/mod_{f}.py" in out
    assert out.count("@@ -1,205 +1,205 @@") == 3
    assert out.count("\n-    old_") == 15 and out.count("\n+    new_") == 15
    marker = MARKER.match(out.splitlines()[-1])
    assert marker and int(marker.group(1)) == nbytes(diff) and int(marker.group(2)) == 4_000
    assert "later changes omitted" not in out


def test_still_too_long_is_cut_at_a_line_boundary_with_a_marker() -> None:
    diff = big_diff(20, 10, 40)
    out = truncate_diff(diff, 3_000)
    assert nbytes(out) <= 3_000
    lines = out.split("\n")
    assert MARKER.match(lines[-1]) and "later changes omitted" in lines[-1]
    # Every kept line is a complete line of the original diff.
    original = set(diff.split("\n"))
    assert all(line in original for line in lines[:-1])
    assert lines[0] == "diff --git a/pkg/mod_0.py b/pkg/mod_0.py"


def test_multibyte_text_is_never_split_and_budget_is_in_bytes() -> None:
    diff = big_diff(5, 50, 30, text="größe→数据😀")
    out = truncate_diff(diff, 2_500)
    assert nbytes(out) <= 2_500
    out.encode("utf-8").decode("utf-8")  # valid UTF-8 throughout
    assert "😀" in out
    assert len(out) < nbytes(out)  # really multibyte, so a character budget would have overshot


def test_marker_alone_when_budget_is_tiny() -> None:
    out = truncate_diff(big_diff(1, 10, 10), 10)
    assert MARKER.match(out)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=80), max_size=60), st.integers(min_value=200, max_value=3_000))
def test_truncation_never_exceeds_budget(lines: list[str], budget: int) -> None:
    diff = "\n".join(lines)
    out = truncate_diff(diff, budget)
    if nbytes(diff) <= budget:
        assert out == diff
    else:
        assert nbytes(out) <= budget
        assert MARKER.match(out.split("\n")[-1])


def test_parse_diff_statuses_and_definitions() -> None:
    diff = (
        "diff --git a/textkit/legacy.py b/textkit/legacy.py\n"
        "deleted file mode 100644\nindex 1a2b3c4..0000000\n"
        "--- a/textkit/legacy.py\n+++ /dev/null\n@@ -1,2 +0,0 @@\n"
        "-def old_slugify(text):\n-    return text.lower().replace(' ', '-')\n"
        "diff --git a/docs/logo.png b/docs/logo.png\nnew file mode 100644\nindex 0000000..cf5d589\n"
        "Binary files /dev/null and b/docs/logo.png differ\n"
        "diff --git a/textkit/core.py b/textkit/text.py\nsimilarity index 90%\n"
        "rename from textkit/core.py\nrename to textkit/text.py\n"
        "--- a/textkit/core.py\n+++ b/textkit/text.py\n@@ -1 +1,2 @@\n"
        "+async def fetch_all(urls):\n--- a SQL comment that starts with dashes\n"
    )
    files = parse_diff(diff)
    assert [(f.path, f.status) for f in files] == [
        ("textkit/legacy.py", "deleted"),
        ("docs/logo.png", "added"),
        ("textkit/text.py", "renamed"),
    ]
    assert files[0].removed_defs == ["old_slugify"]
    assert files[2].old_path == "textkit/core.py"
    assert files[2].added_defs == ["fetch_all"]
    assert files[2].removed == ["-- a SQL comment that starts with dashes"]  # inside a hunk: a change
    assert ("textkit/text.py", "+", "async def fetch_all(urls):") in changed_lines(files)
