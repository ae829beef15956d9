#!/usr/bin/env python3
"""Modbus devices for tests/modbus.rs, played by pymodbus (pinned 3.8.6).

    slaves.py rtu PORT BAUD    # units 1, 2 and 3 on one RTU serial line
    slaves.py tcp PORT         # the same units as a Modbus TCP server on 127.0.0.1
    slaves.py rtutcp PORT      # RTU frames over TCP (a serial server's view)

Every unit serves the same layout (see LAYOUT), with unit-specific values
at holding register 1 and input register 0, so a test can tell the units
apart. It prints "ready" once serving and then obeys lines on stdin:

    stop U          unit U stops answering (its requests are dropped)
    start U         unit U answers again
    garbage U       the next response of unit U is preceded by noise and a
                    damaged copy of itself (a CRC error for the gateway)
    set U ADDR V    holding register ADDR of unit U becomes V

The byte and word orders are encoded here with struct and plain list
operations, independently of the gateway's decoder.
"""

import asyncio
import struct
import sys

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

UNITS = (1, 2, 3)


def ordered(raw: bytes, order: str) -> list[int]:
    """Registers carrying big-endian bytes `raw` in byte/word order `order`."""
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    if order in ("CDAB", "DCBA"):
        words = words[::-1]
    return [int.from_bytes(w, "big") for w in words]


# (address, struct format or None, value, order); the test reads these back.
LAYOUT = [
    (0, ">h", -1234, "ABCD"),
    (2, ">i", -123456789, "ABCD"),
    (4, ">I", 3000000000, "CDAB"),
    (6, ">q", -1234567890123, "BADC"),
    (10, ">Q", 12345678901234567890, "DCBA"),
    (14, ">f", 21.5, "ABCD"),
    (16, ">f", -3.25, "CDAB"),
    (18, ">d", 1234.5678, "BADC"),
    (22, ">d", -0.001, "DCBA"),
    (26, None, b"TIDEWELL", "ABCD"),
    (30, ">H", 0b1000_0000_0000_0101, "ABCD"),
    (31, ">H", 615, "ABCD"),  # 615 * 0.1 - 40 = 21.5
    (40, ">H", 100, "ABCD"),  # moved by the deadband test
]


def holding(unit: int) -> list[int]:
    regs = [0] * 100
    for address, fmt, value, order in LAYOUT:
        raw = value if fmt is None else struct.pack(fmt, value)
        words = ordered(raw, order)
        regs[address : address + len(words)] = words
    regs[1] = 50000 + unit
    return regs


def slave(unit: int) -> ModbusSlaveContext:
    # pymodbus adds 1 to the protocol address before looking into a block,
    # so blocks start at 1: protocol address 0 is the list's first entry.
    return ModbusSlaveContext(
        hr=ModbusSequentialDataBlock(1, holding(unit)),
        ir=ModbusSequentialDataBlock(1, [1000 + unit] + [0] * 99),
        co=ModbusSequentialDataBlock(1, [True, False, True, True] + [False] * 96),
        di=ModbusSequentialDataBlock(1, [False, True] + [False] * 98),
    )


class Devices:
    def __init__(self):
        self.slaves = {u: slave(u) for u in UNITS}
        self.context = ModbusServerContext(slaves=dict(self.slaves), single=False)
        self.garbage = set()

    def trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending and data and data[0] in self.garbage:
            self.garbage.discard(data[0])
            damaged = bytearray(data)
            damaged[-3] ^= 0x5A
            return b"\x00\xff\x55\xaa" + bytes(damaged) + data
        return data

    def command(self, line: str) -> None:
        words = line.split()
        if not words:
            return
        unit = int(words[1])
        if words[0] == "stop":
            del self.context[unit]
        elif words[0] == "start":
            self.context[unit] = self.slaves[unit]
        elif words[0] == "garbage":
            self.garbage.add(unit)
        elif words[0] == "set":
            self.slaves[unit].setValues(3, int(words[2]), [int(words[3])])
        print("ok", line.strip(), flush=True)


async def commands(devices: Devices) -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            loop.stop()
            return
        devices.command(line)


async def main() -> None:
    devices = Devices()
    if sys.argv[1] == "rtu":
        server = ModbusSerialServer(
            devices.context,
            port=sys.argv[2],
            baudrate=int(sys.argv[3]),
            # pyserial cannot set parity on a pseudo-terminal (EINVAL), and
            # a pty carries bytes, not characters: parity is not on this line.
            parity="N",
            ignore_missing_slaves=True,
            trace_packet=devices.trace_packet,
        )
    else:
        server = ModbusTcpServer(
            devices.context,
            framer=FramerType.RTU if sys.argv[1] == "rtutcp" else FramerType.SOCKET,
            address=("127.0.0.1", int(sys.argv[2])),
            ignore_missing_slaves=True,
            trace_packet=devices.trace_packet,
        )
    task = asyncio.create_task(server.serve_forever())
    await asyncio.sleep(0.3)
    print("ready", flush=True)
    await commands(devices)
    task.cancel()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (KeyboardInterrupt, RuntimeError):
        pass
