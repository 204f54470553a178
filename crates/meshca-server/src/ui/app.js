// meshca's dashboard: read-only, from the public API. The roots come from
// GET /v1/connect/ca/roots (open); the leaf TTL from the configuration
// when a token with operator:read is given (kept for this tab only).
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

// --- A minimal DER reader: only what the pictures need (names, validity).

function tlv(b, i) {
  let len = b[i + 1];
  let p = i + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    len = 0;
    for (let k = 0; k < n; k++) len = len * 256 + b[p++];
  }
  return { tag: b[i], start: p, end: p + len };
}

function children(b, node) {
  const out = [];
  for (let i = node.start; i < node.end; ) {
    const c = tlv(b, i);
    out.push(c);
    i = c.end;
  }
  return out;
}

const hex = (b, n) => Array.from(b.slice(n.start, n.end), (x) => x.toString(16).padStart(2, "0")).join("");
const text = (b, n) => new TextDecoder().decode(b.slice(n.start, n.end));

function commonName(b, name) {
  for (const rdn of children(b, name)) {
    for (const atv of children(b, rdn)) {
      const [oid, value] = children(b, atv);
      if (hex(b, oid) === "550403") return text(b, value);
    }
  }
  return "";
}

function time(b, n) {
  const s = text(b, n);
  const full = n.tag === 0x17 ? (Number(s.slice(0, 2)) < 50 ? "20" : "19") + s : s;
  const [y, mo, d, h, mi, se] = [0, 4, 6, 8, 10, 12].map((i, k) => full.slice(i, i + (k ? 2 : 4)));
  return new Date(Date.UTC(+y, +mo - 1, +d, +h, +mi, +se));
}

function parseCert(pem) {
  const body = pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
  const der = Uint8Array.from(atob(body), (c) => c.charCodeAt(0));
  const [tbs] = children(der, tlv(der, 0));
  let f = children(der, tbs);
  if (f[0].tag === 0xa0) f = f.slice(1);
  const [, , issuer, validity, subject] = f;
  const [nb, na] = children(der, validity);
  return {
    issuer: hex(der, issuer), subject: hex(der, subject),
    issuerCN: commonName(der, issuer), subjectCN: commonName(der, subject),
    notBefore: time(der, nb), notAfter: time(der, na),
  };
}

// --- The model: each root with its certificates, cross-signatures found by
// name (a certificate with a root's subject, issued by another root).

const short = (id) => id.slice(0, 11);

function model(roots) {
  const parsed = roots.map((r) => ({ root: r, cert: parseCert(r.RootCert) }));
  const bySubject = new Map(parsed.map((p) => [p.cert.subject, p.root]));
  return parsed.map(({ root, cert }) => ({
    root, cert,
    chain: (root.IntermediateCerts || []).map((pem) => {
      const c = parseCert(pem);
      const signer = bySubject.get(c.issuer);
      const cross = bySubject.has(c.subject) && c.issuer !== c.subject;
      return { cert: c, cross, signer };
    }),
  }));
}

// --- Drawing.

function el(name, attrs, parent, content) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (content !== undefined) e.textContent = content;
  if (parent) parent.appendChild(e);
  return e;
}

function drawHierarchy(m) {
  const colW = 280, boxW = 250, boxH = 44, rowH = 70;
  const rows = Math.max(1, ...m.map((c) => c.chain.length)) + 1;
  const svg = el("svg", { width: m.length * colW + 20, height: rows * rowH + 20 });
  const boxes = new Map();
  m.forEach((col, i) => {
    const x = 10 + i * colW;
    const kind = col.root.Active ? "root" : "root inactive";
    const g = el("g", { class: `cert ${kind}`, "data-root-id": col.root.ID }, svg);
    el("rect", { x, y: 10, width: boxW, height: boxH, rx: 6 }, g);
    el("text", { x: x + 8, y: 28 }, g, `root ${short(col.root.ID)}${col.root.Active ? " (active)" : ""}`);
    el("text", { x: x + 8, y: 44 }, g, col.cert.subjectCN);
    boxes.set(col.root.ID, { x, y: 10 });
    col.chain.forEach((c, k) => {
      const y = 10 + (k + 1) * rowH;
      const g = el("g", { class: c.cross ? "cert cross" : "cert" }, svg);
      el("rect", { x, y, width: boxW, height: boxH, rx: 6 }, g);
      const label = c.cross
        ? `cross-signed by ${c.signer ? short(c.signer.ID) : c.cert.issuerCN}`
        : k === col.chain.length - 1 && col.root.Active ? "signs leaves now" : "intermediate";
      el("text", { x: x + 8, y: y + 18 }, g, label);
      el("text", { x: x + 8, y: y + 34 }, g, c.cert.subjectCN);
      const from = c.signer ? boxes.get(c.signer.ID) || { x, y: 10 } : { x, y: 10 };
      const fx = from.x + boxW / 2;
      el("path", { class: c.cross ? "edge cross" : "edge",
        d: `M${fx},${from.y + boxH} C${fx},${y - 10} ${x + boxW / 2},${from.y + boxH + 10} ${x + boxW / 2},${y}` }, svg);
    });
  });
  return svg;
}

