// The /docs page in Debian's Chromium, headless, driven by playwright-core: it renders
// every operation of the API's OpenAPI document, loads nothing from another origin, and a
// "Try it" of POST /v1/predict with a pasted token answers a prediction. Writes a
// screenshot when given a path. Reads IHUB_DOCS_URL and IHUB_TOKEN (.local/dev.env).
import { chromium } from "playwright-core";

const url = process.env.IHUB_DOCS_URL;
const token = process.env.IHUB_TOKEN;
const screenshot = process.argv[2];
const origin = new URL(url).origin;
let failed = 0;
const check = (name, ok, detail = "") => {
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${ok ? "" : `: ${detail}`}`);
  if (!ok) failed += 1;
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 1000 } });
  const elsewhere = [];
  page.on("request", (r) => { if (!r.url().startsWith(origin)) elsewhere.push(r.url()); });
  await page.goto(url);
  await page.waitForSelector("body[data-ready]", { timeout: 30000 });
  const rendered = Number(await page.getAttribute("body", "data-ready"));
  const doc = await (await fetch(`${origin}/openapi.json`)).json();
  const operations = Object.values(doc.paths).reduce((n, item) => n + Object.keys(item).length, 0);
  check(`renders every operation of the document (${operations})`, rendered === operations && operations > 0,
    `rendered ${rendered}`);

  await page.fill("#token", token);
  const predict = page.locator('details[data-path="/v1/predict"][data-method="POST"]');
  await predict.locator("summary").click();
  await predict.locator("button").click();
  await predict.locator(".status").waitFor({ timeout: 30000 });
  const status = await predict.locator(".status").getAttribute("data-status");
  const answer = await predict.locator("pre.answer").textContent();
  check("try it: POST /v1/predict with the pasted token answers 200 with a label",
    status === "200" && answer.includes('"label": "setosa"'), `${status} ${answer}`);
  if (screenshot) {
    await predict.locator("pre.answer").scrollIntoViewIfNeeded();
    await page.screenshot({ path: screenshot, fullPage: false });
  }

  const models = page.locator('details[data-path="/v1/models"][data-method="GET"]');
  await page.fill("#token", "not-a-token");
  await models.locator("summary").click();
  await models.locator("button").click();
  await models.locator(".status").waitFor({ timeout: 30000 });
  check("try it with a bad token shows the 401 problem",
    (await models.locator(".status").getAttribute("data-status")) === "401");
  await models.locator("summary").click();

  check("nothing is loaded from another origin", elsewhere.length === 0, elsewhere.join(", "));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
