#!/usr/bin/env python3
"""Shift the ownership of every file below ROOT by +SHIFT (uid and gid).

Usage: shift-owner.py ROOT SHIFT [RANGE]

* Only ids below RANGE are shifted (ids already >= SHIFT are left alone), so
  the script is idempotent and safe to re-run after an interruption.
* Hard links are shifted once (tracked by inode).
* Symlinks are changed with lchown and never followed.
* chown clears setuid/setgid bits and file capabilities; both are restored:
  the mode is re-applied and a security.capability xattr is re-written as a
  v3 (namespaced) capability whose rootid is SHIFT, so that it is honoured
  inside a user namespace whose root is host uid SHIFT.
"""
import os
import stat
import struct
import sys

CAP_XATTR = "security.capability"
VFS_CAP_REVISION_MASK = 0xFF000000
VFS_CAP_REVISION_2 = 0x02000000
VFS_CAP_REVISION_3 = 0x03000000
VFS_CAP_FLAGS_EFFECTIVE = 0x000001


def read_caps(path):
    try:
        return os.getxattr(path, CAP_XATTR, follow_symlinks=False)
    except OSError:
        return None


def to_v3(raw, rootid):
    magic = struct.unpack_from("<I", raw, 0)[0]
    rev = magic & VFS_CAP_REVISION_MASK
    if rev not in (VFS_CAP_REVISION_2, VFS_CAP_REVISION_3):
        return raw
    flags = magic & VFS_CAP_FLAGS_EFFECTIVE
    p0, i0, p1, i1 = struct.unpack_from("<IIII", raw, 4)
    return struct.pack("<IIIIII", VFS_CAP_REVISION_3 | flags, p0, i0, p1, i1, rootid)


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    root = sys.argv[1]
    shift = int(sys.argv[2])
    id_range = int(sys.argv[3]) if len(sys.argv) > 3 else 65536
    seen = set()
    counts = {"files": 0, "shifted": 0, "modes": 0, "caps": 0}

    def handle(path):
        st = os.lstat(path)
        key = (st.st_dev, st.st_ino)
        counts["files"] += 1
        if key in seen:
            return
        seen.add(key)
        uid, gid = st.st_uid, st.st_gid
        nuid = uid + shift if uid < id_range else uid
        ngid = gid + shift if gid < id_range else gid
        if (nuid, ngid) == (uid, gid):
            return
        is_link = stat.S_ISLNK(st.st_mode)
        caps = None if is_link or not stat.S_ISREG(st.st_mode) else read_caps(path)
        os.lchown(path, nuid, ngid)
        counts["shifted"] += 1
        if not is_link:
            mode = stat.S_IMODE(st.st_mode)
            if mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX):
                os.chmod(path, mode)
                counts["modes"] += 1
        if caps is not None:
            os.setxattr(path, CAP_XATTR, to_v3(caps, shift), follow_symlinks=False)
            counts["caps"] += 1

    handle(root)
    for dirpath, dirnames, filenames in os.walk(root, topdown=True, followlinks=False):
        for name in dirnames + filenames:
            handle(os.path.join(dirpath, name))

    print("shifted %(shifted)d of %(files)d entries; re-applied %(modes)d "
          "setuid/setgid/sticky modes, %(caps)d file capabilities" % counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
