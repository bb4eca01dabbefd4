"""What a person waits for in the web UI, timed in Chromium with Playwright.

    clipsearch demo --no-serve                     # once: 3,000 toy-world photos in data/demo
    python bench/bench_ui.py --library data/demo/library --runs 15

Starts `clipsearch serve` as a user would (a fresh process, thumbnail cache emptied so
nothing is made ahead), opens the page in Debian's Chromium (headless), and times:

* **first search**: from pressing Enter on the first query after the server said it is
  ready, to the grid painted (every tile's thumbnail decoded, the status naming the query);
* **warm text search**: from the last keystroke of a new query (each query different, so
  the text encoder runs every time) to the grid painted, `--runs` times: median and spread;
* **map**: from clicking the Explore tab to the map image decoded, twice (first, then warm);
* beside them, in the same run: the same queries through `Library.search` in this process
  (encode + search, no browser, no HTTP) and `GET /api/search` with httpx, so the UI's own
  overhead shows as a ratio that stays meaningful on a loaded machine.

Prints the CPU and the load average next to the figures: this machine is shared.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

QUERIES = ["a red tree", "a blue bird at night", "the sea at sunset", "a white moon", "two green flowers",
           "a black car on the road", "a yellow house in the snow", "a dog in a desert", "a red bird by day",
           "three white flowers", "a blue moon above the sea", "a green tree at sunset", "a yellow car at night",
           "a black dog in the snow", "two red houses", "a white bird on the road", "a blue flower in a desert",
           "the road at night", "a green car by day", "a yellow moon", "a black tree at sunset"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
ANSWERED = """([query, n]) => {
  const status = document.querySelector('#status');
  return !!status && status.innerText.includes(query) && document.querySelectorAll('#results .cs-tile').length > 0;
}"""
PAINTED = """([query, n]) => {
  const status = document.querySelector('#status');
  if (!status || !status.innerText.includes(query)) return false;
  const imgs = [...document.querySelectorAll('#results .cs-tile img')].slice(0, n);
  return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(library: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch", "serve", "--library", str(library), "--port",
                             str(port), "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    assert proc.stdout is not None
    for line in proc.stdout:
        if "clipsearch UI:" in line:
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("the server did not start")


def ms(values: list[float]) -> str:
    values = sorted(values)
    med = statistics.median(values)
    return f"median {med * 1000:6.0f} ms  (min {values[0] * 1000:.0f}, max {values[-1] * 1000:.0f}, n={len(values)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--library", default="data/demo/library")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--shots", default=None, help="save screenshots of the page here")
    ap.add_argument("--keep-thumbs", action="store_true", help="keep the thumbnail cache (default: emptied first)")
    args = ap.parse_args()
    library = Path(args.library)
    if not (library / "catalog.sqlite").exists():
        raise SystemExit(f"no library in {library}: run `clipsearch demo --no-serve` first")

    from playwright.sync_api import sync_playwright

    print(f"CPU: {next((ln.split(':', 1)[1].strip() for ln in open('/proc/cpuinfo') if 'model name' in ln), '?')}, "
          f"{os.cpu_count()} cores; load average before: {os.getloadavg()}")
    # Nothing made ahead: thumbnails are made for the page shown, on first sight.
    if not args.keep_thumbs:
        shutil.rmtree(library / "thumbs", ignore_errors=True)
    port = free_port()
    t_start = time.perf_counter()
    server = start_server(library, port)
    print(f"server ready in {time.perf_counter() - t_start:.1f} s (process start to 'clipsearch UI:' printed)")
    url = f"http://127.0.0.1:{port}/"
    results: dict[str, list[float]] = {"ui_first": [], "ui_warm": [], "map_first": [], "map_warm": [],
                                       "answer_first": [], "answer_warm": []}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                         headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            box = page.locator("#query textarea")
            box.wait_for()
            first_row = 4 if args.width >= 1000 else 2

            def timed(q: str, kind: str, key: str) -> None:
                t0 = time.perf_counter()
                box.press(key)
                page.wait_for_function(ANSWERED, arg=[q, first_row * 2], polling="raf")
                results[f"answer_{kind}"].append(time.perf_counter() - t0)
                page.wait_for_function(PAINTED, arg=[q, first_row * 2], polling="raf")
                results[f"ui_{kind}"].append(time.perf_counter() - t0)

            box.fill(QUERIES[0])
            timed(QUERIES[0], "first", "Enter")
            if args.shots:
                Path(args.shots).mkdir(parents=True, exist_ok=True)
                page.screenshot(path=f"{args.shots}/search-{args.width}.png")
            for q in QUERIES[1:args.runs + 1]:
                box.fill(q[:-1])
                page.wait_for_timeout(400)  # let the partial query's search (as-you-type) finish first
                timed(q, "warm", q[-1])
            map_ready = ("(old) => { const i = document.querySelector('#map img');"
                         " return i && i.src !== old && i.complete && i.naturalWidth > 0 &&"
                         " document.querySelector('#map-status').innerText.includes('map of'); }")
            t0 = time.perf_counter()
            page.get_by_role("tab", name="Explore").click()
            page.wait_for_function(map_ready, arg="", polling="raf")
            results["map_first"].append(time.perf_counter() - t0)
            if args.shots:
                page.screenshot(path=f"{args.shots}/map-{args.width}.png")
            for q in QUERIES[1:4]:  # redrawn with another query marked (a new image each time)
                old = page.locator("#map img").get_attribute("src")
                page.get_by_label("Mark a query on the map").fill(q)
                t0 = time.perf_counter()
                page.get_by_role("button", name="Draw map").click()
                page.wait_for_function(map_ready, arg=old, polling="raf")
                results["map_warm"].append(time.perf_counter() - t0)
            browser.close()

        import httpx

        api = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api", timeout=60) as c:
            for q in QUERIES[1:args.runs + 1]:
                t0 = time.perf_counter()
                c.get("/search", params={"q": q + " photo", "k": 24}).raise_for_status()  # a text not seen: encoded
                api.append(time.perf_counter() - t0)
    finally:
        server.terminate()
        server.wait(30)

    from clipsearch import Library

    with Library.open(library, create=False) as lib:
        lib.search("warm up", k=24)
        inproc = []
        for q in QUERIES[1:args.runs + 1]:  # a new process: each text is encoded, as in the UI
            t0 = time.perf_counter()
            lib.search(q, k=24)
            inproc.append(time.perf_counter() - t0)

    print(f"\nlibrary: {library} ({sum(1 for _ in (library / 'thumbs').glob('*.jpg'))} thumbnails made during the run)")
    print(f"first search after start (Enter → grid painted): {ms(results['ui_first'])}")
    print(f"  of which Enter → results in the page:         {ms(results['answer_first'])}")
    print(f"warm text search (keystroke → grid painted):    {ms(results['ui_warm'])}")
    print(f"  of which keystroke → results in the page:     {ms(results['answer_warm'])}")
    print(f"  like queries, GET /api/search (httpx):        {ms(api)}")
    print(f"  same queries, Library.search in-process:      {ms(inproc)}")
    print(f"  ratio UI / in-process search: {statistics.median(results['ui_warm']) / statistics.median(inproc):.1f}x; "
          f"UI / API: {statistics.median(results['ui_warm']) / statistics.median(api):.1f}x")
    print(f"map, first (tab click → map decoded):          {ms(results['map_first'])}")
    print(f"map, redrawn with a query marked:              {ms(results['map_warm'])}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
