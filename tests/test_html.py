"""The timeline, its plot, and the HTML report — rendered in headless Chromium."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser

import pytest

import synthetic_live as live
from tracer import account, recording, timeline

FOOTPRINT = [sys.executable, "-m", "tracer"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PLOT_RGB = tuple(int(timeline.COLOURS[0][i:i + 2], 16) for i in (1, 3, 5))  # largest band
# A name that would run script if it reached the page raw: any of these changes the title.
HOSTILE = ("<script>document.title='pwned'</script>"
           "<img src=x onerror=\"document.title='pwned'\">&amp;")


# --- the timeline ----------------------------------------------------------------------


@pytest.mark.parametrize("writer", [live.write_live, live.write_plain])
def test_timeline_is_the_account_at_every_sample(tmp_path, writer):
    rec = recording.read(writer(tmp_path / "r.jsonl"))
    frame = timeline.build(rec)
    assert len(frame) == len(rec.samples)
    for i in range(len(rec.samples)):
        want = account.build(rec, i).by("subsystem").set_index("subsystem")["resident_mib"]
        want = want[want != 0].to_dict()
        got = frame.iloc[i][timeline.subsystems(frame)]
        assert got[got != 0].to_dict() == pytest.approx(want)
        assert got.sum() == pytest.approx(frame.iloc[i]["nonfree_mib"])


def test_timeline_times_and_phases(tmp_path):
    rec = recording.read(live.write_live(tmp_path / "r.jsonl"))
    boot = timeline.build(rec)
    assert list(boot["t_s"]) == [s["t"] for s in rec.samples]
    assert [p["name"] for p in boot.attrs["phases"]] == ["initqueue", "switch_root"]
    start = timeline.build(rec, origin="start")
    assert start["t_s"].iloc[0] == 0
    assert start.attrs["phases"][0]["t_s"] == pytest.approx(rec.phases[0]["t"] - rec.samples[0]["t"])
    # the root file system is read in over the samples: squashfs grows
    assert list(boot["squashfs"]) == sorted(boot["squashfs"]) and boot["squashfs"].iloc[-1] > 0


def test_plot_png_has_the_largest_band(tmp_path):
    from PIL import Image

    frame = timeline.build(recording.read(live.write_live(tmp_path / "r.jsonl")))
    timeline.plot(frame, str(tmp_path / "p.png"))
    assert _pixels_of(Image.open(tmp_path / "p.png"), PLOT_RGB) > 5000


def test_thousands_of_phases_draw_every_line_and_only_labels_that_fit(tmp_path):
    """20 000 marks took 121 s as one line and one label each; labels now keep at least
    their own height apart (the speed itself is a benchmark: html_seconds_20k_phases)."""
    frame = timeline.build(recording.read(live.write_live(tmp_path / "r.jsonl")))
    frame.attrs["phases"] = [{"t_s": 2.0 + i * 2.0 / 20_000, "name": f"m{i}"} for i in range(20_000)]
    kept = timeline._spaced(frame.attrs["phases"], frame["t_s"], pixels=1100)
    assert 10 <= len(kept) <= 1100 // 12 + 1
    gaps = [b["t_s"] - a["t_s"] for a, b in zip(kept, kept[1:])]
    assert min(gaps) >= (4.0 - 2.0) * 12 / 1100 - 1e-9
    timeline.plot(frame, str(tmp_path / "p.png"))  # every line drawn, in one collection
    assert (tmp_path / "p.png").stat().st_size > 1000


# --- the HTML report -------------------------------------------------------------------


def _pixels_of(img, rgb) -> int:
    import numpy as np

    return int((np.asarray(img.convert("RGB")) == rgb).all(axis=-1).sum())


def _chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("chromium is not installed (scripts/setup installs it)")
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    cmd = [CHROMIUM, "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args]
    if os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


class _Page(HTMLParser):
    """Tags, attributes and text of a DOM as Chromium dumps it after scripts ran."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.text, self.title, self._in_title = [], [], "", False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_title = tag == "title" and "body" not in (t for t, _ in self.tags)  # not an SVG <title>

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_title:
            self.title += data


