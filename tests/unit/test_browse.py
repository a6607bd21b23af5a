"""The UI's number-aware tag order (app/registry/browse.py), a pure function."""

from __future__ import annotations

from app.registry.browse import natural_key


def test_numbers_inside_tags_sort_as_numbers() -> None:
    tags = ["v1.10", "v1.9", "v2", "latest", "1.0", "10.0", "2.0", "v1.9-rc1", "v1.9.1", "v01.9"]
    assert sorted(tags, key=natural_key) == [
        "1.0", "2.0", "10.0", "latest", "v1.9", "v01.9", "v1.9-rc1", "v1.9.1", "v1.10", "v2",
    ]  # fmt: skip


def test_any_two_tags_compare_without_error() -> None:
    # Text and numbers alternate at fixed positions, so no str is ever compared with an int.
    odd = ["", "0", "a", "a0", "0a", "_", "9" * 40, "a.b-c_d", "A", "z9z9z9"]
    assert len(sorted(odd, key=natural_key)) == len(odd)
