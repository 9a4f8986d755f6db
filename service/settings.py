"""The service's settings: one typed object, from TENSORGATE_* env vars or matching CLI flags
(`python -m service --help`), validated once at start."""

import argparse
import re
import sys
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, CliSettingsSource, SettingsConfigDict

from artifacts.manifest import DEFAULT_REPOSITORY, Backend

from .admission import MAX_PRIORITY_LEVELS, Priorities
from .host import usable_cores
from .logs import LogFormat
from .traffic import Limits, Shadow, Weights, parse_shadows, parse_traffic

# LitServe binds only these (LitServer.run refuses any other host).
HOSTS = ("127.0.0.1", "0.0.0.0", "::")
# Small requests are bound by the HTTP processes' Python, so more of them serve more
# (docs/benchmarks/history.md has the figures); past a few, the workers need the cores.
MAX_DEFAULT_API_SERVERS = 4


CLI_OPTIONS = {
    "cli_kebab_case": True,
    "cli_implicit_flags": True,
    # --help then says "(default: unset)" once, where the description says what unset means
    "cli_parse_none_str": "unset",
    "cli_hide_none_type": True,
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TENSORGATE_", extra="forbid")
    _pinned: dict[str, int | None] | None = PrivateAttr(None)
    _policies: dict[str, "VersionPolicy"] = PrivateAttr(default_factory=dict)
    _priorities: dict[str | None, Priorities] = PrivateAttr(default_factory=dict)
    _caches: dict[str, int] = PrivateAttr(default_factory=dict)
    _traffic: dict[str, Weights] = PrivateAttr(default_factory=dict)
    _shadows: dict[str, Shadow] = PrivateAttr(default_factory=dict)

    host: str = Field("127.0.0.1", description=f"address to listen on: one of {', '.join(HOSTS)}")
    port: int = Field(
        8000,
        ge=1024,
        le=65535,
        description="port to listen on, 1024-65535; a second instance needs its own "
        "--port and --grpc-port",
    )
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="port for the Open Inference Protocol over gRPC (Triton's 8001); 0: none",
    )
    repository: Path = Field(DEFAULT_REPOSITORY, description="the model repository")
    models: str | None = Field(
        None,
        description="comma-separated models to serve, each NAME or NAME:VERSION to pin a version; "
        "unset: every model in the repository, at its highest version",
    )
    version_policy: str | None = Field(
        None,
        description="which versions to serve, as Triton's version policy, comma-separated "
        "MODEL:latest:N, MODEL:all or MODEL:specific:V1:V2...; unset: each model's latest "
        "(the unversioned and V1 routes answer with the highest served version)",
    )
    model_control: Literal["none", "poll", "explicit"] = Field(
        "none",
        description="as Triton's model control mode: none serves the versions chosen at "
        "start; poll reads the repository again every --repository-poll seconds, loading new "
        "versions and unloading removed ones; explicit does so for one model at "
        "POST /v2/repository/models/NAME/load, and .../unload unloads it",
    )
    repository_poll: float = Field(
        5.0, gt=0, description="seconds between repository reads when --model-control is poll"
    )
    backend: Backend | None = Field(
        None, description="one backend for every model; unset: each manifest's (onnxruntime)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when a GPU is present, else the CPU"
    )
    workers_per_device: int = Field(1, ge=1, description="LitServe inference workers per model")
    api_servers: int | None = Field(
        None,
        ge=1,
        description="HTTP server processes (LitServe's num_api_servers); unset: one per usable "
        f"core (the CPU affinity, capped by a container's CPU quota), at most "
        f"{MAX_DEFAULT_API_SERVERS}",
    )
    threads: int = Field(
        1,
        ge=1,
        description="intra-op threads per inference worker (ONNX Runtime, torch); 1 suits small "
        "hosts, where one process per core beats threads",
    )
    worker_spin: float = Field(
        0.0,
        ge=0,
        le=0.01,
        description="seconds an idle inference worker polls for the next request before it "
        "sleeps, while a core is spare (e.g. 0.0005: lower latency at low concurrency, a "
        "little less throughput under load); 0: it sleeps at once",
    )
    max_batch_size: int | None = Field(
        None, ge=1, description="instances per device call; unset: the manifest's"
    )
    batch_timeout: float | None = Field(
        None,
        ge=0,
        description="the longest a batch may wait to fill, in seconds; unset: the manifest's",
    )
    request_timeout: float = Field(30.0, gt=0, description="seconds before a request answers 504")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="larger bodies answer 413; at least 1024"
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="a request line and headers larger than this answer 431 and the "
        "connection closes; at least 1024",
    )
    read_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds a client may take to send a request's headers, or stay silent "
        "inside its body; then 408 and the connection closes",
    )
    keep_alive_timeout: float = Field(
        5.0,
        gt=0,
        description="seconds an open connection may wait for its next (or first) request",
    )
    max_instances: int = Field(1024, ge=1, description="most instances in one request")
    max_queue: int = Field(
        256,
        ge=1,
        description="requests queued or running per served model version, across all HTTP "
        "server processes; more answer 503 with Retry-After (with priority levels, the "
        "less urgent ones are refused first)",
    )
    priority_levels: str | None = Field(
        None,
        description="as Triton's priority_levels and default_priority_level, comma-separated "
        "LEVELS[:DEFAULT] for every model or MODEL:LEVELS[:DEFAULT]; 1 is the most urgent, "
        f"at most {MAX_PRIORITY_LEVELS} levels, the default level is the lowest unless "
        "given; unset: one level (priorities off)",
    )
    drain_timeout: float = Field(
        30.0,
        gt=0,
        description="seconds a SIGTERM/SIGINT drain may take; what is left then answers 503 "
        "(keep it below the orchestrator's grace period)",
    )
    response_cache: str | None = Field(
        None,
        description="as Triton's response cache, per model: comma-separated MODEL:SIZE "
        "(e.g. mlp:64MB,resnet:16MiB), the shared memory each model's cache may hold, at "
        "least 64KB; identical inputs to the same version are answered from it; unset: none",
    )
    traffic: str | None = Field(
        None,
        description="weights splitting each model's requests that name no version among its "
        "serving versions, MODEL:VERSION=WEIGHT,VERSION=WEIGHT... (e.g. mlp:1=90,2=10); a "
        "version without a weight gets none; in explicit model control, POST "
        "/v2/repository/models/MODEL/traffic changes them; unset: the highest version",
    )
    shadow: str | None = Field(
        None,
        description="comma-separated MODEL:VERSION@FRACTION (e.g. mlp:2@0.1): that fraction "
        "of the model's answered requests is computed again by the shadow version, off the "
        "request's path, and the outputs compared; it takes no unversioned traffic itself",
    )
    canary_max_error_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="roll a canary (a weighted version other than the largest weight) back "
        "to weight 0 when more than this share of its answers over --canary-window were "
        "5xx; unset: no such limit",
    )
    canary_max_p99: float | None = Field(
        None,
        gt=0,
        description="roll a canary back when its p99 latency over --canary-window passes "
        "this many seconds; unset: no such limit",
    )
    canary_window: float = Field(
        60.0, gt=0, description="seconds of a canary's answers the two limits above judge"
    )
    api_key: SecretStr | None = Field(
        None,
        description="when set, inference and metadata calls need it; health and metrics stay open",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="log level, in any case"
    )
    log_format: LogFormat = Field(
        "text",
        description="text, or json: one JSON object per line for every record of every "
        'process ("time", "level", "logger", "process", "message", "exc_info")',
    )
    access_log: bool = Field(
        False,
        description="log a record per inference request, on any protocol: its request id, "
        "model, version, protocol, status, total, queue and compute milliseconds and trace id "
        "(server faults are logged regardless)",
    )
    tracing: Literal["off", "otlp"] = Field(
        "off",
        description="otlp: export OpenTelemetry spans over OTLP/HTTP, configured by the "
        "standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER ...; "
        "without a sampler set, 1% of requests are traced, and every one whose traceparent "
        "is sampled)",
    )

    @model_validator(mode="after")
    def _derive_defaults(self) -> "Settings":
        if self.api_servers is None:
            self.api_servers = min(MAX_DEFAULT_API_SERVERS, usable_cores())
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, level: object) -> object:
        return level.lower() if isinstance(level, str) else level

    @field_validator("grpc_port")
    @classmethod
    def _grpc_port(cls, port: int) -> int:
        if 0 < port < 1024:
            raise ValueError(f"gRPC port {port}: use 0 (off) or a port from 1024 to 65535")
        return port

    @field_validator("host")
    @classmethod
    def _known_host(cls, host: str) -> str:
        if host not in HOSTS:
            raise ValueError(f"host {host!r} is not one LitServe binds; use one of {HOSTS}")
        return host

    @model_validator(mode="after")
    def _parse_model_choice(self) -> "Settings":
        """TENSORGATE_MODELS and TENSORGATE_VERSION_POLICY, parsed once, here: the typed
        values are `pinned` and `policies`."""
        self._pinned = _pinned(self.models)
        self._policies = _policies(self.version_policy, self._pinned or {})
        self._priorities = _priorities(self.priority_levels)
        self._caches = parse_sizes(self.response_cache)
        self._traffic = parse_traffic(entries(self.traffic))
        self._shadows = parse_shadows(entries(self.shadow))
        return self

    @property
    def pinned(self) -> dict[str, int | None] | None:
        """TENSORGATE_MODELS as {name: pinned version or None}; None when unset (serve all)."""
        return self._pinned

    @property
    def policies(self) -> dict[str, "VersionPolicy"]:
        """Each named model's version policy (TENSORGATE_VERSION_POLICY, or a pin in
        TENSORGATE_MODELS); a model not named serves its latest version."""
        return self._policies

    def policy(self, model: str) -> "VersionPolicy":
        return self._policies.get(model, VersionPolicy("latest"))

    @property
    def response_caches(self) -> dict[str, int]:
        """TENSORGATE_RESPONSE_CACHE as {model: bytes}."""
        return self._caches

    @property
    def traffic_weights(self) -> dict[str, Weights]:
        """TENSORGATE_TRAFFIC as {model: {version: weight}}."""
        return self._traffic

    @property
    def shadows(self) -> dict[str, Shadow]:
        """TENSORGATE_SHADOW as {model: its shadow}."""
        return self._shadows

    @property
    def canary_limits(self) -> Limits:
        return Limits(self.canary_max_error_rate, self.canary_max_p99, self.canary_window)

    def priorities(self, model: str) -> Priorities:
        """The model's priority levels (TENSORGATE_PRIORITY_LEVELS)."""
        return self._priorities.get(model) or self._priorities.get(None) or Priorities()


