"""Static checks of the container files: docker-compose*.yml, Dockerfile, .dockerignore.

No Docker engine is needed: the files are parsed and compared with the code they start
(the Celery app module, the `visionq` CLI, the settings), so a renamed flag or variable
fails here instead of in a deployment.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is needed to parse the compose files")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
OPERATIONS = ROOT / "docs" / "operations.md"

# What an operator must set; everything else has a default in the compose file.
REQUIRED_ENV = {"FLOWER_PASSWORD": "flower-secret", "REDIS_PASSWORD": "redis-secret"}
# VISIONQ_* names the compose file reads for itself; they never reach a container.
COMPOSE_ONLY = {"VISIONQ_DATA"}

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# -- helpers ----------------------------------------------------------------------------

_VAR = re.compile(
    r"\$\$"
    r"|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable substitution (the subset these files may use)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        val = env.get(name)
        unset_or_empty = not val
        missing = unset_or_empty if op and op.startswith(":") else val is None
        if op in (":-", "-"):
            return arg if missing else val
        if op in (":?", "?"):
            if missing:
                raise KeyError(f"{name} is required: {arg}")
            return val
        if op in (":+", "+"):
            return "" if missing else arg
        return val or ""

    return _VAR.sub(sub, value)


def _walk(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_walk(x, env) for x in node]
    if isinstance(node, dict):
        return {k: _walk(v, env) for k, v in node.items()}
    return node


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that, like Compose, rejects a key given twice in one mapping.

    PyYAML keeps the last value silently, so a duplicated `environment:` would pass
    these tests while Compose refuses the file.
    """

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = key_node.value
            if key == "<<":
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse(path: Path) -> dict[str, Any]:
    loader = _StrictLoader(path.read_text())
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load(path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The file as Compose sees it, with only the required variables set."""
    return _walk(parse(path), dict(REQUIRED_ENV if env is None else env))


@cache
def compose() -> dict[str, Any]:
    return load(COMPOSE)


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"docker-compose.yml has no {name!r} service"
    return services[name]


def argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def mounts(svc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            out.append(
                {
                    "source": vol.get("source"),
                    "target": vol["target"],
                    "read_only": bool(vol.get("read_only")),
                }
            )
            continue
        parts = vol.split(":")
        mode = parts[2] if len(parts) > 2 else ""
        out.append(
            {
                "source": parts[0],
                "target": parts[1],
                "read_only": "ro" in mode.split(","),
            }
        )
    return out


def published(svc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host_ip, host_port, container_port) for every published port."""
    out = []
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            out.append(
                (
                    str(port.get("host_ip", "")),
                    str(port.get("published", "")),
                    str(port["target"]),
                )
            )
            continue
        parts = str(port).split(":")
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2]))
        elif len(parts) == 2:
            out.append(("", parts[0], parts[1]))
        else:
            out.append(("", "", parts[0]))
    return out


def healthcheck_cmd(svc: dict[str, Any]) -> str:
    test = (svc.get("healthcheck") or {}).get("test")
    if isinstance(test, list):
        assert test, "empty healthcheck test"
        assert test[0] in ("CMD", "CMD-SHELL"), f"healthcheck test {test!r}"
        return " ".join(test[1:])
    return test or ""


def option(args: list[str], name: str) -> str | None:
    """Value of `--name value` or `--name=value` in args."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined."""
    lines, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        lines.append(buf + stripped)
        buf = ""
    out = []
    for line in lines:
        instr, _, rest = line.partition(" ")
        out.append((instr.upper(), rest.strip()))
    return out


def dockerfile_args() -> dict[str, str]:
    args = {}
    for instr, rest in dockerfile():
        if instr == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
    return args


def pyproject() -> dict[str, Any]:
    path = ROOT / "pyproject.toml"
    if not path.exists():
        pytest.skip("pyproject.toml not written yet")
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    return tomllib.loads(path.read_text())


def real_settings() -> set[str]:
    from visionq.settings import Settings

    return {row[0] for row in Settings.documented()}


