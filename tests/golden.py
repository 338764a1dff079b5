"""Loader for the golden transcripts in ../shared/golden (real Asterisk 22.10.1 / FreeSWITCH 1.10.12).

Set MADOGUCHI_GOLDEN to point elsewhere. The transcripts are the truth the lab emulator and
the protocol code are checked against, so a missing folder is an error, never a skip.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(os.environ.get("MADOGUCHI_GOLDEN", Path(__file__).resolve().parents[2] / "shared" / "golden"))
ASTERISK = ROOT / "asterisk-22"
FREESWITCH = ROOT / "freeswitch-1.10"


@dataclass
class Record:
    dir: str          # "asterisk->app" or "app->asterisk"
    t: float
    data: str         # latin-1 decoded bytes, exact
    eof: bool = False
    note: str = ""

    @property
    def from_pbx(self) -> bool:
        return self.dir.startswith("asterisk") or self.dir.startswith("freeswitch")

    @property
    def raw(self) -> bytes:
        return self.data.encode("latin-1")


def load(relpath: str, root: Path = ASTERISK) -> list[Record]:
    path = root / relpath
    if not path.exists():
        raise FileNotFoundError(f"golden transcript missing: {path} (set MADOGUCHI_GOLDEN)")
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            out.append(Record(d["dir"], d["t"], d.get("data", ""), d.get("eof", False), d.get("note", "")))
    return out


def stream(records: list[Record], from_pbx: bool) -> bytes:
    """All bytes one side sent, concatenated (segmentation removed)."""
    return b"".join(r.raw for r in records if r.from_pbx == from_pbx)


def meta(relpath: str, root: Path = ASTERISK) -> dict:
    return json.loads((root / relpath.replace(".jsonl", ".meta.json")).read_text())
