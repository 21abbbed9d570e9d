"""`cloud-selector users ...`: the people who may sign in to the dashboard.

users add NAME --role ROLE [--password-file FILE]   create (asks for the password twice without a file)
users list                                           name, role, created, disabled
users disable NAME                                   refuse sign-in from now on; open sessions end
users set-role NAME ROLE                             reviewer | labeler | admin; applies at once
users set-password NAME [--password-file FILE]       a new password; open sessions end

Roles, each allowed what the one before it is: reviewer (read only), labeler (label, queue,
reject, tag), admin (promote, roll back, pin, rollouts, selection runs). A password file holds
the password on its first line and must not be readable by others (chmod 600).
"""

from __future__ import annotations

import argparse
import getpass
import stat
import sys
from datetime import datetime, timezone
from pathlib import Path

from cloud_selector.users import ROLES


def read_password_file(path: Path) -> str:
    """The first line of `path`; refuses a file others may read (raises PermissionError)."""
    mode = path.stat().st_mode
    if mode & stat.S_IROTH:
        raise PermissionError(f"{path} is readable by everyone (mode {stat.S_IMODE(mode):o}): `chmod 600 {path}` "
                              "and try again")
    lines = path.read_text().splitlines()
    if not lines or not lines[0]:
        raise ValueError(f"{path} is empty: write the password on its first line")
    return lines[0]


def ask_password(name: str) -> str:
    """Prompt twice (not echoed); raises ValueError when the two differ."""
    first = getpass.getpass(f"password for {name}: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ: nothing was changed")
    return first


def _password(args) -> str:
    return read_password_file(args.password_file) if args.password_file else ask_password(args.name)


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if ms else "-"


def cmd_users(args, s) -> int:
    from cloud_selector.users import UserError, UserStore

    store = UserStore(s.catalog)
    try:
        if args.action == "add":
            user = store.add(args.name, _password(args), args.role)
            print(f"added {user.name} ({user.role}); they sign in on the dashboard "
                  "(`cloud-selector serve --dashboard-address HOST:PORT`)")
        elif args.action == "list":
            print("name\trole\tcreated\tdisabled")
            for user in store.list():
                print(f"{user.name}\t{user.role}\t{_when(user.created_ms)}\t{_when(user.disabled_ms)}")
        elif args.action == "disable":
            user = store.disable(args.name)
            print(f"disabled {user.name} (since {_when(user.disabled_ms)}); their open sessions have ended")
        elif args.action == "set-role":
            user = store.set_role(args.name, args.role)
            print(f"{user.name} is now {user.role}")
        else:
            user = store.set_password(args.name, _password(args))
            print(f"new password for {user.name}; their open sessions have ended")
    except (UserError, ValueError) as exc:
        print(f"cloud-selector: error: {exc}", file=sys.stderr)
        return 2
    return 0


def add_users_parser(sub) -> None:
    p = sub.add_parser("users", help="dashboard users: add, list, disable, set-role, set-password",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    users_sub = p.add_subparsers(dest="action", required=True)
    u = users_sub.add_parser("add", help="create a user")
    u.add_argument("name", metavar="NAME", help="1-64 of A-Z a-z 0-9 . _ -")
    u.add_argument("--role", choices=ROLES, required=True)
    u.add_argument("--password-file", type=Path, metavar="FILE",
                   help="read the password from FILE's first line (mode 600); default: ask twice")
    users_sub.add_parser("list", help="every user with role, created and disabled times (UTC)")
    u = users_sub.add_parser("disable", help="refuse sign-in from now on (open sessions end)")
    u.add_argument("name", metavar="NAME")
    u = users_sub.add_parser("set-role", help="change a user's role (applies at their next request)")
    u.add_argument("name", metavar="NAME")
    u.add_argument("role", choices=ROLES)
    u = users_sub.add_parser("set-password", help="set a new password (open sessions end)")
    u.add_argument("name", metavar="NAME")
    u.add_argument("--password-file", type=Path, metavar="FILE", help="as for add")
    p.set_defaults(func=cmd_users)
