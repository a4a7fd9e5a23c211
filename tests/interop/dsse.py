"""Verifies a DSSE envelope with securesystemslib (PyPI), an implementation independent of writ.

usage: dsse.py ENVELOPE.json PUBLIC_KEY.pem KEYID
Prints the payload type and the payload (UTF-8) when a signature by KEYID verifies over the
envelope's PAE; exits 1 when none does.
"""
import json
import sys

from cryptography.hazmat.primitives.serialization import load_pem_public_key
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey


def main():
    envelope_path, key_path, keyid = sys.argv[1:4]
    with open(envelope_path, "rb") as f:
        envelope = Envelope.from_dict(json.load(f))
    with open(key_path, "rb") as f:
        public = load_pem_public_key(f.read())
    key = SSlibKey.from_crypto(public, keyid=keyid, scheme="ecdsa-sha2-nistp256")
    try:
        accepted = envelope.verify([key], 1)
    except VerificationError as e:
        print(f"not verified: {e}", file=sys.stderr)
        sys.exit(1)
    if keyid not in accepted:
        print("not verified by the key", file=sys.stderr)
        sys.exit(1)
    print(envelope.payload_type)
    print(envelope.payload.decode("utf-8"))


if __name__ == "__main__":
    main()
