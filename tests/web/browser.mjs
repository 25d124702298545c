// Headless Chromium (Debian's /usr/bin/chromium through playwright-core) for the web page tests:
// a page that records every request it makes, console errors, uncaught exceptions and
// Content-Security-Policy violations, so a test can prove the page stays on its own origin.
import { chromium } from "playwright-core";

export async function launch() {
    return chromium.launch({
        executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
        args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-dev-shm-usage", "--no-first-run"],
    });
}

// A page in a fresh context (no stored state) and what it did: seen.requests (every URL it
// asked for), seen.offsite (those not on base's origin), seen.console (errors and warnings),
// seen.pageErrors (uncaught exceptions). cspViolations(page) reads the violations reported.
export async function watchedPage(browser, base, options = {}) {
    const context = await browser.newContext(Object.assign({
        viewport: { width: 1280, height: 900 },
        locale: "en-US",
        timezoneId: "Europe/Madrid",
        serviceWorkers: "block",
    }, options));
    await context.addInitScript(() => {
        window.__csp = [];
        document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(
            `${e.effectiveDirective} blocked ${e.blockedURI || "inline"} (${e.sourceFile}:${e.lineNumber})`));
    });
    const page = await context.newPage();
    const origin = new URL(base).origin;
    const seen = { requests: [], offsite: [], console: [], pageErrors: [] };
    page.on("request", (r) => {
        const url = r.url();
        seen.requests.push(url);
        const scheme = url.split(":", 1)[0];
        if (scheme !== "data" && scheme !== "blob" && new URL(url).origin !== origin)
            seen.offsite.push(url);
    });
    page.on("console", (m) => {
        if (m.type() === "error" || m.type() === "warning") seen.console.push(`${m.type()}: ${m.text()}`);
    });
    page.on("pageerror", (e) => seen.pageErrors.push(String(e)));
    return { context, page, seen };
}

export async function cspViolations(page) {
    return page.evaluate(() => window.__csp || []);
}

// One line of JSON on stdout: what the Python side reads.
export function report(value) {
    process.stdout.write(JSON.stringify(value) + "\n");
}
