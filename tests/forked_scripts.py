"""Run Python scripts as `python script.py args...` runs them, each in a process forked from one interpreter
that has already imported what the scripts import.

Starting Python and importing numpy, matplotlib, scikit-learn and nnx takes about a second, more than most
example scripts' quick runs take on their own. This server imports the modules named on its command line
once; each script then runs in a child forked from it, as `__main__`, with its own `sys.argv`, `sys.path[0]`
(the script's folder), standard streams (files) and an ordinary interpreter exit (atexit handlers, flushed
streams, the exit status of an uncaught exception or `sys.exit`). What differs from a fresh `python` is only
that the preloaded modules are already in `sys.modules`.

    python tests/forked_scripts.py --jobs N [--error-on WARNING_CLASS] MODULE...

Requests, one JSON object a line on stdin until it closes: {"id", "script", "args", "stdout", "stderr",
"timeout_s"}. Replies, one a line on stdout as each script ends: {"id", "returncode"}, negative for a signal
(a script still running after its `timeout_s` is ended by SIGALRM). At most N scripts run at a time.
Linux only: fork after imports is what it relies on, and other platforms' system libraries do not promise it.
"""

from __future__ import annotations

import argparse
import builtins
import importlib
import json
import os
import runpy
import signal
import sys
import warnings


def _run_as_main(request: dict, error_on: list[str]) -> None:
    """In the forked child: become `python script args...` and run the script; never return to the server."""
    signal.alarm(int(request["timeout_s"]))  # SIGALRM's default action ends the child: a hang cannot hang the suite
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # not the server's stdin, the request pipe
    script = os.path.abspath(request["script"])
    sys.argv = [script, *request["args"]]
    sys.path[0] = os.path.dirname(script)
    for name in error_on:  # `python -W error::RuntimeWarning`
        warnings.filterwarnings("error", category=getattr(builtins, name))
    runpy.run_path(script, run_name="__main__")
    raise SystemExit(0)  # an uncaught exception or sys.exit() leaves the interpreter the same way, with its status


def serve(jobs: int, error_on: list[str]) -> None:
    """Read every request, then run them, `jobs` at a time, replying as each ends."""
    requests = [json.loads(line) for line in sys.stdin if line.strip()]
    running: dict[int, str] = {}
    while requests or running:
        if requests and len(running) < jobs:
            request = requests.pop(0)
            sys.stdout.flush()  # the child must not write out the server's buffered replies
            pid = os.fork()
            if pid == 0:
                _run_as_main(request, error_on)
            running[pid] = request["id"]
            continue
        pid, status = os.wait()
        print(json.dumps({"id": running.pop(pid), "returncode": os.waitstatus_to_exitcode(status)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--error-on", action="append", default=[], help="a warning class to raise as an error")
    parser.add_argument("modules", nargs="*", help="modules to import before any script runs")
    args = parser.parse_args()
    for module in args.modules:
        importlib.import_module(module)
    serve(args.jobs, args.error_on)


if __name__ == "__main__":
    main()
