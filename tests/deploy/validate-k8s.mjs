// Validates Kubernetes objects (a JSON array on stdin, e.g. a rendered kustomize overlay):
//
//   node tests/deploy/validate-k8s.mjs < objects.json
//
// Built-in kinds: the schema of npm kubernetes-models (pinned in package.json), plus a check
// for unknown fields (that schema lets any extra key through, so a misspelt field such as
// `readOnlyRootFileSystem` would pass unnoticed): every key must be a property of the type's
// TypeScript interface shipped with kubernetes-models.
// Custom resources (CloudNativePG Cluster, Prometheus Operator ServiceMonitor and
// PrometheusRule) are not in kubernetes-models: they are checked against the hand-written
// minimal schemas of crd-schemas.json beside this file (required fields, types, and only the
// fields listed there), with ajv (a dependency of kubernetes-models).
// Prints a JSON report {"checked": [...], "errors": [...]} and exits 1 when there are errors.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..", "..");
const nodeModules = path.join(root, "node_modules");
const modelsRoot = path.join(nodeModules, "kubernetes-models");
const require = createRequire(path.join(root, "package.json"));

// ---- unknown-field check from the .d.ts interfaces ------------------------------------------

const interfaces = new Map(); // d.ts path -> {props: Map(name -> type text), imports: Map}

function parseInterface(file) {
    if (interfaces.has(file)) return interfaces.get(file);
    let parsed = null;
    if (fs.existsSync(file)) {
        const text = fs.readFileSync(file, "utf8").replace(/\/\*\*[\s\S]*?\*\//g, "");
        const imports = new Map();
        for (const m of text.matchAll(/import \{ (\w+) \} from "([^"]+)";/g)) {
            const spec = m[2];
            const target = spec.startsWith(".")
                ? path.resolve(path.dirname(file), spec.replace(/\.js$/, ".d.ts"))
                : path.join(nodeModules, spec + ".d.ts");
            imports.set(m[1], target);
        }
        const lines = text.split("\n");
        const start = lines.findIndex((l) => /^export interface I\w+( extends [^{]+)? \{$/.test(l));
        if (start >= 0) {
            const props = new Map();
            for (let i = start + 1; i < lines.length && lines[i] !== "}"; i++) {
                const m = lines[i].match(/^ {4}"([^"]+)"\??: (.*);?$/);
                if (!m) continue;
                let type = m[2].replace(/;$/, "");
                if (type === "{") { // a map: { [key: string]: T; }
                    const inner = lines[i + 1].match(/\[key: string\]: (.*);$/);
                    type = inner ? `Map<${inner[1]}>` : "unknown";
                }
                props.set(m[1], type);
            }
            parsed = { props, imports };
        }
    }
    interfaces.set(file, parsed);
    return parsed;
}

function unknownFields(value, file, where, errors) {
    const iface = parseInterface(file);
    if (!iface || value === null || typeof value !== "object" || Array.isArray(value)) return;
    for (const [key, child] of Object.entries(value)) {
        if (!iface.props.has(key)) {
            errors.push(`${where}.${key}: unknown field`);
            continue;
        }
        checkTyped(child, iface.props.get(key), iface.imports, `${where}.${key}`, errors);
    }
}

function checkTyped(value, type, imports, where, errors) {
    let m;
    if ((m = type.match(/^Array<(.*)>$/))) {
        if (Array.isArray(value))
            value.forEach((v, i) => checkTyped(v, m[1], imports, `${where}[${i}]`, errors));
    } else if ((m = type.match(/^Map<(.*)>$/))) {
        if (value && typeof value === "object")
            for (const [k, v] of Object.entries(value))
                checkTyped(v, m[1], imports, `${where}.${k}`, errors);
    } else if (imports.has(type)) {
        unknownFields(value, imports.get(type), where, errors);
    }
}

// ---- custom resources -------------------------------------------------------------------------

const Ajv = require("ajv");
const ajv = new Ajv({ allErrors: true, strict: false });
const crdSchemas = JSON.parse(fs.readFileSync(path.join(here, "crd-schemas.json"), "utf8"));
const crdValidators = new Map(
    Object.entries(crdSchemas)
        .filter(([k]) => !k.startsWith("$"))
        .map(([k, s]) => [k, ajv.compile(s)]));

// ---- main -------------------------------------------------------------------------------------

function modelPath(apiVersion, kind) {
    const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
    return path.join(modelsRoot, group, version, kind);
}

const objects = JSON.parse(fs.readFileSync(0, "utf8"));
const checked = [];
const errors = [];
for (const obj of objects) {
    const id = `${obj.kind}/${obj.metadata && obj.metadata.name}`;
    const key = `${obj.apiVersion}/${obj.kind}`;
    const base = modelPath(obj.apiVersion || "", obj.kind || "");
    if (fs.existsSync(base + ".js")) {
        const mod = await import(base + ".js");
        const Model = mod[obj.kind];
        try {
            new Model(obj).validate();
        } catch (e) {
            errors.push(`${id}: ${e.message}`);
        }
        const before = errors.length;
        unknownFields(obj, base + ".d.ts", id, errors);
        checked.push({ object: id, by: "kubernetes-models",
                       unknownFieldErrors: errors.length - before });
    } else if (crdValidators.has(key)) {
        const validate = crdValidators.get(key);
        if (!validate(obj))
            for (const e of validate.errors)
                errors.push(`${id}${e.instancePath}: ${e.message} ${JSON.stringify(e.params)}`);
        checked.push({ object: id, by: "crd-schemas.json" });
    } else {
        errors.push(`${id}: no schema for ${key}`);
    }
}
process.stdout.write(JSON.stringify({ checked, errors }, null, 1) + "\n");
process.exit(errors.length ? 1 : 0);
