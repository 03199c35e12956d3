"""Pack a wheelhouse into one tar whose bytes depend only on the wheels' names and
contents (sorted, fixed times, owners and modes): the role copies it to a host as one
file, and only when it changed. Runs on the controller: pack_wheelhouse.py FOLDER OUT."""

import sys
import tarfile
from pathlib import Path

EPOCH = 315532800  # 1980-01-01, as the role's SOURCE_DATE_EPOCH


def pack(folder: Path, out: Path) -> None:
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(folder.iterdir()):
            if not path.is_file():  # pip's --find-links reads the top level only
                continue
            with path.open("rb") as data:  # what a link points to, as a plain file
                info = tar.gettarinfo(arcname=path.name, fileobj=data)
                info.mtime, info.mode = EPOCH, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                tar.addfile(info, data)


if __name__ == "__main__":
    pack(Path(sys.argv[1]), Path(sys.argv[2]))
