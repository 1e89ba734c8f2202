"""The operator's side of signed updates, for the rig, the tests and the demo: a TUF repository that is built, signed
and served over HTTPS on loopback, and the attacks a gateway must refuse.

The repository has the four top-level roles with their own keys (root: 2 of 3, as a key ceremony would make it;
targets, snapshot and timestamp: one online key each), consistent snapshots, and every release published as a
target named as gridedge.contract.release_target says. Attacks and faults, each a method: a tampered artefact, an
expired timestamp, older metadata served again (rollback), a release signed by a key the root does not name, a
server that drips bytes, a download held half way.
"""
from __future__ import annotations

import datetime as dt
import shutil
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from gridedge.contract import release_target

#: how long each role's metadata is valid: the timestamp is re-signed often (online key), the root rarely (offline)
LIFETIME = {"root": dt.timedelta(days=365), "targets": dt.timedelta(days=90), "snapshot": dt.timedelta(days=7),
            "timestamp": dt.timedelta(days=1)}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


class TufRepository:
    """A repository in a folder: metadata/ (what ngclient fetches) and targets/ (the releases, by hash)."""

    def __init__(self, directory: Path, *, root_keys: int = 3, root_threshold: int = 2) -> None:
        self.dir = Path(directory)
        self.metadata, self.targets = self.dir / "metadata", self.dir / "targets"
        self.metadata.mkdir(parents=True, exist_ok=True)
        self.targets.mkdir(parents=True, exist_ok=True)
        self.signers = {"root": [CryptoSigner.generate_ed25519() for _ in range(root_keys)],
                        **{r: [CryptoSigner.generate_ed25519()] for r in ("targets", "snapshot", "timestamp")}}
        root = Root(expires=_now() + LIFETIME["root"], consistent_snapshot=True)
        for role, signers in self.signers.items():
            for s in signers:
                root.add_key(s.public_key, role)
        root.roles["root"].threshold = root_threshold
        self.md: dict[str, Metadata] = {
            "root": Metadata(root), "targets": Metadata(Targets(expires=_now() + LIFETIME["targets"])),
            "snapshot": Metadata(Snapshot(expires=_now() + LIFETIME["snapshot"])),
            "timestamp": Metadata(Timestamp(expires=_now() + LIFETIME["timestamp"]))}
        for role in ("root", "targets"):
            self._write(role)
        self._snapshot_and_timestamp()

    # -- writing -----------------------------------------------------------------------------------
    def _write(self, role: str, signers: list | None = None) -> None:
        md = self.md[role]
        md.signatures.clear()
        for s in signers if signers is not None else self.signers[role]:
            md.sign(s, append=True)
        name = "timestamp.json" if role == "timestamp" else f"{md.signed.version}.{role}.json"
        (self.metadata / name).write_bytes(md.to_bytes(JSONSerializer(compact=False)))

    def _bump(self, role: str, *, expires: dt.datetime | None = None, signers: list | None = None) -> None:
        md = self.md[role]
        md.signed.version += 1
        md.signed.expires = expires or _now() + LIFETIME[role]
        self._write(role, signers)

    def _snapshot_and_timestamp(self, *, timestamp_expires: dt.datetime | None = None) -> None:
        snap = self.md["snapshot"]
        snap.signed.meta["targets.json"] = MetaFile(version=self.md["targets"].signed.version)
        self._bump("snapshot")
        self.md["timestamp"].signed.snapshot_meta = MetaFile(version=snap.signed.version)
        self._bump("timestamp", expires=timestamp_expires)

    def root_json(self) -> bytes:
        """The first root, as the gateway is given it at installation (the anchor of its trust)."""
        return (self.metadata / "1.root.json").read_bytes()

    def publish(self, artefact: Path, version: str, *, platform: str | None = None,
                targets_signers: list | None = None) -> str:
        """A release as a target (under its hash, for consistent snapshots); new targets, snapshot, timestamp.
        targets_signers: sign the targets metadata with these keys instead of the targets role's own."""
        name = release_target(version, platform)
        info = TargetFile.from_file(name, str(artefact), ["sha256"])
        info.unrecognized_fields["custom"] = {"version": version}
        where = self.target_file(name, info.hashes["sha256"])
        where.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artefact, where)
        self.md["targets"].signed.targets[name] = info
        self._bump("targets", signers=targets_signers)
        self._snapshot_and_timestamp()
        return name

    def target_file(self, name: str, sha256: str | None = None) -> Path:
        """Where a target's bytes are served (consistent snapshots: <dir>/<sha256>.<file name>)."""
        sha256 = sha256 or self.md["targets"].signed.targets[name].hashes["sha256"]
        folder, _, base = name.rpartition("/")
        return self.targets / folder / f"{sha256}.{base}"

    # -- attacks and faults ------------------------------------------------------------------------
    def tamper(self, name: str) -> None:
        """Change one byte of a published release; its signed hash stays as it was."""
        path = self.target_file(name)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    def expire_timestamp(self, ago: dt.timedelta = dt.timedelta(hours=1)) -> None:
        """A timestamp nobody re-signed in time: a new version whose expiry has passed."""
        self._bump("timestamp", expires=_now() - ago)

    def refresh_timestamp(self, expires: dt.datetime | None = None) -> None:
        self._bump("timestamp", expires=expires)

    def saved(self) -> dict[str, bytes]:
        """The metadata files as they are now, to serve again later (restore)."""
        return {p.name: p.read_bytes() for p in self.metadata.iterdir()}

    def restore(self, files: dict[str, bytes]) -> None:
        """Serve metadata saved before: an older timestamp and snapshot (a rollback or freeze attack)."""
        for name, data in files.items():
            (self.metadata / name).write_bytes(data)

    def rogue_signer(self) -> CryptoSigner:
        """A key the root does not name."""
        return CryptoSigner.generate_ed25519()


