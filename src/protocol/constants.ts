/** `W3PTUNL`: precedes the first message in each direction (PROTOCOL-v1 "Bytes on the wire"). */
export const MAGIC = Buffer.from("W3PTUNL", "ascii");
export const MAGIC_LENGTH = MAGIC.length;

/** u32 length prefix before every frame. */
export const LENGTH_PREFIX_BYTES = 4;
/** StreamID (u32) + Type (u8) at the start of every tunnel frame body. */
export const TUNNEL_HEADER_BYTES = 5;
/** Length prefix + tunnel header: what precedes a payload on the wire. */
export const FRAME_HEADER_BYTES = LENGTH_PREFIX_BYTES + TUNNEL_HEADER_BYTES;

/** Frame types. 0x01-0x03 are v1; the rest exist only on sessions that negotiated them. */
export const FrameType = {
  DATA: 0x01,
  CLOSE: 0x02,
  ERROR: 0x03,
  OPEN: 0x04,
  WINDOW: 0x05,
  FIN: 0x06,
  PING: 0x07,
  PONG: 0x08,
  GOAWAY: 0x09,
} as const;
export type FrameTypeValue = (typeof FrameType)[keyof typeof FrameType];

/** Extension names, as announced in the handshake's `w3p.ext` list. */
export const Extension = {
  /** OPEN frame with visitor metadata; streams open only by OPEN. */
  OPEN: "open",
  /** Per-stream credit windows (WINDOW frame). */
  FLOW: "flow",
  /** Half-close (FIN frame). */
  FIN: "fin",
  /** Heartbeat (PING / PONG frames). */
  PING: "ping",
  /** GOAWAY frame before a deliberate close; error object in a refused handshake. */
  GOAWAY: "goaway",
  /** Several services (public ports) on one session. */
  SERVICES: "services",
} as const;
export type ExtensionName = (typeof Extension)[keyof typeof Extension];
export const ALL_EXTENSIONS: readonly ExtensionName[] = Object.values(Extension);

/** Extension version announced as `w3p.v`. v1 is the baseline with no `w3p` key at all. */
export const EXTENSION_PROTOCOL_VERSION = 2;

/**
 * The frame table: which extension a type needs (null = v1) and the payload size it must have
 * (-1 = any). The decoder checks both, so the session never sees an ill-sized control frame.
 */
export const FRAME_TABLE: ReadonlyArray<{
  type: FrameTypeValue;
  extension: ExtensionName | null;
  payloadBytes: number;
}> = [
  { type: FrameType.DATA, extension: null, payloadBytes: -1 },
  { type: FrameType.CLOSE, extension: null, payloadBytes: -1 },
  { type: FrameType.ERROR, extension: null, payloadBytes: -1 },
  { type: FrameType.OPEN, extension: Extension.OPEN, payloadBytes: -1 },
  { type: FrameType.WINDOW, extension: Extension.FLOW, payloadBytes: 4 },
  { type: FrameType.FIN, extension: Extension.FIN, payloadBytes: 0 },
  { type: FrameType.PING, extension: Extension.PING, payloadBytes: 8 },
  { type: FrameType.PONG, extension: Extension.PING, payloadBytes: 8 },
  { type: FrameType.GOAWAY, extension: Extension.GOAWAY, payloadBytes: -1 },
];
