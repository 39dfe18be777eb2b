#!/usr/bin/env node
// A Node.js (@grpc/grpc-js) client for the daemon, run by tests/test_node_client.py.
//
// Usage: node client.js SOCKET_PATH
//
// Connects to unix://SOCKET_PATH, runs each check below, and prints one JSON line
// {"check name": result, ...}. A check that fails to run reports {"error": ...}
// instead of its result, so the Python test can say which one went wrong; the
// process exits 0 whenever it could print the line.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const socketPath = process.argv[2];
if (!socketPath || !path.isAbsolute(socketPath)) {
  process.stderr.write("usage: node client.js /absolute/path/to/app.sock\n");
  process.exit(2);
}
const address = `unix://${socketPath}`;  // unix:///abs/path
const credentials = grpc.credentials.createInsecure();
const DEADLINE_MS = 5000;
const deadline = () => Date.now() + DEADLINE_MS;

const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true };
const healthPkg = grpc.loadPackageDefinition(
  protoLoader.loadSync(path.join(__dirname, "health.proto"), LOADER_OPTIONS));
const sidecarPkg = grpc.loadPackageDefinition(
  protoLoader.loadSync(
    path.join(__dirname, "..", "..", "protos", "sidecar", "v1", "sidecar.proto"),
    LOADER_OPTIONS));

// Raw bytes for the upstream's /test.Echo/ methods: no proto, identity (de)serializers.
const identity = (b) => b;
const RawEcho = grpc.makeGenericClientConstructor({
  Unary: {
    path: "/test.Echo/Unary", requestStream: false, responseStream: false,
    requestSerialize: identity, requestDeserialize: identity,
    responseSerialize: identity, responseDeserialize: identity,
  },
  ServerStream: {
    path: "/test.Echo/ServerStream", requestStream: false, responseStream: true,
    requestSerialize: identity, requestDeserialize: identity,
    responseSerialize: identity, responseDeserialize: identity,
  },
  Fail: {
    path: "/test.Echo/Fail", requestStream: false, responseStream: false,
    requestSerialize: identity, requestDeserialize: identity,
    responseSerialize: identity, responseDeserialize: identity,
  },
}, "Echo");

const statusName = (code) =>
  Object.keys(grpc.status).find((k) => grpc.status[k] === code) || String(code);
const errorOf = (err) => ({ code: statusName(err.code), details: err.details });
const first = (md, key) => {
  const values = md ? md.get(key) : [];
  return values.length ? String(values[0]) : null;
};

// Unary call returning {reply, headers}; rejects with the grpc error.
function unary(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    let headers = null;
    const call = client[method](request, metadata || new grpc.Metadata(),
      { deadline: deadline() }, (err, reply) => (err ? reject(err) : resolve({ reply, headers })));
    call.on("metadata", (md) => { headers = md; });
  });
}

// Unary call that is expected to fail: resolves with the error, rejects if it succeeded.
async function expectError(promise) {
  try {
    const { reply } = await promise;
    throw new Error(`expected an error, got a reply: ${JSON.stringify(reply)}`);
  } catch (err) {
    if (err.code === undefined) throw err;
    return errorOf(err);
  }
}

const checks = {
  async health(clients) {
    const { reply } = await unary(clients.health, "Check", { service: "" });
    return { status: reply.status };
  },

  async unary(clients) {
    const payload = Buffer.from(Array.from({ length: 512 }, (_, i) => i % 256));
    const md = new grpc.Metadata();
    md.set("x-user-id", "node-alice");
    md.set("x-correlation-id", "node-order-42");
    const { reply, headers } = await unary(clients.echo, "Unary", payload, md);
    return {
      sent_b64: payload.toString("base64"),
      echoed_b64: Buffer.from(reply).toString("base64"),
      sent_correlation_id: "node-order-42",
      correlation_id: first(headers, "correlation-id"),
      upstream_header: first(headers, "upstream-header"),
    };
  },

  async server_stream(clients) {
    const count = 5;
    const payload = Buffer.from("node-payload");
    const request = Buffer.alloc(4 + payload.length);
    request.writeUInt32BE(count, 0);
    payload.copy(request, 4);
    const messages = await new Promise((resolve, reject) => {
      const got = [];
      const call = clients.echo.ServerStream(request, new grpc.Metadata(), { deadline: deadline() });
      call.on("data", (m) => got.push(Buffer.from(m)));
      call.on("error", reject);  // a non-OK status; comes before "end"
      call.on("end", () => resolve(got));  // after the last "data"
    });
    return {
      count: messages.length,
      indexes: messages.map((m) => m.readUInt32BE(0)),
      payloads: messages.map((m) => m.subarray(4).toString()),
    };
  },

  async fail(clients) {
    const md = new grpc.Metadata();
    md.set("fail-code", "NOT_FOUND");
    return expectError(unary(clients.echo, "Fail", Buffer.from("x"), md));
  },

  async http_proxy_unknown_target(clients) {
    return expectError(unary(clients.http, "Call", { target: "nope", method: "GET", path: "/" }));
  },
};

async function main() {
  const clients = {
    health: new healthPkg.grpc.health.v1.Health(address, credentials),
    echo: new RawEcho(address, credentials),
    http: new sidecarPkg.sidecar.v1.HttpProxy(address, credentials),
  };
  const results = {};
  try {
    for (const [name, check] of Object.entries(checks)) {
      try {
        results[name] = await check(clients);
      } catch (err) {
        results[name] = { error: err.code === undefined ? String(err) : errorOf(err) };
      }
    }
  } finally {
    Object.values(clients).forEach((c) => c.close());
  }
  process.stdout.write(JSON.stringify(results) + "\n");
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
