#!/usr/bin/python3
"""footprint's guest agent: line-delimited JSON over the virtio-serial port
org.footprint.agent (/dev/virtio-ports/org.footprint.agent, found through sysfs so it
works before udev made the symlink). It runs from the code disk (/opt/footprint), started
by footprint-agent.service; agetty's vhangup() on ttyS0 cannot touch it.

Request  {"id": N, "op": "exec", "argv": [...] | "sh": "...", "timeout": S,
          "stdin_b64": "...", "env": {...}}
         {"id": N, "op": "ping"} | {"op": "read", "path": P} | {"op": "write", "path": P,
          "data_b64": ..., "mode": 0o644} | {"op": "wait_system", "timeout": S}
         | {"op": "poweroff"}
Reply    {"id": N, "rc": RC, "stdout_b64": ..., "stderr_b64": ..., "error": "..."?}
         (read: "data_b64"; wait_system: stdout is the state, e.g. "running\\n")
Each request runs in its own thread, so a long one (a recorder) does not block others.
"""

import base64
import glob
import json
import os
import subprocess
import sys
import threading
import time

PORT_NAME = "org.footprint.agent"
_wlock = threading.Lock()


def find_port(timeout=120.0):
    deadline = time.monotonic() + timeout
    tried_modprobe = False
    while time.monotonic() < deadline:
        link = "/dev/virtio-ports/" + PORT_NAME
        if os.path.exists(link):
            return link
        for name_file in glob.glob("/sys/class/virtio-ports/*/name"):
            try:
                with open(name_file) as f:
                    if f.read().strip() == PORT_NAME:
                        dev = "/dev/" + name_file.split("/")[-2]
                        if os.path.exists(dev):
                            return dev
            except OSError:
                pass
        if not tried_modprobe:
            tried_modprobe = True
            subprocess.run(["modprobe", "virtio_console"], stderr=subprocess.DEVNULL)
        time.sleep(0.2)
    raise SystemExit("footprint-agent: no virtio-serial port " + PORT_NAME)


def b64(data):
    return base64.b64encode(data or b"").decode()


def reply(fd, obj):
    data = (json.dumps(obj) + "\n").encode()
    with _wlock:
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except InterruptedError:
                continue
            except OSError:
                time.sleep(0.1)  # host not connected (EAGAIN/EPIPE): retry briefly
                continue
            view = view[n:]


def do_exec(req):
    if "sh" in req:
        argv = ["/bin/sh", "-c", req["sh"]]
    else:
        argv = req["argv"]
    env = dict(os.environ)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["PYTHONPATH"] = "/opt/footprint" + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(req.get("env") or {})
    stdin = base64.b64decode(req["stdin_b64"]) if req.get("stdin_b64") else None
    timeout = req.get("timeout")
    try:
        p = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                             cwd=req.get("cwd") or "/", start_new_session=True)
    except OSError as err:
        return {"rc": 127, "stdout_b64": "", "stderr_b64": b64(str(err).encode()), "error": str(err)}
    try:
        out, err = p.communicate(stdin, timeout=timeout)
        return {"rc": p.returncode, "stdout_b64": b64(out), "stderr_b64": b64(err)}
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, 9)
        except OSError:
            pass
        out, err = p.communicate()
        return {"rc": -9, "stdout_b64": b64(out), "stderr_b64": b64(err),
                "error": "timeout after %s s" % timeout}


def handle(fd, req):
    op = req.get("op", "exec")
    try:
        if op == "ping":
            res = {"rc": 0, "pid": os.getpid(), "uptime": open("/proc/uptime").read().split()[0]}
        elif op == "exec":
            res = do_exec(req)
        elif op == "read":
            with open(req["path"], "rb") as f:
                res = {"rc": 0, "data_b64": b64(f.read())}
        elif op == "write":
            path = req["path"]
            os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
            with open(path, "wb") as f:
                f.write(base64.b64decode(req.get("data_b64", "")))
            os.chmod(path, req.get("mode", 0o644))
            res = {"rc": 0}
        elif op == "wait_system":
            res = do_exec({"argv": ["systemctl", "is-system-running", "--wait"],
                           "timeout": req.get("timeout")})
        elif op == "poweroff":
            reply(fd, {"id": req.get("id"), "rc": 0})
            time.sleep(0.2)
            subprocess.Popen(["systemctl", "poweroff"], start_new_session=True)
            return
        else:
            res = {"rc": 2, "error": "unknown op %r" % op}
    except Exception as err:  # noqa: BLE001 - every failure goes back to the host
        res = {"rc": 1, "error": "%s: %s" % (type(err).__name__, err)}
    res["id"] = req.get("id")
    reply(fd, res)


def main():
    path = find_port()
    fd = os.open(path, os.O_RDWR)
    print("footprint-agent: listening on %s (pid %d)" % (path, os.getpid()), file=sys.stderr)
    buf = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except InterruptedError:
            continue
        except OSError:
            time.sleep(0.2)
            continue
        if not chunk:  # host not connected: read returns 0 at once
            time.sleep(0.2)
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                req = json.loads(line)
            except ValueError:
                continue
            threading.Thread(target=handle, args=(fd, req), daemon=True).start()


if __name__ == "__main__":
    main()
