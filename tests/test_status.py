"""sidecar.status mirrors grpc.StatusCode exactly, so the daemon needs no grpcio."""

import grpc

from sidecar.status import StatusCode, from_number


def test_same_names_and_values_as_grpc() -> None:
    assert [(c.name, c.value) for c in StatusCode] == [
        (c.name, c.value) for c in grpc.StatusCode]


def test_unknown_numbers_are_unknown() -> None:
    assert from_number(14) is StatusCode.UNAVAILABLE
    assert from_number(17) is StatusCode.UNKNOWN
    assert from_number(-1) is StatusCode.UNKNOWN
