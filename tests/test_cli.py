"""The `gridedge` command as a user runs it: check, run with a broken config, and the demo."""
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gridedge.hil.pki import make_pki

ROOT = Path(__file__).resolve().parents[1]
GRIDEDGE = [sys.executable, "-m", "gridedge"]


def gridedge(*args, **kw):
    return subprocess.run(GRIDEDGE + list(args), capture_output=True, text=True, timeout=60, **kw)


@pytest.fixture
def good_config(tmp_path):
    pki = make_pki(tmp_path / "pki")
    cert, key = pki.client("gw-test")
    text = (ROOT / "examples" / "gateway.toml").read_text()
    text = (text.replace('"pki/ca.crt"', f'"{pki.ca_cert}"').replace('"pki/gateway.crt"', f'"{cert}"')
            .replace('"pki/gateway.key"', f'"{key}"')
            .replace('"issuers/dso.pub.pem"', f'"{ROOT / "examples" / "issuers" / "dso.pub.pem"}"'))
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_check_accepts_the_annotated_example(good_config):
    res = gridedge("check", "-c", str(good_config))
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout and "gw-demo-001" in res.stdout


def test_check_names_file_key_and_fault(good_config):
    text = good_config.read_text().replace("poll_ms = 1000", "poll_ms = -5").replace("keepalive_s = 30", "keepalve_s = 30")
    good_config.write_text(text)
    res = gridedge("check", "-c", str(good_config))
    assert res.returncode != 0
    assert "gateway.toml: devices[0].poll_ms: must be > 0, got -5" in res.stderr
    assert "gateway.toml: uplink.keepalve_s: unknown key" in res.stderr
    assert "Traceback" not in res.stderr


def test_run_refuses_a_broken_config_without_a_traceback(tmp_path):
    bad = tmp_path / "gateway.toml"
    bad.write_text("[gateway\nid = 1\n")
    res = gridedge("run", "-c", str(bad))
    assert res.returncode == 2
    assert "gateway.toml: invalid TOML" in res.stderr and "Traceback" not in res.stderr


def test_a_fault_only_run_can_meet_is_one_log_line(tmp_path):
    """The config is fine (check passes) but the outbox cannot be opened: one ERROR line that says what and where,
    exit 1 (systemd restarts it), no traceback."""
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nid = "gw1"\n[uplink]\nbroker = "mqtt://127.0.0.1:1"\nallow_plaintext = true\n')
    (tmp_path / "var" / "outbox.sqlite").mkdir(parents=True)   # a directory where the database file belongs
    assert gridedge("check", "-c", str(path)).returncode == 0
    res = gridedge("run", "-c", str(path))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "cannot start" in errors[0] and str(tmp_path / "var") in errors[0], res.stderr


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return {int(x) for x in out.split()}


def _alive(pids: set[int]) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists() and "zombie" not in Path(f"/proc/{p}/status").read_text()}


def test_demo_passes_and_leaves_no_process_behind(tmp_path):
    proc = subprocess.Popen(GRIDEDGE + ["demo", "--duration-s", "3"], stdout=subprocess.PIPE, text=True)
    lines, started = [], set()
    for line in proc.stdout:
        lines.append(line.rstrip())
        if "activation: active" in line:
            started = _children(proc.pid)
    assert proc.wait(timeout=60) == 0, "\n".join(lines)
    assert lines[-1].startswith("demo: PASS"), lines[-1]
    assert len(started) >= 3, f"expected broker, simulator and agent processes, saw {started}"
    assert _alive(started) == set()


def test_demo_interrupted_stops_everything_it_started(tmp_path):
    proc = subprocess.Popen(GRIDEDGE + ["demo", "--duration-s", "30"], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until the activation is running, then press Ctrl-C
        if "activation: active" in line:
            break
    started = _children(proc.pid)
    assert len(started) >= 3, f"expected broker, simulator and agent processes, saw {started}"
    proc.send_signal(signal.SIGINT)  # only the demo gets it: its children must be stopped by the demo itself
    rest = proc.stdout.read()
    assert proc.wait(timeout=30) == 1
    assert rest.strip().splitlines()[-1].startswith("demo: FAIL")
    assert _alive(started) == set()
