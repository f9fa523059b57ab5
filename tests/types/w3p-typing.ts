/**
 * Compile-time checks (run by `npm run typecheck`) of W3P-style code around the filter and the
 * client's credentials: reading the filter back, wrapping it, and assigning one that uses
 * `context` all type-check.
 */

import { TunnelClient, TunnelServer } from "../../src/index.js";

const server = new TunnelServer();
const prev = server.connectionFilter;
server.connectionFilter = async (credentials) =>
  (await prev(credentials)) && credentials.id !== "banned";
server.connectionFilter = (credentials, { remoteAddress }) =>
  remoteAddress === "127.0.0.1" && typeof credentials.token === "string";
// @ts-expect-error: a filter answers with a boolean
server.connectionFilter = () => "yes";
const secure: boolean = server.tlsEnabled;
void secure;

const client = new TunnelClient({ localServicePort: 3000, authenticationCredentials: { id: "a" } });
client.authenticationCredentials = { token: "rotated" };
const id: unknown = client.authenticationCredentials.id;
void id;
