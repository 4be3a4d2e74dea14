"""Make the bundled lab set (``src/ztfm/_bundled/lab``) from a real lab run.

``python -m ztfm.lab.bundle OUT`` (root) runs ``BUNDLE_CONFIG`` and then ``compact_lab(run, OUT)``;
``compact_lab`` alone gzips the captures of an existing run (deterministically: fixed mtime, no
file name in the gzip header) and rewrites the manifest so it hashes the files as shipped. The
traffic itself is real and timing-dependent, so a new run is statistically, not bit-for-bit, the
same; the shipped files are pinned by their SHA-256 in the manifest.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

from ztfm.errors import LabError
from ztfm.lab.runner import MANIFEST_NAME, run_lab, write_manifest
from ztfm.lab.spec import ATTACKS, LabConfig

BUNDLE_CONFIG = LabConfig(
    devices=12,
    duration_s=600.0,
    attacks=tuple(ATTACKS),
    seed=2026,
    run_id="bundle",
    snaplen=96,
    warmup_s=300.0,
)


def compact_lab(run: str | Path, out: str | Path) -> Path:
    """Copy a lab run to ``out`` with gzipped captures and a manifest of the shipped files."""
    src, dst = Path(run), Path(out)
    manifest_path = src / MANIFEST_NAME
    if not manifest_path.is_file():
        raise LabError(f"{src}: not a lab run (no {MANIFEST_NAME})")
    meta = json.loads(manifest_path.read_text())
    original = meta.pop("files", {})
    if dst.exists():
        shutil.rmtree(dst)
    (dst / "pcaps").mkdir(parents=True)
    for name in ("labels.csv", "devices.csv"):
        shutil.copyfile(src / name, dst / name)
    for pcap in sorted((src / "pcaps").glob("*.pcap")):
        with (
            (dst / "pcaps" / f"{pcap.name}.gz").open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz,
        ):
            gz.write(pcap.read_bytes())
    meta["source_files"] = original
    write_manifest(dst, meta)
    return dst


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m ztfm.lab.bundle OUT", file=sys.stderr)
        return 2
    out = Path(argv[0])
    raw = out.with_name(out.name + ".raw")
    if raw.exists():
        shutil.rmtree(raw)
    run_lab(BUNDLE_CONFIG, raw, progress=print)
    compact_lab(raw, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
