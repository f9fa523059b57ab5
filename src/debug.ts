import { debuglog } from "node:util";

/** The library never writes to the console; `NODE_DEBUG=w3ptunnel` shows what it would say. */
export const debug = debuglog("w3ptunnel");
