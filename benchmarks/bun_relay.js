// The Bun relay: the least work a Bun WebSocket server does per message.
//
// It is a baseline, not the reference router: the same wire behaviour as the
// bare relay (benchmarks/bare_relay.py) on Bun's built-in WebSocket server, so
// its CPU per message is a lower bound for any router written for Bun.
//
// A connection's first frame is {"type":"PAIR","pair":KEY,"address":ADDR};
// once two connections sent the same key both get {"type":"PAIRED","pair":KEY}.
// Every later frame is parsed, the sender's address set as "from", and the
// re-serialised frame sent to the other connection of the pair; nothing else
// in it is touched. Before pairing it also answers REGISTER with REGISTERED
// and HEARTBEAT with HEARTBEAT_ACK, so the connect scenario can run against
// it. When either end of a pair closes, the other one is closed too.
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
      ws.send(
        JSON.stringify({ type: "REGISTERED", address: msg.address, session_id: crypto.randomUUID() }),
      );
      return;
    case "HEARTBEAT":
      ws.send(JSON.stringify({ type: "HEARTBEAT_ACK", timestamp: Date.now() }));
      return;
  }
}

const server = Bun.serve({
  hostname: host,
  port,
  fetch(req, srv) {
    if (srv.upgrade(req, { data: { peer: null, pair: null, address: "" } })) {
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
