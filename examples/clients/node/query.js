#!/usr/bin/env node
// A departmental system asks the hub for records, from Node.js: ExchangeService.Query over mutual TLS
// with the system's identity (key.pem, cert.pem and the hub's ca.pem, as `exchange cert issue` writes).
// The contract is loaded at run time from the hub's proto/ and the googleapis files it needs
// (google/type/date.proto; google/rpc/status.proto and error_details.proto to read refusals).
// Prints each record as a JSON line after what the hub disclosed; on a refusal, the gRPC status and
// its google.rpc details (the exchange id among them) on stderr, and exits 1. See docs/integrating.md.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { parseArgs } = require("node:util");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

// What the contract imports, and what the hub's error details are made of (besides google/protobuf/*).
const GOOGLEAPIS = ["google/type/date.proto", "google/rpc/status.proto", "google/rpc/error_details.proto"];
const USAGE = `usage: node query.js --hub HOST:PORT --identity DIR --proto DIR --googleapis DIR
       --resource CODE --purpose TEXT --filter ITEM=VALUE... --field ITEM... [--deadline SECONDS]`;

function options() {
  const { values } = parseArgs({
    options: {
      hub: { type: "string" },
      identity: { type: "string" },
      proto: { type: "string" },
      googleapis: { type: "string" },
      resource: { type: "string" },
      purpose: { type: "string" },
      filter: { type: "string", multiple: true, default: [] },
      field: { type: "string", multiple: true, default: [] },
      deadline: { type: "string", default: "20" },
    },
  });
  for (const name of ["hub", "identity", "proto", "googleapis", "resource", "purpose"]) {
    if (!values[name]) throw new Error(`--${name} is missing\n${USAGE}`);
  }
  for (const needed of GOOGLEAPIS) {
    if (!fs.existsSync(path.join(values.googleapis, needed))) {
      throw new Error(`${values.googleapis} has no ${needed}: see docs/integrating.md for where it comes from`);
    }
  }
  return values;
}

// Both include directories serve both loaders: the hub's files import google/type/date.proto.
function loadContract(includeDirs) {
  const definition = protoLoader.loadSync(["exchange/v1/exchange.proto"], {
    includeDirs,
    keepCase: true, // field names as in the .proto: resource_code, exchange_id
    longs: String, // int64 values as text, never a rounded float
    enums: String,
    defaults: true,
    oneofs: true, // a Value says which of its kinds it holds
  });
  const details = new protobuf.Root();
  details.resolvePath = (_origin, target) => includeDirs.map((d) => path.join(d, target)).find(fs.existsSync) || target;
  details.loadSync(GOOGLEAPIS.slice(1), { keepCase: true });
  return { exchange: grpc.loadPackageDefinition(definition).exchange.v1, details };
}

function plain(value) {
  const held = value[value.kind];
  switch (value.kind) {
    case "date_value":
      return [held.year, held.month, held.day].map((n, i) => String(n).padStart(i ? 2 : 4, "0")).join("-");
    case "timestamp_value":
      return new Date(Number(held.seconds) * 1000 + held.nanos / 1e6).toISOString();
    case "bytes_value":
      return Buffer.from(held).toString("base64");
    default:
      return held; // text, integer (as text), decimal (as text), boolean
  }
}

function printAnswer(answer) {
  const disclosure = answer.disclosure || { fields: [], masks: {}, grant_id: "" };
  console.log(`exchange id: ${answer.exchange_id}`);
  console.log(`grant: ${disclosure.grant_id}; fields: ${disclosure.fields.join(", ")}`);
  const masks = Object.entries(disclosure.masks).map(([field, mask]) => `${field} (${mask})`);
  if (masks.length) console.log(`masked: ${masks.join(", ")}`);
  for (const record of answer.records) {
    const row = Object.fromEntries(disclosure.fields.filter((f) => f in record.fields).map((f) => [f, plain(record.fields[f])]));
    console.log(JSON.stringify(row));
  }
  if (answer.next_page_token) console.log(`more: call again with page_token ${answer.next_page_token}`);
}

// The google.rpc.Status the hub puts in the grpc-status-details-bin trailer, each detail unpacked by its type.
function printRefusal(error, details) {
  console.error(`${grpc.status[error.code]}: ${error.details}`);
  const [bin] = error.metadata ? error.metadata.get("grpc-status-details-bin") : [];
  if (!bin) return;
  const status = details.lookupType("google.rpc.Status").decode(bin);
  for (const any of status.details) {
    const name = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    const type = details.lookupType(name);
    console.error(`${name}: ${JSON.stringify(type.toObject(type.decode(any.value)))}`);
  }
}

function main() {
  const o = options();
  const { exchange, details } = loadContract([o.proto, o.googleapis]);
  const files = (name) => fs.readFileSync(path.join(o.identity, name));
  const credentials = grpc.credentials.createSsl(files("ca.pem"), files("key.pem"), files("cert.pem"));
  const client = new exchange.ExchangeService(o.hub, credentials);
  const request = {
    resource_code: o.resource,
    purpose: o.purpose,
    filters: Object.fromEntries(o.filter.map((f) => [f.slice(0, f.indexOf("=")), f.slice(f.indexOf("=") + 1)])),
    fields: o.field,
  };
  const deadline = new Date(Date.now() + Number(o.deadline) * 1000);
  client.Query(request, { deadline }, (error, answer) => {
    if (error) {
      printRefusal(error, details);
      process.exitCode = 1;
    } else {
      printAnswer(answer);
    }
    client.close();
  });
}

try {
  main();
} catch (error) {
  console.error(error.message);
  process.exitCode = 2;
}
