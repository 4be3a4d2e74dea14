"""Record real swtpm evidence into vectors/swtpm_quote.json (run by hand; needs swtpm).

    python tests/unit/attestation/record_swtpm_vectors.py

The unit tests then verify real TPM output without a TPM.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

from ztfm.attestation import AttestingDevice
from ztfm.attestation.swtpm import SwtpmCa, SwtpmProcess, provision_swtpm
from ztfm.attestation.tpm import Tpm

OUT = Path(__file__).with_name("vectors") / "swtpm_quote.json"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ca = SwtpmCa.create(Path(tmp) / "ca")
        provision_swtpm(Path(tmp) / "state", ca)
        with SwtpmProcess(Path(tmp) / "state") as proc, Tpm(proc.tcti) as tpm:
            dev = AttestingDevice(tpm)
            fw = hashlib.sha256(b"ztfm firmware 1.0.0").digest()
            model = hashlib.sha256(b"ztfm model bundle v1").digest()
            dev.measure_firmware(fw, "firmware:1.0.0")
            dev.measure_model(model, "model:v1")
            nonce = hashlib.sha256(b"recorded nonce").digest()
            quote = dev.quote(nonce)
            record = {
                "recorded_at": time.time(),
                "root_pem": ca.root_cert_pem.decode(),
                "issuer_pem": ca.issuer_cert_pem.decode(),
                "enrolment": dev.enrolment_request().to_dict(),
                "firmware_digest": fw.hex(),
                "model_digest": model.hex(),
                "nonce": nonce.hex(),
                "quote": quote.to_dict(),
            }
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
