"""judge_bootstrap: the responder's grant/deny rules, in the original's order."""

from __future__ import annotations

from typing import Any

import pytest

from crust.handshake.bootstrap import judge_bootstrap
from crust.ids import CrustUser
from crust.wire.messages import BootstrapRequest, DenyReason

NODE = BootstrapRequest(CrustUser.NODE)
CLIENT = BootstrapRequest(CrustUser.CLIENT)


def judge(request: BootstrapRequest = NODE, **overrides: Any) -> DenyReason | None:
    args: dict[str, Any] = dict(remote_ip="10.0.0.1", accepting=True, node_whitelist=None, client_whitelist=None,
                                is_new_peer=True, peer_count=0, max_peers=10)
    args.update(overrides)
    return judge_bootstrap(request, **args)


def test_grants_by_default() -> None:
    assert judge() is None and judge(CLIENT) is None


def test_not_accepting_comes_first() -> None:
    assert judge(accepting=False, node_whitelist=set(), peer_count=99) is DenyReason.NOT_ACCEPTING


@pytest.mark.parametrize(("request_", "field", "reason"), [
    (NODE, "node_whitelist", DenyReason.NODE_NOT_WHITELISTED),
    (CLIENT, "client_whitelist", DenyReason.CLIENT_NOT_WHITELISTED),
])
def test_each_user_kind_is_checked_against_its_own_whitelist(request_: BootstrapRequest, field: str,
                                                             reason: DenyReason) -> None:
    assert judge(request_, **{field: {"10.9.9.9"}}) is reason
    assert judge(request_, **{field: {"10.0.0.1"}}) is None
    other = "client_whitelist" if field == "node_whitelist" else "node_whitelist"
    assert judge(request_, **{other: {"10.9.9.9"}}) is None


def test_peer_limit_applies_to_new_peers_only() -> None:
    assert judge(peer_count=10) is DenyReason.TOO_MANY_PEERS
    assert judge(peer_count=10, is_new_peer=False) is None
