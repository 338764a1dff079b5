"""Spool files and archive files: safe paths, WAV normalisation, atomic encrypted writes.

* Spool: the PBX (MixMonitor) writes ``<spool_dir>/<uniqueid>.wav``. Paths are built only from
  a PBX uniqueid of digits and dots (:func:`recording_spool_path`), never from caller input.
* Archive format: 8 kHz mono 16-bit PCM WAV (what Asterisk records for a telephone call; 16 kB/s,
  ~58 MB per hour), rewritten with a canonical 44-byte header whose sizes are exact even when
  the spool file's header was not (Asterisk fills the RIFF sizes in when it closes the file).
  Other PCM rates, 8/16/24/32-bit samples and stereo are converted (stdlib ``audioop``).
  The WAV is then encrypted (:mod:`recorder.crypto`); ``sha256`` is of the plain WAV.
* Archive files: ``<recordings_dir>/YYYY/MM/<reception no>_<uniqueid>.mrec`` (site-local
  month), written to ``<name>.tmp``, fsynced, renamed over, and the folder fsynced.
"""
from __future__ import annotations

import os
import re
import struct
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # deprecated since 3.11, removed in 3.13 (as in ivr_prompts.recognizer)

RATE = 8000
WIDTH = 2
BLOCK = 1 << 20
ARCHIVE_SUFFIX = ".mrec"
TMP_SUFFIX = ".tmp"
_CALL_ID = re.compile(r"^[0-9]{1,20}(?:\.[0-9]{1,20})?$")
_RECEPTION = re.compile(r"^[0-9]{8}-[0-9]{6}$")


class SpoolError(ValueError):
    """The spool file is missing or not a usable WAV."""


def check_call_id(call_id: str) -> str:
    if not isinstance(call_id, str) or not _CALL_ID.match(call_id):
        raise ValueError(f"not a PBX uniqueid (digits and one dot): {call_id!r}")
    return call_id


def check_reception_no(no: str) -> str:
    if not isinstance(no, str) or not _RECEPTION.match(no):
        raise ValueError(f"not a reception number (YYYYMMDD-NNNNNN): {no!r}")
    return no


def recording_spool_path(spool_dir: str | Path, call_id: str) -> Path:
    """Where the PBX writes the call's recording: ``<spool_dir>/<uniqueid>.wav``."""
    return Path(spool_dir) / f"{check_call_id(call_id)}.wav"


def archive_relpath(reception_no: str, call_id: str) -> str:
    no = check_reception_no(reception_no)
    return f"{no[:4]}/{no[4:6]}/{no}_{check_call_id(call_id)}{ARCHIVE_SUFFIX}"


def wav_header(data_bytes: int, rate: int = RATE, channels: int = 1, width: int = WIDTH) -> bytes:
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * width,
                                    channels * width, 8 * width)
            + b"data" + struct.pack("<I", data_bytes))


@dataclass(frozen=True)
class WavFormat:
    channels: int
    rate: int
    width: int
    data_offset: int
    data_bytes: int      # what is really there (block-aligned), whatever the header claims

    @property
    def seconds(self) -> float:
        return self.data_bytes / (self.rate * self.channels * self.width)