def entries(setting: str | None) -> list[str]:
    """A comma-separated setting's entries, stripped, the empty ones dropped."""
    return [part.strip() for part in (setting or "").split(",") if part.strip()]


def _pinned(models: str | None) -> dict[str, int | None] | None:
    if not models:
        return None
    pinned: dict[str, int | None] = {}
    for item in entries(models):
        name, _, version = item.partition(":")
        if version and not (version.isascii() and version.isdigit()):
            raise ValueError(f"TENSORGATE_MODELS entry {item!r}: version must be a number")
        pinned[name] = int(version) if version else None
    return pinned


def _policies(version_policy: str | None, pinned: dict[str, int | None]) -> dict:
    found: dict[str, VersionPolicy] = {}
    for item in entries(version_policy):
        name, kind, *args = item.split(":")
        found[name] = VersionPolicy.parse(kind, args, item)
    for name, pin in pinned.items():
        if pin is not None and name in found:
            raise ValueError(
                f"model {name!r} is pinned in TENSORGATE_MODELS and has a "
                "TENSORGATE_VERSION_POLICY: give one of them"
            )
        if pin is not None:
            found[name] = VersionPolicy("specific", (pin,))
    return found


def _priorities(setting: str | None) -> dict[str | None, Priorities]:
    """{model (None: every other model): its levels}."""
    found: dict[str | None, Priorities] = {}
    expected = (
        "LEVELS[:DEFAULT] or MODEL:LEVELS[:DEFAULT], with 1 <= DEFAULT <= LEVELS <= "
        f"{MAX_PRIORITY_LEVELS}"
    )
    for item in entries(setting):
        parts = item.split(":")
        name = None if parts[0].isdigit() else parts.pop(0)
        if not (1 <= len(parts) <= 2 and all(p.isascii() and p.isdigit() for p in parts)):
            raise ValueError(f"TENSORGATE_PRIORITY_LEVELS entry {item!r}: expected {expected}")
        levels = int(parts[0])
        default = int(parts[1]) if len(parts) == 2 else levels
        if not 1 <= default <= levels <= MAX_PRIORITY_LEVELS:
            raise ValueError(f"TENSORGATE_PRIORITY_LEVELS entry {item!r}: expected {expected}")
        found[name] = Priorities(levels, default)
    return found


