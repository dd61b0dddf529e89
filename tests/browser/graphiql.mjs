// Drives GraphiQL in Debian's headless Chromium with every non-local request blocked:
// the page must refuse a wrong token, sign in through the `#token=` link the server prints,
// run a query, show a live subscription update, and sign out.
// Usage: node graphiql.mjs <base-url> <app-id> <screenshot-path> <token>
import { chromium } from "playwright-core";

const [base, appId, screenshot, token] = process.argv.slice(2);
const origin = new URL(base).origin;
const fail = (message) => {
  console.error(`FAIL: ${message}`);
  process.exit(1);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  const external = [];
  // Offline: anything not served by Keystone is recorded and refused.
  await page.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(origin) || url.startsWith("data:")) return route.continue();
    external.push(url);
    return route.abort();
  });
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  page.on("response", (response) => {
    // 401 is expected while signed out (GraphiQL asks for the schema anyway).
    if (response.status() >= 400 && response.status() !== 401) pageErrors.push(`${response.status()} for ${response.url()}`);
  });

  const status = () => page.locator("#keystone-auth-status").innerText();
  await page.goto(base, { waitUntil: "load" });
  await page.waitForSelector("#keystone-token", { timeout: 20000 });
  await page.fill("#keystone-token", "kst_" + "x".repeat(43));
  await page.click("#keystone-auth button[type=submit]");
  await page.waitForFunction(
    () => document.querySelector("#keystone-auth-status")?.innerText.includes("not accepted"),
    undefined, { timeout: 20000 });
  console.log(`wrong token refused: ${await status()}`);

  await page.goto(`${base}/#token=${token}`, { waitUntil: "load" });
  await page.waitForFunction(
    () => document.querySelector("#keystone-auth-status")?.innerText.startsWith("Signed in as admin"),
    undefined, { timeout: 20000 });
  if (new URL(page.url()).hash) fail(`the token stayed in the address bar: ${page.url()}`);
  console.log("signed in");
  await page.waitForSelector(".graphiql-container", { timeout: 20000 });
  await page.waitForSelector(".graphiql-query-editor .CodeMirror", { timeout: 20000 });

  const run = async (query, expected) => {
    await page.evaluate((q) => {
      document.querySelector(".graphiql-query-editor .CodeMirror").CodeMirror.setValue(q);
    }, query);
    // GraphiQL picks up the edited document (and its operation name) asynchronously.
    await page.waitForTimeout(500);
    await page.click(".graphiql-execute-button");
    await page.waitForFunction(
      (text) => document.querySelector(".graphiql-response")?.innerText.includes(text),
      expected,
      { timeout: 20000 },
    );
  };

  await run("{ apps { nodes { name status } } }", "browser-app");
  console.log("query ok");

  // A subscription over the WebSocket, then a deployment made over HTTP.
  await run(`subscription { deploymentUpdated(appId: "${appId}") { status app { name } } }`, "");
  await page.waitForTimeout(500);
  const response = await fetch(`${origin}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ query: `mutation { deployApp(input: { appId: "${appId}" }) { deployment { id } } }` }),
  });
  if (!response.ok) fail(`deployApp over HTTP: ${response.status}`);
  await page.waitForFunction(
    () => document.querySelector(".graphiql-response")?.innerText.includes("QUEUED"),
    undefined,
    { timeout: 20000 },
  );
  console.log("subscription ok");

  if (screenshot) await page.screenshot({ path: screenshot });

  // The token lives in this tab's sessionStorage, never in localStorage (which every later
  // page of the origin could read); a reload keeps the session, signing out forgets it.
  const stored = await page.evaluate(() => [
    window.sessionStorage.getItem("keystone.token"),
    window.localStorage.getItem("keystone.token"),
  ]);
  if (!stored[0] || stored[1]) fail(`token storage: session ${!!stored[0]}, local ${!!stored[1]}`);
  await page.reload({ waitUntil: "load" });
  await page.waitForFunction(
    () => document.querySelector("#keystone-auth-status")?.innerText.startsWith("Signed in"),
    undefined, { timeout: 20000 });
  await page.click("#keystone-sign-out");
  await page.waitForSelector("#keystone-token", { timeout: 20000 });
  const kept = await page.evaluate(() => window.sessionStorage.getItem("keystone.token"));
  if (kept) fail("the token was kept after signing out");
  console.log("signed out");
  if (external.length) fail(`requests left the server: ${external.join(", ")}`);
  if (pageErrors.length) fail(`page errors: ${pageErrors.join("; ")}`);
  console.log("offline ok");
} finally {
  await browser.close();
}