function drawTimeline(m, leafTTLms, leafLabel) {
  const now = new Date();
  const items = [];
  for (const col of m) {
    items.push({ label: `root ${short(col.root.ID)}`, kind: "root", from: col.cert.notBefore, to: col.cert.notAfter });
    for (const c of col.chain) {
      items.push({ label: c.cross ? `cross-sign of ${short(col.root.ID)}` : c.cert.subjectCN,
        kind: c.cross ? "cross" : "intermediate", from: c.cert.notBefore, to: c.cert.notAfter });
    }
  }
  items.push({ label: leafLabel, kind: "leaf", from: now, to: new Date(now.getTime() + leafTTLms) });
  // The window ends with the last intermediate, cross-signature or leaf, so
  // that a ten-year root does not squeeze them into slivers; longer bars
  // are cut at the edge and say when they end.
  const start = Math.min(...items.map((i) => i.from));
  const short_lived = items.filter((i) => i.kind !== "root").map((i) => i.to);
  const end = start + (Math.max(...short_lived) - start) * 1.15;
  const left = 300, width = 640, rowH = 22;
  const x = (t) => left + ((Math.min(t, end) - start) / (end - start || 1)) * width;
  const svg = el("svg", { width: left + width + 100, height: items.length * rowH + 40 });
  items.forEach((it, k) => {
    const y = 10 + k * rowH;
    el("text", { x: 4, y: y + 14 }, svg, it.label);
    const g = el("g", {}, svg);
    el("rect", { class: `bar ${it.kind}`, x: x(it.from), y, height: 14,
      width: Math.max(2, x(it.to) - x(it.from)) }, g);
    el("title", {}, g, `${it.label}: ${it.from.toISOString()} → ${it.to.toISOString()}`);
    if (it.to > end) {
      el("text", { x: left + width + 4, y: y + 12 }, svg, `→ ${it.to.toISOString().slice(0, 10)}`);
    }
  });
  const nx = x(now);
  el("line", { class: "now", x1: nx, x2: nx, y1: 0, y2: items.length * rowH + 14 }, svg);
  el("text", { x: nx + 4, y: items.length * rowH + 30 }, svg, `now ${now.toISOString().slice(0, 16)}Z`);
  return svg;
}

function fillTable(roots) {
  const body = $("roots").querySelector("tbody");
  body.replaceChildren();
  for (const r of roots) {
    const tr = document.createElement("tr");
    tr.dataset.rootId = r.ID;
    const cells = [r.ID, r.Active ? "yes" : "no", `${r.PrivateKeyType} ${r.PrivateKeyBits}`,
      `${r.NotBefore} → ${r.NotAfter}`, r.RotatedOutAt || "", r.SigningKeyID];
    for (const c of cells) {
      const td = document.createElement("td");
      const code = document.createElement("code");
      code.textContent = c;
      td.appendChild(code);
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

// --- Data.

function goDurationMs(s) {
  let ms = 0;
  for (const [, n, unit] of s.matchAll(/([\d.]+)(h|ms|m|s)/g)) {
    ms += Number(n) * { h: 3600e3, m: 60e3, s: 1e3, ms: 1 }[unit];
  }
  return ms;
}

async function leafTTL() {
  const token = sessionStorage.getItem("meshca-token");
  // Without a token: the default TTL, said so (the heading's form asks).
  if (!token) return [72 * 3600e3, "leaf issued now (72h, default)"];
  const r = await fetch("/v1/connect/ca/configuration", { headers: { "X-Consul-Token": token } });
  if (!r.ok) return [72 * 3600e3, `leaf issued now (72h; config: ${r.status})`];
  const ttl = (await r.json()).Config.LeafCertTTL;
  return [goDurationMs(ttl), `leaf issued now (${ttl})`];
}

async function load() {
  const status = $("status");
  try {
    const r = await fetch("/v1/connect/ca/roots");
    if (!r.ok) throw new Error(`the roots answered ${r.status}`);
    const roots = await r.json();
    $("trust-domain").textContent = roots.TrustDomain;
    const m = model(roots.Roots);
    const [ttl, label] = await leafTTL();
    $("hierarchy").replaceChildren(drawHierarchy(m));
    $("timeline").replaceChildren(drawTimeline(m, ttl, label));
    fillTable(roots.Roots);
    status.textContent = `${roots.Roots.length} root(s); active ${roots.ActiveRootID}`;
    status.className = "ok";
  } catch (e) {
    status.textContent = `Could not load the CA: ${e.message}`;
    status.className = "error";
  }
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("meshca-token", $("token").value);
  $("token").value = "";
  load();
});
load();
