import { lookup as dnsLookup, type LookupAddress } from "node:dns";
import type { LookupFunction } from "node:net";

/** What `dns.lookup` with `all: true` does; injectable for tests. */
export type Resolve = (
  hostname: string,
  options: { family?: number; hints?: number; all: true },
  callback: (err: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void,
) => void;

const resolveAll: Resolve = (hostname, options, callback) => dnsLookup(hostname, options, callback);

/**
 * A `lookup` for `net.connect` that reuses a host name's addresses for `ttlMs`. Every visitor
 * opens a connection to the local service, and looking its name up each time (getaddrinfo on
 * libuv's thread pool; "localhost" is the default) adds about 0.1 ms to every new stream. A
 * short time to live keeps bursts cheap while a changed name is seen within a second. Failed
 * lookups are not kept. IP addresses never get here: Node connects to them directly.
 */
export function cachedLookup(
  ttlMs = 1_000,
  resolve: Resolve = resolveAll,
  now: () => number = Date.now,
): LookupFunction {
  const cache = new Map<string, { at: number; addresses: LookupAddress[] }>();
  return (hostname, options, callback) => {
    const answer = (addresses: LookupAddress[]) => {
      if (options.all) callback(null, addresses);
      else callback(null, addresses[0]!.address, addresses[0]!.family);
    };
    const family = typeof options.family === "number" ? options.family : 0;
    const key = `${hostname}\0${family}\0${options.hints ?? 0}`;
    const hit = cache.get(key);
    if (hit && now() - hit.at < ttlMs) {
      answer(hit.addresses);
      return;
    }
    resolve(hostname, { family, hints: options.hints, all: true }, (err, addresses) => {
      if (err || addresses.length === 0) {
        const failure =
          err ??
          Object.assign(new Error(`no address for ${hostname}`), {
            code: "ENOTFOUND",
            syscall: "getaddrinfo",
          });
        if (options.all) callback(failure, []);
        else callback(failure, "", 0);
        return;
      }
      // One entry per name: a bounded cache, whatever names the services use.
      if (cache.size >= 64 && !cache.has(key)) cache.clear();
      cache.set(key, { at: now(), addresses });
      answer(addresses);
    });
  };
}
