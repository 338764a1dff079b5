"""ESL framing against every golden FreeSWITCH 1.10.12 transcript, and the encoders' refusals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import golden
from agi import esl_protocol as P

FS = golden.FREESWITCH
ALL = sorted(str(p.relative_to(FS)) for p in FS.glob("*/*.jsonl"))


def fs_bytes(rel: str) -> bytes:
    return golden.stream(golden.load(rel, FS), True)


def app_commands(rel: str) -> list[bytes]:
    return [r.raw for r in golden.load(rel, FS) if not r.from_pbx and r.data]


def test_golden_set_is_complete():
    assert len(ALL) == 14 and "outbound/outbound_socket_basic.jsonl" in ALL


@pytest.mark.parametrize("rel", ALL)
def test_every_transcript_parses_completely_and_events_reencode_byte_exact(rel):
    data = fs_bytes(rel)
    p = P.Parser()
    msgs = p.feed(data)
    assert p.buffered == 0 and not p.mid_message
    # FreeSWITCH's URL encoding reproduced: re-serialising each plain event gives the recorded bytes
    for m in msgs:
        if m.content_type == "text/event-plain":
            ev = P.parse_plain_event(m.body)
            pairs = [(k, v) for k, v in ev.pairs if not (k == "Content-Length" and ev.body)]
            assert P.serialize_event(pairs, ev.body if "Content-Length" in ev.headers else None) == m.body
            assert P.event_plain(pairs, ev.body if "Content-Length" in ev.headers else None) == \
                P.frame(m.headers, m.body)
    # byte-at-a-time segmentation gives the same messages
    q = P.Parser()
    one = [m for i in range(len(data)) for m in q.feed(data[i:i + 1])]
    assert [(m.headers, m.body) for m in one] == [(m.headers, m.body) for m in msgs]


def test_inbound_auth_tour_replies():
    msgs = P.Parser().feed(fs_bytes("inbound/inbound_auth.jsonl"))
    assert msgs[0].headers == [("Content-Type", "auth/request")]
    assert msgs[1].reply_text == "+OK accepted" and msgs[1].ok
    status = msgs[2]
    assert status.headers[0] == ("Content-Type", "api/response") and status.text.startswith("UP 0 years")
    assert msgs[3].text == "FreeSWITCH Version 1.10.12-release~64bit ( 64bit)\n"
    texts = [m.text for m in msgs if m.content_type == "api/response"]
    assert "\n0 total.\n" in texts and '{"row_count": 0}\n' in texts
    assert "127.0.0.1" in texts                      # global_getvar: no trailing newline
    assert "-ERR No such channel!\n" in texts
    bg = [m for m in msgs if m.content_type == "command/reply" and m.reply_text.startswith("+OK Job-UUID")]
    assert all(m.get("Job-UUID") == m.reply_text.split(": ")[1] for m in bg)
    jobs = [P.Event.from_message(m) for m in msgs if m.content_type in ("text/event-plain", "text/event-json")]
    bj = [e for e in jobs if e.name == "BACKGROUND_JOB"]
    assert bj[0]["Job-Command"] == "status" and bj[0].body.startswith("UP 0 years") and len(bj[0].body) == 337
    assert bj[1]["Job-UUID"] == "11111111-2222-3333-4444-555555555555"
    assert bj[2].body == "-ERR nosuchcommand Command not found!\n"
    assert any(e.name == "BACKGROUND_JOB" and e.body.startswith("UP") for e in jobs[3:])   # JSON _body
    assert msgs[-1].content_type == "text/disconnect-notice" and msgs[-1].text == P.DISCONNECT_BODY


def test_wrong_password_and_command_before_auth():
    msgs = P.Parser().feed(fs_bytes("inbound/inbound_auth_wrong_password.jsonl"))
    assert [m.reply_text for m in msgs[1:3]] == ["-ERR command not found", "-ERR invalid"]
    assert msgs[3].headers == [("Content-Type", "text/disconnect-notice"), ("Content-Length", "67")]


def test_connect_reply_is_one_url_encoded_header_block():
    msgs = P.Parser().feed(fs_bytes("outbound/outbound_socket_basic.jsonl"))
    c = msgs[0]
    assert c.is_connect_reply and c.body == b"" and c.reply_text == "+OK" and c.ok
    assert c.headers[-4:] == [("Content-Type", "command/reply"), ("Reply-Text", "%2BOK%0A"),
                              ("Socket-Mode", "async"), ("Control", "full")]
    ch = c.channel_data()
    assert ch["Unique-ID"] == "bcd027aa-133d-4ea2-b852-44bbf821ca93"
    assert ch["Channel-Name"] == "sofia/internal/1002@127.0.0.1"
    assert ch["variable_sip_full_from"] == '"1002" <sip:1002@127.0.0.1>;tag=17795SIPpTag001'
    assert ch["variable_current_application_data"] == "127.0.0.1:8084 async full"
    assert "Content-Type" not in ch
    linger = [m for m in msgs if m.content_type == "text/disconnect-notice"]
    assert linger[0]["Content-Disposition"] == "linger" and linger[0]["Linger-Time"] == "-1"
    assert linger[1]["Content-Disposition"] == "disconnect" and linger[1].text == P.DISCONNECT_BODY
    events = [P.Event.from_message(m) for m in msgs if m.content_type == "text/event-plain"]
    pagd = [e for e in events if e.name == "CHANNEL_EXECUTE_COMPLETE" and e["Application"] == "play_and_get_digits"][0]
    assert pagd.variable("golden_digits") == "12" and pagd["Application-Data"].endswith("golden_digits \\d+ 2000")
    assert [e["DTMF-Digit"] for e in events if e.name == "DTMF"] == ["1", "2", "#"]


# ---------------------------------------------------------------- encoders vs the recorded app bytes

@pytest.mark.parametrize("rel", [r for r in ALL if not r.endswith(".inbound_events.jsonl")])
def test_encoders_reproduce_every_recorded_command(rel):
    for raw in app_commands(rel):
        assert encode_like(raw) == raw, raw


def encode_like(raw: bytes) -> bytes:
    """Re-encode a recorded command with the module's encoders (not by copying it)."""
    text = raw.decode()
    first, *hdr_lines = text.rstrip("\n").split("\n")
    hdrs = dict(line.split(": ", 1) for line in hdr_lines)
    verb, _, arg = first.partition(" ")
    if verb == "connect":
        return P.connect()
    if verb == "myevents":
        return P.myevents()
    if verb == "linger":
        return P.linger(int(arg) if arg else None)
    if verb == "exit":
        return P.exit_()
    if verb == "auth":
        return P.auth(arg)
    if verb == "api":
        return P.api(arg)
    if verb == "bgapi":
        return P.bgapi(arg, hdrs.get("Job-UUID"))
    if verb == "sendmsg":
        return P.sendmsg_execute(hdrs["execute-app-name"], hdrs.get("execute-app-arg", ""),
                                 event_lock=hdrs.get("event-lock") == "true")
    if verb == "event":
        fmt, *words = arg.split()
        if "CUSTOM" in words:
            i = words.index("CUSTOM")
            return P.event(*words[:i], custom=words[i + 1:], fmt=fmt)
        return P.event(*words, fmt=fmt)
    if verb == "filter":
        if arg.startswith("delete "):
            h, v = arg[7:].split(" ", 1)
            return P.filter_delete(h, v)
        h, v = arg.split(" ", 1)
        return P.filter_(h, v)
    if verb == "nixevent":
        return P.nixevent(*arg.split())
    return P.command(verb, *arg.split())