@pytest.fixture
def hostile_report(tmp_path):
    """`footprint html` of a live recording whose file path, dm name, phase name and
    hostname are all HOSTILE, compared against a plain one; with the plot as PNG too."""
    rec = live.write_live(tmp_path / "live.jsonl", hostile=HOSTILE)
    plain = live.write_plain(tmp_path / "plain.jsonl")
    out, png = tmp_path / "report.html", tmp_path / "plot.png"
    t = time.monotonic()
    subprocess.run(FOOTPRINT + ["html", rec, "-o", str(out), "--png", str(png), "--compare", plain],
                   check=True, capture_output=True, text=True)
    return out, png, time.monotonic() - t


def _scripts(page: str) -> list[str]:
    return re.findall(r"<script[^>]*>(.*?)</script>", page, flags=re.S | re.I)


def test_html_is_self_contained_and_names_are_escaped(hostile_report):
    out, png, seconds = hostile_report
    page = out.read_text(encoding="utf-8")
    assert HOSTILE not in page
    assert html.escape(HOSTILE, quote=True) in page  # shown, as text
    markup = re.sub(r"(<script[^>]*>).*?</script>", r"\1</script>", page, flags=re.S | re.I)
    assert re.search(r"\b(src|href)\s*=\s*\"(?!data:)", markup) is None and "<link" not in markup
    assert "http://" not in markup and "https://" not in markup  # (plotly.js names URLs it never fetches)
    # the page's own scripts only: plotly.js, the data block, the lines that draw
    tags = re.findall(r"<script[^>]*>", page, flags=re.I)
    assert tags == ["<script type=\"application/json\" id=\"timeline-data\">", "<script>", "<script>"]
    data = _scripts(page)[0]
    assert "<" not in data and ">" not in data and "&" not in data  # nothing can end the block
    figure = __import__("json").loads(data)["figure"]
    assert any("pwned" in a["text"] for a in figure["layout"]["annotations"]) or any(
        "pwned" in t for d in figure["data"] for t in d.get("text", []))
    for section in ("In use (MemTotal − MemFree)", "unattributed", "Account by subsystem",
                    "Account by storage layer", "Top files", "The same data cached at several layers",
                    "squashfs claims", "device-mapper claims", "Probes active", "map drops",
                    "Against the plain recording", 'id="chain"', 'id="timeline"'):
        assert section in page, section
    csp = re.search(r'Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp.split("script-src")[1]
    assert png.read_bytes().startswith(b"\x89PNG")
    assert seconds < 30


def _dom(tmp_path, url: str) -> tuple[_Page, str]:
    """The DOM after the scripts ran, and Chromium's log (console messages included)."""
    r = _chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
                  "--dump-dom", url)
    assert r.returncode == 0 and "</html>" in r.stdout, r.stderr[-2000:]
    parsed = _Page()
    parsed.feed(r.stdout)
    return parsed, r.stderr


def _console_errors(log: str) -> list[str]:
    """Console messages and blocked scripts in Chromium's log (its own dbus noise aside)."""
    return [x for x in log.splitlines()
            if re.search(r"CONSOLE|Uncaught|Content Security Policy|Refused to", x)]


def test_html_runs_only_its_own_script_and_shows_names_as_text(hostile_report, tmp_path):
    out, _, _ = hostile_report
    parsed, log = _dom(tmp_path, out.resolve().as_uri())
    assert _console_errors(log) == []
    assert parsed.title == "footprint: live.jsonl"  # the payloads would have set 'pwned'
    tags = [t for t, _ in parsed.tags]
    assert "img" not in tags  # a hostile <img onerror> never became an element
    assert not any(k.startswith("on") for _, a in parsed.tags for k in a)
    text = "".join(parsed.text)
    assert HOSTILE in text  # the name reads as itself, inert (tables)
    # the chart ran (Plotly's SVG is there) and set the hostile phase name as text too
    assert any("main-svg" in a.get("class", "") for _, a in parsed.tags)
    assert sum(HOSTILE[:40] in t for t in parsed.text) >= 2


