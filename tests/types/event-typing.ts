/**
 * Compile-time checks of the typed event emitters (run by `npm run typecheck`, not at run time):
 * the usages W3P code relies on compile, and wrong names or payloads do not.
 */

import type { ClientEvents, ServerEvents, TypedEventEmitter } from "../../src/index.js";
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
// @ts-expect-error: an event with a payload needs it
server.events.emit("main-server-start");

// Code generic over the event name, as written against W3P's TypeSafeEventEmitter: a helper that
// subscribes to or re-emits any event of the map.
function forward<K extends keyof ServerEvents & string>(
  name: K,
  listener: (payload: ServerEvents[K]) => void,
): void {
  server.events.on(name, listener);
  server.events.once(name, listener);
  server.events.off(name, listener);
}
function reemit<K extends keyof ClientEvents & string>(name: K, payload: ClientEvents[K]): boolean {
  return client.events.emit(name, payload);
}
forward("visitor-connected", ({ visitorSocket }) => void visitorSocket.remoteAddress);
reemit("tunnel-reconnect-queued", { timeout: 1000 });
// @ts-expect-error: the generic helper still checks the payload against the name
reemit("tunnel-reconnect-queued", { timeout: "soon" });

// The emitter types are exported for code that stores or passes the emitters.
const stored: TypedEventEmitter<ServerEvents> = server.events;
const counted: number = stored.listenerCount("client-connected");
void counted;
