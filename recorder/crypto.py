"""Recording encryption: a key ring and a chunked, streaming AES-256-GCM file format.

Keys
----
``MADOGUCHI_RECORDING_KEYS="kid1:<64 hex>,kid2:<64 hex>"`` or a key file with one ``kid:hex``
per line (``#`` comments allowed; the file must not be readable by group/others, chmod 600).
The **last** key listed is the newest: it encrypts new recordings; every listed key decrypts,
so keys rotate by appending a new line and keeping the old ones until their recordings are
purged. Key bytes live in :class:`KeyRing` only; its repr shows key ids, never key material.

File format (version 1), all integers big-endian::

    header  = magic "MADOREC\\0" (8) | version u8 (=1) | reserved u8 (=0)
            | key id length u8 | key id (ASCII, 1-64)
            | key check (8)        HMAC-SHA256(key, "madoguchi-recording-key-check")[:8]
            | salt (16)            random per file
            | chunk size u32       plaintext bytes per chunk (1 MiB)
            | meta length u16 | meta (UTF-8 JSON: call id, reception number, start)
    chunk*  = ciphertext length u32 | AES-256-GCM ciphertext + 16-byte tag

Each file gets its own key, ``HKDF-SHA256(master key, salt, "madoguchi-recording-v1")``; the
nonce of chunk *i* is ``i (u64) | final (u32: 1 on the last chunk, else 0)`` (the STREAM
construction), and every chunk carries the whole header as associated data. So: any flipped
byte (header, metadata or audio) fails a tag; chunks swapped or dropped fail (wrong index);
a file cut at a chunk boundary fails (its last chunk was not sealed as final); bytes after
the final chunk are refused. A chunk is only released after its tag verified, so playback
streams with constant memory. The key check tells a wrong key (same id, other bytes) apart
from damage.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"MADOREC\x00"
VERSION = 1
CHUNK_SIZE = 1 << 20
TAG = 16
KEYS_ENV = "MADOGUCHI_RECORDING_KEYS"
_KID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CHECK = b"madoguchi-recording-key-check"
_INFO = b"madoguchi-recording-v1"


class ArchiveError(Exception):
    """Base of every error reading or writing an archive."""


class IntegrityError(ArchiveError):
    """The archive is damaged, tampered with or truncated."""


class KeyMissingError(ArchiveError):
    """The key the archive names is not in the key ring."""


class WrongKeyError(ArchiveError):
    """The key ring has the key id the archive names, but other key bytes."""


class KeyConfigError(ValueError):
    """The key ring cannot be read (the message never contains key material)."""


class KeyRing:
    """Recording keys by id; the last one added is the newest and encrypts."""

    def __init__(self, keys: list[tuple[str, bytes]]):
        if not keys:
            raise KeyConfigError("no recording key configured "
                                 f"(set {KEYS_ENV}=kid:hex or write a key file)")
        self._keys: dict[str, bytes] = {}
        for kid, key in keys:
            if not _KID.match(kid):
                raise KeyConfigError(f"key id {kid!r} must be 1-64 of A-Z a-z 0-9 _ . -")
            if len(key) != 32:
                raise KeyConfigError(f"key {kid!r} must be 32 bytes (64 hex digits) for AES-256")
            if kid in self._keys:
                raise KeyConfigError(f"key id {kid!r} is listed twice")
            self._keys[kid] = key
        self.newest = keys[-1][0]

    def __repr__(self) -> str:
        return f"KeyRing(ids={list(self._keys)!r}, newest={self.newest!r})"

    def __reduce__(self):
        raise TypeError("KeyRing must not be pickled")

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def key(self, kid: str) -> bytes:
        try:
            return self._keys[kid]
        except KeyError:
            raise KeyMissingError(f"recording is encrypted with key {kid!r}, which is not in the key ring "
                                  f"(configured: {', '.join(self._keys)})") from None

    @classmethod
    def parse(cls, text: str, source: str = KEYS_ENV) -> "KeyRing":
        keys = []
        for n, item in enumerate(re.split(r"[,\n]", text), 1):
            item = item.split("#", 1)[0].strip()
            if not item:
                continue
            kid, sep, hexkey = item.partition(":")
            if not sep:
                raise KeyConfigError(f"{source}: entry {n} must be kid:hex")
            try:
                key = bytes.fromhex(hexkey.strip())
            except ValueError:
                raise KeyConfigError(f"{source}: key {kid.strip()!r} is not hex") from None
            keys.append((kid.strip(), key))
        return cls(keys)

    @classmethod
    def from_file(cls, path: str | Path) -> "KeyRing":
        path = Path(path)
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise KeyConfigError(f"cannot read recording key file {path}: {e.strerror}") from None
        if mode & 0o077:
            raise KeyConfigError(f"recording key file {path} is readable by group/others (chmod 600)")
        return cls.parse(text, str(path))

    @classmethod
    def load(cls, key_file: str | Path | None = None, environ=os.environ) -> "KeyRing":
        """From ``MADOGUCHI_RECORDING_KEYS`` when set, else from ``key_file``."""
        env = environ.get(KEYS_ENV)
        if env:
            return cls.parse(env)
        if key_file is None:
            raise KeyConfigError(f"no recording key: set {KEYS_ENV} or give a key file")
        return cls.from_file(key_file)


def new_key_line(kid: str) -> str:
    if not _KID.match(kid):
        raise KeyConfigError(f"key id {kid!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    return f"{kid}:{os.urandom(32).hex()}"


def _check_value(key: bytes) -> bytes:
    return hmac.new(key, _CHECK, hashlib.sha256).digest()[:8]


def _file_key(key: bytes, salt: bytes) -> AESGCM:
    return AESGCM(HKDF(hashes.SHA256(), 32, salt, _INFO).derive(key))


def _nonce(index: int, final: bool) -> bytes:
    return struct.pack(">QI", index, 1 if final else 0)


@dataclass(frozen=True)
class Header:
    key_id: str
    key_check: bytes
    salt: bytes
    chunk_size: int
    meta: dict
    raw: bytes


def build_header(kid: str, key: bytes, meta: dict, chunk_size: int = CHUNK_SIZE) -> Header:
    meta_b = json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    if len(meta_b) > 65535:
        raise ValueError("archive metadata too large")
    kid_b = kid.encode("ascii")
    salt = os.urandom(16)
    check = _check_value(key)
    raw = (MAGIC + bytes([VERSION, 0, len(kid_b)]) + kid_b + check + salt
           + struct.pack(">IH", chunk_size, len(meta_b)) + meta_b)
    return Header(kid, check, salt, chunk_size, meta, raw)


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise IntegrityError(f"archive truncated in the {what}")
    return b


def read_header(f: BinaryIO) -> Header:
    head = f.read(len(MAGIC) + 3)
    if len(head) < len(MAGIC) + 3 or head[:len(MAGIC)] != MAGIC:
        raise IntegrityError("not a madoguchi recording archive (bad magic)")
    version, _reserved, kid_len = head[len(MAGIC):]
    if version != VERSION:
        raise IntegrityError(f"unsupported archive format version {version}")
    kid_b = _read_exact(f, kid_len, "header")
    check = _read_exact(f, 8, "header")
    salt = _read_exact(f, 16, "header")
    chunk_size, meta_len = struct.unpack(">IH", _read_exact(f, 6, "header"))
    meta_b = _read_exact(f, meta_len, "header")
    try:
        kid = kid_b.decode("ascii")
        meta = json.loads(meta_b)
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError("archive header is damaged") from None
    if not _KID.match(kid) or not 0 < chunk_size <= 64 << 20 or not isinstance(meta, dict):
        raise IntegrityError("archive header is damaged")
    raw = head + kid_b + check + salt + struct.pack(">IH", chunk_size, meta_len) + meta_b
    return Header(kid, check, salt, chunk_size, meta, raw)


class EncryptWriter:
    """Encrypts a stream of plaintext into ``out`` chunk by chunk; ``close()`` seals the final chunk.

    SHA-256 of the plaintext is computed on a helper thread while this thread encrypts and
    writes (hashlib releases the GIL; SHA-256 is the slowest stage, ~1.6 GB/s vs AES-GCM's
    ~10 GB/s), so hashing costs next to nothing on a machine with two cores.
    """

    def __init__(self, out: BinaryIO, keys: KeyRing, meta: dict, chunk_size: int = CHUNK_SIZE,
                 hash_thread: bool = True):
        self.key_id = keys.newest
        key = keys.key(self.key_id)
        self.header = build_header(self.key_id, key, meta, chunk_size)
        self._aead = _file_key(key, self.header.salt)
        self._out = out
        self._buf = bytearray()
        self._held: bytes | memoryview | None = None    # last full chunk: final or not is known later
        self._index = 0
        self._chunk = chunk_size
        self.sha256 = hashlib.sha256()
        self.plain_bytes = 0
        self._pool = None
        self._hashing = None
        self._ct: bytearray | None = None
        if hash_thread:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="recording-sha256")
        out.write(self.header.raw)

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            data = bytes(data)          # chunks may be held after return: never a caller's mutable buffer
        self.plain_bytes += len(data)
        if self._pool is not None:
            if self._hashing is not None:
                self._hashing.result()
            self._hashing = self._pool.submit(self.sha256.update, data)
        else:
            self.sha256.update(data)
        mv = memoryview(data)
        if self._buf:
            need = self._chunk - len(self._buf)
            self._buf += mv[:need]
            mv = mv[need:]
            if len(self._buf) < self._chunk:
                return
            self._push(bytes(self._buf))
            self._buf = bytearray()
        while len(mv) >= self._chunk:
            self._push(mv[:self._chunk])
            mv = mv[self._chunk:]
        if len(mv):
            self._buf += mv

    def _push(self, chunk) -> None:
        if self._held is not None:
            self._emit(self._held, final=False)
        self._held = chunk

    def _emit(self, plain, final: bool) -> None:
        n = len(plain) + TAG
        if self._ct is None or len(self._ct) < 4 + n:
            self._ct = bytearray(4 + max(n, self._chunk + TAG))   # reused: no fresh 1 MiB per chunk
        frame = memoryview(self._ct)[:4 + n]
        struct.pack_into(">I", frame, 0, n)
        self._aead.encrypt_into(_nonce(self._index, final), plain, self.header.raw, frame[4:])
        _write_all(self._out, frame)                              # length + ciphertext in one write
        self._index += 1

    def close(self) -> str:
        """Seal the final chunk; returns the SHA-256 (hex) of all plaintext written."""
        if self._buf:
            if self._held is not None:
                self._emit(self._held, final=False)
            self._emit(bytes(self._buf), final=True)
        else:
            self._emit(self._held if self._held is not None else b"", final=True)
        self._held, self._buf = None, bytearray()
        if self._pool is not None:
            if self._hashing is not None:
                self._hashing.result()
            self._pool.shutdown()
            self._pool = None
        return self.sha256.hexdigest()


def _write_all(out, data) -> None:
    mv = memoryview(data)
    while len(mv):
        n = out.write(mv)
        if n is None or n == len(mv):
            return
        mv = mv[n:]


def open_header(f: BinaryIO, keys: KeyRing) -> tuple[Header, AESGCM]:
    header = read_header(f)
    key = keys.key(header.key_id)
    if not hmac.compare_digest(_check_value(key), header.key_check):
        raise WrongKeyError(f"key {header.key_id!r} in the key ring is not the key this recording was "
                            f"encrypted with (or the archive header is damaged)")
    return header, _file_key(key, header.salt)


def decrypt_chunks(f: BinaryIO, keys: KeyRing, expect_meta: dict | None = None) -> Iterator[bytes]:
    """Yield verified plaintext chunks; raises IntegrityError/KeyMissingError/WrongKeyError.

    ``expect_meta``: fields the header must carry (e.g. the call id of the database row), so an
    archive cannot be swapped for another call's.
    """
    header, aead = open_header(f, keys)
    if expect_meta:
        for k, v in expect_meta.items():
            if header.meta.get(k) != v:
                raise IntegrityError(f"archive belongs to {k}={header.meta.get(k)!r}, expected {v!r}")
    max_ct = header.chunk_size + TAG
    index = 0
    pending = _next_frame(f, max_ct)
    if pending is None:
        raise IntegrityError("archive truncated: no audio chunks")
    while pending is not None:
        following = _next_frame(f, max_ct)
        final = following is None
        try:
            plain = aead.decrypt(_nonce(index, final), pending, header.raw)
        except InvalidTag:
            if final:
                try:
                    aead.decrypt(_nonce(index, False), pending, header.raw)
                except InvalidTag:
                    pass
                else:
                    raise IntegrityError(f"archive truncated after chunk {index}") from None
            raise IntegrityError(f"archive chunk {index} failed authentication (damaged or tampered)") from None
        if not final and len(plain) != header.chunk_size:
            raise IntegrityError(f"archive chunk {index} has the wrong size")
        yield plain
        index += 1
        pending = following


def _next_frame(f: BinaryIO, max_ct: int) -> bytes | None:
    lb = f.read(4)
    if not lb:
        return None
    if len(lb) < 4:
        raise IntegrityError("archive truncated in a chunk length")
    (n,) = struct.unpack(">I", lb)
    if not TAG <= n <= max_ct:
        raise IntegrityError("archive chunk length is damaged")
    ct = f.read(n)
    if len(ct) != n:
        raise IntegrityError("archive truncated inside a chunk")
    return ct


def encrypt_bytes(data: bytes, keys: KeyRing, meta: dict) -> tuple[bytes, str, str]:
    """Small payloads (transcripts) in the same format: (blob, sha256 of plaintext, key id)."""
    out = io.BytesIO()
    w = EncryptWriter(out, keys, meta, hash_thread=False)
    w.write(data)
    sha = w.close()
    return out.getvalue(), sha, w.key_id


def decrypt_bytes(blob: bytes, keys: KeyRing, expect_meta: dict | None = None) -> bytes:
    return b"".join(decrypt_chunks(io.BytesIO(blob), keys, expect_meta))


class UnavailableKeys:
    """Stands in for a key ring that could not be loaded: commands that need no key still run;
    the first use of a key raises the loading error."""

    def __init__(self, error: KeyConfigError):
        self.error = error
        self.ids: list[str] = []

    @property
    def newest(self) -> str:
        raise KeyConfigError(str(self.error))

    def key(self, kid: str) -> bytes:
        raise KeyConfigError(str(self.error))

    def __repr__(self) -> str:
        return "UnavailableKeys()"
