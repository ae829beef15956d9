"""Points the Paho suite at an external broker instead of its own.

`test_mqttv5.py` (shipped in the paho-mqtt sdist) starts the Paho test
broker in a thread with `mqtt.brokers.run(config=...)`, then reads the port
it bound from `mqtt.brokers.listeners.TCPListeners.server.socket`, and at the
end calls `server.shutdown()`. This module answers those three calls with
the port of the broker under test (CONFORMANCE_PORT) and starts nothing:
the test file itself runs unmodified.
"""

import os
import threading

_stopped = threading.Event()


class _Socket:
    def getsockname(self):
        return ("127.0.0.1", int(os.environ["CONFORMANCE_PORT"]))


class _Server:
    socket = _Socket()

    def shutdown(self):
        _stopped.set()


class listeners:  # noqa: N801 - stands in for the package `mqtt.brokers.listeners`
    class TCPListeners:  # noqa: N801
        server = None


def run(config=None):
    listeners.TCPListeners.server = _Server()
    _stopped.wait()
