// /dashboard: a merchant's sales, top products, promotions and deliveries for a date range, read
// from this server's metrics API with a pasted bearer token, refreshed every N seconds.
//
// The token lives in this page's memory only (the password field and the `token` variable):
// it is sent in the Authorization header to this origin and nowhere else, never written to
// localStorage, sessionStorage, cookies or a URL, and a reload or "Forget token" drops it.
// Anything the API returns is put on the page as text (textContent), never as HTML.
"use strict";

(function () {
    const $ = (id) => document.getElementById(id);
    const testid = (name) => document.querySelector(`[data-testid="${name}"]`);

    const SALES_FIELDS = ["orders", "cancelled_orders", "items_sold", "gross_sales_cents",
        "discounts_cents", "net_sales_cents", "tax_cents", "total_sales_cents"];
    const COLORS = ["#d9480f", "#1c7ed6", "#2b8a3e", "#ae3ec9", "#f08c00", "#0c8599",
        "#c2255c", "#5c940d", "#495057", "#364fc7"];

    let token = null;      // the pasted token, in memory only
    let timer = null;      // the next refresh
    let generation = 0;    // answers of an older "Show" are dropped
    let loads = 0;         // successful loads, for the page's readers (and tests)
    const charts = {};

    Chart.defaults.animation = false; // a refresh redraws at once instead of replaying
    Chart.defaults.maintainAspectRatio = false;
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;

    // ---- dates and formatting ----

    function isoDate(d) {
        const pad = (n) => String(n).padStart(2, "0");
        return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
    }

    function daysFromToday(n) {
        const d = new Date();
        d.setDate(d.getDate() + n);
        return isoDate(d);
    }

    // Bucket starts carry the merchant's local time ("2026-11-21T14:00:00+01:00"): label them
    // by that text, never through the browser's own zone.
    function bucketLabel(start, granularity) {
        if (granularity === "hour") return start.slice(5, 16).replace("T", " ");
        if (granularity === "month") return start.slice(0, 7);
        return start.slice(0, 10);
    }

    function formatters(currency) {
        const money = new Intl.NumberFormat(undefined, { style: "currency", currency });
        const digits = money.resolvedOptions().maximumFractionDigits;
        const count = new Intl.NumberFormat();
        return {
            money: (cents) => money.format(cents / 10 ** digits),
            major: (cents) => cents / 10 ** digits,
            count: (n) => count.format(n),
            minutes: (m) => (m === null ? "–" : `${m.toFixed(1)} min`),
        };
    }

    // API.md: average order value is net / orders rounded half up, 0 without orders.
    function roundHalfUp(num, den) {
        return den === 0 ? 0 : Math.floor((2 * num + den) / (2 * den));
    }

    // ---- the API ----

    class ApiError extends Error {
        constructor(status, problem, retryAfter) {
            super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
            this.status = status;
            this.problem = problem;
            this.retryAfter = retryAfter;
        }
    }

    async function api(path, params) {
        const query = params ? "?" + new URLSearchParams(params) : "";
        let response;
        try {
            // no-cache: the browser revalidates with If-None-Match, so an unchanged figure
            // costs a 304 and a changed one shows at the next refresh.
            response = await fetch(path + query, {
                headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
                cache: "no-cache",
                credentials: "omit",
                referrerPolicy: "no-referrer",
            });
        } catch (e) {
            throw new ApiError(0, null, null);
        }
        const type = response.headers.get("Content-Type") || "";
        const body = type.includes("json") ? await response.json().catch(() => null) : null;
        if (!response.ok) {
            const retry = parseInt(response.headers.get("Retry-After") || "", 10);
            throw new ApiError(response.status, body, Number.isFinite(retry) ? retry : null);
        }
        return body;
    }

    function readForm() {
        return {
            merchant: $("merchant").value.trim(),
            from: $("from").value,
            to: $("to").value,
            granularity: $("granularity").value,
            sort: $("sort").value,
        };
    }

    async function fetchAll(f) {
        const base = `/v1/merchants/${encodeURIComponent(f.merchant)}`;
        const range = { from: f.from, to: f.to };
        const withGranularity = Object.assign({ granularity: f.granularity }, range);
        const [merchant, sales, products, promotions, deliveries] = await Promise.all([
            api(base),
            api(`${base}/metrics/sales`, withGranularity),
            api(`${base}/metrics/products`, Object.assign({ sort: f.sort, limit: "10" }, range)),
            api(`${base}/metrics/promotions`, range),
            api(`${base}/metrics/deliveries`, withGranularity),
        ]);
        return { merchant, sales, products, promotions, deliveries };
    }

    // ---- rendering (text only) ----

    function setFigure(name, value, text) {
        const el = testid(name);
        el.dataset.value = value === null ? "" : String(value);
        el.textContent = text;
    }

    function fillTable(name, rows) {
        const tbody = testid(name).querySelector("tbody");
        tbody.replaceChildren(...rows.map((cells) => {
            const tr = document.createElement("tr");
            tr.dataset.testid = name.replace("-table", "-row");
            for (const [text, numeric] of cells) {
                const td = document.createElement("td");
                td.textContent = text;
                if (numeric) td.className = "num";
                tr.appendChild(td);
            }
            return tr;
        }));
    }

    function drawChart(name, config) {
        const old = charts[name];
        if (old && old.config.type === config.type) {
            old.data = config.data;
            old.options = config.options;
            old.update();
            return;
        }
        if (old) old.destroy();
        charts[name] = new Chart(testid(name), config);
    }

    function moneyAxis(fmt) {
        return { beginAtZero: true, ticks: { callback: (v) => fmt.money(v) } };
    }

    function renderSales(body, fmt) {
        const sums = Object.fromEntries(SALES_FIELDS.map((k) => [k, 0]));
        for (const b of body.buckets)
            for (const k of SALES_FIELDS) sums[k] += b[k];
        const aov = roundHalfUp(sums.net_sales_cents, sums.orders);
        for (const k of SALES_FIELDS) {
            const money = k.endsWith("_cents");
            setFigure(`sales-${k}`, sums[k], money ? fmt.money(sums[k]) : fmt.count(sums[k]));
        }
        setFigure("sales-average_order_value_cents", aov, fmt.money(aov));
        drawChart("sales-chart", {
            type: "bar",
            data: {
                labels: body.buckets.map((b) => bucketLabel(b.start, body.granularity)),
                datasets: [
                    { label: "net sales", data: body.buckets.map((b) => b.net_sales_cents),
                      backgroundColor: COLORS[0], yAxisID: "money", order: 2 },
                    { label: "orders", type: "line", data: body.buckets.map((b) => b.orders),
                      borderColor: COLORS[1], backgroundColor: COLORS[1], yAxisID: "orders",
                      order: 1 },
                ],
            },
            options: {
                scales: {
                    money: Object.assign({ position: "left" }, moneyAxis(fmt)),
                    orders: { position: "right", beginAtZero: true, grid: { display: false },
                              ticks: { precision: 0 } },
                },
                plugins: { tooltip: { callbacks: { label: (c) => c.dataset.yAxisID === "money"
                    ? `net sales ${fmt.money(c.raw)}` : `${c.raw} orders` } } },
            },
        });
    }

    function renderProducts(body, fmt) {
        const list = body.products;
        fillTable("products-table", list.map((p) => [[p.sku], [p.name], [fmt.count(p.quantity), 1],
            [fmt.money(p.net_sales_cents), 1]]));
        const byQuantity = body.sort === "quantity";
        drawChart("products-chart", {
            type: "bar",
            data: {
                labels: list.map((p) => p.name || p.sku),
                datasets: [{
                    label: byQuantity ? "quantity" : "net sales",
                    data: list.map((p) => (byQuantity ? p.quantity : p.net_sales_cents)),
                    backgroundColor: list.map((_, i) => COLORS[i % COLORS.length]),
                }],
            },
            options: {
                indexAxis: "y",
                scales: { x: byQuantity ? { beginAtZero: true, ticks: { precision: 0 } }
                    : moneyAxis(fmt) },
                plugins: { legend: { display: false } },
            },
        });
    }

    function renderPromotions(body, fmt) {
        const list = body.promotions;
        const sum = (k) => list.reduce((s, p) => s + p[k], 0);
        setFigure("promotions-orders", sum("orders"), fmt.count(sum("orders")));
        for (const k of ["discounts_cents", "net_sales_cents"])
            setFigure(`promotions-${k}`, sum(k), fmt.money(sum(k)));
        fillTable("promotions-table", list.map((p) => [[p.promo_code], [fmt.count(p.orders), 1],
            [fmt.money(p.discounts_cents), 1], [fmt.money(p.net_sales_cents), 1]]));
        drawChart("promotions-chart", {
            type: "bar",
            data: {
                labels: list.map((p) => p.promo_code),
                datasets: [
                    { label: "net sales", data: list.map((p) => p.net_sales_cents),
                      backgroundColor: COLORS[2] },
                    { label: "discounts", data: list.map((p) => p.discounts_cents),
                      backgroundColor: COLORS[4] },
                ],
            },
            options: { scales: { y: moneyAxis(fmt) } },
        });
    }

    function renderDeliveries(body, fmt) {
        const buckets = body.buckets;
        const sum = (k) => buckets.reduce((s, b) => s + b[k], 0);
        const delivered = sum("delivered");
        // The mean over the range: each bucket's mean weighted by its delivered orders.
        const weighted = buckets.reduce((s, b) => s + (b.average_delivery_minutes || 0) * b.delivered, 0);
        const average = delivered ? Math.round((weighted / delivered) * 10) / 10 : null;
        for (const k of ["deliveries", "delivered", "failed"])
            setFigure(`deliveries-${k}`, sum(k), fmt.count(sum(k)));
        setFigure("deliveries-average_delivery_minutes", average, fmt.minutes(average));
        const labels = buckets.map((b) => bucketLabel(b.start, body.granularity));
        drawChart("deliveries-chart", {
            type: "bar",
            data: {
                labels,
                datasets: [
                    { label: "delivered", data: buckets.map((b) => b.delivered),
                      backgroundColor: COLORS[2], stack: "state", yAxisID: "orders" },
                    { label: "failed", data: buckets.map((b) => b.failed),
                      backgroundColor: COLORS[0], stack: "state", yAxisID: "orders" },
                    { label: "under way", backgroundColor: "#adb5bd", stack: "state",
                      data: buckets.map((b) => b.deliveries - b.delivered - b.failed),
                      yAxisID: "orders" },
                    { label: "average minutes", type: "line", borderColor: COLORS[1],
                      backgroundColor: COLORS[1], yAxisID: "minutes", spanGaps: true,
                      data: buckets.map((b) => b.average_delivery_minutes) },
                ],
            },
            options: {
                scales: {
                    orders: { stacked: true, beginAtZero: true, ticks: { precision: 0 } },
                    minutes: { position: "right", beginAtZero: true, grid: { display: false } },
                    x: { stacked: true },
                },
            },
        });
    }

    function render(all) {
        const fmt = formatters(all.sales.currency);
        const m = all.merchant;
        testid("merchant-name").textContent = `· ${m.name} (${m.timezone}, ${m.currency})`;
        renderSales(all.sales, fmt);
        renderProducts(all.products, fmt);
        renderPromotions(all.promotions, fmt);
        renderDeliveries(all.deliveries, fmt);
        testid("as-of").textContent = `Data complete up to ${all.sales.as_of}.`;
    }

    function clearFigures() {
        for (const el of document.querySelectorAll("dd[data-testid]")) {
            el.textContent = "–";
            delete el.dataset.value;
        }
        for (const name of ["products-table", "promotions-table"])
            testid(name).querySelector("tbody").replaceChildren();
        for (const name of Object.keys(charts)) {
            charts[name].destroy();
            delete charts[name];
        }
        testid("merchant-name").textContent = "";
        testid("as-of").textContent = "";
    }

    // ---- status, errors and the refresh loop ----

    function setStatus(state, text) {
        const el = testid("status");
        el.dataset.state = state;
        el.textContent = text;
    }

    function showError(text) {
        const el = testid("error");
        el.hidden = !text;
        el.textContent = text || "";
    }

    // What went wrong, in words, and whether retrying later can help.
    function explain(e, merchant) {
        const problem = e.problem || {};
        const ref = problem.instance ? ` (request ${problem.instance})` : "";
        const detail = problem.detail ? `: ${problem.detail}` : "";
        switch (true) {
        case e.status === 0:
            return { retry: true, text: "Cannot reach the server." };
        case e.status === 401:
            return { retry: false, text: `401 — the token was refused (missing, malformed, ` +
                `expired or not signed by a trusted key)${detail}. Paste a fresh token.${ref}` };
        case e.status === 403:
            return { retry: false, text: `403 — this token may not read merchant ${merchant}: ` +
                `it needs the metrics:read scope and merchant ${merchant} in its merchants ` +
                `claim.${ref}` };
        case e.status === 404:
            return { retry: false, text: `404 — merchant ${merchant} does not exist.${ref}` };
        case e.status === 429:
            return { retry: true, text: `429 — rate limited: this token or merchant has used ` +
                `its quota of requests${detail}.${ref}` };
        case e.status >= 500:
            return { retry: true, text: `${e.status} — the server could not answer` +
                `${detail || (problem.title ? ": " + problem.title : "")}.${ref}` };
        default: {
            const fields = (problem.errors || []).map((x) => `${x.field} ${x.message}`).join("; ");
            return { retry: false, text: `${e.status} — the query was refused${detail}` +
                `${fields ? " (" + fields + ")" : ""}.${ref}` };
        }
        }
    }

    function refreshSeconds() {
        const n = parseInt($("refresh").value, 10);
        return Number.isFinite(n) && n > 0 ? Math.max(2, n) : 0;
    }

    function schedule(atLeast) {
        clearTimeout(timer);
        timer = null;
        const every = refreshSeconds();
        if (!token || !every) return;
        timer = setTimeout(refresh, 1000 * Math.max(every, atLeast || 0));
    }

    function clock() {
        return new Date().toLocaleTimeString();
    }

    async function refresh() {
        if (!token) return;
        if (document.hidden) return; // resumed by visibilitychange
        const mine = ++generation;
        const form = readForm();
        setStatus("loading", "Loading…");
        try {
            const all = await fetchAll(form);
            if (mine !== generation) return;
            render(all);
            showError(null);
            loads += 1;
            document.body.dataset.loads = String(loads);
            const every = refreshSeconds();
            setStatus("ok", `Updated ${clock()}` +
                (every ? ` · refreshing every ${every} s` : " · live refresh off"));
            schedule();
        } catch (e) {
            if (mine !== generation) return;
            if (!(e instanceof ApiError)) { // a bug of this page: say so, keep the old figures
                showError(`The page failed to show the figures: ${e.message}`);
                setStatus("error", `Failed ${clock()}.`);
                throw e;
            }
            const why = explain(e, form.merchant);
            const wait = Math.max(refreshSeconds(), e.retryAfter || 0);
            const retrying = why.retry && refreshSeconds() > 0;
            showError(why.text + (retrying ? ` Retrying in ${wait} s.` : ""));
            setStatus("error", loads ? `Showing figures from an earlier load (failed ${clock()}).`
                : `Failed ${clock()}.`);
            testid("error").dataset.status = String(e.status);
            if (retrying) schedule(e.retryAfter);
            else clearTimeout(timer); // a new token or query is needed: "Show" starts again
        }
    }

    // A token's merchants claim, read (not verified: the server does that) to prefill the id.
    function merchantsClaim(jwt) {
        try {
            const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
            const claims = JSON.parse(atob(part.padEnd(Math.ceil(part.length / 4) * 4, "=")));
            return Array.isArray(claims.merchants) ? claims.merchants : [];
        } catch (e) {
            return [];
        }
    }

    function onShow(event) {
        event.preventDefault();
        token = $("token").value.trim() || null;
        if (!token) {
            showError("Paste a token first.");
            return;
        }
        if (!$("merchant").value) {
            const ids = merchantsClaim(token);
            if (ids.length) $("merchant").value = ids[0];
        }
        if (!$("controls").reportValidity()) return;
        clearTimeout(timer);
        refresh();
    }

    function onForget() {
        token = null;
        generation += 1;
        clearTimeout(timer);
        $("token").value = "";
        clearFigures();
        showError(null);
        setStatus("idle", "Token forgotten.");
    }

    function start() {
        $("from").value = daysFromToday(-6);
        $("to").value = daysFromToday(1);
        $("controls").addEventListener("submit", onShow);
        $("forget").addEventListener("click", onForget);
        $("refresh").addEventListener("change", () => token && schedule());
        document.addEventListener("visibilitychange", () => {
            if (!document.hidden && token) refresh();
        });
    }

    start();
})();
