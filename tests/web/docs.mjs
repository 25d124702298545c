// Loads /docs in headless Chromium and reports what Swagger UI rendered: every operation
// (method and path), the requests the page made and any CSP violation or console error.
// Usage: node tests/web/docs.mjs BASE_URL   (prints one JSON object)
import { cspViolations, launch, report, watchedPage } from "./browser.mjs";

const base = process.argv[2];
const browser = await launch();
try {
    const { page, seen } = await watchedPage(browser, base);
    const response = await page.goto(`${base}/docs`, { waitUntil: "networkidle" });
    await page.waitForSelector(".opblock .opblock-summary-method", { timeout: 20000 });
    await page.waitForLoadState("networkidle");
    const operations = await page.$$eval(".opblock", (blocks) => blocks.map((b) => ({
        method: b.querySelector(".opblock-summary-method").textContent.trim(),
        path: b.querySelector(".opblock-summary-path").getAttribute("data-path"),
    })));
    report({
        status: response.status(),
        title: await page.title(),
        infoTitle: await page.$eval(".info .title", (e) => e.textContent.trim()),
        servers: await page.$$eval(".servers select option", (os) => os.map((o) => o.value)),
        operations,
        requests: seen.requests,
        offsite: seen.offsite,
        console: seen.console,
        pageErrors: seen.pageErrors,
        csp: await cspViolations(page),
    });
} finally {
    await browser.close();
}
