export { backoffDelay } from "./client/backoff.js";
export type { ClientConnection } from "./client/client-connection.js";
export { buildProxyHeader } from "./client/proxy-header.js";
export type { ClientStats } from "./client/tunnel-client.js";
export { TunnelClient } from "./client/tunnel-client.js";
export { ErrorCodes, TunnelError, type TunnelErrorCode } from "./errors.js";
export type {
  ClientEventEmitter,
  ClientEvents,
  EventArgs,
  ServerEventEmitter,
  ServerEvents,
  TypedEventEmitter,
} from "./events.js";
export {
  type MetricsEndpoint,
  type MetricsOptions,
  type MetricsSource,
  renderMetrics,
  serveMetrics,
} from "./metrics.js";
export type { StreamMeta } from "./mux/stream-meta.js";
export type {
  ConnectionContext,
  ConnectionFilter,
  LimitOptions,
  PortRanges,
  ServiceOptions,
  TunnelClientOptions,
  TunnelServerOptions,
} from "./options.js";
export { FrameType, MAGIC } from "./protocol/constants.js";
export type { ClientTunnel, TunnelStats } from "./server/client-tunnel.js";
export type { ServerStats } from "./server/tunnel-server.js";
export { TunnelServer } from "./server/tunnel-server.js";
