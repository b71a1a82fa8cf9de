#!/usr/bin/env python3
"""Fault injection for the Spark test: ``kill_once.py MARKER_DIR COMMAND...``.

Put before tidings in the pipe command. The first invocation to claim
``MARKER_DIR/killed`` starts COMMAND, passes on its first two output lines,
then kills itself with SIGKILL, as if the task's process died part way
(the tidings child then finds its output closed and ends quietly). Every
other invocation runs COMMAND as it is. Each invocation appends a line to
``MARKER_DIR/attempts.log``.
"""

import os
import signal
import subprocess
import sys


def main() -> None:
    marker_dir, command = sys.argv[1], sys.argv[2:]
    with open(os.path.join(marker_dir, "attempts.log"), "a") as log:
        log.write(f"{os.getpid()}\n")
    try:
        fd = os.open(os.path.join(marker_dir, "killed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        os.execvp(command[0], command)
    os.close(fd)
    child = subprocess.Popen(command, stdout=subprocess.PIPE)
    for _ in range(2):
        line = child.stdout.readline()
        if not line:
            break
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