MIN_CACHE_BYTES = 64 * 1024
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
         "GIB": 2**30}  # fmt: skip
SIZE = re.compile(r"([0-9]+)\s*([A-Za-z]*)")


def parse_sizes(setting: str | None) -> dict[str, int]:
    """TENSORGATE_RESPONSE_CACHE, `mlp:64MB,resnet:16MiB`, as {model: bytes}."""
    sizes: dict[str, int] = {}
    for item in entries(setting):
        name, _, size = item.partition(":")
        found = SIZE.fullmatch(size.strip())
        unit = found and UNITS.get(found.group(2).upper())
        if not name or found is None or unit is None:
            raise ValueError(
                f"TENSORGATE_RESPONSE_CACHE entry {item!r}: expected MODEL:SIZE, e.g. mlp:64MB "
                "(units B, KB, MB, GB, KiB, MiB, GiB)"
            )
        sizes[name] = int(found.group(1)) * unit
        if sizes[name] < MIN_CACHE_BYTES:
            raise ValueError(f"TENSORGATE_RESPONSE_CACHE entry {item!r}: at least 64KB")
    return sizes


class VersionPolicy(NamedTuple):
    """Triton's version policy: the latest N versions, all, or specific ones."""

    kind: Literal["latest", "all", "specific"]
    numbers: tuple[int, ...] = (1,)  # latest: (N,); specific: the versions

    @classmethod
    def parse(cls, kind: str, args: list[str], item: str) -> "VersionPolicy":
        expected = "MODEL:latest:N, MODEL:all or MODEL:specific:V1:V2..."
        if not all(a.isdigit() and int(a) > 0 for a in args):
            raise ValueError(f"TENSORGATE_VERSION_POLICY entry {item!r}: expected {expected}")
        numbers = tuple(map(int, args))
        if kind == "latest" and len(numbers) == 1:
            return cls("latest", numbers)
        if kind == "all" and not numbers:
            return cls("all", ())
        if kind == "specific" and numbers:
            return cls("specific", tuple(sorted(set(numbers))))
        raise ValueError(f"TENSORGATE_VERSION_POLICY entry {item!r}: expected {expected}")

    def select(self, available: tuple[int, ...]) -> tuple[int, ...]:
        """The versions to serve out of those in the repository (ascending)."""
        if self.kind == "latest":
            return available[-self.numbers[0] :]
        if self.kind == "all":
            return available
        return self.numbers

    def triton(self) -> dict:
        """As Triton's model configuration writes it."""
        if self.kind == "latest":
            return {"latest": {"num_versions": self.numbers[0]}}
        if self.kind == "all":
            return {"all": {}}
        return {"specific": {"versions": list(self.numbers)}}


