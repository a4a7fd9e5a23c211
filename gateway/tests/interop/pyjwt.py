"""Interop with PyJWT (an independent JWT implementation), driven by gateway/tests/interop.rs.

  verify-writ JWK_JSON TOKEN AUD ISS   -> verifies a writ made by writ with the issuer's JWK;
                                          prints the claims, or "REFUSED <exception>" and exits 1
  holder-key                           -> makes a P-256 key; prints {"jwk": ..., "jkt": ..., "pem": ...}
                                          (jkt computed here per RFC 7638, independently of writ)
  proof PEM_FILE JWK_JSON HTM HTU TOKEN -> a DPoP proof (RFC 9449) signed by PyJWT
"""
import base64
import hashlib
import json
import sys
import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def main(argv):
    cmd = argv[1]
    if cmd == "verify-writ":
        key = ECAlgorithm.from_jwk(argv[2])
        token, aud, iss = argv[3], argv[4], argv[5]
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=["ES256"],
                audience=aud,
                issuer=iss,
                options={"require": ["exp", "iat", "nbf", "jti", "aud", "iss", "sub"]},
            )
        except jwt.PyJWTError as e:
            print("REFUSED", type(e).__name__, e)
            return 1
        print(json.dumps({"header": header, "claims": claims}))
        return 0
    if cmd == "holder-key":
        priv = ec.generate_private_key(ec.SECP256R1())
        public = json.loads(ECAlgorithm.to_jwk(priv.public_key()))
        members = {k: public[k] for k in ("crv", "kty", "x", "y")}
        canon = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
        pem = priv.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        print(json.dumps({"jwk": public, "jkt": b64(hashlib.sha256(canon).digest()), "pem": pem}))
        return 0
    if cmd == "proof":
        with open(argv[2], "rb") as f:
            priv = serialization.load_pem_private_key(f.read(), password=None)
        public = json.loads(argv[3])
        htm, htu, token = argv[4], argv[5], argv[6]
        claims = {
            "jti": str(uuid.uuid4()),
            "iat": int(time.time()),
            "htm": htm,
            "htu": htu,
            "ath": b64(hashlib.sha256(token.encode()).digest()),
        }
        print(jwt.encode(claims, priv, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": public}))
        return 0
    print("unknown command", cmd, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