# ---------------------------------------------------------------- refusals and bounds

@pytest.mark.parametrize("bad", ["x\nexit", "x\r\nContent-Length: 5", "x\0", "a\n\nauth x"])
def test_line_breaks_never_reach_the_wire(bad):
    with pytest.raises(P.ESLUsageError):
        P.api(bad)
    with pytest.raises(P.ESLUsageError):
        P.bgapi("status", job_uuid=bad)
    with pytest.raises(P.ESLUsageError):
        P.sendmsg_execute("playback", bad)
    with pytest.raises(P.ESLUsageError):
        P.filter_("Unique-ID", bad)
    with pytest.raises(P.ESLUsageError):
        P.auth(bad)


@pytest.mark.parametrize("app", ["play back", "playback\nexecute-app-name: system", "", "a:b"])
def test_application_and_header_names_are_checked(app):
    with pytest.raises(P.ESLUsageError):
        P.sendmsg_execute(app, "x")
    with pytest.raises(P.ESLUsageError):
        P.command("sendmsg", headers=[(app or "x y", "v")])


def test_event_names_before_custom_and_validated():
    assert P.event("RECORD_START", "BACKGROUND_JOB", custom=["conference::maintenance"]) == \
        b"event plain RECORD_START BACKGROUND_JOB CUSTOM conference::maintenance\n\n"
    for bad in ("CUSTOM", "A B", "X\n"):
        with pytest.raises(P.ESLUsageError):
            P.event(bad)
    with pytest.raises(P.ESLUsageError):
        P.event()


def test_sendmsg_carries_event_uuid_and_lock():
    data = P.sendmsg_execute("playback", "a b.wav", event_lock=True, event_uuid="u-1")
    assert data == (b"sendmsg\ncall-command: execute\nexecute-app-name: playback\n"
                    b"execute-app-arg: a b.wav\nevent-lock: true\nEvent-UUID: u-1\n\n")


def test_oversized_and_malformed_messages_are_refused():
    with pytest.raises(P.ESLProtocolError):
        P.Parser(max_header=1024).feed(b"Content-Type: text/event-plain\nX: " + b"a" * 2000)
    with pytest.raises(P.ESLProtocolError):
        P.Parser(max_body=100).feed(b"Content-Type: api/response\nContent-Length: 101\n\n")
    with pytest.raises(P.ESLProtocolError):
        P.Parser().feed(b"Content-Type: api/response\nContent-Length: -1\n\n")
    with pytest.raises(P.ESLProtocolError):
        P.Parser().feed(b"GET / HTTP/1.1\nHost: x\n\n")
    p = P.Parser()
    assert p.feed(b"Content-Type: api/response\nContent-Length: 10\n\n12345") == []
    assert p.mid_message   # a close here cuts a message


def test_url_encode_matches_switch_url_encode():
    assert P.url_encode("+OK\n") == "%2BOK%0A"
    assert P.url_encode("tone_stream://%(1000,0,440);loops=2") == "tone_stream%3A//%25(1000,0,440)%3Bloops%3D2"
    assert P.url_encode("fd00::2") == "fd00%3A%3A2"
    assert P.url_encode("50%AB") == "50%AB"          # FreeSWITCH does not double-encode %XX
    assert P.url_encode("日本") == "%E6%97%A5%E6%9C%AC"
    assert P.url_decode("%E6%97%A5%E6%9C%AC") == "日本"
