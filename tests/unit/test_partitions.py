"""Partitioning is pure and stable: the same run lands on the same partition in every process, always."""

from __future__ import annotations

from collections import Counter

import pytest

from echelon_platform.domain.events import Subjects
from echelon_platform.domain.partitions import Partitioning
from echelon_platform.domain.roles import Role, publish_subjects
from echelon_platform.errors import ConfigError
from tests.factories import requested


def test_one_partition_keeps_every_name_unchanged() -> None:
    subjects = Subjects("t1", Partitioning(1))
    assert subjects.subject("verify.run.requested", "R1") == "t1.run.requested.R1"
    assert subjects.partition_filter(0) == "t1.>"
    assert subjects.of_run("R1") == "t1.*.*.R1"
    assert subjects.topic_filter("verify.run.requested") == "t1.run.requested.*"
    assert Partitioning(1).suffix(0) == ""


def test_several_partitions_put_the_runs_partition_before_its_id() -> None:
    parts = Partitioning(4)
    subjects = Subjects("t1", parts)
    k = parts.of_run("R1")
    assert subjects.subject("verify.run.requested", "R1") == f"t1.run.requested.{k}.R1"
    assert subjects.partition_filter(2) == "t1.*.*.2.*"
    assert subjects.of_run("R1") == f"t1.*.*.{k}.R1"
    assert subjects.topic_filter("verify.run.requested") == "t1.run.requested.*.*"
    assert subjects.partition_of_subject(subjects.for_event(requested("R1"))) == k
    assert parts.suffix(3) == "-3"


def test_the_hash_is_stable_and_spreads_runs_evenly() -> None:
    parts = Partitioning(4)
    # Fixed forever: changing the function would move live runs to another writer.
    assert (parts.of_run("RUNA"), parts.of_run("RUNB")) == (3, 1)
    spread = Counter(parts.of_run(f"01J{i:023d}") for i in range(4000))
    assert set(spread) == {0, 1, 2, 3}
    assert min(spread.values()) > 850  # 1000 each on average


def test_writer_partitions_are_parsed_with_a_clear_error() -> None:
    parts = Partitioning(4)
    assert parts.parse("") == (0, 1, 2, 3)
    assert parts.parse("2, 0,2") == (2, 0)
    with pytest.raises(ConfigError, match=r"'4' is not one of 0\.\.3"):
        parts.parse("1,4")
    with pytest.raises(ConfigError, match="between 1 and 64"):
        Partitioning(0)


def test_roles_may_publish_only_on_partitions_that_exist() -> None:
    allowed = publish_subjects(Role.API, "t1", partitions=2)
    assert "t1.run.requested.0.*" in allowed and "t1.run.requested.1.*" in allowed
    assert not [s for s in allowed if s.startswith("t1.run.requested") and s.split(".")[3] not in "01"]
    assert "t1.run.requested.*" in publish_subjects(Role.API, "t1")
