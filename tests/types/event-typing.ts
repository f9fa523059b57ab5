/**
 * Compile-time checks of the typed event emitters (run by `npm run typecheck`, not at run time):
 * the usages W3P code relies on compile, and wrong names or payloads do not.
 */

import type { ClientEvents, ServerEvents } from "../../src/index.js";
import { TunnelClient, TunnelServer } from "../../src/index.js";

const server = new TunnelServer();
const client = new TunnelClient(3000);

// W3P's event maps were plain object types: they fit Record<string, unknown>.
type EventMap<Events extends Record<string, unknown>> = Events;
export type Maps = [EventMap<ServerEvents>, EventMap<ClientEvents>];

// Payloads are typed per event.
server.events.on("tunnel-created", ({ clientTunnel, clientAuthenticationCredentials, secure }) => {
  const port: number | undefined = clientTunnel.tunnelAddress?.port;
  const credentials: Record<string, unknown> = clientAuthenticationCredentials;
  const tls: boolean = secure;
  void [port, credentials, tls];
});
client.events.once("authentication-acknowledged", ({ assignedPort }) => {
  const port: number = assignedPort;
  void port;
});
client.events.on("tunnel-reconnect-queued", ({ timeout }) => void (timeout satisfies number));

// Events without a payload: no argument, or an explicit undefined (as W3P emitted them).
server.events.on("main-server-end", () => {});
const onEnd = (payload: ServerEvents["main-server-end"]) => void payload;
server.events.on("main-server-end", onEnd);
server.events.emit("main-server-end");
server.events.emit("main-server-end", undefined);
client.events.emit("tunnel-client-end", undefined);

// @ts-expect-error: no such event
server.events.on("tunnel-made", () => {});
// @ts-expect-error: the payload has no such property
client.events.on("authentication-acknowledged", ({ port }) => void port);
// @ts-expect-error: a payload of the wrong shape
server.events.emit("main-server-start", { port: "9000" });
