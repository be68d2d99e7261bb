"""The operator console in a real browser: Debian's headless Chromium driven by Selenium,
against a real gateway (JWT auth on, audit on) and the project's mock Gemini.

Usage: console.py GEMINI_PROXY_BINARY SCREENSHOT_DIR
Checks: a wrong password is refused and shows nothing else; login; every page renders live data
(charts drawn on non-empty canvases, the key table lists every key); a key disabled from the
page is disabled in GET /api/keys; a token issued on the page works for a proxied call; a SQL
query shows its rows; an invalid config edit shows its field path and changes nothing; a gateway
restart is reported and recovered from; a revoked session goes back to the login page; the
pages fit a phone-width screen; the browser console has no errors. Screenshots of each page go
to SCREENSHOT_DIR. Exits non-zero on the first failure.
"""
import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

binary, shots = sys.argv[1], sys.argv[2]
os.makedirs(shots, exist_ok=True)
checks = 0


def check(name, cond, detail=""):
    global checks
    if not cond:
        print(f"FAIL {name}: {detail}")
        sys.exit(1)
    checks += 1
    print(f"ok   {name}")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(method, url, body=None, token=None, ctype="application/json"):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", ctype)
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


work = tempfile.mkdtemp(prefix="gp-console-")
mock_port, port, admin = free_port(), free_port(), free_port()
password = "Console-" + secrets.token_urlsafe(18)
env = dict(os.environ, JWT_SECRET="Console-" + secrets.token_urlsafe(40), ADMIN_PASSWORD=password)
config = os.path.join(work, "gw.yaml")
with open(config, "w") as f:
    f.write(f"""server: {{ host: 127.0.0.1, port: {port} }}
gemini:
  base_url: "http://127.0.0.1:{mock_port}"
  api_keys:
    - {{ id: alpha, key: valid-console-alpha, project: proj-a, limits: {{ rpm: 60, tpm: 100000, rpd: 1000 }} }}
    - {{ id: beta, key: valid-console-beta, project: proj-b }}
    - {{ id: gamma, key: valid-console-gamma, project: proj-b }}
metrics: {{ enabled: true, prometheus_port: {admin} }}
pool: {{ state_file: "", keys_file: "" }}
auth: {{ enabled: true, revocations_file: "{work}/revoked.json", admin_password: "${{ADMIN_PASSWORD}}" }}
audit: {{ log_path: "{work}/audit.jsonl", db_path: "{work}/audit.duckdb", flush_interval: 200ms }}
""")
procs = []


def start_gateway():
    p = subprocess.Popen([binary, "serve", "--config", config], env=env,
                         stdout=open(os.path.join(work, "gw.log"), "a"), stderr=subprocess.STDOUT)
    procs.append(p)
    for _ in range(200):
        try:
            if http("GET", f"http://127.0.0.1:{admin}/health")[0] == 200:
                return p
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("the gateway did not start: " + open(os.path.join(work, "gw.log")).read()[-2000:])