def probe_wav(f: BinaryIO, file_size: int) -> WavFormat:
    """Read the RIFF structure; tolerate the sizes of a file still open in Asterisk (0 or too big)."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise SpoolError("not a WAV file")
    fmt = None
    pos = 12
    while True:
        f.seek(pos)
        ch = f.read(8)
        if len(ch) < 8:
            raise SpoolError("WAV file has no data chunk")
        cid, size = ch[:4], struct.unpack("<I", ch[4:])[0]
        if cid == b"fmt ":
            body = f.read(min(size, 64))
            if len(body) < 16:
                raise SpoolError("WAV fmt chunk truncated")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == 0xFFFE and len(body) >= 26:
                tag = struct.unpack("<H", body[24:26])[0]
            if tag != 1:
                raise SpoolError(f"WAV is not PCM (format tag {tag})")
            if channels not in (1, 2) or bits not in (8, 16, 24, 32) or not 4000 <= rate <= 192000:
                raise SpoolError(f"unsupported WAV format ({channels} ch, {bits}-bit, {rate} Hz)")
            fmt = (channels, rate, bits // 8)
        elif cid == b"data":
            if fmt is None:
                raise SpoolError("WAV data before fmt")
            channels, rate, width = fmt
            start = pos + 8
            avail = max(0, file_size - start)
            n = avail if size in (0, 0xFFFFFFFF) or size > avail else size
            n -= n % (channels * width)
            return WavFormat(channels, rate, width, start, n)
        pos += 8 + size + (size & 1)


def pcm_blocks(path: Path, block: int = BLOCK, first: int | None = None) -> tuple[WavFormat, Iterator[bytes]]:
    """The spool file's audio as 8 kHz mono 16-bit PCM blocks (converted when needed).
    ``first``: size of the first block (so that header + first block fill one crypto chunk)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise SpoolError(f"no spool file {path.name}") from None
    try:
        fmt = probe_wav(f, os.fstat(f.fileno()).st_size)
    except Exception:
        f.close()
        raise

    def gen():
        with f:
            f.seek(fmt.data_offset)
            left = fmt.data_bytes
            state = None
            frame = fmt.channels * fmt.width
            size = first if first is not None else block
            while left > 0:
                data = f.read(min(size - size % frame, left))
                size = block
                if not data:
                    break
                left -= len(data)
                if (fmt.channels, fmt.rate, fmt.width) != (1, RATE, WIDTH):
                    if fmt.width == 1:
                        data = audioop.bias(data, 1, -128)
                    if fmt.width != WIDTH:
                        data = audioop.lin2lin(data, fmt.width, WIDTH)
                    if fmt.channels == 2:
                        data = audioop.tomono(data, WIDTH, 0.5, 0.5)
                    if fmt.rate != RATE:
                        data, state = audioop.ratecv(data, WIDTH, 1, fmt.rate, RATE, state)
                yield data
    return fmt, gen()


def normalized_wav(path: Path) -> tuple[int, Iterator[bytes]]:
    """(total bytes, blocks) of the archive WAV: canonical header + 8 kHz mono 16-bit data, in
    blocks aligned to the 1 MiB crypto chunks (no re-buffering on the way)."""
    fmt, blocks = pcm_blocks(path, first=BLOCK - 44)
    if (fmt.channels, fmt.rate, fmt.width) == (1, RATE, WIDTH):
        n = fmt.data_bytes

        def direct():
            head = wav_header(n)
            for b in blocks:
                if head is not None:
                    b, head = head + b, None
                yield b
            if head is not None:
                yield head
        return 44 + n, direct()
    # converted length is only known afterwards: stage the PCM in a temporary file
    tmp = tempfile.TemporaryFile()
    n = 0
    for b in blocks:
        tmp.write(b)
        n += len(b)

    def staged():
        with tmp:
            tmp.seek(0)
            yield wav_header(n) + tmp.read(BLOCK - 44)
            while chunk := tmp.read(BLOCK):
                yield chunk
    return 44 + n, staged()


def write_archive(src: Path, final: Path, keys, header_meta: dict, step=lambda name: None) -> tuple[str, str, int, int]:
    """The finalizer's data path: normalise, hash + encrypt in one pass into ``<final>.tmp``,
    fsync, rename, fsync the folder. Returns (sha256 of the plain WAV, key id, archive bytes,
    plain WAV bytes). ``step`` is called after "encrypted" and "renamed" (crash points)."""
    from .crypto import EncryptWriter
    total, blocks = normalized_wav(src)
    tmp, out = open_tmp(final)
    try:
        with out:
            w = EncryptWriter(out, keys, header_meta)
            for b in blocks:
                w.write(b)
            sha = w.close()
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    step("encrypted")
    commit_tmp(tmp, final)
    step("renamed")
    return sha, w.key_id, size, total


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_tmp(final: Path) -> tuple[Path, BinaryIO]:
    final.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    tmp = final.with_name(final.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return tmp, os.fdopen(fd, "wb", buffering=0)      # 1 MiB frames go straight to write(2)


def commit_tmp(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    fsync_dir(final.parent)
