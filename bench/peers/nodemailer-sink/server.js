// `node server.js ADDR:PORT [MAXCLIENTS]`: an SMTP sink on nodemailer's
// `smtp-server` for bench/run.sh. Each message's stream is read to its end
// and thrown away (nothing is kept); no AUTH, no STARTTLS, messages up to
// 64 MiB (SIZE), logging off.
"use strict";
const { SMTPServer } = require("smtp-server");

const [addr = "127.0.0.1:2525", maxArg = "1024"] = process.argv.slice(2);
const cut = addr.lastIndexOf(":");
const host = addr.slice(0, cut);
const port = Number(addr.slice(cut + 1));

const server = new SMTPServer({
  name: "bench.test",
  banner: "nodemailer-sink",
  logger: false,
  authOptional: true,
  allowInsecureAuth: true,
  disabledCommands: ["AUTH", "STARTTLS"],
  hideSTARTTLS: true,
  size: 64 * 1024 * 1024,
  maxClients: Number(maxArg),
  // Sessions may sit idle (scenarios f and i): no 60 s default cut-off.
  socketTimeout: 600 * 1000,
  onData(stream, _session, callback) {
    stream.on("data", () => {}); // consume and discard
    stream.on("end", () => {
      if (stream.sizeExceeded) {
        const err = new Error("message too big");
        err.responseCode = 552;
        callback(err);
      } else {
        callback(null, "OK: discarded");
      }
    });
  },
});
server.on("error", (err) => console.error("smtp-server error:", err.message));
server.listen(port, host, () => console.error(`listening addr=${host}:${port}`));
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => server.close(() => process.exit(0)));
}
