"""A real browser through browser login: headless Chromium opens a route with login: true, is sent to the real
OP's login form, signs in, sees the upstream's page, logs out at idgate and at the OP, and is sent to login
again.  What tests/integration/test_browser_login.py shows hop by hop, done by the browser itself: its
cookie rules (__Host-, Secure over http://127.0.0.1), its redirects, the Origin and Sec-Fetch-* it sends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from tests.harness.login import SESSION_COOKIE, LoginStack, login_stack

T = TypeVar("T")
# Generous: five agents share two cores, and a page here is a chain of redirects across two servers.
WAIT = 30.0


@pytest.fixture
async def stack(oidc_provider, tmp_path) -> AsyncIterator[LoginStack]:
    async with login_stack(oidc_provider, tmp_path) as running:
        yield running


async def browse(step: Callable[[], T]) -> T:
    """Selenium blocks until the browser is done, and idgate and the upstream answer it from this event
    loop: each browser step runs in a thread so the loop keeps serving."""
    return await asyncio.to_thread(step)


def wait_for(driver: webdriver.Chrome, css: str) -> WebElement:
    element: WebElement = WebDriverWait(driver, WAIT).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)), f"no {css!r} on the page")
    return element


def wait_for_url(driver: webdriver.Chrome, url: str) -> None:
    WebDriverWait(driver, WAIT).until(expected_conditions.url_to_be(url), f"never at {url}")


def open_login_form(driver: webdriver.Chrome, url: str) -> str:
    """Opens `url` and waits for the OP's login form; the URL it is on."""
    driver.get(url)
    wait_for(driver, "form input[name=username]")
    return driver.current_url


def sign_in(driver: webdriver.Chrome, user: str) -> None:
    driver.find_element(By.CSS_SELECTOR, "form input[name=username]").send_keys(user)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()


def log_out(driver: webdriver.Chrome, logout_url: str) -> None:
    """idgate's logout page, its button (a POST), then the OP's confirmation: "Yes, sign me out"."""
    driver.get(logout_url)
    wait_for(driver, "form[method=post] button[type=submit]").click()
    wait_for(driver, "button[name=logout][value=yes]").click()


def session_cookie(driver: webdriver.Chrome) -> dict[str, object] | None:
    cookie: dict[str, object] | None = driver.get_cookie(SESSION_COOKIE)
    return cookie


async def test_chromium_logs_in_through_the_op_sees_the_upstream_and_logs_out(stack, chromium):
    page = stack.url + "/app/page"
    op = stack.op.issuer

    login_form = await browse(lambda: open_login_form(chromium, page))
    assert login_form.startswith(op + "/interaction/")
    assert stack.upstream.received == []

    await browse(lambda: sign_in(chromium, "alice"))

    # Back from the OP through idgate's callback to the page first asked for: the upstream's own answer.
    await browse(lambda: wait_for_url(chromium, page))
    shown = json.loads(await browse(lambda: chromium.find_element(By.TAG_NAME, "body").text))
    assert shown["path"] == "/app/page"
    seen = stack.upstream.received[-1]
    assert seen.header("X-Idgate-Subject") == ["alice"]
    assert seen.header("X-Idgate-Issuer") == [op]
    assert not any("idgate" in value for value in seen.header("Cookie"))

    # Chromium kept the __Host- cookie over http://127.0.0.1 (a secure context) and shows it as idgate set it.
    cookie = await browse(lambda: session_cookie(chromium))
    assert cookie is not None
    assert cookie["secure"] is True and cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
    assert cookie["path"] == "/" and cookie["domain"] == "127.0.0.1"
    assert [r["action"] for r in await stack.records("session")] == ["login"]

    # Logging out ends on idgate's post-logout page, "/", which with no session is a page load sent to login.
    await browse(lambda: log_out(chromium, stack.url + "/.idgate/logout"))
    await browse(lambda: wait_for(chromium, "form input[name=username]"))
    assert (await browse(lambda: chromium.current_url)).startswith(op + "/interaction/")
    assert await browse(lambda: session_cookie(chromium)) is None
    actions = [r["action"] for r in await stack.records("session")]
    assert actions[:2] == ["login", "logout"]

    # The page itself now goes to login too, and nothing more reached the upstream.
    forwarded = len(stack.upstream.received)
    assert (await browse(lambda: open_login_form(chromium, page))).startswith(op + "/interaction/")
    assert len(stack.upstream.received) == forwarded
