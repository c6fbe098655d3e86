#!/usr/bin/env python3
"""A real SMTP server on loopback for the integration tests (aiosmtpd).

usage: smtp_server.py PORT OUTFILE [FAIL_FIRST CODE [USER PASSWORD]]

Every accepted message is appended to OUTFILE as one JSON line
{"mail_from": ..., "rcpt_tos": [...], "data": "<the raw message>"}. With FAIL_FIRST and
CODE, the first FAIL_FIRST messages are refused at DATA with that SMTP reply code (451 is
transient, 550 permanent). With USER and PASSWORD, AUTH (PLAIN or LOGIN) with exactly those
credentials is required before MAIL (allowed without TLS: this is loopback). Prints "ready" once it accepts connections; runs until killed.

SMTP_DELAY_MS (environment) delays every DATA answer: a slow relay (scripts/bench-latency.sh).
TLS (environment): SMTP_TLS=starttls (STARTTLS required before MAIL) or implicit (TLS from
the first byte, as smtps://), with the certificate chain and key in SMTP_CERT and SMTP_KEY.
"""
import asyncio
import json
import os
import ssl
import sys
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class Recorder:
    def __init__(self, outfile, fail_first, code):
        self.outfile = outfile
        self.fail_left = fail_first
        self.code = code

    async def handle_DATA(self, server, session, envelope):
        delay_ms = int(os.environ.get("SMTP_DELAY_MS", "0"))
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if self.fail_left > 0:
            self.fail_left -= 1
            return f"{self.code} refused by the test server"
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", errors="replace"),
        }
        with open(self.outfile, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
        return "250 OK"


def main():
    # AUTH without TLS is deliberate here (loopback only); keep the test output clean.
    warnings.filterwarnings("ignore")
    port = int(sys.argv[1])
    outfile = sys.argv[2]
    fail_first = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    code = sys.argv[4] if len(sys.argv) > 4 else "451"
    auth = {}
    if len(sys.argv) > 6:
        user, password = sys.argv[5].encode(), sys.argv[6].encode()

        def authenticator(server, session, envelope, mechanism, auth_data):
            return AuthResult(success=(auth_data.login, auth_data.password) == (user, password))

        auth = {"auth_required": True, "auth_require_tls": False, "authenticator": authenticator}
    tls = {}
    mode = os.environ.get("SMTP_TLS")
    if mode:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(os.environ["SMTP_CERT"], os.environ["SMTP_KEY"])
        if mode == "starttls":
            tls = {"tls_context": context, "require_starttls": True}
        else:
            tls = {"ssl_context": context}
    controller = Controller(
        Recorder(outfile, fail_first, code), hostname="127.0.0.1", port=port, **auth, **tls
    )
    controller.start()
    print("ready", flush=True)
    try:
        asyncio.new_event_loop().run_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
