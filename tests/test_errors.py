"""The error tree's shared shapes (crust/errors.py)."""

from __future__ import annotations

import pytest

import crust
from crust.errors import CandidatesFailed


@pytest.mark.parametrize("cls", [crust.BootstrapFailed, crust.ConnectError, crust.ConnectToSelf])
def test_several_candidate_failures_share_one_base_and_message_form(cls: type[CandidatesFailed]) -> None:
    err = cls("it failed", {"127.0.0.1:1": "timed out", "127.0.0.1:2": "network_mismatch"})
    assert isinstance(err, CandidatesFailed) and isinstance(err, crust.CrustError)
    assert err.reasons == {"127.0.0.1:1": "timed out", "127.0.0.1:2": "network_mismatch"}
    assert str(err) == "it failed (127.0.0.1:1: timed out; 127.0.0.1:2: network_mismatch)"
    bare = cls("nothing to try")
    assert bare.reasons == {} and str(bare) == "nothing to try"


def test_reasons_are_a_private_copy() -> None:
    given = {"a": "b"}
    err = crust.BootstrapFailed("x", given)
    given["c"] = "d"
    assert err.reasons == {"a": "b"}
