"""ThingsBoard IoT Gateway side of the performance harness: its own virtualenv, its configuration, its process.

ThingsBoard is never a dependency of gridedge: `ensure_venv()` installs `thingsboard-gateway` into
bench/perf/.venv-tb (gitignored), together with the pymodbus version its Modbus connector insists on (3.9.2;
without it, the connector pip-installs it at start-up) and pyserial / pyserial-asyncio (same reason).

Configuration choices, each because of something found measuring it:
- registers are read as one wide-range tag per device (`"address": "0-49"`, tag `R${address}`); only such a tag is
  merged into one request, and `maxRegistersPerRequest` (default 16) is set to 125, the Modbus limit;
  `--tb-reads register` gives one tag, so one request, per register instead;
- every device has its own port (devices behind one host:port share one connection);
- the uplink is plain MQTT on loopback (the broker's plaintext listener); gridedge uses mutual TLS;
- remote configuration, remote shell and the gateway's own statistics are off (there is no ThingsBoard server to
  consume them); report strategy ON_RECEIVED (every polled value is sent, as gridedge does);
- it publishes no telemetry until its `getSessionLimits` RPC is answered: bench/perf/subscriber.py answers it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-tb"
TB_VERSION = "3.8.5"
PYMODBUS_FOR_TB = "3.9.2"


def python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv(version: str = TB_VERSION) -> Path:
    """Create the TB virtualenv and install TB once; a second call only checks the version."""
    py = python()
    if py.exists():
        v = installed_version()
        if v == version:
            return py
    else:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"thingsboard-gateway=={version}",
                    f"pymodbus=={PYMODBUS_FOR_TB}", "pyserial", "pyserial-asyncio"], check=True)
    return py


def installed_version() -> str | None:
    if not python().exists():
        return None
    r = subprocess.run([str(python()), "-c", "import importlib.metadata as m; print(m.version('thingsboard-gateway'))"],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def package_dir() -> Path:
    r = subprocess.run([str(python()), "-c", "import thingsboard_gateway, os; print(os.path.dirname(thingsboard_gateway.__file__))"],
                       capture_output=True, text=True, check=True)
    return Path(r.stdout.strip())


def slave_config(index: int, port: int, registers: int, poll_ms: int, reads: str = "block") -> dict:
    if reads == "block":
        timeseries = [{"tag": "R${address}", "type": "16uint", "functionCode": 3, "objectsCount": 1,
                       "address": f"0-{registers - 1}", "maxRegistersPerRequest": 125}]
    elif reads == "register":
        timeseries = [{"tag": f"R{r}", "type": "16uint", "functionCode": 3, "objectsCount": 1, "address": r}
                      for r in range(registers)]
    else:
        raise ValueError(f"reads must be 'block' or 'register', got {reads!r}")
    return {
        "host": "127.0.0.1", "port": port, "type": "tcp", "method": "socket", "unitId": 1,
        "deviceName": f"d{index:03d}", "deviceType": "default", "timeout": 35,
        "byteOrder": "BIG", "wordOrder": "BIG", "retries": 3, "retryOnEmpty": True, "retryOnInvalid": True,
        "pollPeriod": poll_ms, "connectAttemptTimeMs": 5000, "connectAttemptCount": 5,
        "waitAfterFailedAttemptsMs": 300000,
        "attributes": [], "timeseries": timeseries, "attributeUpdates": [], "rpc": [],
    }


def storage_config(kind: str) -> dict:
    if kind == "memory":
        return {"type": "memory", "read_records_count": 100, "max_records_count": 100000}
    if kind == "sqlite":
        return {"type": "sqlite", "data_file_path": "./data/", "messages_ttl_check_in_hours": 1,
                "messages_ttl_in_days": 7}
    raise ValueError(f"storage must be 'memory' or 'sqlite', got {kind!r}")


def write_config(workdir: Path, *, mqtt_host: str, mqtt_port: int, ports: list[int], registers: int,
                 poll_ms: int, storage: str, reads: str = "block") -> Path:
    """Write tb_gateway.json, modbus.json and logs.json into workdir/config/; returns that directory."""
    cfg_dir = workdir / "config"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    gw = {
        "thingsboard": {
            "host": mqtt_host, "port": mqtt_port, "remoteShell": False, "remoteConfiguration": False,
            "latencyDebugMode": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600, "customStatsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False, "filterFile": "list.json"},
            "maxPayloadSizeBytes": 8196, "minPackSendDelayMS": 50, "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 60, "handleDeviceRenaming": True,
            "security": {"type": "accessToken", "accessToken": "bench-tb-gateway"},
            "qos": 1,
            "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False, "inactivityTimeoutSeconds": 300,
                                       "inactivityCheckPeriodSeconds": 10},
        },
        "storage": storage_config(storage),
        "grpc": {"enabled": False, "serverPort": 9595},
        "connectors": ([{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}] if ports else []),
    }
    (cfg_dir / "tb_gateway.json").write_text(json.dumps(gw, indent=2))
    if ports:
        modbus = {"master": {"slaves": [slave_config(i, p, registers, poll_ms, reads) for i, p in enumerate(ports)]}}
        (cfg_dir / "modbus.json").write_text(json.dumps(modbus, indent=2))
    logs = json.loads((package_dir() / "config" / "logs.json").read_text())
    for h in logs.get("handlers", {}).values():  # file handlers: relative to the run's work directory
        if "filename" in h:
            h["filename"] = str(workdir / "logs" / Path(h["filename"]).name)
    (cfg_dir / "logs.json").write_text(json.dumps(logs, indent=2))
    return cfg_dir


def command() -> list[str]:
    return [str(VENV / "bin" / "thingsboard-gateway")]


def environment(cfg_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["TB_GW_CONFIG_DIR"] = str(cfg_dir) + os.sep
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def clean(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
