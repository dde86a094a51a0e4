"""The scrubber's registry at migration scale: shortcuts that must not change what is hidden."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vaultsync import logging as vlog

_PLAIN = st.text(alphabet="abcXYZ019_.~-", max_size=40)
_ANY = st.text(alphabet=st.sampled_from(list("ab9_.~-'\"\\$`\n\r %{}é") + ["\u2028"]), max_size=30)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_PLAIN, _ANY))
def test_the_plain_value_shortcut_gives_every_form_the_full_computation_gives(text: str) -> None:
    assert vlog._escaped_forms(text) == vlog._all_escaped_forms(text)


def test_a_value_registered_after_a_scrub_is_hidden_whole_longest_first() -> None:
    # The longest-first order is rebuilt lazily: a scrub in between must not leave it stale.
    short, long_ = "lazy-order-pass-7", "lazy-order-pass-7-with-a-long-tail"
    vlog.remember_secret(short)
    assert vlog.scrub(f"x {short} y") == f"x {vlog.REDACTED} y"
    vlog.remember_secret(long_)
    assert vlog.scrub(f"x {long_} y") == f"x {vlog.REDACTED} y"
    vlog.register_secret("lazy-order-pass-7-with-a-long-tail-and-more")
    assert vlog.scrub("lazy-order-pass-7-with-a-long-tail-and-more!") == f"{vlog.REDACTED}!"
    vlog.forget_secret("lazy-order-pass-7-with-a-long-tail-and-more")
    assert vlog.scrub("lazy-order-pass-7-with-a-long-tail-and-more!") == f"{vlog.REDACTED}-and-more!"


def test_thousands_of_registrations_keep_every_value_hidden() -> None:
    values = [f"bulk-{i:05d}-Zq9" for i in range(5000)]
    for value in values:
        vlog.remember_secret(value)
    text = " ".join(values[::499])
    assert set(vlog.scrub(text).split()) == {vlog.REDACTED}


def test_overlapping_and_adjacent_secrets_are_hidden_as_one_cover() -> None:
    left, right = "ovlap-L-abcdef12", "abcdef12-ovlap-R"
    for v in (left, right):
        vlog.register_secret(v)
    try:
        # Neither contains the other: whatever order they are found in, nothing of either is left.
        assert vlog.scrub("x ovlap-L-abcdef12-ovlap-R y") == f"x {vlog.REDACTED} y"
        assert vlog.scrub(f"{left}{left}|{right}") == f"{vlog.REDACTED}{vlog.REDACTED}|{vlog.REDACTED}"
        assert vlog.scrub("ovlap-L-abcdef1") == "ovlap-L-abcdef1"  # a prefix alone is no secret
    finally:
        for v in (left, right):
            vlog.forget_secret(v)
    assert vlog.scrub(left) == left