@dataclass
class Request:
    path: str
    sent: int = 0           # body bytes written
    done: bool = False


@dataclass
class ServerFaults:
    """What the server does to a request whose path ends with a key: drip (seconds between single bytes, for
    ever), hold (an Event the body waits on after its first half)."""

    drip: dict[str, float] = field(default_factory=dict)
    hold: dict[str, threading.Event] = field(default_factory=dict)
    holding: threading.Event = field(default_factory=threading.Event)   # set while a held body waits


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:   # a client that hung up mid-way is not news
        pass


class RepositoryServer:
    """The repository folder over HTTPS on loopback (a thread per request), with faults on demand."""

    def __init__(self, directory: Path, cert: Path, key: Path) -> None:
        self.dir = Path(directory).resolve()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.faults = ServerFaults()
        self.requests: list[Request] = []
        self.stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:   # quiet: the tests read server.requests
                pass

            def do_GET(self) -> None:   # noqa: N802 (http.server's name)
                server._serve(self)

        self._httpd = _Quiet(("127.0.0.1", 0), Handler)
        self._httpd.socket = self.ctx.wrap_socket(self._httpd.socket, server_side=True,
                                                  do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="tuf-repository",
                                        daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self.stopping.set()
        for ev in self.faults.hold.values():
            ev.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        rel = h.path.split("?", 1)[0].lstrip("/")
        path = (self.dir / rel).resolve()
        req = Request(rel)
        self.requests.append(req)
        if not path.is_relative_to(self.dir) or not path.is_file():
            h.send_error(404)
            return
        data = path.read_bytes()
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        drip = next((s for k, s in self.faults.drip.items() if rel.endswith(k)), None)
        hold = next((e for k, e in self.faults.hold.items() if rel.endswith(k)), None)
        try:
            if drip is not None:
                for i in range(len(data)):
                    h.wfile.write(data[i:i + 1])
                    h.wfile.flush()
                    req.sent += 1
                    if self.stopping.wait(drip):
                        return
            half = len(data) // 2 if hold is not None else len(data)
            for start, end in ((0, half), (half, len(data))):
                if start == half and hold is not None:
                    self.faults.holding.set()
                    hold.wait(120)
                for i in range(start, end, 65536):
                    chunk = data[i:min(i + 65536, end)]
                    h.wfile.write(chunk)
                    req.sent += len(chunk)
            req.done = True
        except OSError:   # the gateway hung up (it cut the download off)
            return


@dataclass
class UpdateSite:
    """The operator's side of a rig's updates: the repository, its server (started) and what the gateway is given."""

    repo: TufRepository
    server: RepositoryServer
    releases: Path      # the gateway's A/B root (Rig(releases=...))
    fleet: str          # its [fleet] section (Rig(fleet=...))


def update_site(work: Path) -> UpdateSite:
    """A repository with a CA of its own, served over HTTPS on loopback; the gateway's trusted root in
    work/tuf-root.json, its A/B root at work/opt. Stop it with site.server.stop()."""
    from .pki import make_pki

    pki = make_pki(work / "repo-pki")
    repo = TufRepository(work / "repo")
    server = RepositoryServer(repo.dir, pki.server_cert, pki.server_key)
    server.start()
    root = work / "tuf-root.json"
    root.write_bytes(repo.root_json())
    return UpdateSite(repo, server, work / "opt", fleet_toml(server.url, root, work / "opt", pki.ca_cert))


def fleet_toml(repository_url: str, root: Path, releases_dir: Path, ca_file: Path, **update) -> str:
    """The [fleet] section of a gateway that takes its releases from this repository."""
    lines = ["[fleet]", f'ca_file = "{ca_file}"', "", "[fleet.update]", f'repository = "{repository_url}"',
             f'root = "{root}"', f'releases_dir = "{releases_dir}"']
    lines += [f"{k} = {v!r}" for k, v in update.items()]
    return "\n".join(lines) + "\n"
