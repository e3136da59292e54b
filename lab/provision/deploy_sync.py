"""Run on the Airflow host by `lab/lab deploy`: python3 -c "$(this)" ROOT DIGEST < bundle.tar

Makes ROOT's managed trees (the top-level entries of the tar) exactly the tar's
content, in place: changed files are replaced atomically (write + rename),
files gone from the tar are deleted, untouched files keep their inode and mtime.
The folders never disappear, so the dag-processor never sees DAGs vanish.
Prints the number of files changed. Standard library only (Debian's python3).
"""

import os
import sys
import tarfile

root, digest = sys.argv[1], sys.argv[2]
stamp = os.path.join(root, ".deployed")
os.makedirs(root, mode=0o755, exist_ok=True)
wanted, tops, changed = set(), set(), 0
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
    for member in tar:
        rel = os.path.normpath(member.name)
        if rel.startswith(("..", "/")):
            raise SystemExit(f"deploy: bad path in bundle: {member.name}")
        tops.add(rel.split(os.sep)[0])
        wanted.add(rel)
        path = os.path.join(root, rel)
        if member.isdir():
            os.makedirs(path, exist_ok=True)
            os.chmod(path, member.mode)
            continue
        data = tar.extractfile(member).read()
        try:
            with open(path, "rb") as f:
                same = f.read() == data and (os.stat(path).st_mode & 0o7777) == member.mode
        except OSError:
            same = False
        if same:
            continue
        tmp = f"{path}.deploy-tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, member.mode)
        os.replace(tmp, path)
        changed += 1
for top in tops:
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, top), topdown=False):
        for name in filenames + dirnames:
            path = os.path.join(dirpath, name)
            if os.path.relpath(path, root) not in wanted:  # bottom-up: a dir is empty by now
                if os.path.isdir(path) and not os.path.islink(path):
                    os.rmdir(path)
                else:
                    os.unlink(path)
                changed += 1
with open(stamp + ".tmp", "w") as f:
    f.write(digest + "\n")
os.replace(stamp + ".tmp", stamp)
print(changed)
