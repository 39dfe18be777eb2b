"""The call wrapper every kind shares (services/call.py), through ApiService, on a real
Runtime built from a config, with the access log as the user reads it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest

from sidecar.config_loader import parse_config
from sidecar.errors import UpstreamUnavailableError
from sidecar.runtime import Runtime
from sidecar.services.api_call import ApiService
from sidecar.status import StatusCode
from sidecar.telemetry.hub import Telemetry

METHOD = "/sidecar.v1.HttpProxy/Call"


class Aborted(Exception):
    def __init__(self, code: StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class Context:
    """What ApiService asks of a servicer context, recorded."""

    peer = None

    def __init__(self) -> None:
        self.initial: list[Any] = []

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]]:
        return [("x-correlation-id", "corr-1")]

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None: ...

    def time_remaining(self) -> float | None:
        return 5.0

    async def send_initial_metadata(self, metadata: Any) -> None:
        self.initial.append(metadata)

    async def abort(self, code: StatusCode, details: str) -> None:
        raise Aborted(code, details)


@pytest.fixture
def service(caplog: pytest.LogCaptureFixture) -> tuple[ApiService, Runtime]:
    caplog.set_level(logging.INFO)  # before the access log reads the level
    config = parse_config({
        "listeners": [{"name": "app", "socket": "/tmp/unused.sock", "targets": ["web"]}],
        "log": {"access": True},
        "targets": {"web": {"kind": "http", "base_url": "http://127.0.0.1:1"},
                    "other": {"kind": "http", "base_url": "http://127.0.0.1:1"}},
    })
    runtime = Runtime(config)
    telemetry = Telemetry(config, lambda: runtime.policies)
    return ApiService("app", lambda: runtime, telemetry), runtime


def _access(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [{**r.fields, "sidecar.correlation_id": r.call[0]}  # type: ignore[attr-defined]
            for r in caplog.records if r.name.endswith(".access")]


async def test_a_fault_of_ours_inside_a_service_is_logged_internal_and_frees_its_slot(
    service: tuple[ApiService, Runtime], caplog: pytest.LogCaptureFixture,
) -> None:
    """The access log says what the caller got: the native path answers INTERNAL for an
    exception a service did not expect, so the line says INTERNAL (it said OK)."""
    api, runtime = service

    async def buggy(*args: Any) -> Any:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        await api.serve(Context(), METHOD, "web", "http", buggy)
    [line] = _access(caplog)
    assert (line["sidecar.status"], line["sidecar.target"], line["sidecar.correlation_id"]) == (
        "INTERNAL", "web", "corr-1")
    assert runtime.policies["web"].counters.in_flight == 0 and runtime.in_flight == 0


async def test_the_daemons_own_error_is_the_callers_status_and_the_policys_last_error(
    service: tuple[ApiService, Runtime], caplog: pytest.LogCaptureFixture,
) -> None:
    api, runtime = service

    async def unreachable(*args: Any) -> Any:
        raise UpstreamUnavailableError("target 'web' unreachable: connection refused")

    with pytest.raises(Aborted) as aborted:
        await api.serve(Context(), METHOD, "web", "http", unreachable)
    assert aborted.value.code is StatusCode.UNAVAILABLE
    assert _access(caplog)[0]["sidecar.status"] == "UNAVAILABLE"
    counters = runtime.policies["web"].counters
    assert counters.last_error == "target 'web' unreachable: connection refused"
    assert counters.in_flight == 0 and runtime.in_flight == 0


async def test_a_target_outside_the_listeners_list_is_refused_before_its_policy(
    service: tuple[ApiService, Runtime], caplog: pytest.LogCaptureFixture,
) -> None:
    api, runtime = service
    ran = False

    async def run(*args: Any) -> Any:
        nonlocal ran
        ran = True

    with pytest.raises(Aborted) as aborted:
        await api.serve(Context(), METHOD, "other", "http", run)
    assert aborted.value.code is StatusCode.PERMISSION_DENIED and not ran
    assert _access(caplog)[0]["sidecar.status"] == "PERMISSION_DENIED"
    assert runtime.policies["other"].counters.last_error is None
    assert runtime.in_flight == 0
