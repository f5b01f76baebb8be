#!/usr/bin/env python3
"""Verifies a rollback run's stored events from the rules in the README alone ("Event envelope
and signatures"), sharing no code with the product.

Usage: verify_run.py RUN_ID EVENTS_FILE KEY_ID=PUBLIC_KEY_HEX...

EVENTS_FILE holds the run's stored messages in stream order, one per line, byte for byte as
stored. Prints "intact ..." and exits 0, or "broken at seq N: ..." and exits 1.
Needs the `cryptography` package for Ed25519.
"""
import hashlib
import json
import re
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

GENESIS = "0" * 64
PREFIX = b"rollback-event-v1:"
SIGNED_TAIL = re.compile(rb',"hash":"([0-9a-f]{64})","signature":"([0-9a-f]{128})"\}$')
UNSIGNED_TAIL = re.compile(rb',"hash":"([0-9a-f]{64})"\}$')


def verify(run_id, lines, keys):
    prev_hash, seen, signers = GENESIS, set(), {}
    for seq, stored in enumerate(lines, start=1):
        tail = SIGNED_TAIL.search(stored) or UNSIGNED_TAIL.search(stored)
        if tail is None:
            return f"broken at seq {seq}: the hash is not the last field"
        canonical = stored[: tail.start()] + b"}"
        envelope = json.loads(stored)
        if envelope["run_id"] != run_id:
            return f"broken at seq {seq}: event of run {envelope['run_id']}"
        if envelope["seq"] != seq:
            return f"broken at seq {seq}: found seq {envelope['seq']}"
        if envelope["prev_hash"] != prev_hash:
            return f"broken at seq {seq}: prev_hash does not link"
        stored_hash = tail.group(1).decode()
        if hashlib.sha256(prev_hash.encode() + canonical).hexdigest() != stored_hash:
            return f"broken at seq {seq}: hash mismatch"
        if envelope["event_id"] in seen:
            return f"broken at seq {seq}: repeated event id"
        seen.add(envelope["event_id"])
        key_id = envelope.get("key_id")
        signature = tail.group(2) if tail.re is SIGNED_TAIL else None
        if key_id is None or signature is None:
            return f"broken at seq {seq}: not signed"
        if key_id not in keys:
            return f"broken at seq {seq}: key {key_id} is not trusted"
        try:
            keys[key_id].verify(bytes.fromhex(signature.decode()), PREFIX + stored_hash.encode())
        except InvalidSignature:
            return f"broken at seq {seq}: bad signature by key {key_id}"
        signers[key_id] = signers.get(key_id, 0) + 1
        prev_hash = stored_hash
    signed = ", ".join(f"{k}: {n}" for k, n in sorted(signers.items()))
    return None, f"intact: {len(lines)} events, last hash {prev_hash}, signed by {signed}"


def main():
    run_id, path, *trusted = sys.argv[1:]
    keys = {}
    for item in trusted:
        key_id, key_hex = item.split("=", 1)
        keys[key_id] = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex))
    with open(path, "rb") as f:
        lines = [line.rstrip(b"\n") for line in f if line.strip()]
    result = verify(run_id, lines, keys)
    if isinstance(result, str):
        print(result)
        return 1
    print(result[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