procs.append(subprocess.Popen([binary, "mock", "--port", str(mock_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
gateway = start_gateway()
A = f"http://127.0.0.1:{admin}"


def admin_token():
    s, b = http("POST", f"{A}/auth/login", {"password": password})
    assert s == 200, b
    return json.loads(b)["token"]


# Traffic for the charts and the usage views, as a user.
user = json.loads(http("POST", f"{A}/api/tokens", {"sub": "ann", "ttl": "1h"}, token=admin_token())[1])["token"]
for i in range(12):
    s, _ = http("POST", f"http://127.0.0.1:{port}/v1beta/models/gemini-2.5-flash:generateContent",
                {"contents": [{"parts": [{"text": f"hello {i}"}]}]}, token=user)
    assert s == 200, s

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={work}/chrome", "--window-size=1280,800"]:
    options.add_argument(arg)
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
driver.set_window_size(1280, 800)
wait = WebDriverWait(driver, 15)


def shot(name):
    driver.save_screenshot(os.path.join(shots, f"{name}.png"))


def css(sel):
    return driver.find_element(By.CSS_SELECTOR, sel)


def visible(sel, timeout=15):
    return WebDriverWait(driver, timeout).until(EC.visibility_of_element_located((By.CSS_SELECTOR, sel)))


def text_in(sel, text, timeout=15):
    WebDriverWait(driver, timeout).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, sel), text))


def severe_logs():
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def confirm():
    btn = visible("dialog.confirm button.danger")
    btn.click()
    WebDriverWait(driver, 5).until_not(EC.presence_of_element_located((By.CSS_SELECTOR, "dialog.confirm")))


try:
    # Login page, reached through the root's redirect.
    driver.get(f"{A}/")
    visible("#login-form")
    check("/ redirects to the console's login page", driver.current_url.endswith("/ui/"), driver.current_url)
    shot("01-login")
    css("#password").send_keys("not the password")
    css("#login-form button[type=submit]").click()
    text_in("#login-error", "Wrong password")
    check("a wrong password shows an error and nothing else",
          not driver.find_elements(By.CSS_SELECTOR, "nav") and not driver.find_elements(By.ID, "page"))
    before = severe_logs()
    check("the only console errors before login are the refused requests",
          all("status of 401" in e["message"] for e in before), before)
    check("no token is kept after a failed login",
          driver.execute_script("return sessionStorage.getItem('gp.token')") is None)

    css("#password").clear()
    css("#password").send_keys(password)
    css("#login-form button[type=submit]").click()
    visible("nav")
    check("login opens the console", "Overview" in css("main#page h1").text)
    check("the token is in sessionStorage, never in localStorage or the URL",
          driver.execute_script("return localStorage.length") == 0
          and driver.execute_script("return sessionStorage.getItem('gp.token')") is not None
          and "ey" not in driver.current_url)

    # Overview: charts drawn with data.
    WebDriverWait(driver, 15).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".charts canvas")) >= 6)
    time.sleep(1.5)
    painted = driver.execute_script("""
        return [...document.querySelectorAll('.charts canvas')].map(c => {
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; });""")
    check("six overview charts are drawn on non-empty canvases", len(painted) >= 6 and all(n > 500 for n in painted), painted)
    calls = driver.execute_script("return document.querySelector('.stats').textContent")
    check("the overview shows the calls made", "in the last minute" in calls and "12 in the last minute" in calls, calls)
    shot("02-overview")

    # Keys: every key, and a disable from the page reaches the API.
    driver.get(f"{A}/ui/#/keys")
    visible("#keys-table table")
    text_in("#keys-table", "gamma")
    table = css("#keys-table").text
    check("the key table lists every configured key id", all(k in table for k in ["alpha", "beta", "gamma"]), table)
    check("no key secret reaches the page", "valid-console" not in driver.page_source)
    check("usage against the configured limits is shown", "rpm" in table and "/ 60" in table, table)
    css("button[data-key=beta][data-action=disable]").click()
    visible("dialog.confirm")
    shot("03-keys-confirm")
    confirm()
    time.sleep(0.5)
    keys = json.loads(http("GET", f"{A}/api/keys", token=admin_token())[1])["keys"]
    state = {k["id"]: k["state"] for k in keys}
    check("a key disabled on the page is disabled in GET /api/keys", state.get("beta") == "disabled", state)
    WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "button[data-key=beta][data-action=enable]"))
    shot("03-keys")

    # Tokens: issue one on the page, use it for a proxied call.
    driver.get(f"{A}/ui/#/tokens")
    visible("#issue-token")
    css("#token-sub").send_keys("console-user")
    css("#token-models").send_keys("gemini-2.5-flash*")
    css("#token-ttl").clear()
    css("#token-ttl").send_keys("2h")
    css("#issue-token button[type=submit]").click()
    box = visible("#token-value")
    issued = box.get_attribute("value")
    check("the page shows the issued token once", issued.count(".") == 2, issued[:20])
    s, b = http("POST", f"http://127.0.0.1:{port}/v1beta/models/gemini-2.5-flash:generateContent",
                {"contents": [{"parts": [{"text": "from the console"}]}]}, token=issued)
    check("a token issued on the page works for a proxied call", s == 200, (s, b[:200]))
    s, _ = http("POST", f"http://127.0.0.1:{port}/v1beta/models/gemini-2.5-pro:generateContent",
                {"contents": [{"parts": [{"text": "x"}]}]}, token=issued)
    check("its model list holds", s == 403, s)
    shot("04-tokens")
    driver.refresh()
    visible("#issue-token")
    check("the token is gone after a reload", issued not in driver.page_source)
    text_in("#token-history", "token issued")

    # SQL: a query and its rows.
    driver.get(f"{A}/ui/#/sql")
    box = visible("#sql-text")
    box.clear()
    box.send_keys("SELECT user_id, count(*) AS calls FROM requests GROUP BY user_id ORDER BY user_id")
    css("#sql-run").click()
    text_in("#sql-out", "ann")
    out = css("#sql-out").text
    check("a SQL query shows its rows", "ann" in out and "12" in out, out)
    visible("#sql-schema details")
    box.clear()
    box.send_keys("DELETE FROM requests")
    css("#sql-run").click()
    visible("#sql-error")
    check("a write is refused and said so", css("#sql-error").text != "", css("#sql-error").text)
    shot("05-sql")

    # Config: an invalid edit shows its field path and changes nothing.
    versions = json.loads(http("GET", f"{A}/api/config/history", token=admin_token())[1])["versions"]
    generation = json.loads(http("GET", f"{A}/health")[1])["config_generation"]
    driver.get(f"{A}/ui/#/config")
    editor = visible("#config-editor")
    WebDriverWait(driver, 10).until(lambda d: "api_keys" in editor.get_attribute("value"))
    check("the config editor never holds a secret", "valid-console" not in editor.get_attribute("value")
          and env["JWT_SECRET"] not in driver.page_source)
    text = editor.get_attribute("value").replace("pool:\n", "pool:\n  max_rotations: lots\n", 1)
    driver.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))", editor, text)
    css("#config-validate").click()
    err = visible("#config-error")
    check("an invalid config edit shows its field path", "pool.max_rotations" in err.text, err.text)
    check("and cannot be applied", not css("#config-apply").is_enabled())
    shot("06-config-invalid")
    after = json.loads(http("GET", f"{A}/api/config/history", token=admin_token())[1])["versions"]
    check("and changes nothing", after == versions
          and json.loads(http("GET", f"{A}/health")[1])["config_generation"] == generation)
    css("#config-revert").click()
    shot("06-config")

    # Usage and security pages.
    driver.get(f"{A}/ui/#/usage")
    visible("#usage-out table")
    text_in("#usage-out", "ann")
    check("the usage view shows a chart", driver.find_elements(By.CSS_SELECTOR, "#usage-out canvas"))
    shot("07-usage")
    driver.get(f"{A}/ui/#/security")
    visible("#security-score")
    text_in("#security-events", "AdminAction")
    check("the security page shows the score and the admin actions", "/ 100" in css("#security-score").text)
    shot("08-security")

    # Phone width: nothing wider than the screen.
    driver.set_window_size(390, 844)
    for page in ["overview", "keys", "sql"]:
        driver.get(f"{A}/ui/#/{page}")
        visible("main#page h1")
        time.sleep(1)
        over = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        check(f"{page} fits a phone-width screen", over <= 1, over)
        shot(f"09-phone-{page}")
    driver.set_window_size(1280, 800)

    logged = severe_logs()
    check("no errors in the browser console while working (the two refusals asked for aside)",
          all("status of 400" in e["message"] for e in logged) and len(logged) <= 2, logged)

    # A gateway restart while the page is open: said, then recovered.
    driver.get(f"{A}/ui/#/overview")
    visible(".charts canvas")
    gateway.terminate()
    gateway.wait(15)
    banner = visible("#banner", timeout=20)
    check("a stopped gateway is reported on the page", "does not answer" in banner.text, banner.text)
    shot("10-gateway-away")
    gateway = start_gateway()
    WebDriverWait(driver, 20).until(lambda d: not d.find_element(By.ID, "banner").is_displayed())
    check("the page recovers when the gateway is back", "stale" not in css("main#page").get_attribute("class"))
    logged = severe_logs()
    check("the console logged only the failed connections meanwhile", all("net::ERR_" in e["message"] for e in logged), logged)

    # A revoked session goes back to the login page and says why.
    token = driver.execute_script("return sessionStorage.getItem('gp.token')")
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    s, _ = http("POST", f"{A}/api/tokens/revoke", {"jti": claims["jti"]}, token=admin_token())
    check("the console's token can be revoked", s == 200, s)
    text_in("#login-error", "refused the session", timeout=20)
    check("a revoked session ends on the login page with the reason", driver.find_elements(By.ID, "login-form"))
    shot("11-session-ended")

    # Logging out revokes the session's token: a copy of it is worth nothing after.
    css("#password").send_keys(password)
    css("#login-form button[type=submit]").click()
    visible("nav")
    kept = driver.execute_script("return sessionStorage.getItem('gp.token')")
    check("a new session after logging in again", http("GET", f"{A}/api/keys", token=kept)[0] == 200)
    css("header.top .session button").click()
    visible("#login-form")
    WebDriverWait(driver, 10).until(lambda d: http("GET", f"{A}/api/keys", token=kept)[0] == 401)
    check("logging out revokes the token", driver.execute_script("return sessionStorage.getItem('gp.token')") is None)

    logged = severe_logs()
    check("no errors in the browser console but the refused session", all("status of 401" in e["message"] for e in logged), logged)
finally:
    try:
        driver.quit()
    except Exception:
        pass
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()

print(f"{checks} console checks passed; screenshots in {shots}")