# What --help shows for a value, where the type's name would say little.
METAVARS = {
    "host": "ADDRESS",
    "repository": "DIR",
    "models": "NAMES",
    "version_policy": "POLICIES",
    "priority_levels": "LEVELS",
    "response_cache": "SIZES",
    "traffic": "WEIGHTS",
    "shadow": "SHADOWS",
    "canary_max_error_rate": "SHARE",
    "api_key": "KEY",
}
TYPE_METAVARS = {int: "N", float: "SECONDS"}  # every other float setting is in seconds


def env_name(field: str) -> str:
    return f"TENSORGATE_{field.upper()}"


def from_command_line(argv: list[str] | None) -> Settings:
    """The settings from the environment and the command line (None: sys.argv); --help names
    each flag's variable and default."""
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve the model repository. Each flag has an environment variable; the "
        "flag wins.",
    )
    source = CliSettingsSource(Settings, root_parser=parser, **CLI_OPTIONS)
    for action in parser._actions:  # argparse's list of what it parses
        field = action.dest
        if field not in Settings.model_fields:
            continue
        annotation = Settings.model_fields[field].annotation
        metavar = METAVARS.get(field) or TYPE_METAVARS.get(_plain(annotation))
        if metavar and action.metavar is not None:
            action.metavar = metavar
        action.help = f"{action.help} [{env_name(field)}]"
    return Settings(_cli_settings_source=source(args=sys.argv[1:] if argv is None else argv))


def _plain(annotation: object) -> object:
    """int for `int | None`, and so on."""
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    return args[0] if len(args) == 1 else annotation


def describe(error: ValidationError) -> str:
    """One line per problem, naming the variable, the value given and what is allowed."""
    lines = []
    for problem in error.errors():
        message = problem["msg"].removeprefix("Value error, ")
        if problem["loc"]:
            field = str(problem["loc"][0])
            flag = "--" + field.replace("_", "-")
            lines.append(
                f"{env_name(field)} ({flag}) = {problem['input']!r}: {message[0].lower()}"
                f"{message[1:]}"
            )
        else:
            lines.append(message)
    return "\n".join(lines)
