"""Drop root once the capture handles are open.

Opening an AF_PACKET socket needs CAP_NET_RAW; reading the already-open ring does not. So the
daemon opens its interfaces as root, then becomes an unprivileged user for the months it runs:
supplementary groups first, then the gid, then the uid (the order matters — after ``setuid`` the
process may no longer change its groups). ``PR_SET_NO_NEW_PRIVS`` stops a later exec from
regaining privilege through set-uid binaries or file capabilities.

Example::

    >>> drop_privileges("")          # no user configured: nothing to do
    False
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd

PR_SET_NO_NEW_PRIVS = 38


class PrivilegeError(RuntimeError):
    """The configured user/group cannot be used (one line)."""


def resolve(user: str, group: str = "") -> tuple[int, int, list[int], str]:
    """``(uid, gid, supplementary gids, name)`` for a user name or number; group defaults to its primary."""
    try:
        pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise PrivilegeError(f"daemon.user: no such user {user!r}") from None
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid if not group.isdigit() else grp.getgrgid(int(group)).gr_gid
        except KeyError:
            raise PrivilegeError(f"daemon.group: no such group {group!r}") from None
        groups = [gid]
    else:
        gid = pw.pw_gid
        groups = os.getgrouplist(pw.pw_name, gid)
    return pw.pw_uid, gid, groups, pw.pw_name


def drop_privileges(user: str, group: str = "") -> bool:
    """Become ``user`` (and ``group``) for good; return True when the identity changed.

    Not root and asked to become someone else → :class:`PrivilegeError` (a daemon started by hand
    as a normal user with ``user`` set would otherwise run with unexpected rights).
    """
    if not user:
        return False
    uid, gid, groups, name = resolve(user, group)
    if os.geteuid() != 0:
        if os.geteuid() == uid:
            return False
        raise PrivilegeError(f"daemon.user: cannot switch to {name!r} without root")
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)  # real, effective and saved uid: no way back
    if os.getuid() != uid or os.geteuid() != uid:
        raise PrivilegeError(f"daemon.user: switch to {name!r} did not take effect")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError("daemon.user: could regain root after dropping privileges")
    _no_new_privs()
    os.environ["HOME"] = pwd.getpwuid(uid).pw_dir
    return True


def _no_new_privs() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the uid switch above is what matters
        pass
