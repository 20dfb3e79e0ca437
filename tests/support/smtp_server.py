#!/usr/bin/env python3
"""A real SMTP server on loopback for earlywarn's integration tests.

Built on aiosmtpd so the daemon talks to a genuine SMTP implementation
(pipelining, dot-stuffing, STARTTLS, AUTH) rather than a hand-rolled fake.

    python3 tests/support/smtp_server.py --port 0 --maildir DIR \
        [--tls none|starttls|implicit] [--cert PEM --key PEM] \
        [--auth USER:PASS] \
        [--mode accept|reject550|temp451|tarpit|stall-after-data] \
        [--host 127.0.0.1]

Contract with tests/support/mod.rs:
  * stdout carries exactly one line, `READY <port>`, once the socket is
    listening. Everything else (aiosmtpd's log) goes to stderr.
  * accepted messages land as DIR/<6-digit seq>.json, written atomically so
    a poller never sees half a file. Numbering continues after any files
    already there, so a server restarted on the same maildir never
    overwrites what an earlier one received.
  * DIR/connections.log gets one line (unix epoch seconds) per TCP
    connection, DIR/attempts.log one line per MAIL FROM. Retry tests count
    connections; with a pooling client, MAIL FROM is the better measure of
    delivery attempts.
"""

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import ssl
import sys
import time

try:
    from aiosmtpd.smtp import SMTP, AuthResult
except ImportError:  # pragma: no cover - reported to the Rust harness
    sys.stderr.write(
        "smtp_server.py: the Python package 'aiosmtpd' is missing; "
        "run scripts/test (or: pip install aiosmtpd)\n"
    )
    sys.exit(3)

MODES = ("accept", "reject550", "temp451", "tarpit", "stall-after-data")
SEQ_FILE = re.compile(r"^(\d{6})\.json$")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--maildir", required=True)
    p.add_argument("--tls", choices=("none", "starttls", "implicit"), default="none")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--auth", metavar="USER:PASS")
    p.add_argument("--mode", choices=MODES, default="accept")
    # Fault modes for tests/smtp_faults.rs; each file is looked at on every
    # command, so a test changes the server's behaviour without a restart.
    p.add_argument("--reject-rcpt-file", metavar="FILE",
                   help="550 to RCPT TO for every address listed (one a line) in FILE, while it exists")
    p.add_argument("--auth-fail-while-exists", metavar="FILE",
                   help="535 to AUTH, whatever the password, while FILE exists")
    p.add_argument("--reject-data-while-exists", metavar="FILE",
                   help="554 at the end of DATA while FILE exists")
    p.add_argument("--helo-log", metavar="FILE",
                   help="append the name given in each EHLO to FILE")
    p.add_argument("--idle-timeout", type=float, default=300, metavar="SECONDS",
                   help="close a session idle this long (aiosmtpd's timeout; default 300); logs `connection timeout`")
    p.add_argument("--reject-non-fqdn-helo", action="store_true",
                   help="504 to an EHLO name without a dot that is not an address literal (Postfix's reject_non_fqdn_helo_hostname)")
    args = p.parse_args(argv)
    if args.tls != "none" and not (args.cert and args.key):
        p.error(f"--tls {args.tls} needs --cert and --key")
    if args.auth is not None and ":" not in args.auth:
        p.error("--auth must be USER:PASS")
    return args


def append_line(path, line):
    # One write of one short line in append mode: concurrent readers see
    # whole lines, and nothing is buffered past the call.
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def decode_message(raw: bytes) -> str:
    # Strict UTF-8 first. Not surrogateescape: json.dumps would then emit lone
    # surrogate escapes, which serde_json (the reader) refuses. Latin-1 maps
    # every byte, so it is a lossless fallback for 8-bit junk.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class Maildir:
    """Numbered JSON files, one per accepted message."""

    def __init__(self, path):
        self.path = path
        os.makedirs(path, exist_ok=True)
        existing = [int(m.group(1)) for m in map(SEQ_FILE.match, os.listdir(path)) if m]
        self.seq = max(existing, default=0)

    def store(self, record: dict) -> str:
        self.seq += 1
        name = f"{self.seq:06d}.json"
        tmp = os.path.join(self.path, f".{name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, ensure_ascii=False, indent=1)
        os.replace(tmp, os.path.join(self.path, name))
        return name


class Handler:
    """aiosmtpd event handler; the failure modes are decided here."""

    def __init__(self, mode, maildir: Maildir, args=None):
        self.mode = mode
        self.maildir = maildir
        self.args = args

    def _rejected_rcpts(self):
        path = getattr(self.args, "reject_rcpt_file", None)
        if not path:
            return set()
        try:
            with open(path, encoding="utf-8") as f:
                return {line.strip().lower() for line in f if line.strip()}
        except FileNotFoundError:
            return set()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        # aiosmtpd's new-style hook: we must record the name ourselves.
        session.host_name = hostname
        helo_log = getattr(self.args, "helo_log", None)
        if helo_log:
            append_line(helo_log, hostname)
        if getattr(self.args, "reject_non_fqdn_helo", False):
            if "." not in hostname and not hostname.startswith("["):
                return [f"504 5.5.2 <{hostname}>: Helo command rejected: need fully-qualified hostname"]
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        append_line(os.path.join(self.maildir.path, "attempts.log"), f"{time.time():.6f}")
        # Defining handle_MAIL makes us responsible for what aiosmtpd would
        # otherwise do itself.
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.mode == "reject550":
            return "550 5.1.1 Mailbox unavailable (test server in reject550 mode)"
        if address.lower() in self._rejected_rcpts():
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        received_at = time.time()
        if self.mode == "temp451":
            return "451 4.3.0 Try again later (test server in temp451 mode)"
        marker = getattr(self.args, "reject_data_while_exists", None)
        if marker and os.path.exists(marker):
            return "554 5.7.1 Message rejected (test server: reject-data marker present)"
        if self.mode == "stall-after-data":
            # Swallow the message and never answer: the client must time out.
            # aiosmtpd's 300 s idle timeout eventually drops the connection;
            # a test's client gives up long before that.
            await asyncio.Event().wait()
        auth_user = session.auth_data if session.authenticated else None
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "received_at": received_at,
            "data": decode_message(envelope.original_content or b""),
            "tls": bool(getattr(server, "is_tls", False) or session.ssl is not None),
            "auth_user": auth_user,
        }
        name = self.maildir.store(record)
        return f"250 2.0.0 OK queued as {name}"


