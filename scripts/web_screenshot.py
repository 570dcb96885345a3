"""Screenshot of a running web page, as the README's `docs/web.png` was taken: headless
Chromium (the tests' driver, `tests/browser.py`), the page loaded, a few moves played
against the newest model so the board and its probabilities show.

    python scripts/web_screenshot.py http://127.0.0.1:8470/ docs/web.png
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import available, chromium  # noqa: E402

MOVES = (4, 3, 5)  # ours; the model answers each


def main(url: str, out: str) -> int:
    if (missing := available()):
        print(f"web_screenshot: {missing}", file=sys.stderr)
        return 2
    driver = chromium(width=1500, height=2000)
    try:
        driver.get(url)
        time.sleep(3)  # the first overview
        state = lambda: driver.find_element("id", "play").get_attribute("data-state")
        driver.find_element("id", "new-human").click()
        for column in MOVES:
            driver.find_element("css selector", f"#board g.col[data-col='{column}']").click()
            for _ in range(300):
                if state() in ("yours", "over"):
                    break
                time.sleep(0.1)
            if state() == "over":
                break
        driver.save_screenshot(out)
    finally:
        driver.quit()
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]) if len(sys.argv) == 3 else print(__doc__) or 2)