def test_html_chain_timeline_and_screenshot(tmp_path):
    """A live recording against a plain one: the chain shows the layers with their
    numbers, the timeline its phases; the screenshot stays in the test's tmp dir."""
    from PIL import Image

    from tracer import chain, render_html

    rec_p = live.write_live(tmp_path / "live.jsonl")
    plain = live.write_plain(tmp_path / "plain.jsonl")
    out = tmp_path / "report.html"
    subprocess.run(FOOTPRINT + ["html", rec_p, "-o", str(out), "--compare", plain],
                   check=True, capture_output=True)
    parsed, log = _dom(tmp_path, out.resolve().as_uri())
    assert _console_errors(log) == []
    text = "\n".join(parsed.text)
    rec = recording.read(rec_p)
    boxes = chain.chain(rec, account.build(rec))["boxes"]
    assert [b["name"] for b in boxes] == ["sr0", "iso9660 on sr0", "loop0", "squashfs on loop0", "loop1",
                                         "dm live-rw", "ext4 on dm live-rw"]
    for b in boxes:
        assert f"{b['mib']:.1f} MiB" in text and b["name"][:19] in text
    assert "the same data, cached at 3 layers" in text and "ext4 on vda" in text
    for phase in rec.phases:  # Plotly's labels in the chart
        assert phase["name"] in text
    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1800", "--virtual-time-budget=10000",
              out.resolve().as_uri())
    img = Image.open(shot)
    assert img.size == (1280, 1800)
    initramfs = render_html.BAND_COLOURS[timeline.INITRAMFS]
    rgb = tuple(int(initramfs[i:i + 2], 16) for i in (1, 3, 5))
    assert _pixels_of(img, rgb) > 2000  # the timeline is drawn, the tracer's initramfs its own band


def test_timeline_command(tmp_path):
    rec = live.write_live(tmp_path / "live.jsonl")
    csv = subprocess.run(FOOTPRINT + ["timeline", rec], check=True, capture_output=True, text=True).stdout
    head = csv.splitlines()[0].split(",")
    assert head[:2] == ["t_s", "nonfree_mib"] and "squashfs" in head and len(csv.splitlines()) == 4


def test_recorder_imports_none_of_this():
    """The recorder runs in early boot without matplotlib: it must not pull in the
    report side (nor pandas) when it is imported with the CLI."""
    code = ("import sys, tracer.cli, tracer.recorder, tracer.sampler; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'PIL', 'pandas') "
            "or m in ('tracer.timeline', 'tracer.render_html', 'tracer.answer', 'tracer.compare')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


@pytest.mark.bpf
def test_real_recording_timeline_and_html(tmp_path):
    """Record on this host for real, then: the timeline equals the account at the first
    and last sample, and the HTML report is written."""
    if os.geteuid() != 0:
        pytest.skip("needs root to load BPF")
    rec_path = tmp_path / "host.jsonl"
    subprocess.run(FOOTPRINT + ["record", "-o", str(rec_path), "-d", "2", "-i", "0.25", "--no-inventory",
                                "--marks", str(tmp_path / "marks")],
                   check=True, capture_output=True, text=True, timeout=300)
    rec = recording.read(str(rec_path))
    frame = timeline.build(rec)
    for i in (0, -1):
        want = account.build(rec, i).by("subsystem").set_index("subsystem")["resident_mib"]
        got = frame.iloc[i][timeline.subsystems(frame)]
        assert got[got != 0].to_dict() == pytest.approx(want[want != 0].to_dict())
    out = tmp_path / "host.html"
    subprocess.run(FOOTPRINT + ["html", str(rec_path), "-o", str(out)], check=True, capture_output=True)
    assert "Account by subsystem" in out.read_text(encoding="utf-8")


def test_phase_labels_never_overlap():
    """Marks one second apart (sysinit and basic land 0.2 s apart in real boots): each
    label is in a lane where it ends before the next one starts, or left unlabelled."""
    from tracer import render_html as R

    phases = [{"t_s": t, "name": n} for t, n in
              [(46.5, "attached"), (49.3, "cmdline"), (51.7, "pre-udev"), (89.6, "sysinit"),
               (89.8, "basic"), (97.6, "multi-user")] + [(100 + i * 0.1, f"m{i}") for i in range(40)]]
    x = [45.0, 140.0]
    lanes = R._lanes(phases, x)
    per_px = (max(x + [p["t_s"] for p in phases]) - 45.0) / R.PLOT_WIDTH_PX
    ends: dict = {}
    for p, lane in zip(phases, lanes):
        if lane is None:
            continue
        assert p["t_s"] >= ends.get(lane, float("-inf"))
        ends[lane] = p["t_s"] + (len(p["name"]) * R.LABEL_CHAR_PX + 8) * per_px
    assert lanes[3] is not None and lanes[4] is not None and lanes[3] != lanes[4]
    assert max(n for n in lanes if n is not None) < R.MAX_LANES
