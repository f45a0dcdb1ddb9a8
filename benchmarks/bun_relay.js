// The Bun baseline: the least work a Bun WebSocket server does per message and per call.
//
// It is a baseline, not the reference router: the same wire behaviour as the
// bare relay (benchmarks/bare_relay.py) on Bun's built-in WebSocket server, so
// its CPU per message is a lower bound for any router written for Bun.
//
// A connection's first frame is {"type":"PAIR","pair":KEY,"address":ADDR};
// once two connections sent the same key both get {"type":"PAIRED","pair":KEY}.
// Every later frame is parsed, the sender's address set as "from", and the
// re-serialised frame sent to the other connection of the pair; nothing else
// in it is touched. When either end of a pair closes, the other one is closed too.
//
// Unpaired connections get the least a call router does, so that the connect
// and callsetup scenarios can run against it: REGISTER (REGISTERED with a
// session id; the address is looked up by DIAL), HEARTBEAT (HEARTBEAT_ACK),
// DIAL (RING to the callee with a fresh call id, RINGING to the caller, a
// ring timer; BUSY no_such_address or already_in_call), ANSWER (CONNECTED to
// the caller) and HANGUP (HANGUP to the other party). No validation, no
// presence, no logging: a lower bound for a Bun router's CPU per call.
//
// Run `bun benchmarks/bun_relay.js [--host H] [--port P]` (port 0: any free
// port); it prints `bun relay listening on ws://HOST:PORT` on stderr when
// ready and exits on SIGINT or SIGTERM.

function option(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const host = option("--host", "127.0.0.1");
const port = Number.parseInt(option("--port", "0"), 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`bun relay: bad --port ${option("--port", "")}`);
  process.exit(2);
}

// Pair key -> the connection that sent it first, until its peer arrives.
const waiting = new Map();
// Registered address -> connection; call id -> call.
const registry = new Map();
const calls = new Map();
const RING_TIMEOUT_MS = 30000;

function endCall(call) {
  calls.delete(call.id);
  clearTimeout(call.timer);
  call.caller.data.call = null;
  call.callee.data.call = null;
}

function dial(ws, msg) {
  const callee = registry.get(msg.to);
  if (callee === undefined) {
    ws.send(JSON.stringify({ type: "BUSY", to: msg.to, reason: "no_such_address" }));
    return;
  }
  if (callee.data.call !== null || ws.data.call !== null) {
    ws.send(JSON.stringify({ type: "BUSY", to: msg.to, reason: "already_in_call" }));
    return;
  }
  const id = crypto.randomUUID();
  const call = { id, caller: ws, callee, to: msg.to, timer: null };
  call.timer = setTimeout(() => {
    if (calls.get(id) === call) {
      endCall(call);
      ws.send(JSON.stringify({ type: "BUSY", to: call.to, reason: "timeout", call_id: id }));
      callee.send(JSON.stringify({ type: "HANGUP", call_id: id, reason: "timeout" }));
    }
  }, RING_TIMEOUT_MS);
  calls.set(id, call);
  ws.data.call = call;
  callee.data.call = call;
  callee.send(JSON.stringify({ type: "RING", from: ws.data.address, call_id: id }));
  ws.send(JSON.stringify({ type: "RINGING", call_id: id, to: msg.to }));
}

function hello(ws, msg) {
  const link = ws.data;
  switch (msg.type) {
    case "PAIR": {
      link.address = msg.address;
      const other = waiting.get(msg.pair);
      if (other === undefined) {
        link.pair = msg.pair;
        waiting.set(msg.pair, ws);
        return;
      }
      waiting.delete(msg.pair);
      other.data.pair = null;
      link.peer = other;
      other.data.peer = ws;
      const reply = JSON.stringify({ type: "PAIRED", pair: msg.pair });
      ws.send(reply);
      other.send(reply);
      return;
    }
    case "REGISTER":
      link.address = msg.address;
      registry.set(msg.address, ws);
      ws.send(
        JSON.stringify({ type: "REGISTERED", address: msg.address, session_id: crypto.randomUUID() }),
      );
      return;
    case "HEARTBEAT":
      ws.send(JSON.stringify({ type: "HEARTBEAT_ACK", timestamp: Date.now() }));
      return;
    case "DIAL":
      dial(ws, msg);
      return;
    case "ANSWER": {
      const call = calls.get(msg.call_id);
      if (call !== undefined && call.callee === ws) {
        clearTimeout(call.timer);
        call.caller.send(JSON.stringify({ type: "CONNECTED", call_id: call.id, to: call.to }));
      }
      return;
    }
    case "HANGUP": {
      const call = calls.get(msg.call_id);
      if (call !== undefined && (call.caller === ws || call.callee === ws)) {
        endCall(call);
        const other = call.caller === ws ? call.callee : call.caller;
        other.send(JSON.stringify({ type: "HANGUP", call_id: call.id, reason: msg.reason || "normal" }));
      }
      return;
    }
  }
}

const server = Bun.serve({
  hostname: host,
  port,
  fetch(req, srv) {
    if (srv.upgrade(req, { data: { peer: null, pair: null, address: "", call: null } })) {
      return undefined;
    }
    return new Response("WebSocket only", { status: 426 });
  },
  websocket: {
    // Like the bare relay: no idle timeout, no pings, no compression.
    idleTimeout: 0,
    sendPings: false,
    perMessageDeflate: false,
    message(ws, message) {
      let msg;
      try {
        msg = JSON.parse(message);
      } catch {
        ws.close(1007, "not JSON");
        return;
      }
      const link = ws.data;
      const peer = link.peer;
      if (peer !== null) {
        msg.from = link.address;
        peer.send(JSON.stringify(msg));
        return;
      }
      hello(ws, msg);
    },
    close(ws) {
      const link = ws.data;
      if (registry.get(link.address) === ws) {
        registry.delete(link.address);
      }
      const call = link.call;
      if (call !== null) {
        endCall(call);
        const other = call.caller === ws ? call.callee : call.caller;
        other.send(JSON.stringify({ type: "HANGUP", call_id: call.id, reason: "peer_disconnected" }));
      }
      if (link.pair !== null && waiting.get(link.pair) === ws) {
        waiting.delete(link.pair);
      }
      const peer = link.peer;
      link.peer = null;
      if (peer !== null) {
        peer.data.peer = null;
        peer.close();
      }
    },
  },
});

console.error(`bun relay listening on ws://${server.hostname}:${server.port}`);

function stop() {
  server.stop(true);
  process.exit(0);
}

process.on("SIGINT", stop);
process.on("SIGTERM", stop);
