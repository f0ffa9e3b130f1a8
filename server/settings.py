"""Server settings: one pydantic-settings class, every field overridable as ``BNSERVE_<FIELD>``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bnserve.repository.drift import DEFAULT_THRESHOLD, DEFAULT_WINDOW_ROWS

DEFAULT_PORT = 8001  # the Open Inference Protocol's customary gRPC port (Triton, KServe)


class ServerSettings(BaseSettings):
    """How the server listens, loads models and batches requests."""

    model_config = SettingsConfigDict(env_prefix="BNSERVE_", extra="forbid")

    repository: Path = Field(
        default=Path("models"),
        description="Model repository: <repository>/<model>/<version>/model.onnx (+ an "
        "optional <model>/config.pbtxt); each model serves the versions its version_policy "
        "selects (default: the highest).",
    )
    model_control_mode: Literal["none", "poll", "explicit"] = Field(
        default="none",
        description="Triton's meanings. none: load every model at start, then never change; "
        "poll: also re-read the repository every repository_poll_secs and apply new, changed "
        "and removed models, versions and config files while serving; explicit: load only "
        "load_model at start, then what RepositoryModelLoad/Unload ask.",
    )
    repository_poll_secs: float = Field(
        default=15.0,
        gt=0.0,
        description="Seconds between repository polls in poll mode. A new or changed version "
        "is loaded once two polls in a row see its files unchanged.",
    )
    load_model: list[str] = Field(
        default_factory=list,
        description="Explicit mode: the models to load at start (repeat --load-model).",
    )
    admin_token_file: Path | None = Field(
        default=None,
        description="File holding the token the repository API needs as gRPC metadata "
        "'authorization: Bearer <token>'.",
    )
    auth_token_file: Path | None = Field(
        default=None,
        description="File of tokens (one per line; blank lines and # comments ignored) one of "
        "which every inference-service call needs as gRPC metadata 'authorization: Bearer "
        "<token>'; the admin token is accepted too. Re-read when it changes; health and "
        "reflection stay open. Unset: the inference API is open to anyone who reaches the port.",
    )
    allow_unauthenticated_admin: bool = Field(
        default=False,
        description="Without admin_token_file, open the repository API to anyone who reaches "
        "the port (otherwise it answers FAILED_PRECONDITION).",
    )
    host: str = Field(default="0.0.0.0", description="Address to listen on.")
    port: int = Field(
        default=DEFAULT_PORT, ge=0, le=65535, description="gRPC port; 0 picks a free one."
    )
    max_batch_size: int = Field(
        default=64,
        ge=1,
        description="Most rows merged into one onnxruntime run; a single request with more "
        "rows is refused with INVALID_ARGUMENT. A model's config.pbtxt overrides it.",
    )
    max_queue_delay_ms: float = Field(
        default=1.0,
        ge=0.0,
        description="Longest a request waits for others to share its run. Raising it trades "
        "latency for throughput under load; 0 batches only what is already queued "
        "(bench/serve_vs_inprocess.py --delay-ms measures the trade).",
    )
    max_queue_size: int = Field(
        default=1024,
        ge=1,
        description="Requests waiting per model before new ones get RESOURCE_EXHAUSTED, so "
        "overload is refused quickly instead of queueing without bound.",
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        default="cpu",
        description="Execution provider: cpu; cuda (fail at start when onnxruntime has no "
        "CUDA provider); auto (CUDA when present, else CPU).",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="onnxruntime intra-op threads per model instance; 0: the usable cores "
        "(affinity mask and cgroup CPU quota) divided by the model's instance count, at "
        "least 1. A config.pbtxt's intra_op_thread_count overrides it.",
    )
    inter_op_threads: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="onnxruntime inter-op threads per instance (used only in parallel "
        "execution mode). A config.pbtxt's inter_op_thread_count overrides it.",
    )
    graph_optimization_level: Literal["disabled", "basic", "extended", "all"] = Field(
        default="all",
        description="onnxruntime graph optimizations. A config.pbtxt's "
        "optimization { graph { level } } overrides it (Triton's -1 basic, 1 extended, "
        "2 disabled, otherwise all).",
    )
    execution_mode: Literal["sequential", "parallel"] = Field(
        default="sequential",
        description="onnxruntime runs a graph's nodes one after another or, for graphs with "
        "parallel branches, in parallel. A config.pbtxt's execution_mode (0/1) overrides it.",
    )
    allow_spinning: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Whether idle onnxruntime pool threads busy-wait for work. auto: on only "
        "while instances x threads fit in the usable cores, so spinning threads never take "
        "the cores the event loop and the codec need.",
    )
    max_message_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest gRPC message accepted or sent.",
    )
    shutdown_grace_s: float = Field(
        default=5.0,
        ge=0.0,
        description="After the drain window, how long accepted calls (queued or running) "
        "may take to finish while new ones are refused; then the process exits.",
    )
    drain_window_s: float = Field(
        default=5.0,
        ge=0.0,
        description="On SIGTERM, how long the server keeps answering new calls while every "
        "health status already says NOT_SERVING, so that load balancers and Kubernetes "
        "endpoints move traffic away first (the window a preStop hook would give). A second "
        "SIGTERM or SIGINT stops at once.",
    )
    response_memory_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Most bytes of large answers (over 1 MiB each) held for clients that have "
        "not read them yet; further answers get RESOURCE_EXHAUSTED until those are read or "
        "their calls end (deadline, disconnect, connection age).",
    )
    max_concurrent_streams: int = Field(
        default=32,
        ge=1,
        description="HTTP/2 streams (calls) one connection may have open at once. Low enough "
        "that one connection opening and resetting streams (rapid reset) cannot crowd out "
        "other clients; a client keeping more calls open on one connection gets some refused "
        "(UNAVAILABLE), so it opens more connections, or this is raised.",
    )
    keepalive_time_s: float = Field(
        default=60.0,
        gt=0.0,
        description="The server pings an idle connection this often to find dead peers.",
    )
    keepalive_timeout_s: float = Field(
        default=20.0, gt=0.0, description="A ping unanswered this long closes the connection."
    )
    min_client_ping_interval_s: float = Field(
        default=10.0,
        ge=0.0,
        description="Clients pinging more often than this (keepalive enforcement) get GOAWAY "
        "after two strikes.",
    )
    max_connection_idle_s: float = Field(
        default=900.0,
        gt=0.0,
        description="A connection with no call for this long is closed (GOAWAY).",
    )
    max_connection_age_s: float = Field(
        default=1800.0,
        gt=0.0,
        description="Connections are asked to reconnect after this long (GOAWAY), which also "
        "rebalances clients over replicas and bounds in time what a stalled client holds.",
    )
    max_connection_age_grace_s: float = Field(
        default=30.0,
        ge=0.0,
        description="After max_connection_age_s, how long calls on the old connection may "
        "finish before it is closed.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics HTTP endpoint; unset disables it.",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address the /metrics endpoint listens on. Loopback by default: the gRPC "
        "port is public, metrics (plain HTTP, no token) are for a local scraper or sidecar; "
        "0.0.0.0 opens them to the network.",
    )
    strict_readiness: bool = Field(
        default=True,
        description="ServerReady (and the gRPC health check) answer not ready while any model "
        "the server means to serve has no ready version; false: ready as soon as one model "
        "is served.",
    )
    tls_certificate: Path | None = Field(
        default=None,
        description="PEM certificate chain; with tls_private_key the server speaks TLS only.",
    )
    tls_private_key: Path | None = Field(default=None, description="PEM private key for TLS.")
    tls_client_ca: Path | None = Field(
        default=None,
        description="PEM CA bundle: with it (and the TLS pair) clients must present a "
        "certificate signed by one of these CAs (mutual TLS), else the handshake fails.",
    )
    server_name: str = Field(default="bnserve", description="Name in ServerMetadata.")
    drift_sample_rate: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="Share of served batches whose rows the BatchNorm drift monitor measures "
        "(and the input capture keeps); one random draw per batch decides. 0 turns the "
        "monitor (and the capture) off.",
    )
    drift_rows_per_sample: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="Most rows measured from one sampled batch (contiguous, from a random "
        "offset).",
    )
    drift_probe_budget: float = Field(
        # 0.01: with onnxruntime's serving threads on every core, a probe's core is taken
        # from a serving run, so the throughput lost is about twice this share
        # (bench/drift_overhead.py: 2.5-6.2% at 0.02, in-process, 1 to 64 rows a batch).
        default=0.01,
        gt=0.0,
        le=1.0,
        description="Most of one CPU core's time the drift probes may take: after a probe of "
        "t seconds no batch is measured for t / budget seconds (sampled batches are dropped, "
        "never queued). Bounds the monitor's cost whatever the batch sizes and traffic.",
    )
    drift_window_rows: int = Field(
        default=DEFAULT_WINDOW_ROWS,
        ge=2,
        le=65536,
        description="Rows in the monitor's sliding window for models whose card has no "
        "calibrated drift section (a calibrated card's window_rows wins: its threshold was "
        "calibrated on windows of that size).",
    )
    drift_threshold: float = Field(
        default=DEFAULT_THRESHOLD,
        gt=0.0,
        description="Alarm threshold of the model's drift score (mean over layers of the "
        "mean over channels of KL(live || reference), nats) for models whose card has no "
        "calibrated one. The default is the score of a 0.32-standard-deviation mean shift "
        "in every channel.",
    )
    drift_history_points: int = Field(
        default=360,
        ge=1,
        le=100_000,
        description="Points of (time, model score, layer scores) each monitor keeps for "
        "plots; the oldest go first.",
    )
    drift_history_interval_s: float = Field(
        default=10.0,
        ge=0.0,
        description="Seconds between two history points (0: one per probe). With the "
        "defaults the history covers the last hour.",
    )
    auto_recalibrate_after_s: float | None = Field(
        default=None,
        gt=0.0,
        description="Recalibrate a served version by itself once its drift alarm has held "
        "this many seconds, from its captured rows (needs capture_rows), into a new version "
        "served through the usual lifecycle; unset (the default): only the Recalibrate RPC "
        "(bnserve recalibrate --address) does.",
    )
    auto_recalibrate_cooldown_s: float = Field(
        default=600.0,
        ge=0.0,
        description="After an automatic recalibration of a model (done or failed), how long "
        "before the next may start, so that one that does not bring drift down never loops.",
    )
    capture_rows: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="Keep the most recent N sampled input rows of every served version in "
        "memory (never on disk), for CapturedInputs (admin token) and recalibration; 0 = "
        "off. Costs N rows of every input per version; cleared when the version unloads.",
    )
