// Drives /dashboard in headless Chromium for tests/integration/test_web.py.
//
// Usage: node tests/web/dashboard.mjs BASE_URL MODE, with the test's settings as one JSON line
// on stdin (tokens stay out of the command line). Each step prints one JSON line on stdout.
//   live:   paste the token, show the range, report the figures, tables and charts (and save a
//           screenshot); then wait for a line "next" on stdin and report again once the page's
//           own refresh has shown a changed order count.
//   errors: a refused token (401), another merchant's token (403), then 429 and 503 answers
//           played by the browser (page.route), then "Forget token"; reports what the page said
//           each time and that nothing was stored or sent elsewhere.
import readline from "node:readline";

import { cspViolations, launch, report, watchedPage } from "./browser.mjs";

const [base, mode] = process.argv.slice(2);
const stdin = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const nextLine = async () => (await stdin.next()).value;
const settings = JSON.parse(await nextLine());

async function fillForm(page, token, s) {
    await page.fill("#token", token);
    await page.fill("#merchant", String(s.merchant));
    await page.fill("#from", s.from);
    await page.fill("#to", s.to);
    await page.selectOption("#granularity", s.granularity || "day");
    await page.fill("#refresh", String(s.refresh));
}

// Figures (text and raw value), table rows, and for each canvas: lit pixels and the sum of
// each of its chart's datasets, as Chart.js holds them.
async function readPage(page) {
    return page.evaluate(() => {
        const figures = {};
        for (const dd of document.querySelectorAll("dd[data-testid]"))
            figures[dd.dataset.testid] = { text: dd.textContent, value: dd.dataset.value };
        const rows = (name) => [...document.querySelectorAll(`[data-testid="${name}"] tbody tr`)]
            .map((tr) => [...tr.cells].map((td) => td.textContent));
        const charts = {};
        for (const canvas of document.querySelectorAll("canvas[data-testid]")) {
            const { width, height } = canvas;
            const pixels = canvas.getContext("2d").getImageData(0, 0, width, height).data;
            let lit = 0;
            for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) lit++;
            const chart = Chart.getChart(canvas);
            charts[canvas.dataset.testid] = {
                width, height, lit,
                labels: chart ? chart.data.labels : null,
                sums: chart ? chart.data.datasets.map((d) =>
                    d.data.reduce((s, v) => s + (v || 0), 0)) : null,
            };
        }
        return {
            figures,
            products: rows("products-table"),
            promotions: rows("promotions-table"),
            charts,
            merchantName: document.querySelector('[data-testid="merchant-name"]').textContent,
            status: document.querySelector('[data-testid="status"]').textContent,
            error: document.querySelector('[data-testid="error"]').hidden ? null
                : document.querySelector('[data-testid="error"]').textContent,
            loads: Number(document.body.dataset.loads || 0),
        };
    });
}

async function storageAndLeaks(page, seen, tokens) {
    const stored = await page.evaluate(() => ({
        localStorage: localStorage.length,
        sessionStorage: sessionStorage.length,
        cookie: document.cookie,
    }));
    const urlsWithToken = seen.requests.filter((u) => tokens.some((t) => u.includes(t)));
    return { stored, urlsWithToken, offsite: seen.offsite, csp: await cspViolations(page),
             pageErrors: seen.pageErrors };
}

async function live(browser) {
    const { page, seen } = await watchedPage(browser, base, { viewport: { width: 1280, height: 1000 } });
    await page.goto(`${base}/dashboard`, { waitUntil: "load" });
    await fillForm(page, settings.token, settings);
    await page.click("#show");
    await page.waitForFunction(() => document.body.dataset.loads === "1" ||
        !document.querySelector('[data-testid="error"]').hidden, null, { timeout: 15000 });
    const first = await readPage(page);
    if (first.error) { // nothing more to see: report what went wrong
        report(Object.assign({ step: "first", console: seen.console }, first));
        return;
    }
    if (settings.screenshot) await page.screenshot({ path: settings.screenshot, fullPage: true });
    report(Object.assign({ step: "first" }, first));

    if ((await nextLine()) !== "next") throw new Error("expected 'next' on stdin");
    const before = first.figures["sales-orders"].value;
    const started = Date.now();
    await page.waitForFunction((old) => {
        const v = document.querySelector('[data-testid="sales-orders"]').dataset.value;
        return v !== undefined && v !== old;
    }, before, { timeout: settings.refreshTimeoutMs || 20000 });
    const refreshed = await readPage(page);
    report(Object.assign({ step: "refreshed", waitedMs: Date.now() - started }, refreshed,
        await storageAndLeaks(page, seen, [settings.token]), { console: seen.console }));
}

async function showAndReadError(page, status) {
    await page.click("#show");
    await page.waitForFunction((s) => {
        const e = document.querySelector('[data-testid="error"]');
        return !e.hidden && e.dataset.status === s;
    }, String(status), { timeout: 10000 });
    return page.evaluate(() => ({
        error: document.querySelector('[data-testid="error"]').textContent,
        status: document.querySelector('[data-testid="status"]').textContent,
    }));
}

function problem(status, title, headers) {
    return (route) => route.fulfill({
        status,
        headers: Object.assign({ "Content-Type": "application/problem+json" }, headers),
        body: JSON.stringify({ type: "https://cangrejo.dev/problems/x", title, status,
                               instance: `simulated-${status}` }),
    });
}

async function errors(browser) {
    const { page, seen } = await watchedPage(browser, base);
    await page.goto(`${base}/dashboard`, { waitUntil: "load" });
    const out = { step: "errors" };
    await fillForm(page, "not-a-token", settings);
    out.unauthorized = await showAndReadError(page, 401);
    await page.fill("#token", settings.otherToken);
    out.forbidden = await showAndReadError(page, 403);
    await page.fill("#token", settings.token);
    await page.route("**/v1/**", problem(429, "Too many requests", { "Retry-After": "7" }));
    out.rateLimited = await showAndReadError(page, 429);
    await page.unroute("**/v1/**");
    await page.route("**/v1/**", problem(503, "A service this request needs is unavailable",
        { "Retry-After": "1" }));
    out.unavailable = await showAndReadError(page, 503);
    await page.unroute("**/v1/**");
    await page.click("#show");
    await page.waitForFunction(() => document.querySelector('[data-testid="error"]').hidden,
        null, { timeout: 10000 });
    out.recovered = await readPage(page);
    await page.click("#forget");
    out.forgotten = await page.evaluate(() => ({
        token: document.getElementById("token").value,
        orders: document.querySelector('[data-testid="sales-orders"]').textContent,
        charts: document.querySelectorAll("canvas[data-testid]").length,
        chartObjects: [...document.querySelectorAll("canvas")].filter((c) => Chart.getChart(c)).length,
    }));
    Object.assign(out, await storageAndLeaks(page, seen, [settings.token, settings.otherToken]));
    report(out);
}

const browser = await launch();
try {
    await (mode === "live" ? live : errors)(browser);
} finally {
    await browser.close();
    stdin.return && (await stdin.return());
}
