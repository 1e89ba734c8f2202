"""The byte pipes under DLMS: a serial line (pyserial, read through the event loop) and a TCP connection. They are
the bus scheduler's links (drivers/scheduler.py): one per serial port or TCP endpoint, shared by every meter on
it, one exchange at a time. Framing (HDLC, wrapper) and sessions live above them, per meter (client.py).

IEC 62056-21 mode E (optical probes): the line opens at 300 baud 7E1, sends "/?!" (or "/?<address>!"), reads the
meter's identification "/XXXZ\\2..." (Z: the baud rate it offers, "\\2": it speaks HDLC), acknowledges with
ACK "2" Z "2" and switches to Z baud 8N1 for HDLC. The meter falls back to 300 baud when the link is idle or
lost, so the start-up is repeated after every failure (`restart_needed`).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from gridedge.core.model import Detail

from ..modbus import DeviceError
from .iec21 import MODE_E_BAUDS, even_parity, parse_identification, strip_parity

__all__ = ["Line", "SerialLine", "TcpLine"]

log = logging.getLogger(__name__)

class Line:
    """A byte pipe with a receive buffer filled by the event loop. Subclasses open and close it."""

    def __init__(self, name: str, timeout_s: float):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.name = name
        self.timeout_s = float(timeout_s)
        self._rx = bytearray()
        self._event = asyncio.Event()
        self._eof = False
        self.bytes_in = self.bytes_out = 0
        self.restart_needed = True          # mode E start-up due (serial lines that use it)
        self.reader = None                  # the framing's stream reader, shared by the meters on this line

    @property
    def connected(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _received(self, data: bytes) -> None:
        self._rx += data
        self.bytes_in += len(data)
        self._event.set()

    def flush_input(self) -> None:
        """Drop what arrived unasked (late answers, another meter's push): the next exchange starts clean."""
        self._rx.clear()
        self._event.clear()

    async def recv(self, deadline: float) -> bytes:
        """What has arrived, waiting until `deadline` (monotonic) for something; b"" when it passed."""
        while not self._rx:
            if self._eof:
                raise DeviceError(f"{self.name}: link lost", Detail.COMM_FAILURE)
            self._event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return b""
            try:
                await asyncio.wait_for(self._event.wait(), left)
            except asyncio.TimeoutError:
                return b""
        data = bytes(self._rx)
        self._rx.clear()
        return data

    async def send(self, data: bytes) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def connect(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SerialLine(Line):
    """A serial port (RS-485 multidrop, or an optical probe with mode E) through pyserial, non-blocking."""

    def __init__(self, port: str, baudrate: int = 9600, *, parity: str = "N", stopbits: int = 1, bytesize: int = 8,
                 timeout_s: float = 1.0, mode_e: bool = False, mode_e_address: str = ""):
        super().__init__(port, timeout_s)
        self.port, self.baudrate, self.parity, self.stopbits, self.bytesize = port, baudrate, parity, stopbits, bytesize
        self.mode_e = mode_e
        self.mode_e_address = mode_e_address
        self.identification = ""
        self._serial = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def connected(self) -> bool:
        return self._serial is not None

    async def connect(self) -> None:
        if self._serial is not None:
            return
        import serial  # pyserial, loaded with the first serial line

        try:
            ser = serial.Serial(self.port, self.baudrate, bytesize=self.bytesize, parity=self.parity,
                                stopbits=self.stopbits, timeout=0, write_timeout=self.timeout_s, exclusive=True)
        except (serial.SerialException, ValueError, OSError) as exc:  # the port is gone, busy or refuses the settings
            raise DeviceError(f"{self.name}: cannot open: {exc}", Detail.COMM_FAILURE) from None
        self._serial = ser
        self._eof = False
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(ser.fileno(), self._on_readable)
        self.restart_needed = True

    def _on_readable(self) -> None:
        try:
            data = os.read(self._serial.fileno(), 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._received(data)
        else:                                  # the device went away (USB adapter unplugged, pty closed)
            self._eof = True
            self._event.set()
            self._loop.remove_reader(self._serial.fileno())

    async def send(self, data: bytes) -> None:
        if self._serial is None or self._eof:
            await self.close()
            await self.connect()                 # opened on first use, and again after the device went away
        try:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self._serial.fileno(), view)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
                    continue
                view = view[n:]
        except OSError as exc:
            raise DeviceError(f"{self.name}: write failed: {exc}", Detail.COMM_FAILURE) from None
        self.bytes_out += len(data)

    async def close(self) -> None:
        ser, self._serial = self._serial, None
        if ser is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(ser.fileno())
            with contextlib.suppress(Exception):
                ser.close()

    def _settings(self, baudrate: int, bytesize: int, parity: str) -> bool:
        """Set the line; False if the port refuses (a pseudo-terminal, some USB adapters cannot do 7E1)."""
        s = self._serial
        try:
            s.baudrate, s.bytesize, s.parity = baudrate, bytesize, parity
            return True
        except Exception as exc:  # noqa: BLE001 - termios.error, SerialException, ValueError: they vary by port
            log.debug("%s: %d %d%s refused (%s)", self.name, baudrate, bytesize, parity, exc)
            return False

    async def start_mode_e(self) -> None:
        """The IEC 62056-21 start-up into HDLC (see the module docstring). Raises DeviceError. Where the port cannot
        do 7E1 it runs 8N1 and makes the parity bit itself: the same ten bits on the wire."""
        import serial

        self.flush_input()
        soft = not self._settings(300, serial.SEVENBITS, serial.PARITY_EVEN)
        if soft:
            self._settings(300, serial.EIGHTBITS, serial.PARITY_NONE)
        code = even_parity if soft else bytes
        await self.send(code(b"/?" + self.mode_e_address.encode("ascii") + b"!\r\n"))
        deadline = time.monotonic() + self.timeout_s + 1.5      # 300 baud: the identification takes ~0.7 s
        line = b""
        while not line.endswith(b"\r\n"):
            chunk = await self.recv(deadline)
            if not chunk:
                raise DeviceError(f"{self.name}: no identification from the meter (mode E start-up)",
                                  Detail.TIMEOUT)
            if soft:
                try:
                    chunk = strip_parity(chunk)
                except ValueError as exc:
                    raise DeviceError(f"{self.name}: {exc}", Detail.MALFORMED) from None
            line += chunk
            if len(line) > 128:
                break
        try:
            ident, baud, hdlc = parse_identification(line.split(b"\r\n")[0] + b"\r\n")
        except ValueError as exc:
            raise DeviceError(f"{self.name}: {exc}", Detail.MALFORMED) from None
        if not hdlc:
            raise DeviceError(f"{self.name}: the meter ({ident!r}) does not offer HDLC (mode E)", Detail.BAD_REFERENCE)
        z = next(k for k, v in MODE_E_BAUDS.items() if v == baud)
        await self.send(code(b"\x062" + z.encode() + b"2\r\n"))
        await asyncio.sleep(11 * 6 / 300)                          # the ACK leaves the wire at 300 baud
        self._settings(baud, serial.EIGHTBITS, serial.PARITY_NONE)
        self.identification = ident
        self.flush_input()
        self.restart_needed = False
        log.info("%s: mode E start-up done, meter %r at %d baud", self.name, ident, baud)


class TcpLine(Line):
    """A TCP connection: the wrapper (port 4059) or HDLC over TCP (a serial device server, or a meter's own port)."""

    def __init__(self, host: str, port: int, timeout_s: float = 1.0):
        super().__init__(f"{host}:{port}", timeout_s)
        self.host, self.port = host, port
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self.restart_needed = False

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._eof

    async def connect(self) -> None:
        if self.connected:
            return
        await self.close()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port),
                                                    self.timeout_s * 2 + 0.5)
        except asyncio.TimeoutError:
            raise DeviceError(f"{self.name}: connect timed out", Detail.TIMEOUT) from None
        except OSError as exc:
            raise DeviceError(f"{self.name}: cannot connect: {exc}", Detail.COMM_FAILURE) from None
        self._writer = writer
        self._eof = False
        self.flush_input()
        self.reader = None                   # a new stream: the framing starts over
        self._task = asyncio.create_task(self._pump(reader), name=f"dlms-tcp:{self.name}")

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                self._received(data)
        except (OSError, asyncio.IncompleteReadError):
            pass
        self._eof = True
        self._event.set()

    async def send(self, data: bytes) -> None:
        if not self.connected:
            await self.connect()
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (OSError, RuntimeError) as exc:
            self._eof = True
            raise DeviceError(f"{self.name}: send failed: {exc}", Detail.COMM_FAILURE) from None
        self.bytes_out += len(data)

    async def recv(self, deadline: float) -> bytes:
        if self._writer is None:
            raise DeviceError(f"{self.name}: not connected", Detail.COMM_FAILURE)
        return await super().recv(deadline)

    async def close(self) -> None:
        task, self._task = self._task, None
        writer, self._writer = self._writer, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
