"""gRPC server reflection, `grpc.reflection.v1` and `v1alpha`, answered by the daemon.

Both versions are one protocol (grpc/doc/server-reflection.md) under two package names,
with the same messages field for field. grpcio-reflection ships the v1alpha messages;
the v1 file is the same descriptor renamed, added to the default pool once. Reflection
describes the daemon's own services only: files outside their transitive dependencies
(whatever else the process has loaded) are NOT_FOUND. grpcio-reflection's servicer is
not used because it imports grpcio, which the daemon process does not load.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import (  # type: ignore[import-untyped]
    descriptor_pb2,
    descriptor_pool,
    message_factory,
)
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2

from sidecar.services.native_stream import NativeStream, Session, StreamMethod
from sidecar.status import StatusCode
from sidecar.v1 import sidecar_pb2

V1 = "grpc.reflection.v1"
V1ALPHA = "grpc.reflection.v1alpha"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1_OPTIONS = {
    "java_package": "io.grpc.reflection.v1",
    "java_outer_classname": "ServerReflectionProto",
    "java_multiple_files": True,
    "go_package": "google.golang.org/grpc/reflection/grpc_reflection_v1",
}
_METHOD = "ServerReflection/ServerReflectionInfo"


def _add_v1(pool: Any) -> None:
    """The v1 reflection file, made from the v1alpha one (same messages, new package)."""
    try:
        pool.FindFileByName(_V1_FILE)
        return  # a newer grpcio-reflection, or a second Reflection, added it already
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{V1ALPHA}.", f".{V1}."
    proto.name = _V1_FILE
    proto.package = V1
    proto.ClearField("options")
    for key, value in _V1_OPTIONS.items():
        setattr(proto.options, key, value)
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.AddSerializedFile(proto.SerializeToString())


class Reflection:
    """What the reflection methods of every listener answer from."""

    def __init__(self) -> None:
        pool = self._pool = descriptor_pool.Default()
        _add_v1(pool)
        services = [
            sidecar_pb2.DESCRIPTOR.services_by_name["HttpProxy"],
            sidecar_pb2.DESCRIPTOR.services_by_name["Publisher"],
            health_pb2.DESCRIPTOR.services_by_name["Health"],
            pool.FindServiceByName(f"{V1}.ServerReflection"),
            v1alpha_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
        ]
        self.service_names = tuple(s.full_name for s in services)
        self._files = {file.name for file in _closure(s.file for s in services)}
        self._messages = {
            version: (
                message_factory.GetMessageClass(
                    pool.FindMessageTypeByName(f"{version}.ServerReflectionRequest")),
                message_factory.GetMessageClass(
                    pool.FindMessageTypeByName(f"{version}.ServerReflectionResponse")),
            )
            for version in (V1, V1ALPHA)
        }

    def methods(self) -> dict[bytes, tuple[str, StreamMethod]]:
        """Both versions' ServerReflectionInfo by `:path`."""
        table = {}
        for version, (request, response) in self._messages.items():
            path = f"/{version}.{_METHOD}"

            def session(call: NativeStream, response: Any = response) -> Session:
                return _ReflectionCall(self, call, response)

            table[path.encode()] = (path, StreamMethod(request.FromString, session))
        return table

    def answer(self, request: Any, response_class: Any) -> Any:
        """The response to one ServerReflectionRequest."""
        response = response_class(original_request=request)
        kind = request.WhichOneof("message_request")
        try:
            if kind == "list_services":
                for name in self.service_names:
                    response.list_services_response.service.add(name=name)
            elif kind == "file_by_filename":
                self._describe(response, self._pool.FindFileByName(request.file_by_filename))
            elif kind == "file_containing_symbol":
                self._describe(response, self._pool.FindFileContainingSymbol(
                    request.file_containing_symbol))
            elif kind == "file_containing_extension":
                ask = request.file_containing_extension
                extended = self._pool.FindMessageTypeByName(ask.containing_type)
                self._describe(response, self._pool.FindExtensionByNumber(
                    extended, ask.extension_number).file)
            elif kind == "all_extension_numbers_of_type":
                extended = self._pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
                if extended.file.name not in self._files:
                    raise KeyError(extended.full_name)
                numbers = response.all_extension_numbers_response
                numbers.base_type_name = extended.full_name
                numbers.extension_number.extend(
                    sorted(e.number for e in self._pool.FindAllExtensions(extended)))
            else:
                _error(response, StatusCode.INVALID_ARGUMENT,
                       "the request names no message_request")
        except KeyError:
            _error(response, StatusCode.NOT_FOUND, "not found")
        return response

    def _describe(self, response: Any, file: Any) -> None:
        if file.name not in self._files:
            raise KeyError(file.name)
        files = response.file_descriptor_response.file_descriptor_proto
        dependencies = [each for each in _closure([file]) if each is not file]
        for each in [file, *dependencies]:  # the file asked for first, as grpcio does
            proto = descriptor_pb2.FileDescriptorProto()
            each.CopyToProto(proto)
            files.append(proto.SerializeToString())


class _ReflectionCall(Session):
    """One ServerReflectionInfo stream: each request answered as it comes."""

    __slots__ = ("_call", "_reflection", "_response")

    def __init__(self, reflection: Reflection, call: NativeStream, response: Any) -> None:
        self._reflection = reflection
        self._call = call
        self._response = response

    def on_message(self, message: Any) -> None:
        self._call.send(self._reflection.answer(message, self._response))

    def on_end(self) -> None:
        self._call.finish()


def _error(response: Any, code: StatusCode, message: str) -> None:
    response.error_response.error_code = code.number
    response.error_response.error_message = message


def _closure(files: Iterable[Any]) -> list[Any]:
    """The files and all they import, each once, dependencies first."""
    seen: dict[str, Any] = {}

    def visit(file: Any) -> None:
        if file.name in seen:
            return
        seen[file.name] = None
        for dependency in file.dependencies:
            visit(dependency)
        seen[file.name] = file

    for file in files:
        visit(file)
    return list(seen.values())
