"""Maintainer tool: rebuild ``src/ztfm/_bundled/`` from the shared dataset copies.

Run ``python -m ztfm.data._make_bundle /work/shared/datasets src/ztfm/_bundled``. The output is
deterministic (gzip without names or mtimes, fixed slicing rules), so re-running it gives the same
bytes. Not used at run time; nothing is downloaded.

Rules (also in ``_bundled/ATTRIBUTION.md``):

- SKAB: every shared file copied byte for byte (valve1/, other/, anomaly-free/).
- N-BaIoT: the Danmini Doorbell sample copied byte for byte.
- TON_IoT: per device, the header plus, in file order, the first ``TON_NORMAL_ROWS`` normal rows
  and the first ``TON_ATTACK_ROWS`` rows of every attack type; every kept line is byte-identical
  (BOM, CRLF and the formatting quirks are kept on purpose so the loader's cleaning is exercised).
- IoT-23: both labelled conn logs copied byte for byte; the first ``PCAP_HEAD_PACKETS`` packets of
  the 42-1 capture (classic pcap, Ethernet), cut at a record boundary.
- MQTTset (reduced): every train/test pcap except ``benign-5mb`` (it overlaps ``benign``).
"""

from __future__ import annotations

import gzip
import shutil
import struct
import sys
from pathlib import Path

TON_NORMAL_ROWS = 2000
TON_ATTACK_ROWS = 300
PCAP_HEAD_PACKETS = 3000

TON_DEVICES = ("Fridge", "Thermostat", "Garage_Door", "Motion_Light", "GPS_Tracker")
MQTT_FOLDERS = ("benign", "bruteforce", "flood", "malariados", "malformed")


def _gzip_bytes(data: bytes, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with (
        dst.open("wb") as fh,
        gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=9, filename="", mtime=0) as gz,
    ):
        gz.write(data)


def _ton_slice(raw: bytes) -> bytes:
    lines = raw.split(b"\n")
    header, body = lines[0], [ln for ln in lines[1:] if ln.strip()]
    kept: list[bytes] = [header]
    counts: dict[bytes, int] = {}
    for ln in body:
        kind = ln.rstrip(b"\r").rsplit(b",", 1)[-1].strip()
        limit = TON_NORMAL_ROWS if kind == b"normal" else TON_ATTACK_ROWS
        if counts.get(kind, 0) < limit:
            counts[kind] = counts.get(kind, 0) + 1
            kept.append(ln)
    return b"\n".join(kept) + b"\n"


def _pcap_head(raw: bytes, n_packets: int) -> bytes:
    magic = raw[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise SystemExit("not a classic pcap")
    off = 24
    for _ in range(n_packets):
        if off + 16 > len(raw):
            break
        (incl,) = struct.unpack(endian + "I", raw[off + 8 : off + 12])
        off += 16 + incl
    return raw[:off]


def build(src: Path, dst: Path) -> None:
    """Write the bundle from the shared copies in ``src`` to ``dst`` (keeps ``dst/lab``)."""
    for sub in ("skab", "nbaiot", "ton_iot", "iot23", "mqttset", "pcap"):
        shutil.rmtree(dst / sub, ignore_errors=True)
    for part in ("valve1", "other", "anomaly-free"):
        for f in sorted((src / "skab" / part).glob("*.csv.gz")):
            (dst / "skab" / part).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst / "skab" / part / f.name)
    (dst / "nbaiot").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(
        src / "nbaiot" / "Danmini_Doorbell.csv.gz", dst / "nbaiot" / "Danmini_Doorbell.csv.gz"
    )
    for dev in TON_DEVICES:
        name = f"Train_Test_IoT_{dev}.csv.gz"
        raw = gzip.decompress((src / "ton_iot_telemetry" / name).read_bytes())
        _gzip_bytes(_ton_slice(raw), dst / "ton_iot" / name)
    for cap in sorted((src / "iot23_sample").iterdir()):
        if cap.is_dir():
            (dst / "iot23" / cap.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(
                cap / "conn.log.labeled.gz", dst / "iot23" / cap.name / "conn.log.labeled.gz"
            )
    pcap = (
        src
        / "iot23_sample"
        / "CTU-IoT-Malware-Capture-42-1"
        / "2019-01-10-14-34-38-192.168.1.197.pcap"
    )
    _gzip_bytes(
        _pcap_head(pcap.read_bytes(), PCAP_HEAD_PACKETS), dst / "pcap" / "iot23-42-1-head.pcap.gz"
    )
    for folder in MQTT_FOLDERS:
        for f in sorted((src / "mqttset_reduced" / folder).iterdir()):
            _gzip_bytes(f.read_bytes(), dst / "mqttset" / folder / (f.name + ".gz"))


if __name__ == "__main__":  # pragma: no cover - maintainer tool
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m ztfm.data._make_bundle SRC_DATASETS DST_BUNDLED")
    build(Path(sys.argv[1]), Path(sys.argv[2]))
