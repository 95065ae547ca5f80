"""The lab's reading of a traced boot's later moments (vm/traced.py, vm/workloads.py): where
the early-boot recorder has stopped and left its account pinned, each moment's sample is a
snapshot of the pinned maps (in the guest); where it still runs (rd.footprint.stop=never),
its own next sample is waited for. A stand-in guest answers the commands as the guest
would in each state."""

from __future__ import annotations

from vm import traced, workloads


class Guest:
    """Answers g.run() like a guest where the account is `pinned`, the stop file is
    `stopped` and the recorder `alive`; records the snapshots asked for."""

    def __init__(self, pinned: bool, stopped: bool, alive: bool):
        self.pinned, self.stopped, self.alive = pinned, stopped, alive
        self.snapshots: list[str] = []

    def run(self, cmd, timeout=None, check=False):
        if isinstance(cmd, list):
            if cmd[:2] == ["python3", "-c"] and "snapshot" in cmd[2]:
                self.snapshots.append(cmd[3])
                return 0, b"", b""
            if cmd[:2] == ["python3", "-c"] and "CLOCK_BOOTTIME" in cmd[2]:  # workloads.mark
                return 0, b'{"t": 100.0, "meminfo": "MemTotal: 2000 kB\\nMemFree: 1000 kB\\nMemAvailable: 1500 kB\\n"}', b""
            if cmd[0] == "free":
                return 0, b"", b""
        if cmd.startswith("test -e /run/footprint/pinned.json"):
            return (0 if self.pinned else 1), b"", b""
        if cmd.startswith("test -e /run/footprint/stop"):
            return (0 if self.stopped else 1), b"", b""
        if cmd.startswith("cat /run/footprint/recorder.pid"):
            return 0, b"165\n", b""
        if cmd.startswith("kill -0"):
            return (0 if self.alive else 1), b"", b""
        raise AssertionError(f"unexpected command {cmd!r}")


def test_a_pinned_account_gives_each_moment_a_snapshot(monkeypatch):
    monkeypatch.setattr(workloads.time, "sleep", lambda s: None)
    g = Guest(pinned=True, stopped=True, alive=False)
    moments = workloads.run_moments(g, ["after-boot"], snapshot=traced.pinned_snapshot)
    assert g.snapshots == ["after-boot"] and moments[0].name == "after-boot"


def test_a_running_recorder_samples_by_itself(monkeypatch):
    monkeypatch.setattr(traced.time, "sleep", lambda s: None)
    for g in (Guest(pinned=True, stopped=False, alive=True),    # rd.footprint.stop=never
              Guest(pinned=False, stopped=False, alive=True)):  # not pinned at all
        assert traced.pinned_snapshot(g, "after-read") is False and g.snapshots == []
