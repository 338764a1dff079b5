import pytest

from cti.caller_id import NUMBER, PAYPHONE, UNAVAILABLE, WITHHELD, classify


@pytest.mark.parametrize("number, name, pres, expect", [
    ("0223984894", "0223984894", "0", NUMBER),              # the golden SIP call
    ("09012345678", "", 1, NUMBER),
    ("+81223984894", None, None, NUMBER),
    ("anonymous", "Anonymous", "0", WITHHELD),              # NTT: 非通知
    ("0223984894", "", "32", WITHHELD),                     # presentation prohibited, number still sent
    ("", "", "35", WITHHELD),
    ("anonymous", "Coin line/payphone", "0", PAYPHONE),     # NTT: 公衆電話
    ("", "公衆電話", None, PAYPHONE),
    ("anonymous", "Interaction with other service", "0", UNAVAILABLE),   # NTT: 表示圏外
    ("unavailable", "Unavailable", "0", UNAVAILABLE),
    ("unknown", "unknown", "0", UNAVAILABLE),               # Asterisk's placeholder when nothing came
    ("", "", "67", UNAVAILABLE),                            # number not available
    ("12", "", "0", UNAVAILABLE),
    ("022;398", "", "0", UNAVAILABLE),
])
def test_classify(number, name, pres, expect):
    assert classify(number, name, pres) == expect
