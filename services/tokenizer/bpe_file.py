"""Reading and writing tiktoken's BPE file format: one `base64(token) rank`
line per mergeable token. A file that claims to be cl100k_base must be it,
byte for byte (sha256); any other file (tiny test models) must be well formed."""

import base64
import binascii
import hashlib
from pathlib import Path

from dbrx_serve.shared.errors import InvalidInput

from .vocab import CL100K_FILE_NAME, CL100K_NUM_RANKS, CL100K_SHA256, MAX_NUM_RANKS

Ranks = dict[bytes, int]


def serialize_ranks(ranks: Ranks) -> bytes:
    """The canonical file body: lines sorted by rank, as tiktoken writes them."""
    ordered = sorted(ranks.items(), key=lambda item: item[1])
    return b"".join(base64.b64encode(token) + b" " + str(rank).encode() + b"\n" for token, rank in ordered)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def claims_cl100k(name: str, num_ranks: int) -> bool:
    """The sha256 is required only of a file that presents itself as cl100k_base."""
    return name == CL100K_FILE_NAME or num_ranks == CL100K_NUM_RANKS


def require_cl100k_hash(data: bytes, where: str) -> None:
    actual = sha256_hex(data)
    if actual != CL100K_SHA256:
        raise InvalidInput(f"{where}: sha256 is {actual}, but cl100k_base's is {CL100K_SHA256}; the file is "
                           "corrupt or not cl100k_base: copy tiktoken's cl100k_base.tiktoken again (docs/tokenizer.md)")


def parse_line(line: bytes, where: str, number: int) -> tuple[bytes, int]:
    fields = line.split()
    if len(fields) != 2 or not fields[1].isdigit():
        raise InvalidInput(f"{where} line {number}: expected 'base64 rank', got {line[:80]!r}")
    try:
        return base64.b64decode(fields[0], validate=True), int(fields[1])
    except binascii.Error as error:
        raise InvalidInput(f"{where} line {number}: invalid base64 {fields[0][:60]!r} ({error})") from None


def parse_ranks(data: bytes, where: str) -> Ranks:
    """Every line `base64 rank`; duplicate tokens are refused here."""
    ranks: Ranks = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        token, rank = parse_line(line, where, number)
        if token in ranks:
            raise InvalidInput(f"{where} line {number}: token {token!r} repeats (first at rank {ranks[token]})")
        ranks[token] = rank
    return ranks


def check_well_formed(ranks: Ranks, where: str) -> None:
    """Ranks 0..n-1 each once, below DBRX's special ids, with all 256 single bytes."""
    n = len(ranks)
    if not 256 <= n <= MAX_NUM_RANKS:
        raise InvalidInput(f"{where}: {n} ranks; a byte-level BPE has between 256 and {MAX_NUM_RANKS}")
    if set(ranks.values()) != set(range(n)):
        missing = sorted(set(range(n)) - set(ranks.values()))[:5]
        raise InvalidInput(f"{where}: ranks must be 0..{n - 1}, each once; missing for example {missing}")
    missing_bytes = [b for b in range(256) if bytes([b]) not in ranks]
    if missing_bytes:
        raise InvalidInput(f"{where}: single bytes {[hex(b) for b in missing_bytes[:8]]} have no rank; "
                           "a byte-level BPE needs all 256")


def check_ranks(ranks: Ranks, canonical: bytes, name: str, where: str) -> Ranks:
    """cl100k_base by hash (of the canonical serialisation), anything else by shape."""
    if claims_cl100k(name, len(ranks)):
        require_cl100k_hash(canonical, where)
    check_well_formed(ranks, where)
    return ranks


def load_tiktoken_file(path: Path) -> Ranks:
    """Parse and check a `*.tiktoken` file, offline (unlike tiktoken's loader, no cache copy)."""
    data = path.read_bytes()
    return check_ranks(parse_ranks(data, str(path)), data, path.name, str(path))
