"""Asterisk's side of the FastAGI wire, sans I/O.

Everything here is checked against the Asterisk 22.10.1 golden transcripts
(../shared/golden/asterisk-22/agi): the env block order, LF line ends, the exact
result/usage/error texts. No sockets: the lab's AGI client (lab.agi_client) does the I/O.
"""
from __future__ import annotations

ASTERISK_VERSION = "22.10.1"
MAX_ARGS = 128  # res_agi.c MAX_ARGS

# Order is fixed by res_agi.c setup_env(); the golden env blocks always use it.
ENV_ORDER = (
    "network", "network_script", "request", "channel", "language", "type", "uniqueid",
    "version", "callerid", "calleridname", "callingpres", "callingani2", "callington",
    "callingtns", "dnid", "rdnis", "context", "extension", "priority", "enhanced",
    "accountcode", "threadid",
)

E_INVALID = "510 Invalid or unknown command\n"
E_DEAD = "511 Command Not Permitted on a dead channel or intercept routine\n"
HANGUP_LINE = "HANGUP\n"

# Exact usage texts seen in answer_stream_getdata (XML docs with markup left in).
USAGE = {
    "STREAM FILE": (
        "Send the given file, allowing playback to be interrupted by the given digits, if any. "
        "Returns <literal>0</literal> if playback completes without a digit being pressed, or the "
        "ASCII numerical value of the digit if one was pressed, or <literal>-1</literal> on error or "
        "if the channel was disconnected. If musiconhold is playing before calling stream file it "
        "will be automatically stopped and will not be restarted after completion.\n"
        "It sets the following channel variables upon completion:\n"
        "<variable>PLAYBACKSTATUS</variable>: The status of the playback attempt as a text string.\n"
        "    <value>SUCCESS</value>\n"
        "    <value>FAILED</value>"
    ),
    "WAIT FOR DIGIT": (
        "Waits up to <replaceable>timeout</replaceable> milliseconds for channel to receive a DTMF "
        "digit. Returns <literal>-1</literal> on channel failure, <literal>0</literal> if no digit is "
        "received in the timeout, or the numerical value of the ascii of the digit if one is received. "
        "Use <literal>-1</literal> for the <replaceable>timeout</replaceable> value if you desire the "
        "call to block indefinitely."
    ),
}


def format_env(env: dict[str, str], args: list[str] = ()) -> bytes:
    """The env block: ``agi_<name>: <value>\\n`` in ENV_ORDER, agi_arg_N, then one empty line.

    An empty value keeps the space after the colon (``agi_accountcode: \\n``) as Asterisk does.
    """
    missing = [k for k in ENV_ORDER if k not in env]
    if missing:
        raise KeyError(f"env block lacks {missing}")
    lines = [f"agi_{k}: {env[k]}\n" for k in ENV_ORDER]
    lines += [f"agi_arg_{i}: {a}\n" for i, a in enumerate(args, 1)]
    lines.append("\n")
    return "".join(lines).encode("latin-1", "replace")


def parse_args(line: str) -> list[str]:
    """Split a command line into words exactly like res_agi.c parse_args().

    Double quotes group (and ``""`` yields an empty word), a backslash makes the next
    character literal, quotes in the middle of a word do not split it.
    """
    words: list[list[str]] = []
    quoted = escaped = False
    whitespace = True
    for ch in line:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and whitespace:  # an opening quote after blanks starts a word ("" -> empty word)
                words.append([])
                whitespace = False
            continue
        if ch in " \t" and not quoted and not escaped:
            whitespace = True
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if whitespace:
            if len(words) >= MAX_ARGS - 1:  # res_agi: "Too many arguments, truncating"
                escaped = False
                continue
            words.append([])
            whitespace = False
        words[-1].append(ch)
        escaped = False
    return ["".join(w) for w in words]


def ok(result, data: str | None = None, endpos: int | None = None, extra: str | None = None) -> str:
    """``200 result=<r>[ (<data>)][ (<extra>)][ endpos=<n>]``.

    ``data`` is the parenthesised value (GET VARIABLE ...); ``extra`` a status word like
    ``timeout``/``dtmf``/``hangup`` that RECORD FILE and GET DATA put in parentheses.
    """
    s = f"200 result={result}"
    if data is not None:
        s += f" ({data})"
    if extra is not None:
        s += f" ({extra})"
    if endpos is not None:
        s += f" endpos={endpos}"
    return s + "\n"


def usage(command: str) -> list[str]:
    """520 block as separate writes (Asterisk sends the header, the text, the trailer)."""
    text = USAGE.get(command, f"Usage: {command} <arguments>  (see 'agi show commands' for details)")
    return [
        "520-Invalid command syntax.  Proper usage follows:\n",
        text + "\n",
        "520 End of proper usage.\n",
    ]


# res_agi.c command table: words -> allowed on a dead channel.
COMMANDS: dict[tuple[str, ...], bool] = {
    ("ANSWER",): False,
    ("ASYNCAGI", "BREAK"): True,
    ("CHANNEL", "STATUS"): False,
    ("CONTROL", "STREAM", "FILE"): False,
    ("DATABASE", "DEL"): True,
    ("DATABASE", "DELTREE"): True,
    ("DATABASE", "GET"): True,
    ("DATABASE", "PUT"): True,
    ("EXEC",): True,
    ("GET", "DATA"): False,
    ("GET", "FULL", "VARIABLE"): True,
    ("GET", "OPTION"): False,
    ("GET", "VARIABLE"): True,
    ("GOSUB",): False,
    ("HANGUP",): False,
    ("NOOP",): True,
    ("RECEIVE", "CHAR"): False,
    ("RECEIVE", "TEXT"): False,
    ("RECORD", "FILE"): False,
    ("SAY", "ALPHA"): False,
    ("SAY", "DATE"): False,
    ("SAY", "DATETIME"): False,
    ("SAY", "DIGITS"): False,
    ("SAY", "NUMBER"): False,
    ("SAY", "PHONETIC"): False,
    ("SAY", "TIME"): False,
    ("SEND", "IMAGE"): False,
    ("SEND", "TEXT"): False,
    ("SET", "AUTOHANGUP"): False,
    ("SET", "CALLERID"): False,
    ("SET", "CONTEXT"): False,
    ("SET", "EXTENSION"): False,
    ("SET", "MUSIC"): False,
    ("SET", "PRIORITY"): False,
    ("SET", "VARIABLE"): True,
    ("STREAM", "FILE"): False,
    ("TDD", "MODE"): False,
    ("VERBOSE",): True,
    ("WAIT", "FOR", "DIGIT"): False,
}


def find_command(argv: list[str]) -> tuple[tuple[str, ...], bool] | None:
    """Longest match of the leading words, case-insensitive like res_agi's find_command."""
    up = [a.upper() for a in argv]
    best = None
    for words, dead_ok in COMMANDS.items():
        if tuple(up[: len(words)]) == words and (best is None or len(words) > len(best[0])):
            best = (words, dead_ok)
    return best


def exec_end_fields(reply_first_line: str, handler_failed: bool) -> tuple[str, str]:
    """AGIExecEnd ResultCode/Result as res_agi derives them from the handler's return."""
    code = reply_first_line[:3]
    if code == "510":
        return "510", "Invalid or unknown command"
    if code == "511":
        return "511", "Command Not Permitted on a dead channel or intercept routine"
    if code == "520":
        return "520", "Usage"
    if handler_failed:
        return "-1", "Failure"
    return "200", "Success"
