"""Issue 11, defect 22: a newcomer's first real gateway. The README's quick start is run as written, in a temporary
directory: its commands are read from the README (only the lab directory, the ports and the device address are
swapped for the test's), the simulated SunSpec inverter the README offers stands in for the real one, the generated
mosquitto.conf starts the real mosquitto, `gridedge check` passes and the agent's state and telemetry reach a client
with the head-end certificate, as the README's mosquitto_sub line would show them. Contract 3.0: the README's signed
command (`gridedge sign ... | mosquitto_pub ... -s`, the real mosquitto_pub with the issuer's certificate) is
executed by the gateway, and its results reach that client too."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridedge.hil.broker import find_mosquitto
from gridedge.mqtt import MqttClient, tls_context
from gridedge.telemetry import samples_of

from .aio import arun, until
from .conftest import message_kind

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SECTION = README[README.index("### Quick start"):README.index("### In production")]
LAB = "~/gridedge-lab"


def commands() -> list[list[str]]:
    """The quick start's shell block, one argv per line, comments dropped (a pipeline keeps its "|" tokens)."""
    block = re.search(r"```sh\n(.*?)```", SECTION, re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def stages(argv: list[str]) -> list[list[str]]:
    """A pipeline's commands."""
    out: list[list[str]] = [[]]
    for word in argv:
        if word == "|":
            out.append([])
        else:
            out[-1].append(word)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_quick_start_reads_as_the_test_runs_it():
    """If the README changes, this test must change with it."""
    cmds = commands()
    assert [c[:3] for c in cmds] == [
        ["export", "PATH=$PWD/.venv/bin:$PATH"], ["gridedge", "lab", "init"],
        ["/usr/sbin/mosquitto", "-c", f"{LAB}/mosquitto.conf"], ["gridedge", "check", "-c"], ["gridedge", "run", "-c"],
        ["mosquitto_sub", "-h", "localhost"], ["echo", cmds[-1][1], "|"]]
    assert cmds[1][3:] == [LAB, "--device", "192.168.1.50"]
    echo, sign, pub = stages(cmds[-1])
    assert json.loads(echo[1]) == {"schema": "gridedge.command/2", "cmd_id": "lab-1", "type": "traffic_light",
                                   "params": {"colour": "green"}}
    assert sign == ["gridedge", "sign", "--key", f"{LAB}/issuers/dso.key.pem", "--issuer", "dso",
                    "--gateway", "gw-lab-001"]
    assert pub[0] == "mosquitto_pub" and pub[-1] == "-s"   # -s: the whole of stdin is one message
    assert dict(zip(pub[1:-1:2], pub[2:-1:2])) == {
        "-h": "localhost", "-p": "8883", "--cafile": f"{LAB}/pki/ca.crt", "--cert": f"{LAB}/pki/issuer-dso.crt",
        "--key": f"{LAB}/pki/issuer-dso.key", "-q": "1", "-t": "gridedge/v3/gw-lab-001/cmd/dso"}
    assert "python -m gridedge.hil.inverter_sim --port 1502" in SECTION and "--device 127.0.0.1:1502" in SECTION


@pytest.fixture
def procs():
    """Processes the test starts, stopped (by their own pid) even when it fails."""
    started: list[subprocess.Popen] = []
    yield started
    for p in reversed(started):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_the_quick_start_runs(tmp_path, procs, validate):
    lab = tmp_path / "gridedge-lab"
    broker_port = free_port()

    def here(argv: list[str]) -> list[str]:
        """The README's argv with this test's lab directory, broker port and programs."""
        out = [a.replace(LAB, str(lab)).replace("8883", str(broker_port)) for a in argv]
        if out[0] == "gridedge":
            out[:1] = [sys.executable, "-m", "gridedge"]
        elif out[0] == "/usr/sbin/mosquitto":
            out[0] = find_mosquitto()
        return out

    _, init, mosquitto, check, run, sub, signed = commands()
    if shutil.which("mosquitto_pub") is None:
        pytest.fail("mosquitto_pub not found: install mosquitto-clients (./run test does)")
    # the simulated inverter the README offers when no device is at hand, on a free port
    sim = subprocess.Popen([sys.executable, "-m", "gridedge.hil.inverter_sim", "--port", "0"], stdout=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, text=True)
    procs.append(sim)
    ready = sim.stdout.readline()
    assert ready.startswith("READY "), ready
    device = f"127.0.0.1:{ready.split()[1]}"

    argv = here(init)
    argv[argv.index("192.168.1.50")] = device
    res = subprocess.run(argv + ["--port", str(broker_port)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert {p.name for p in lab.iterdir()} >= {"pki", "issuers", "mosquitto.conf", "acl", "gateway.toml"}

    broker = subprocess.Popen(here(mosquitto), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    procs.append(broker)

    res = subprocess.run(here(check), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("OK ") and "1 device, gateway gw-lab-001" in res.stdout, \
        res.stderr

    agent = subprocess.Popen(here(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(agent)

    # mosquitto_sub -h localhost -p PORT --cafile .. --cert .. --key .. -t TOPIC -v, mirrored by the project's client
    args = dict(zip(here(sub)[1::2], here(sub)[2::2]))
    assert args["-h"] == "localhost" and args["-t"] == "gridedge/v3/#" and args["-p"] == str(broker_port)
    p = "gridedge/v3/gw-lab-001/"

    def send_signed() -> None:
        """The README's pipeline: echo the document | gridedge sign | the real mosquitto_pub."""
        echo, sign, pub = (here(argv) for argv in stages(signed))
        token = subprocess.run(sign, input=echo[1] + "\n", capture_output=True, text=True, timeout=60)
        assert token.returncode == 0 and token.stdout.count(".") == 2, token.stderr
        pub[0] = shutil.which("mosquitto_pub")
        res = subprocess.run(pub, input=token.stdout, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr

    async def watch():
        ctx = tls_context(Path(args["--cafile"]), Path(args["--cert"]), Path(args["--key"]))
        client = MqttClient(f"mqtts://{args['-h']}:{args['-p']}", "lab-test", ssl_context=ctx)
        await client.subscribe(args["-t"])
        await until(lambda: broker.poll() is not None or _accepts(broker_port), timeout=10)
        assert broker.poll() is None, broker.stderr.read()
        await client.connect()
        online = power = sent = None
        results: list[dict] = []
        try:
            while "active" not in [r["status"] for r in results]:
                if online is not None and power is not None and sent is None:
                    sent = asyncio.create_task(asyncio.to_thread(send_signed))
                msg = await asyncio.wait_for(client.messages.get(), 30)
                if message_kind(msg.topic) == "command":   # the head-end sees it go by: the JWS, as signed
                    validate(msg.topic, msg.payload)
                    continue
                doc = json.loads(msg.payload)
                validate(msg.topic, doc)
                if msg.topic == p + "state" and doc.get("status") == "online":
                    online = doc
                if msg.topic == p + "telemetry":
                    power = next((s for s in samples_of(doc) if s.point == "dev1/W" and s.good), power)
                if msg.topic == p + "result":
                    results.append(doc)
            await sent
        finally:
            await client.close()
        return online, power, results

    online, power, results = arun(watch(), timeout=60)
    assert online["gateway"] == "gw-lab-001" and power.value > 0
    assert [(r["cmd_id"], r["status"], r["detail"]["colour"]) for r in results] == [
        ("lab-1", "accepted", "green"), ("lab-1", "active", "green")]
    assert agent.poll() is None, "the agent stopped"


def test_the_annotated_example_checks_in_a_lab(tmp_path):
    """README and the example's header: its pki/ and issuers/ paths are those `gridedge lab init` writes."""
    lab = tmp_path / "lab"
    res = subprocess.run([sys.executable, "-m", "gridedge", "lab", "init", str(lab)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    shutil.copy(ROOT / "examples" / "gateway.toml", lab / "example.toml")
    res = subprocess.run([sys.executable, "-m", "gridedge", "check", "-c", str(lab / "example.toml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("kw, message", [
    ({"gateway_id": "gw 1\nuser x"}, "--gateway-id must be"),
    ({"device": 'h"\n[x]'}, "not a host name or IP address"),
    ({"device": "10.0.0.5:http"}, "--device must be HOST or HOST:PORT"),
    ({"broker_hosts": ("a b",)}, "not a host name or IP address"),
])
def test_lab_refuses_what_would_break_its_files(tmp_path, kw, message):
    """Names go into the ACL, mosquitto.conf and gateway.toml: nothing that could add a line gets in."""
    from gridedge.lab import init_lab

    with pytest.raises(ValueError, match=message):
        init_lab(tmp_path / "lab", **kw)
    assert not (tmp_path / "lab").exists()


def test_lab_keeps_its_ca_unless_forced(tmp_path):
    from gridedge.lab import init_lab

    init_lab(tmp_path, device="[fe80::1]:1502", broker_hosts=("gw.lan",))
    ca = (tmp_path / "pki" / "ca.crt").read_bytes()
    with pytest.raises(FileExistsError):
        init_lab(tmp_path)
    assert (tmp_path / "pki" / "ca.crt").read_bytes() == ca
    text = (tmp_path / "gateway.toml").read_text()
    assert 'broker = "mqtts://gw.lan:8883"' in text and 'host = "fe80::1"' in text and "port = 1502" in text
    assert "listener 8883\n" in (tmp_path / "mosquitto.conf").read_text()   # reached from other machines
    init_lab(tmp_path, force=True)
    assert (tmp_path / "pki" / "ca.crt").read_bytes() != ca


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(device=st.text(max_size=30) | st.from_regex(r"\[?[0-9a-f:.]{1,20}\]?(:[0-9]{1,6})?", fullmatch=True),
       gateway_id=st.text(max_size=12) | st.just("gw-lab-001"))
def test_fuzz_lab_arguments(tmp_path_factory, device, gateway_id):
    """Whatever is typed after --device and --gateway-id: a clear refusal, or a lab whose gateway.toml checks OK."""
    from gridedge.config import load_config
    from gridedge.lab import init_lab

    lab = tmp_path_factory.mktemp("lab")
    try:
        init_lab(lab, device=device, gateway_id=gateway_id)
    except ValueError as e:
        assert str(e)
        return
    cfg = load_config(lab / "gateway.toml")
    assert cfg.gateway.id == gateway_id and cfg.devices[0].host in device


def _unit_commands(lab_config: Path, opt: Path) -> tuple[list[list[str]], list[str]]:
    """The shipped unit's ExecStartPre lines and its ExecStart, with `opt` (an A/B root whose current release is
    this checkout, made by `gridedge release init`) and the lab's configuration in place of /opt/gridedge and
    /etc/gridedge/gateway.toml: the same commands systemd runs."""
    unit = (ROOT / "systemd" / "gridedge.service").read_text()
    res = subprocess.run([sys.executable, "-m", "gridedge", "release", "init", str(opt)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr

    def argv(line: str) -> list[str]:
        return [str(lab_config) if w == "/etc/gridedge/gateway.toml" else w.replace("/opt/gridedge", str(opt))
                for w in shlex.split(line)]
    return [argv(x) for x in re.findall(r"^ExecStartPre=(.+)$", unit, re.M)], \
        argv(re.search(r"^ExecStart=(.+)$", unit, re.M).group(1))


def test_the_shipped_unit_runs_the_example_with_its_state_in_the_state_directory(tmp_path, procs):
    """What the unit gives the agent: a read-only configuration directory (ProtectSystem=strict; here: root without
    CAP_DAC_OVERRIDE on a directory without write permission), $STATE_DIRECTORY (StateDirectory=), UMask 0077,
    NOTIFY_SOCKET and WATCHDOG_USEC (Type=notify, WatchdogSec=). The example, copied into a lab as its header says,
    must pass ExecStartPre and run: READY, its state where systemd put the state, nothing written beside it."""
    lab, state = tmp_path / "etc-gridedge", tmp_path / "var-lib-gridedge"
    res = subprocess.run([sys.executable, "-m", "gridedge", "lab", "init", str(lab), "--gateway-id", "gw-demo-001",
                          "--port", "8883"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    config = lab / "example.toml"
    shutil.copy(ROOT / "examples" / "gateway.toml", config)
    broker = subprocess.Popen([find_mosquitto(), "-c", str(lab / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    procs.append(broker)
    state.mkdir(mode=0o700)
    for p in [lab, *lab.rglob("*")]:
        if p.name != "mosquitto" and "mosquitto" not in p.parts[len(lab.parts):len(lab.parts) + 1]:
            p.chmod(p.stat().st_mode & ~0o222)
    pres, start = _unit_commands(config, tmp_path / "opt-gridedge")
    drop = ["setpriv", "--no-new-privs", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    notify = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(45)
        env = dict(os.environ, STATE_DIRECTORY=str(state), NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="30000000")
        for pre in pres:
            res = subprocess.run(drop + pre, env=env, capture_output=True, text=True, timeout=60, umask=0o077)
            assert res.returncode == 0, res.stdout + res.stderr
        agent = subprocess.Popen(drop + start, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 umask=0o077)
        procs.append(agent)
        try:
            ready = sock.recv(4096).decode()
        except TimeoutError:
            raise AssertionError(f"no READY=1: {agent.poll()} {agent.stderr.read()[-3000:] if agent.poll() else ''}")
        assert ready.startswith("READY=1") and "connected" in ready, ready
        assert agent.poll() is None
        assert (state / "outbox.sqlite").is_file() and any((state / "audit").iterdir())
        assert not (lab / "var").exists()
        assert (state / "outbox.sqlite").stat().st_mode & 0o077 == 0   # UMask=0077
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(20) == 0, agent.stderr.read()[-3000:]
