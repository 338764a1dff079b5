"""What the caller's number says about the caller: a number, withheld (非通知), a payphone
(公衆電話), or unavailable (表示圏外 / not delivered).

Japanese carriers deliver the reason a number is missing in the From header (NTT's Hikari Denwa:
user "anonymous" or display "Anonymous", "Coin line/payphone", "Interaction with other service",
"Unavailable"); Asterisk hands it over as agi_callerid / agi_calleridname and the presentation
byte agi_callingpres (0x20 bit: presentation prohibited; 0x40: number not available).
"""
from __future__ import annotations

import re

NUMBER, WITHHELD, PAYPHONE, UNAVAILABLE = "number", "withheld", "payphone", "unavailable"
CLASSES = (NUMBER, WITHHELD, PAYPHONE, UNAVAILABLE)

_DIGITS = re.compile(r"^\+?[0-9]{3,20}$")


def classify(number: str | None, name: str | None = None, presentation: str | int | None = None) -> str:
    num = (number or "").strip()
    text = f"{num} {name or ''}".lower()
    if "payphone" in text or "coin line" in text or "公衆電話" in text:
        return PAYPHONE
    try:
        pres = int(presentation) if presentation not in (None, "") else 0
    except (TypeError, ValueError):
        pres = 0
    # NTT sends user "anonymous" for every reason; the display name tells which
    if "interaction with other service" in text or "unavailable" in text or "表示圏外" in text:
        return UNAVAILABLE
    if pres & 0x60 == 0x20 or "anonymous" in text or "非通知" in text:
        return WITHHELD
    if pres & 0x60 == 0x40 or not _DIGITS.match(num):
        return UNAVAILABLE
    return NUMBER
