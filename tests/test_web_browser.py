"""The web page in a real browser (headless Chromium), against a live `cartridge web` on
`cartridge up`'s embedded back ends, after a short real run (models stored, each rated by
the real evaluator): the points the charts draw are the database's rows, and a whole game
is played by clicking the board, every model move legal."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import msgspec
import pytest

from browser import available, chromium
from cartridge.ratings import rating_rows
from shared.evaluations import open_evaluations
from shared.games import get_game
from shared.model_store import open_model_store
from web_data import short_run, web_config

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 30
RATING_WINDOW = 2  # of the 3 versions rated

if (missing := available()) and os.environ.get("CI"):
    raise RuntimeError(f"the browser tests must run in CI: {missing}")  # never a silent skip there
pytestmark = pytest.mark.skipif(bool(missing), reason=missing or "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    config = web_config(tmp)
    asyncio.run(short_run(config))
    port = free_port()
    flags = ["--set", "storage.replay_backend=sqlite", "--set", f"storage.sqlite_path={config.storage.sqlite_path}",
             "--set", "storage.model_store=local", "--set", f"storage.local_model_dir={config.storage.local_model_dir}",
             "--set", "common.env_id=connect4", "--set", "broker.url=amqp://guest:guest@127.0.0.1:1/",
             "--set", "broker.management_url=http://127.0.0.1:1",
             # v1 outside the fit: the page shows the rating it was given when evaluated.
             "--set", f"eval.rating_window={RATING_WINDOW}"]
    log = tmp / "web.log"
    proc = subprocess.Popen([sys.executable, "-m", "cartridge.cli", "web", "--port", str(port), *flags], cwd=tmp,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            urllib.request.urlopen(url + "api/overview", timeout=5).read()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    yield url, config
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(lambda d: condition(d), message=what)


def plotted(driver, chart: str, series: str) -> list[tuple[float, float]]:
    points = driver.execute_script(
        "return [...document.querySelectorAll(`#${arguments[0]} circle[data-series='${arguments[1]}']`)]"
        ".map(c => [Number(c.dataset.x), Number(c.dataset.y)])", chart, series)
    return sorted((x, y) for x, y in points)


def close(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> bool:
    return len(a) == len(b) and all(abs(x - u) < 1e-3 and abs(y - v) < 1e-6 * max(1, abs(v)) for (x, y), (u, v) in zip(a, b))


async def database_rows(config):
    env = config.common.env_id
    async with open_evaluations(config.storage) as results:
        evaluations = await results.evaluations(env)
    async with open_model_store(config.storage) as store:
        infos = [await store.get_info(env, v) for v in await store.list_versions(env)]
    windowed = msgspec.structs.replace(config, eval=msgspec.structs.replace(config.eval, rating_window=RATING_WINDOW))
    return evaluations, infos, await rating_rows(windowed)


def test_the_charts_plot_the_rows_of_the_database(site, browser):
    url, config = site
    evaluations, infos, ratings = asyncio.run(database_rows(config))
    assert len(evaluations) == 3 and all(e.status == "ok" for e in evaluations)
    browser.get(url)
    wait_for(browser, lambda d: len(plotted(d, "chart-rating", "rating")) == 3, "the rating chart")

    # Against the training step (the default axis): ratings as fitted over the stored games
    # (v1's as stored at its evaluation: it is outside the window), accuracy straight from
    # the evaluations table, loss from the models' records.
    assert [r["rating_fitted"] for r in ratings] == [False, True, True] and ratings[0]["rating"] == evaluations[0].rating
    assert close(plotted(browser, "chart-rating", "rating"), sorted((r["step"], r["rating"]) for r in ratings))
    for stage in ("early", "mid", "late"):
        assert close(plotted(browser, "chart-search", stage),
                     sorted((e.step, e.accuracy["search"][stage]["optimal_pct"]) for e in evaluations))
        assert close(plotted(browser, "chart-policy", stage),
                     sorted((e.step, e.accuracy["policy"][stage]["optimal_pct"]) for e in evaluations))
    assert close(plotted(browser, "chart-loss", "at publication"),
                 sorted((i.step, float(i.metadata["loss"])) for i in infos))

    # Against time: when each version was published.
    browser.find_element("css selector", "input[name=xaxis][value=time]").click()
    assert close(plotted(browser, "chart-rating", "rating"),
                 sorted((e.published_at, r["rating"]) for e, r in zip(evaluations, ratings)))

    # Read in one go: the page redraws its tables at every refresh.
    table = browser.execute_script(
        "return [...document.querySelectorAll('#ratings tbody tr')]"
        ".map(r => [r.cells[0].textContent, r.className, r.cells[3].textContent])")
    assert [version for version, _, _ in table] == ["3", "2", "1"]
    assert table[0][1] == "served"  # the newest rated version, no hold
    assert table[2][2].endswith("*") and abs(float(table[2][2].split(" ±")[0]) - ratings[0]["rating"]) <= 0.5
    assert "*" not in table[0][2] and "*" not in table[1][2]
    assert browser.find_element("id", "ratings-note").is_displayed()
    assert browser.find_element("id", "newest").text == "v3"


def test_a_whole_game_is_played_by_clicking_the_board(site, browser):
    from selenium.webdriver.support.ui import Select

    url, _ = site
    game = get_game("connect4")
    browser.get(url)
    wait_for(browser, lambda d: len(d.find_elements("css selector", "#version option")) == 3, "the versions")
    Select(browser.find_element("id", "version")).select_by_visible_text("v2")
    sims = browser.find_element("id", "sims")
    sims.clear()
    sims.send_keys("16")
    browser.find_element("id", "new-model").click()  # the model opens

    state = lambda d: d.find_element("id", "play").get_attribute("data-state")
    moves_text = lambda d: d.find_element("id", "moves").text
    replies = 0
    while True:
        wait_for(browser, lambda d: state(d) in ("yours", "over"), "the model's reply")
        moves = moves_text(browser)
        # The server checked every move; so does the test: the whole game replays legally.
        board, done, _ = game.position(moves)
        if state(browser) == "over":
            assert done
            break
        replies += 1
        assert len(moves) % 2 == 1  # the model moved last
        model_move = int(browser.find_element("id", "model-move").text)
        assert model_move == int(moves[-1])
        probabilities = [float(p.get_attribute("data-p")) for p in browser.find_elements("css selector", "#probs > div")]
        assert len(probabilities) == 7 and abs(sum(probabilities) - 1) < 0.01
        assert probabilities[model_move - 1] == max(probabilities)
        assert -1 <= float(browser.find_element("id", "model-value").text) <= 1
        column = next(c for c in range(7) if game.legal_mask(board[None])[0, c]) + 1  # the leftmost open column
        browser.find_element("css selector", f"#board g.col[data-col='{column}']").click()
        wait_for(browser, lambda d: len(moves_text(d)) > len(moves) + 1 or state(d) == "over", "the move taken")
    assert replies >= 3
    assert browser.find_element("id", "play-status").text.startswith("game over:")
    assert browser.find_element("id", "play-error").text == ""
    shot = os.environ.get("CARTRIDGE_TEST_SCREENSHOT")
    if shot:  # how docs/web.png is taken (see the README)
        browser.save_screenshot(shot)