# -- the `visionq` CLI, read from the real parser --------------------------------------


@cache
def cli_parser() -> argparse.ArgumentParser | None:
    try:
        cli = importlib.import_module("producer.cli")
    except ModuleNotFoundError as exc:
        # Only "not written yet" falls back; a broken import inside the CLI must fail.
        if exc.name not in ("producer", "producer.cli"):
            raise
        return None
    return cli.build_parser()


def _subparser(parser: argparse.ArgumentParser, verb: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            assert verb in action.choices, f"`visionq {verb}` is not a CLI verb"
            return action.choices[verb]
    raise AssertionError("producer.cli.build_parser() has no subcommands")


@cache
def cli_options(verb: str) -> frozenset[str]:
    parser = cli_parser()
    if parser is not None:
        sub = _subparser(parser, verb)
        return frozenset(s for a in sub._actions for s in a.option_strings)
    exe = shutil.which("visionq") or str(Path(sys.executable).with_name("visionq"))
    if not Path(exe).exists():
        pytest.skip("the visionq CLI (producer.cli or the console script) does not exist yet")
    proc = subprocess.run(
        [exe, verb, "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"`visionq {verb} --help` failed: {proc.stderr}"
    return frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", proc.stdout))


def flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("-") and a != "-"]


# -- services ---------------------------------------------------------------------------


def test_the_four_services_exist():
    assert {"redis", "worker", "flower", "producer"} <= set(compose()["services"])


def test_redis_is_persistent_password_protected_and_never_evicts():
    redis = service("redis")
    assert str(redis["image"]).split(":")[0] in ("redis", "docker.io/library/redis")
    args = argv(redis.get("command"))
    assert args[:1] == ["redis-server"], args
    assert option(args, "--appendonly") == "yes"
    assert option(args, "--maxmemory-policy") == "noeviction"
    assert option(args, "--requirepass"), "Redis must require a password"
    data = [m for m in mounts(redis) if m["target"] == "/data"]
    assert data, "Redis /data (the AOF) must be on a volume"
    assert data[0]["source"] in (compose().get("volumes") or {}), "use a named volume"


def test_redis_is_not_published_beyond_loopback():
    for host_ip, _, _ in published(service("redis")):
        assert host_ip == "127.0.0.1", "Redis may only be published on 127.0.0.1"


def test_broker_and_backend_urls_carry_the_redis_password():
    password = option(argv(service("redis")["command"]), "--requirepass")
    for name in ("worker", "flower", "producer"):
        env = env_of(service(name))
        assert env["VISIONQ_BROKER_URL"] == f"redis://:{password}@redis:6379/0", name
        assert env["VISIONQ_RESULT_BACKEND"] == f"redis://:{password}@redis:6379/1", name


def test_password_override_reaches_redis_and_the_urls_alike():
    env = {**REQUIRED_ENV, "REDIS_PASSWORD": "s3cret"}
    spec = load(COMPOSE, env)["services"]
    assert option(argv(spec["redis"]["command"]), "--requirepass") == "s3cret"
    assert env_of(spec["redis"]).get("REDISCLI_AUTH", "s3cret") == "s3cret"
    for name in ("worker", "flower", "producer"):
        assert env_of(spec[name])["VISIONQ_BROKER_URL"].startswith("redis://:s3cret@"), name


def test_services_share_the_visionq_environment():
    shared = ("VISIONQ_BROKER_URL", "VISIONQ_RESULT_BACKEND", "VISIONQ_QUEUE")
    values = {
        n: tuple(env_of(service(n)).get(k) for k in shared)
        for n in ("worker", "flower", "producer")
    }
    assert len(set(values.values())) == 1, values


def test_worker_runs_the_celery_app_with_the_prefork_pool():
    args = argv(service("worker")["command"])
    assert args[:4] == ["celery", "-A", "workers", "worker"], args
    pool = option(args, "-P") or option(args, "--pool")
    assert pool == "prefork", "the pool must be explicitly prefork"
    concurrency = option(args, "-c") or option(args, "--concurrency")
    assert concurrency is None or int(concurrency) >= 1


def test_worker_can_be_scaled():
    worker = service("worker")
    assert "container_name" not in worker, "container_name breaks --scale"
    assert not published(worker), "host ports break --scale"
    assert (
        worker.get("image") == service("flower").get("image") == service("producer").get("image")
    ), "worker, flower and producer run one image"


def test_worker_reads_images_read_only_under_the_allowed_root():
    worker = service("worker")
    data = [m for m in mounts(worker) if m["target"] == "/data"]
    assert data, "images must be mounted at /data"
    assert data[0]["read_only"], "images must be mounted read-only"
    assert env_of(worker).get("VISIONQ_ALLOWED_ROOTS") == "/data"


def test_worker_keeps_weights_in_a_volume_at_torch_home():
    torch_home = None
    for instr, rest in dockerfile():
        if instr == "ENV":
            m = re.search(r"(?:^|\s)TORCH_HOME=(\S+)", rest)
            torch_home = m.group(1) if m else torch_home
    torch_home = env_of(service("worker")).get("TORCH_HOME", torch_home)
    assert torch_home, "TORCH_HOME is not set"
    vols = [m for m in mounts(service("worker")) if m["target"] == torch_home]
    assert vols, f"nothing is mounted at TORCH_HOME={torch_home}"
    assert vols[0]["source"] in (compose().get("volumes") or {}), (
        "weights must live in a named volume shared by the replicas"
    )


def test_metrics_port_is_configured_on_the_worker():
    port = env_of(service("worker")).get("VISIONQ_METRICS_PORT")
    assert port, "VISIONQ_METRICS_PORT is not set on the worker"
    assert int(port) > 0


def test_services_wait_for_a_healthy_redis():
    for name in ("worker", "flower", "producer"):
        dep = service(name).get("depends_on") or {}
        assert isinstance(dep, dict), f"{name}: depends_on needs the long form"
        assert (dep.get("redis") or {}).get("condition") == "service_healthy", name


def test_long_running_services_have_healthchecks():
    assert "ping" in healthcheck_cmd(service("redis"))

    worker = healthcheck_cmd(service("worker"))
    assert re.search(r"celery -A workers inspect ping\b", worker), worker
    # Each replica must ping itself; `$$` is Compose's escape, so the shell sees $HOSTNAME.
    assert "$HOSTNAME" in worker, worker
    assert service("worker")["healthcheck"]["test"][0] == "CMD-SHELL"

    flower = healthcheck_cmd(service("flower"))
    port = option(argv(service("flower")["command"]), "--port")
    assert f":{port}/healthcheck" in flower, flower


def test_flower_requires_auth_and_listens_on_loopback_only():
    flower = service("flower")
    args = argv(flower["command"])
    assert args[:4] == ["celery", "-A", "workers", "flower"], args
    # The password must not be on the command line (every user sees it in `ps`):
    # Flower reads FLOWER_BASIC_AUTH from its environment instead.
    assert option(args, "--basic-auth") is None, "--basic-auth puts the password in ps"
    assert not any("flower-secret" in a for a in args)
    auth = env_of(flower).get("FLOWER_BASIC_AUTH")
    assert auth, "Flower needs FLOWER_BASIC_AUTH"
    assert re.fullmatch(r"[^:,]+:[^,]+", auth), "FLOWER_BASIC_AUTH user:password"
    assert auth.endswith(":flower-secret")
    ports = published(flower)
    assert ports, "Flower must be published for the operator"
    for host_ip, _, container_port in ports:
        assert host_ip == "127.0.0.1", "Flower exposes remote control: loopback only"
        assert container_port == option(args, "--port")


def test_flower_password_has_no_default():
    with pytest.raises(KeyError, match="FLOWER_PASSWORD"):
        load(COMPOSE, {"REDIS_PASSWORD": "redis-secret"})


def test_redis_password_has_no_default():
    # A fallback password would be documented, hence known: Redis must refuse to start
    # (and every URL to resolve) until the operator sets one.
    with pytest.raises(KeyError, match="REDIS_PASSWORD"):
        load(COMPOSE, {"FLOWER_PASSWORD": "flower-secret"})
    assert "REDIS_PASSWORD:-" not in COMPOSE.read_text()


def test_workers_mount_the_models_read_only_and_one_step_writes_them():
    torch_home = "/models"
    worker = [m for m in mounts(service("worker")) if m["target"] == torch_home]
    assert worker and worker[0]["read_only"], "workers must not be able to write the weights"
    writers = [
        name
        for name, svc in compose()["services"].items()
        if any(m["target"] == torch_home and not m["read_only"] for m in mounts(svc))
    ]
    assert writers == ["weights"], writers
    weights = service("weights")
    assert argv(weights["command"]) == ["python", "-m", "workers.weights"]
    assert weights.get("restart") == "no"
    assert not published(weights)
    dep = service("worker")["depends_on"]["weights"]
    assert dep["condition"] == "service_completed_successfully"
    assert importlib.util.find_spec("workers.weights") is not None


def test_worker_metrics_listen_inside_the_compose_network_only():
    worker = service("worker")
    assert env_of(worker).get("VISIONQ_METRICS_ADDR") == "0.0.0.0"
    assert not published(worker)


def test_producer_is_a_run_once_profile_writing_to_out():
    producer = service("producer")
    assert "producer" in (producer.get("profiles") or []), "producer must not start on `up`"
    args = argv(producer["command"])
    assert args[:2] == ["visionq", "submit"], args
    out = option(args, "--out")
    targets = {m["target"]: m for m in mounts(producer)}
    assert out, "the producer must write its results with --out"
    assert any(out.startswith(t.rstrip("/") + "/") for t in targets), f"{out} is not mounted"
    assert "/data" in targets, "the producer must see the images at /data"
    assert targets["/data"]["read_only"]
    # Producer and workers must see the images under the same path.
    worker_data = next(m for m in mounts(service("worker")) if m["target"] == "/data")
    assert targets["/data"]["source"] == worker_data["source"]


def test_producer_command_is_accepted_by_the_real_cli():
    args = argv(service("producer")["command"])
    verb = args[1]
    unknown = set(flags(args[2:])) - cli_options(verb)
    assert not unknown, f"`visionq {verb}` has no {sorted(unknown)}"
    parser = cli_parser()
    if parser is not None:
        # A bad value or positional raises SystemExit, which fails the test.
        parser.parse_args(args[1:])


def test_cli_commands_in_the_operations_guide_exist():
    checked = 0
    for line in OPERATIONS.read_text().splitlines():
        m = re.search(r"(?<![\w/.-])visionq (submit|collect|status|run)\b(.*)", line)
        if not m:
            continue
        rest = m.group(2).split("`")[0].split("|")[0].split("#")[0]
        unknown = set(flags(shlex.split(rest.replace("\\", " ")))) - cli_options(m.group(1))
        assert not unknown, f"{line.strip()!r}: no such option {sorted(unknown)}"
        checked += 1
    assert checked, "docs/operations.md shows no visionq command"


def test_every_visionq_variable_is_a_real_setting():
    settings = real_settings()
    assert not COMPOSE_ONLY & settings
    for path in (COMPOSE, COMPOSE_GPU):
        spec = parse(path)
        for name, svc in spec["services"].items():
            for key in env_of(svc):
                if key.startswith("VISIONQ_"):
                    assert key in settings, f"{path.name}: {name} sets unknown {key}"
        for var in set(re.findall(r"\$\{?(VISIONQ_[A-Z0-9_]+)", path.read_text())):
            assert var in settings or var in COMPOSE_ONLY, f"{path.name} reads unknown {var}"
    for var in set(re.findall(r"\bVISIONQ_[A-Z0-9_]+", OPERATIONS.read_text())):
        assert var in settings or var in COMPOSE_ONLY, f"docs/operations.md names unknown {var}"


def test_required_variables_are_documented():
    text = OPERATIONS.read_text()
    for var in REQUIRED_ENV:
        assert var in text


def test_celery_app_module_exists():
    spec = importlib.util.find_spec("workers")
    assert spec is not None, "`celery -A workers` needs a workers package"
    assert spec.origin, "workers is a namespace folder, not a package"
    from celery import Celery
    from celery.app.utils import find_app

    assert isinstance(find_app("workers"), Celery), "workers defines no Celery app"


# -- GPU override -------------------------------------------------------------------------


def test_gpu_override_reserves_nvidia_devices_for_the_worker():
    gpu = load(COMPOSE_GPU)
    assert set(gpu["services"]) <= set(compose()["services"]), "override of unknown service"
    worker = gpu["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia"
        and "gpu" in d.get("capabilities", [])
        and (d.get("count") == "all" or isinstance(d.get("count"), int) or d.get("device_ids"))
        for d in devices
    ), devices
    assert env_of(worker).get("VISIONQ_DEVICE", "").startswith("cuda")


def test_gpu_override_builds_with_a_known_build_arg_and_its_own_tag():
    worker = load(COMPOSE_GPU)["services"]["worker"]
    build_args = (worker.get("build") or {}).get("args") or {}
    assert "TORCH_INDEX_URL" in build_args
    assert set(build_args) <= set(dockerfile_args()), "build arg the Dockerfile does not declare"
    assert worker.get("image"), "the GPU worker needs its own image tag"
    assert worker["image"] != service("worker")["image"], (
        "the CUDA image must not overwrite the CPU one"
    )


# -- Dockerfile / .dockerignore ----------------------------------------------------------


def test_dockerfile_base_user_and_default_command():
    steps = dockerfile()
    args = dockerfile_args()
    base = next(rest for instr, rest in steps if instr == "FROM")
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), base)
    assert base.split()[0] == "python:3.11-slim"
    users = [rest for instr, rest in steps if instr == "USER"]
    assert users, "the image must switch to a non-root USER"
    assert users[-1].split(":")[0] not in ("root", "0"), "must run as non-root"
    cmd = json.loads(next(rest for instr, rest in reversed(steps) if instr == "CMD"))
    assert cmd[:6] == ["celery", "-A", "workers", "worker", "-P", "prefork"], cmd