class TestSMTP(SMTP):
    """aiosmtpd's SMTP, told whether the socket was TLS from the first byte."""

    def __init__(self, *a, implicit_tls=False, **kw):
        super().__init__(*a, **kw)
        # With implicit TLS aiosmtpd never sets session.ssl (that is for
        # STARTTLS), so record it ourselves for the `tls` field.
        self.is_tls = implicit_tls


class Tarpit(asyncio.Protocol):
    """Accepts the TCP connection, then says nothing at all."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        pass  # ignore whatever the client tries


def make_authenticator(user: str, password: str, fail_while_exists=None):
    def authenticate(server, session, envelope, mechanism, auth_data):
        # auth_data is a LoginPassword of bytes for both PLAIN and LOGIN.
        ok = (
            not (fail_while_exists and os.path.exists(fail_while_exists))
            and auth_data is not None
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        # handled=False lets aiosmtpd answer 535 on failure.
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    return authenticate


def tls_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


async def serve(args):
    loop = asyncio.get_running_loop()
    maildir = Maildir(args.maildir)
    handler = Handler(args.mode, maildir, args)
    conn_log = os.path.join(args.maildir, "connections.log")
    transports = set()  # so shutdown can cut stalled and tarpitted clients

    smtp_kwargs = dict(
        # A fixed name: socket.getfqdn() can stall for seconds on DNS.
        hostname="localhost",
        decode_data=False,
        enable_SMTPUTF8=True,
        timeout=args.idle_timeout,
    )
    starttls_ctx = None
    implicit_ctx = None
    if args.tls == "starttls":
        starttls_ctx = tls_context(args.cert, args.key)
        smtp_kwargs["tls_context"] = starttls_ctx
    elif args.tls == "implicit":
        implicit_ctx = tls_context(args.cert, args.key)

    if args.auth is not None:
        user, password = args.auth.split(":", 1)
        smtp_kwargs.update(
            authenticator=make_authenticator(user, password, args.auth_fail_while_exists),
            auth_required=True,
            # aiosmtpd only counts STARTTLS as "TLS", so with implicit TLS (or
            # none at all) AUTH must be allowed without it.
            auth_require_tls=(args.tls == "starttls"),
        )

    class Tracked:
        """Wraps a protocol factory: log and remember every connection."""

        def __init__(self, inner):
            self.inner = inner

        def __call__(self):
            append_line(conn_log, f"{time.time():.6f}")
            proto = self.inner()
            orig = proto.connection_made

            def connection_made(transport, _orig=orig):
                transports.add(transport)
                return _orig(transport)

            proto.connection_made = connection_made
            return proto

    if args.mode == "tarpit":
        factory = Tracked(Tarpit)
    else:
        factory = Tracked(
            lambda: TestSMTP(handler, implicit_tls=implicit_ctx is not None, **smtp_kwargs)
        )

    server = await loop.create_server(
        factory, host=args.host, port=args.port, ssl=implicit_ctx, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1]

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    print(f"READY {port}", flush=True)
    await stop.wait()

    server.close()
    # Do not await server.wait_closed(): from Python 3.12 it waits for every
    # client to leave, which a stalled or tarpitted client never does.
    for t in list(transports):
        t.abort()
    await asyncio.sleep(0)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s smtp_server %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(args))
    except OSError as e:  # e.g. the fixed port is still taken
        sys.stderr.write(f"smtp_server.py: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
