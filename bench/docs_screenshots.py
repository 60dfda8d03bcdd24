"""Make the pictures in docs/: the live view of a loaded `infergate up`, and the Grafana dashboard's
layout rendered from its JSON.

    .venv/bin/python bench/docs_screenshots.py            # writes docs/img/liveview.png, dashboard.png

The live view is a real one: `infergate up` on free ports, `infergate bench --url` sending the
tutorial's traffic, and headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) taking
the picture while requests run. The dashboard picture needs no Grafana: every panel of
deploy/grafana/infergate-dashboard.json is drawn at its grid position with its title, unit and
queries, so the picture changes whenever the JSON does.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from infergate.app.fleet import free_port
from infergate.bench.procs import exit_on_sigterm

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
CHROMIUM = "/usr/bin/chromium"
UP = [sys.executable, "-m", "infergate", "up", "--quiet", "--metrics-auth", "disabled"]
BENCH = [sys.executable, "-m", "infergate", "bench", "--workload", "tutorial-mix", "--skip-unserved"]
BENCH += ["--qps", "12", "--limit", "400", "--no-plots"]


def _wait_banner(proc: subprocess.Popen[str], limit: float = 120.0) -> str:
    out = ""
    deadline = time.monotonic() + limit
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"infergate up exited:\n{out}")
        out += line
        if line.lstrip().startswith("try:"):
            return out
    raise SystemExit(f"no banner after {limit}s:\n{out}")


async def _shoot(url: str, path: Path) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        await page.goto(url)
        # rows with running requests and at least one routing decision
        await page.wait_for_function(
            "() => document.querySelectorAll('#endpoints tbody tr').length >= 3 && "
            "document.querySelectorAll('#decisions tbody tr').length >= 5",
            timeout=60_000,
        )
        await page.wait_for_timeout(1500)  # let the bars of a loaded moment settle for the picture
        await page.screenshot(path=str(path), full_page=True)
        await browser.close()


def liveview(path: Path) -> None:
    port, admin = free_port(), free_port()
    up = subprocess.Popen(
        [*UP, "--port", str(port), "--admin-port", str(admin)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_banner(up)
        load = subprocess.Popen(
            [*BENCH, "--url", f"http://127.0.0.1:{port}", "--out", "/tmp/infergate-docs-bench"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            asyncio.run(_shoot(f"http://127.0.0.1:{admin}/live", path))
        finally:
            load.terminate()
            load.wait(30)
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)


def dashboard(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    dash = json.loads((ROOT / "deploy" / "grafana" / "infergate-dashboard.json").read_text())
    panels = dash["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_h = 0.32
    fig = plt.figure(figsize=(16, rows * unit_h))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 24)
    ax.set_ylim(rows, 0)
    ax.axis("off")
    fig.patch.set_facecolor("#111217")
    for p in panels:
        g = p["gridPos"]
        if p["type"] == "row":
            ax.text(0.1, g["y"] + 0.7, p["title"], color="#d8d9da", fontsize=13, weight="bold")
            continue
        ax.add_patch(
            FancyBboxPatch(
                (g["x"] + 0.08, g["y"] + 0.08),
                g["w"] - 0.16,
                g["h"] - 0.16,
                boxstyle="round,pad=0,rounding_size=0.1",
                facecolor="#181b1f",
                edgecolor="#2c3235",
            )
        )
        ax.text(g["x"] + 0.3, g["y"] + 0.8, p["title"], color="#d8d9da", fontsize=10, weight="bold")
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        ax.text(g["x"] + g["w"] - 0.3, g["y"] + 0.8, unit, color="#8e8e8e", fontsize=8, ha="right")
        queries = "\n".join(t["expr"] for t in p["targets"])
        short = re.sub(r"\s+", " ", queries).replace("$", r"\$")  # not matplotlib's math mode
        wrapped = "\n".join(textwrap.wrap(short, width=int(g["w"] * 7.2))[:6])
        ax.text(
            g["x"] + 0.3, g["y"] + 1.5, wrapped, color="#6ccf8e", fontsize=7, family="monospace", va="top"
        )
    fig.savefig(path, dpi=90, facecolor=fig.get_facecolor())
    plt.close(fig)


def main() -> None:
    exit_on_sigterm()  # SIGTERM unwinds the finally blocks that stop what this script starts
    IMG.mkdir(parents=True, exist_ok=True)
    dashboard(IMG / "dashboard.png")
    print(f"wrote {IMG / 'dashboard.png'}")
    liveview(IMG / "liveview.png")
    print(f"wrote {IMG / 'liveview.png'}")


if __name__ == "__main__":
    main()