def test_dockerfile_installs_cpu_torch_and_the_extras():
    args = dockerfile_args()
    assert args.get("TORCH_INDEX_URL", "").startswith("https://download.pytorch.org/whl/cpu")
    runs = " ".join(rest for instr, rest in dockerfile() if instr == "RUN")
    assert "--extra-index-url" in runs
    assert "TORCH_INDEX_URL" in runs
    # s3: compose workers read object storage (s3:// inputs) as well as /data.
    assert re.search(r"\[worker,flower,s3\]", runs), "the image needs .[worker,flower,s3]"


def test_dockerfile_torch_pins_match_pyproject():
    extras = pyproject()["project"]["optional-dependencies"]
    pins = {}
    for req in extras["worker"]:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;]+).*", req)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    args = dockerfile_args()
    assert pins.get("torch") == args.get("TORCH_VERSION")
    assert pins.get("torchvision") == args.get("TORCHVISION_VERSION")


def test_dockerignore_drops_local_state_but_keeps_the_package():
    patterns = [
        p.strip().rstrip("/")
        for p in DOCKERIGNORE.read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    for must in (".venv", ".bench", ".git", ".env", "**/__pycache__"):
        assert must in patterns, f".dockerignore must exclude {must}"
    # README.md is pyproject's `readme`: setuptools fails the build without it.
    for path in ("pyproject.toml", "README.md", "visionq", "workers", "producer"):
        hit = [p for p in patterns if not p.startswith("!") and fnmatch.fnmatch(path, p)]
        assert not hit, f"{path} is needed by the build but .dockerignore drops it ({hit})"
