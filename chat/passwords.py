"""Password hashes for configured credentials (chat services, agents): never kept in clear.

Format: `pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>`; `gms-server hash-password`
prints one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ALGORITHM = "pbkdf2_sha256"
ITERATIONS = 200_000


def hash_password(password: str, iterations: int = ITERATIONS) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{ALGORITHM}${iterations}${salt.hex()}${digest.hex()}"


def is_hash(value: str) -> bool:
    parts = value.split("$")
    return len(parts) == 4 and parts[0] == ALGORITHM and parts[1].isdigit()


def verify_password(password: str, hashed: str) -> bool:
    """Constant-time check of a password against a stored hash; False for a malformed hash."""
    if not is_hash(hashed):
        return False
    _, iterations, salt, expected = hashed.split("$")
    try:
        digest = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), bytes.fromhex(salt), int(iterations)
        )
    except ValueError:
        return False
    return hmac.compare_digest(digest.hex(), expected)
