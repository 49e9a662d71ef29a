"""`python -m sesphr_client`: a small SeSPHR command line, mirroring the Rust `sesphr`.

Machine-readable results go to stdout, messages to stderr; a failure exits 1
with one readable line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import unicodedata
from datetime import datetime, timezone
from pathlib import Path

import grpc

from . import crypto
from .client import (ClientError, Invitation, MeshFile, Operator, Patient, Profile, Session, enroll,
                     own_fingerprint, reenroll, role_name, spiffe_id, write_atomically)


def parse_time(s: str) -> int:
    if s == "now":
        return int(time.time())
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ClientError(f"{s!r} is not `now` or an RFC 3339 time like 2027-01-01T00:00:00Z") from None
    if t.tzinfo is None:
        raise ClientError(f"{s!r} has no time zone (RFC 3339 needs one, e.g. Z)")
    return int(t.timestamp())


def parse_duration(s: str) -> int:
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    num, unit = s[:-1], s[-1:]
    if unit not in units or not num.isdigit() or int(num) <= 0:
        raise ClientError(f"{s!r} is not a duration like 30d, 12h, 15m or 90s")
    return int(num) * units[unit]


def printable(text: str) -> str:
    """AccessPolicy's text with what a terminal would act on (controls, bidi overrides)
    escaped, as the Rust CLI prints it (`char::escape_default`)."""
    bidi = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
    named = {"\t": "\\t", "\r": "\\r", "\n": "\\n"}
    return "".join(named.get(c, f"\\u{{{ord(c):x}}}")
                   if unicodedata.category(c) == "Cc" or ord(c) in bidi else c for c in text)


def fmt_time(t: int) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sesphr-py", description="Share encrypted health records on a "
                                "SeSPHR mesh (Python client)")
    p.add_argument("--mesh", default=os.environ.get("SESPHR_MESH"),
                   help="the mesh.toml (sesphrd dev writes DIR/mesh.toml); env SESPHR_MESH")
    p.add_argument("--home", default=os.environ.get("SESPHR_HOME"),
                   help="your profile directory; env SESPHR_HOME")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("enroll", help="create keys locally and get a client certificate")
    e.add_argument("--id", required=True)
    e.add_argument("--role", required=True)
    e.add_argument("--invitation", "--invite", default=os.environ.get("SESPHR_INVITATION", ""),
                   help="the invitation you were given (env SESPHR_INVITATION); a patient may "
                   "enroll without one where the mesh allows self-registration")
    re_ = sub.add_parser("reenroll", help="enrol the profile in --home again (after its "
                         "certificate expired or its TLS key was lost): the same id, role and "
                         "keys, proven by a signature of your registered key; a new TLS key and "
                         "certificate on a new device, and the previous device is removed")
    re_.add_argument("--invitation", "--invite", default=os.environ.get("SESPHR_INVITATION", ""),
                     help="an operator's re-invitation, only where the mesh asks for one (env "
                     "SESPHR_INVITATION)")
    dev = sub.add_parser("devices", help="your devices: each has its own TLS key and "
                         "certificate for the same id and keys")
    dsub = dev.add_subparsers(dest="devices_command", required=True)
    dsub.add_parser("list", help="list your devices (`*` marks this one): name, when it was "
                    "added, when its certificate expires")
    drm = dsub.add_parser("remove", help="remove one of your devices (a lost or retired "
                          "machine): every certificate it got is revoked at once; run it from "
                          "another device")
    drm.add_argument("name", help="the device's name (`devices list`)")
    inv = sub.add_parser("invite", help="invite a family member or friend (patients); prints "
                         "the invitation, which works once")
    inv.add_argument("--id", required=True)
    inv.add_argument("--role", required=True, help="family or friend")
    inv.add_argument("--valid-for", "--for", dest="for_", help="30d, 12h, 15m, 90s (default "
                     "7d, at most 30d)")
    sub.add_parser("renew", help="renew your client certificate before it expires (prints its "
                   "new expiry)")
    adm = sub.add_parser("admin", help="operator commands, with an operator certificate")
    adm.add_argument("--cert", required=True, help="the operator certificate (sesphrd dev: "
                     "DIR/pki/operator.pem)")
    adm.add_argument("--key", required=True, help="its key (sesphrd dev: DIR/pki/operator.key)")
    adm.add_argument("--ca", help="the CA the servers' certificates chain to (default: the mesh "
                     "file's ca)")
    asub = adm.add_subparsers(dest="admin_command", required=True)
    ai = asub.add_parser("invite", help="invite a user with any role, or re-invite an enrolled "
                         "one; prints the invitation, which works once")
    ai.add_argument("--id", required=True)
    ai.add_argument("--role", required=True)
    ai.add_argument("--valid-for", "--for", dest="for_", help="30d, 12h, 15m, 90s (default 7d, "
                    "at most 30d)")
    for name, what in (("disable", "refuse every call of a user, on every service, within "
                        "seconds, and deny every grant to it"),
                       ("enable", "let a disabled user in again")):
        a = asub.add_parser(name, help=what)
        a.add_argument("--id", required=True)
        a.add_argument("--reason", default="", help="for the audit trail (at most 256 bytes)")
    u = sub.add_parser("upload", help="encrypt and upload a file; prints the record id")
    u.add_argument("--partition", required=True)
    u.add_argument("file", type=Path)
    g = sub.add_parser("get", help="download and decrypt a record (to stdout without -o)")
    g.add_argument("record_id")
    g.add_argument("-o", "--output", type=Path)
    gr = sub.add_parser("grant", help="grant a user access to one of your partitions")
    gr.add_argument("--partition", required=True)
    gr.add_argument("--to", required=True)
    exp = gr.add_mutually_exclusive_group()
    exp.add_argument("--expires", help="expiry as RFC 3339")
    exp.add_argument("--for", dest="for_", help="expiry as a duration from now: 30d, 12h, 15m, 90s")
    gr.add_argument("--not-before", help="records created before this stay closed: now or RFC 3339")
    r = sub.add_parser("revoke", help="withdraw a grant, then rotate the partition so that new "
                       "records are under a key the revoked user never had a path to")
    r.add_argument("--partition", required=True)
    r.add_argument("--from", dest="from_", required=True)
    r.add_argument("--no-rotate", action="store_true",
                   help="keep the current key epoch (until the next rotation, the SRS together "
                   "with the revoked user could still open new records)")
    ro = sub.add_parser("rotate", help="move a partition to a new key epoch for later uploads")
    ro.add_argument("--partition", required=True)
    sub.add_parser("retry", help="send the re-encryption nodes the kfrag shares and deletions "
                   "they missed (also done before every grant, revoke and rotate)")
    ls = sub.add_parser("ls", help="list records you may see")
    ls.add_argument("--owner", default="")
    ls.add_argument("--partition", default="")
    a = sub.add_parser("audit", help="your audit trail (seq, time, actor, action, owner, "
                       "partition, subject, outcome, detail)")
    a.add_argument("--verify", action="store_true",
                   help="also check it against the audit log: a witnessed checkpoint that "
                        "extends your pinned one, and an inclusion proof for every entry")
    sub.add_parser("grants", help="grants given and received; for your own grants, also where "
                   "AccessPolicy's list disagrees with the ledger in your profile")
    w = sub.add_parser("whois", help="a user's keys as the SRS presents them, their fingerprint "
                       "and whether they match the keys your profile pinned")
    w.add_argument("user_id")
    t = sub.add_parser("trust", help="pin a user's keys after checking their fingerprint with "
                       "them out of band")
    t.add_argument("user_id")
    t.add_argument("--fingerprint", required=True)
    return p


_SESSIONS: list[Session] = []


def opened(session: Session) -> Session:
    """Remembers a session so that its notices (what went wrong at single re-encryption
    nodes while the command succeeded) are printed on stderr at the end."""
    _SESSIONS.append(session)
    return session


def print_notices() -> None:
    for session in _SESSIONS:
        for notice in session.take_notices():
            print(f"sesphr-py: note: {notice}", file=sys.stderr)
    _SESSIONS.clear()


def need(value, what: str):
    if not value:
        raise ClientError({"mesh": "no mesh: pass --mesh FILE or set SESPHR_MESH",
                           "home": "no profile: pass --home DIR or set SESPHR_HOME"}[what])
    return value


def print_invitation(inv: Invitation, user_id: str, role: str) -> None:
    again = " (a re-invitation: the same keys enroll again with `reenroll`)" \
        if inv.reenrollment else ""
    print(f"invitation for {user_id} as {role}{again}, until {fmt_time(inv.expires_at)}; hand "
          "it over out of band: it works once and is shown only now", file=sys.stderr)
    print(inv.invitation)


def run_admin(args, mesh: MeshFile) -> None:
    with Operator(mesh, args.cert, args.key, args.ca) as op:
        if args.admin_command == "invite":
            secs = parse_duration(args.for_) if args.for_ else 0
            print_invitation(op.invite(args.id, args.role, secs), args.id, args.role)
        else:
            resp = (op.disable if args.admin_command == "disable" else op.enable)(
                args.id, args.reason)
            state = "disabled" if args.admin_command == "disable" else "enabled"
            print(f"{args.id} {state}" + ("" if resp.changed else " (it already was)")
                  + f"; deny list version {resp.version}", file=sys.stderr)


def run_reenroll(args, mesh: MeshFile, home: Path) -> None:
    notices: list[str] = []
    not_after = reenroll(mesh, home, args.invitation, notices)
    prof = Profile(home)
    for notice in notices:
        print(f"sesphr-py: note: {notice}", file=sys.stderr)
    print(f"enrolled {prof.user_id} again on a new device; certificate valid until "
          f"{fmt_time(not_after)}", file=sys.stderr)
    print(spiffe_id(prof.trust_domain, prof.role, prof.user_id))


def run_devices(args, mesh: MeshFile, home: Path) -> None:
    with opened(Session(mesh, home)) as s:
        if args.devices_command == "list":
            for d in s.list_devices():
                print(f"{'*' if d.current else ' '} {d.name}\tadded {fmt_time(d.added_at)}\t"
                      f"certificate until {fmt_time(d.not_after)}")
            return
        until = s.remove_device(args.name)
        who = spiffe_id(s.profile.trust_domain, s.profile.role, s.user_id)
    extra = (f": its certificates are revoked (they would have expired at {fmt_time(until)})"
             if until > 0 else "")
    print(f"removed device {args.name} of {who}{extra}", file=sys.stderr)


def run_enroll(args, mesh: MeshFile, home: Path) -> None:
    try:
        prof = enroll(mesh, home, args.id, args.role, args.invitation)
    except ClientError as e:
        if e.code == grpc.StatusCode.PERMISSION_DENIED and not args.invitation.strip():
            raise ClientError(f"{e} (pass the invitation you were given: --invitation)",
                              e.code) from None
        raise
    print(f"enrolled {prof.user_id} as {prof.role}", file=sys.stderr)
    print(f"your key fingerprint: {own_fingerprint(prof)} (tell it to those who grant to you "
          "or read your records)", file=sys.stderr)
    print(spiffe_id(prof.trust_domain, prof.role, prof.user_id))


def run(args) -> None:
    mesh = MeshFile.load(need(args.mesh, "mesh"))
    if args.command == "admin":
        run_admin(args, mesh)
        return
    home = Path(need(args.home, "home"))
    if args.command == "enroll":
        run_enroll(args, mesh, home)
    elif args.command == "reenroll":
        run_reenroll(args, mesh, home)
    elif args.command == "devices":
        run_devices(args, mesh, home)
    elif args.command == "invite":
        secs = parse_duration(args.for_) if args.for_ else 0
        with opened(Session(mesh, home)) as s:
            inv = s.invite(args.id, args.role, secs)
        print_invitation(inv, args.id, args.role)
    elif args.command == "renew":
        with opened(Session(mesh, home)) as s:
            not_after = s.renew_certificate()
        print(f"certificate renewed until {fmt_time(not_after)}", file=sys.stderr)
        print(not_after)
    elif args.command == "upload":
        with opened(Patient(mesh, home)) as patient, open(args.file, "rb") as f:
            length = os.fstat(f.fileno()).st_size
            rec = patient.upload(args.partition, f, length)
        print(f"stored {length} bytes in {args.partition} (epoch {rec.epoch})", file=sys.stderr)
        print(rec.record_id)
    elif args.command == "get":
        with opened(Session(mesh, home)) as s:
            if args.output:
                write_atomically(args.output, s, args.record_id)
            else:
                s.download(args.record_id, sys.stdout.buffer)
    elif args.command == "grant":
        expires = (parse_time(args.expires) if args.expires
                   else int(time.time()) + parse_duration(args.for_) if args.for_ else None)
        not_before = parse_time(args.not_before) if args.not_before else None
        with opened(Patient(mesh, home)) as patient:
            g = patient.grant(args.partition, args.to, not_before=not_before, expires_at=expires)
            fp = patient.pins.pinned_fingerprint(args.to) or "unknown"
        extra = f", records from {fmt_time(g.not_before)}" if g.not_before else ""
        extra += f", until {fmt_time(g.expires_at)}" if g.HasField("expires_at") else ""
        print(f"granted {g.grantee_id} ({role_name(g.grantee_role)}, key fingerprint {fp}) "
              f"{g.partition} from epoch {g.epoch_min}{extra}", file=sys.stderr)
    elif args.command == "revoke":
        p, who = args.partition, args.from_
        with opened(Patient(mesh, home)) as patient:
            patient.revoke(p, who)
            if args.no_rotate:
                print(f"revoked {who}'s access to {p} (not rotated: run `rotate --partition {p}` "
                      f"before writing records {who} must not read)", file=sys.stderr)
                return
            try:
                epoch = patient.rotate(p)
            except ClientError as e:
                raise ClientError(f"revoked {who}'s access to {p}, but the rotation failed; run "
                                  f"`rotate --partition {p}`: {e}") from None
        print(f"revoked {who}'s access to {p}; new records use key epoch {epoch}", file=sys.stderr)
    elif args.command == "rotate":
        with opened(Patient(mesh, home)) as patient:
            epoch = patient.rotate(args.partition)
        print(f"{args.partition} now uses key epoch {epoch} for new records", file=sys.stderr)
        print(epoch)
    elif args.command == "retry":
        with opened(Patient(mesh, home)) as patient:
            still = patient.retry_pending()
        print(f"{still} node operation(s) still owed" if still else "no node operation owed",
              file=sys.stderr)
        print(still)
    elif args.command == "whois":
        with opened(Session(mesh, home)) as s:
            keys, status, pinned = s.whois(args.user_id)
        print(f"{keys.user_id}\t{keys.role}\t{keys.fingerprint()}")
        print({"pinned": "pinned (matches the keys you used before)",
               "new": "not pinned yet (pinned on first use)",
               "changed": f"CHANGED: you pinned {pinned}; check with {args.user_id} before "
                          "`trust`"}[status], file=sys.stderr)
    elif args.command == "trust":
        with opened(Session(mesh, home)) as s:
            keys = s.trust(args.user_id, args.fingerprint)
        print(f"pinned {keys.user_id} ({keys.role}) {keys.fingerprint()}", file=sys.stderr)
    elif args.command == "ls":
        with opened(Session(mesh, home)) as s:
            for r in s.list(args.owner, args.partition):
                print(f"{r.record_id}\t{r.owner_id}\t{r.partition}\t{r.epoch}\t"
                      f"{fmt_time(r.created_at)}\t{r.ciphertext_size}")
    elif args.command == "audit":
        with opened(Session(mesh, home)) as s:
            entries = s.audit_entries()
            for e in entries:
                fields = [e.actor, e.action, e.owner_id, e.partition, e.subject, e.outcome,
                          e.detail]
                print("\t".join([str(e.seq), fmt_time(e.time)] + [printable(f) for f in fields]))
            if args.verify:
                head = s.audit_checkpoint()
                size = head.checkpoint.size
                covered = [e for e in entries if e.seq <= size]
                s.prove_entries(covered, head)
                names = sorted({c.witness for c in head.cosignatures})
                print(f"audit log verifies: {len(covered)} of your entries are in the checkpoint "
                      f"of size {size} (root {head.checkpoint.root.hex()}, cosigned by "
                      f"{', '.join(names) or 'no witness'}), which extends the one pinned "
                      f"before; {len(entries) - len(covered)} newer not in a checkpoint yet",
                      file=sys.stderr)
    elif args.command == "grants":
        disagreements: list[str] = []
        if Profile(home).role == "patient":  # a patient also checks its own ledger
            with opened(Patient(mesh, home)) as patient:
                g, disagreements = patient.audit_grants()
        else:
            with opened(Session(mesh, home)) as s:
                g = s.grants()
        for direction, lst in (("given", g.given), ("received", g.received)):
            for x in lst:
                expires = fmt_time(x.expires_at) if x.HasField("expires_at") else "never"
                print(f"{direction}\t{x.owner_id}\t{x.partition}\t{x.grantee_id}\t"
                      f"{role_name(x.grantee_role)}\tepoch_min {x.epoch_min}\t"
                      f"not_before {fmt_time(x.not_before)}\texpires {expires}")
        for d in disagreements:
            print(f"ledger disagrees: {d}", file=sys.stderr)
        if disagreements:
            raise ClientError(f"AccessPolicy's grants disagree with your ledger in "
                              f"{len(disagreements)} place(s); rotations follow your ledger")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ClientError, crypto.CryptoError, OSError) as e:
        print_notices()
        print(f"sesphr-py: {e}", file=sys.stderr)
        return 1
    print_notices()
    return 0
