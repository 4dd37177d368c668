// Checks an audit record in the browser, trusting only the log's public key the auditor pinned.
//
// The page carries the record's canonical text, its leaf index, the tree size, the inclusion proof (hex)
// and the signed checkpoint note (#proof-data). With WebCrypto alone this script: checks the pinned key
// is a well-formed signed-note Ed25519 verifier key (<name>+<hex key id>+<base64(0x01 || key)>, the id
// being SHA-256(name || "\n" || 0x01 || key)[:4]); verifies the note's signature by that key; reads the
// checkpoint (origin, size, base64 root); hashes the record as the log does (RFC 9162 leaf:
// SHA-256(0x00 || bytes)); and walks the inclusion proof to the signed root (RFC 9162 section 2.1.3.2).
"use strict";

(function () {
  const STORAGE = "exchange.audit.verifier-key";
  const DASH = "\u2014 ";
  const encoder = new TextEncoder();

  class Failed extends Error {
    constructor(step, detail) {
      super(detail);
      this.step = step;
    }
  }

  function json(id) {
    const node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  function base64(text, step, what) {
    try {
      const raw = atob(text);
      return Uint8Array.from(raw, (c) => c.charCodeAt(0));
    } catch (e) {
      throw new Failed(step, what + " is not base64");
    }
  }

  function fromHex(text) {
    if (!/^([0-9a-f]{2})*$/.test(text)) {
      throw new Failed("inclusion", "a proof hash is not hex");
    }
    return Uint8Array.from(text.match(/../g) || [], (h) => parseInt(h, 16));
  }

  function toHex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function join(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  function same(a, b) {
    return a.length === b.length && a.every((v, i) => v === b[i]);
  }

  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }

  const nodeHash = (left, right) => sha256(join(Uint8Array.of(1), left, right));

  // The pinned verifier key: its name, 4-byte id and raw Ed25519 public key, checked for consistency.
  async function parseKey(text) {
    const first = text.indexOf("+");
    const second = text.indexOf("+", first + 1);
    if (first <= 0 || second < 0) {
      throw new Failed("key", "a verifier key is <name>+<hex id>+<base64 key>");
    }
    const name = text.slice(0, first);
    const id = text.slice(first + 1, second);
    const raw = base64(text.slice(second + 1), "key", "the key");
    if (raw.length !== 33 || raw[0] !== 1) {
      throw new Failed("key", "not an Ed25519 verifier key");
    }
    if (/\s/.test(name)) {
      throw new Failed("key", "a key name has no spaces");
    }
    const keyId = (await sha256(join(encoder.encode(name + "\n"), raw))).slice(0, 4);
    if (toHex(keyId) !== id) {
      throw new Failed("key", "the key id " + id + " does not match the key");
    }
    return { name: name, id: keyId, publicKey: raw.slice(1) };
  }

  // The note's text if a signature line by the pinned key verifies over it.
  async function openNote(note, key) {
    const split = note.lastIndexOf("\n\n");
    const signatures = note.slice(split + 2);
    if (split < 0 || !signatures.endsWith("\n")) {
      throw new Failed("signature", "a signed note is text, a blank line, then signature lines");
    }
    const text = note.slice(0, split + 1);
    const verifyKey = await crypto.subtle.importKey("raw", key.publicKey, { name: "Ed25519" }, false, ["verify"]);
    for (const line of signatures.slice(0, -1).split("\n")) {
      if (!line.startsWith(DASH)) {
        throw new Failed("signature", "not a signature line: " + line.slice(0, 60));
      }
      const rest = line.slice(DASH.length);
      const space = rest.indexOf(" ");
      if (space <= 0) {
        throw new Failed("signature", "a signature line is a dash, a name and a signature");
      }
      const name = rest.slice(0, space);
      const raw = base64(rest.slice(space + 1), "signature", "a signature");
      if (name !== key.name || !same(raw.slice(0, 4), key.id)) {
        continue;
      }
      const good = await crypto.subtle.verify({ name: "Ed25519" }, verifyKey, raw.slice(4), encoder.encode(text));
      if (!good) {
        throw new Failed("signature", "the signature by " + name + " does not verify");
      }
      return text;
    }
    throw new Failed("signature", "the note carries no signature by the pinned key " + key.name);
  }

  function parseCheckpoint(text, expectedSize) {
    const lines = text.split("\n");
    if (lines.length < 4 || lines[lines.length - 1] !== "" || !lines[0]) {
      throw new Failed("checkpoint", "a checkpoint is origin, size and root, one per line");
    }
    if (!/^(0|[1-9][0-9]*)$/.test(lines[1])) {
      throw new Failed("checkpoint", "the size is not a decimal number");
    }
    const root = base64(lines[2], "checkpoint", "the root");
    if (root.length !== 32) {
      throw new Failed("checkpoint", "the root is not a SHA-256 hash");
    }
    const size = Number(lines[1]);
    if (size !== expectedSize) {
      throw new Failed("checkpoint", "the checkpoint is of size " + size + ", the proof of size " + expectedSize);
    }
    return { origin: lines[0], size: size, root: root };
  }

  // RFC 9162 section 2.1.3.2 (arithmetic rather than 32-bit bit operations: sizes may pass 2^31).
  async function rootFromProof(leaf, index, size, proof) {
    if (!(Number.isSafeInteger(index) && index >= 0 && index < size)) {
      throw new Failed("inclusion", "leaf index " + index + " is not below tree size " + size);
    }
    let fn = index;
    let sn = size - 1;
    let r = leaf;
    for (const p of proof) {
      if (p.length !== 32) {
        throw new Failed("inclusion", "a proof hash is not 32 bytes");
      }
      if (sn === 0) {
        throw new Failed("inclusion", "the proof is longer than the tree is deep");
      }
      if (fn % 2 === 1 || fn === sn) {
        r = await nodeHash(p, r);
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      } else {
        r = await nodeHash(r, p);
      }
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    if (sn !== 0) {
      throw new Failed("inclusion", "the proof is shorter than the tree is deep");
    }
    return r;
  }

  async function check(data, keyText, passed) {
    const key = await parseKey(keyText);
    passed("key", key.name + "+" + toHex(key.id));
    const text = await openNote(data.note, key);
    passed("signature", key.name);
    const head = parseCheckpoint(text, data.size);
    passed("checkpoint", head.origin + " · " + head.size + " · " + toHex(head.root));
    if (typeof data.record !== "string") {
      throw new Failed("leaf", "no record to check");
    }
    const leaf = await sha256(join(Uint8Array.of(0), encoder.encode(data.record)));
    passed("leaf", toHex(leaf));
    const root = await rootFromProof(leaf, data.index, data.size, data.proof.map(fromHex));
    if (!same(root, head.root)) {
      throw new Failed("inclusion", "the proof leads to " + toHex(root) + ", not the signed root");
    }
    passed("inclusion", toHex(root));
    return head;
  }

  function start() {
    const data = json("proof-data");
    const messages = json("proof-messages");
    const verdict = document.getElementById("proof-verdict");
    const steps = document.getElementById("proof-steps");
    const pinned = document.getElementById("pinned-key");
    const field = document.getElementById("pin-key");
    if (!data || !messages || !verdict) {
      return;
    }
    document.getElementById("proof-record").textContent = data.record || "";

    function say(text, kind) {
      verdict.textContent = text;
      verdict.className = "verdict" + (kind ? " " + kind : "");
    }

    function step(name, ok, detail) {
      const item = document.createElement("li");
      item.className = ok ? "ok" : "bad";
      item.dataset.step = name;
      item.textContent = (ok ? "\u2713 " : "\u2717 ") + messages["step_" + name] + (detail ? ": " + detail : "");
      steps.appendChild(item);
    }

    async function run() {
      steps.replaceChildren();
      const keyText = localStorage.getItem(STORAGE) || "";
      pinned.textContent = keyText || messages.none_pinned;
      if (!keyText) {
        say(messages.no_key, "");
        return;
      }
      if (!window.crypto || !crypto.subtle) {
        say(messages.no_crypto, "bad");
        return;
      }
      if (data.record === null) {
        say(messages.no_record, "");
        return;
      }
      try {
        await check(data, keyText, (name, detail) => step(name, true, detail));
        say(messages.ok, "ok");
      } catch (e) {
        const name = e instanceof Failed ? e.step : "signature";
        step(name, false, e.message);
        say(messages.bad + " " + messages["step_" + name] + ": " + e.message, "bad");
      }
    }

    document.getElementById("pin-button").addEventListener("click", async () => {
      const text = field.value.trim();
      try {
        await parseKey(text);
      } catch (e) {
        say(messages.bad_key + " " + e.message, "bad");
        return;
      }
      localStorage.setItem(STORAGE, text);
      field.value = "";
      await run();
    });
    document.getElementById("unpin-button").addEventListener("click", async () => {
      localStorage.removeItem(STORAGE);
      await run();
    });
    run();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
