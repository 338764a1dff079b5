"""The recording archive format: round trips, key rotation, and every way an archive can be damaged."""
from __future__ import annotations

import io
import os
import struct

import pytest

from recorder.crypto import (EncryptWriter, IntegrityError, KeyConfigError, KeyMissingError, KeyRing,
                             WrongKeyError, decrypt_bytes, decrypt_chunks, encrypt_bytes, read_header)

K1 = "k2026a:" + "11" * 32
K2 = "k2026b:" + "22" * 32
META = {"call_id": "1700000000.1", "reception_no": "20260105-000001"}


def seal(data: bytes, keys: KeyRing, chunk: int = 1000, meta=META) -> bytes:
    out = io.BytesIO()
    w = EncryptWriter(out, keys, meta, chunk_size=chunk)
    for i in range(0, len(data), 333):
        w.write(data[i:i + 333])
    w.close()
    return out.getvalue()


def open_(blob: bytes, keys: KeyRing, expect=None) -> bytes:
    return b"".join(decrypt_chunks(io.BytesIO(blob), keys, expect))


DATA = os.urandom(4500)     # 5 chunks of 1000 (the last one 500)


def test_round_trip_multi_chunk_and_exact_chunk_multiple():
    keys = KeyRing.parse(K1)
    for data in (DATA, DATA[:3000], b"", b"x"):
        blob = seal(data, keys)
        assert open_(blob, keys, META) == data
    assert DATA[:100] not in seal(DATA, keys)          # really encrypted
    blob, sha, kid = encrypt_bytes(b"hello", keys, META)
    assert decrypt_bytes(blob, keys) == b"hello" and kid == "k2026a" and len(sha) == 64


def test_newest_key_encrypts_all_keys_decrypt():
    old = seal(DATA, KeyRing.parse(K1))
    both = KeyRing.parse(f"{K1},{K2}")
    assert both.newest == "k2026b"
    new = seal(DATA, both)
    assert read_header(io.BytesIO(new)).key_id == "k2026b"
    assert open_(old, both) == DATA and open_(new, both) == DATA


def test_wrong_or_missing_key_names_the_key_id():
    blob = seal(DATA, KeyRing.parse(K1))
    with pytest.raises(WrongKeyError, match="k2026a"):
        open_(blob, KeyRing.parse("k2026a:" + "33" * 32))
    with pytest.raises(KeyMissingError, match="k2026a"):
        open_(blob, KeyRing.parse(K2))


def _chunk_offsets(blob: bytes) -> list[tuple[int, int]]:
    f = io.BytesIO(blob)
    read_header(f)
    out = []
    while True:
        pos = f.tell()
        lb = f.read(4)
        if not lb:
            return out
        n = struct.unpack(">I", lb)[0]
        out.append((pos, 4 + n))
        f.seek(n, 1)


def test_every_flipped_byte_is_detected():
    keys = KeyRing.parse(K1)
    blob = seal(DATA[:2500], keys)
    hlen = len(read_header(io.BytesIO(blob)).raw)
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        # a flip in the key id or key check reads as another key; everything else as damage
        with pytest.raises((IntegrityError, KeyMissingError, WrongKeyError)) as e:
            open_(bytes(bad), keys, META)
        if i >= hlen or i < 8:
            assert e.type is IntegrityError, i


def test_truncation_reordering_and_appending_are_detected():
    keys = KeyRing.parse(K1)
    blob = seal(DATA, keys)
    chunks = _chunk_offsets(blob)
    assert len(chunks) == 5
    last_start = chunks[-1][0]
    with pytest.raises(IntegrityError, match="truncated after chunk 3"):
        open_(blob[:last_start], keys)                       # cut at a chunk boundary
    for cut in (len(blob) - 1, last_start + 2, 20):
        with pytest.raises(IntegrityError):
            open_(blob[:cut], keys)
    (a, la), (b, lb) = chunks[1], chunks[2]
    swapped = blob[:a] + blob[b:b + lb] + blob[a:a + la] + blob[b + lb:]
    with pytest.raises(IntegrityError, match="chunk 1"):
        open_(swapped, keys)
    with pytest.raises(IntegrityError):
        open_(blob + blob[chunks[0][0]:chunks[0][0] + chunks[0][1]], keys)
    with pytest.raises(IntegrityError, match="expected"):
        open_(blob, keys, {"call_id": "1700000000.2"})     # an archive swapped in from another call


def test_streaming_yields_before_the_end():
    keys = KeyRing.parse(K1)
    blob = seal(DATA, keys)
    it = decrypt_chunks(io.BytesIO(blob[:-5]), keys)       # damaged at the very end
    assert next(it) == DATA[:1000]                          # earlier chunks already playable
    with pytest.raises(IntegrityError):
        list(it)


def test_key_ring_parsing_and_secrecy(tmp_path, monkeypatch):
    with pytest.raises(KeyConfigError, match="32 bytes"):
        KeyRing.parse("a:abcd")
    with pytest.raises(KeyConfigError, match="not hex"):
        KeyRing.parse("a:zz")
    with pytest.raises(KeyConfigError, match="twice"):
        KeyRing.parse(f"{K1},{K1}")
    with pytest.raises(KeyConfigError, match="no recording key"):
        KeyRing.parse("# only a comment\n")
    ring = KeyRing.parse(f"{K1}\n{K2}")
    assert "11" * 8 not in repr(ring) and "22" * 8 not in repr(ring)
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(ring)
    f = tmp_path / "recording.keys"
    f.write_text(f"# rotated 2026-01\n{K1}\n{K2}\n")
    f.chmod(0o644)
    with pytest.raises(KeyConfigError, match="chmod 600") as e:
        KeyRing.from_file(f)
    assert "11" * 8 not in str(e.value)
    f.chmod(0o600)
    monkeypatch.delenv("MADOGUCHI_RECORDING_KEYS", raising=False)
    assert KeyRing.load(f).newest == "k2026b"
    monkeypatch.setenv("MADOGUCHI_RECORDING_KEYS", K1)
    assert KeyRing.load(f).ids == ["k2026a"]                 # the environment wins
