"""Every decoder of tests/decoders.py's table under hypothesis, and the table against the package.

For each row: valid values decode to what they encode, and hostile input (random bytes,
structured noise, mutated valid encodings) either decodes or raises one of the row's
exceptions, nothing else; what decodes re-encodes as the row's ``canonical`` says.

The default run tries ``QUICK_EXAMPLES`` inputs per decoder (``$CRUST_FUZZ_EXAMPLES`` to
change it).  The deep run, ``pytest -m slow tests/test_decoder_fuzz.py``, tries
``DEEP_EXAMPLES`` per decoder; the default suite, without ``-m``, deselects it (tests/conftest.py).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.decoders import DECODERS, EXEMPT, Decoder, entry_points

QUICK_EXAMPLES = int(os.environ.get("CRUST_FUZZ_EXAMPLES") or 60)
DEEP_EXAMPLES = max(10_000, QUICK_EXAMPLES)
_FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# pytest evaluates this with its `config`: is the deep run asked for?


def check(entry: Decoder, kind: str, payload: Any) -> None:
    """One input through one decoder (see the module docstring for what must hold)."""
    if kind == "valid":
        assert entry.encode is not None
        data = entry.encode(payload)
        result = entry.decode(data)  # no exception at all
        assert result == entry.expect(payload)
    else:
        data = payload
        try:
            result = entry.decode(data)
        except entry.raises:
            return
    if result is None or entry.canonical is None:
        return
    assert entry.encode is not None
    again = entry.encode(result)
    if entry.canonical:
        assert again == data, "decoded, but re-encodes to other bytes"
    assert entry.decode(again) == result, "decoded, but does not survive a round trip"


@pytest.mark.parametrize("entry", DECODERS, ids=repr)
@settings(max_examples=QUICK_EXAMPLES, **_FUZZ)  # type: ignore[arg-type]
@given(data=st.data())
def test_decoder_fuzz(entry: Decoder, data: st.DataObject) -> None:
    check(entry, *data.draw(entry.inputs(), label="input"))


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("entry", DECODERS, ids=repr)
@settings(max_examples=DEEP_EXAMPLES, **_FUZZ)  # type: ignore[arg-type]
@given(data=st.data())
def test_decoder_fuzz_deep(entry: Decoder, data: st.DataObject) -> None:
    check(entry, *data.draw(entry.inputs(), label="input"))


def test_every_decoder_in_the_package_has_a_row() -> None:
    found = set(entry_points())
    covered = {name for entry in DECODERS for name in entry.covers}
    missing = sorted(found - covered - set(EXEMPT))
    assert not missing, f"decoders without a fuzz row in tests/decoders: {missing}"
    stale = sorted((covered | set(EXEMPT)) - found)
    assert not stale, f"rows naming entry points the scan does not find: {stale}"
    assert len({entry.name for entry in DECODERS}) == len(DECODERS)


def test_the_scan_finds_the_kinds_of_entry_point_it_looks_for() -> None:
    # If the scan broke and found nothing, the test above would pass vacuously.
    found = set(entry_points())
    for name in ("crust.wire.messages.decode_record", "crust.wire.buffer.Buffer.pull_endpoint",
                 "crust.connection_info.PubConnectionInfo.from_bytes", "crust.config.Config.from_dict",
                 "crust.bootstrap.cache.BootstrapCache.loads", "crust.rudp.stream.RudpStream.receive_datagram",
                 "crust.wire.framing.FrameDecoder.receive_data", "crust.crypto.aead.Opener.open"):
        assert name in found
