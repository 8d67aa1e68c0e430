"""A route's fields reach its request's access line once; a second event, or one outside a request, does not."""

from __future__ import annotations

from api.access_log import ACCESS_FIELDS, note_on_access_line


def test_the_first_note_of_a_request_goes_on_its_access_line_only() -> None:
    assert not note_on_access_line({"eventId": "E0"})  # outside any request
    noted: dict[str, object] = {}
    token = ACCESS_FIELDS.set(noted)
    try:
        assert note_on_access_line({"eventId": "E1", "seq": 1})
        assert not note_on_access_line({"eventId": "E2", "seq": 2})  # logged on its own line instead
    finally:
        ACCESS_FIELDS.reset(token)
    assert noted == {"eventId": "E1", "seq": 1}
