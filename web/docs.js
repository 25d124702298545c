// /docs: Swagger UI over this server's /openapi.json. Everything comes from this origin (the
// page's Content-Security-Policy says so): no validator badge, no external links followed.
"use strict";

(function () {
    const root = document.getElementById("swagger-ui");
    const specUrl = root.dataset.specUrl;

    // "Try it out" should call the server that serves this page, whatever the spec's
    // development URL says: this origin goes first in the server list.
    function withThisServer(spec) {
        const here = { url: window.location.origin, description: "this server" };
        const others = (spec.servers || []).filter((s) => s.url !== here.url);
        return Object.assign({}, spec, { servers: [here].concat(others) });
    }

    function showError(message) {
        root.textContent = "";
        const p = document.createElement("p");
        p.setAttribute("role", "alert");
        p.textContent = message + " The contract is at " + specUrl + ".";
        root.appendChild(p);
    }

    fetch(specUrl, { headers: { Accept: "application/json" } })
        .then((r) => {
            if (!r.ok) throw new Error(specUrl + " answered " + r.status + ".");
            return r.json();
        })
        .then((spec) => {
            window.ui = SwaggerUIBundle({
                spec: withThisServer(spec),
                dom_id: "#swagger-ui",
                deepLinking: true,
                validatorUrl: null,
                displayRequestDuration: true,
                defaultModelsExpandDepth: 0,
                presets: [SwaggerUIBundle.presets.apis],
                layout: "BaseLayout",
            });
        })
        .catch((e) => showError("Could not load the API description: " + e.message));
})();
