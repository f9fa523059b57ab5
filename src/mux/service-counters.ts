import type { TunnelStream } from "./tunnel-stream.js";

/** Streams and payload bytes of one service; bytes of streams that already closed. */
export interface ServiceCounters {
  active: number;
  total: number;
  bytesIn: number;
  bytesOut: number;
}

/** A service's counters with the bytes of its live streams added. */
export function serviceTraffic(
  counters: ServiceCounters | undefined,
  liveStreams: Iterable<TunnelStream>,
  service: string,
): ServiceCounters {
  const result = { active: 0, total: 0, bytesIn: 0, bytesOut: 0, ...counters };
  for (const stream of liveStreams) {
    if (stream.service !== service) continue;
    result.bytesIn += stream.bytesIn;
    result.bytesOut += stream.bytesOut;
  }
  return result;
}

/** Counts a stream of `service` that just opened. */
export function countOpened(counters: Map<string, ServiceCounters>, service: string): void {
  let counts = counters.get(service);
  if (!counts) {
    counts = { active: 0, total: 0, bytesIn: 0, bytesOut: 0 };
    counters.set(service, counts);
  }
  counts.active++;
  counts.total++;
}

/** Moves a closed stream's bytes into its service's counters. */
export function countClosed(counters: Map<string, ServiceCounters>, stream: TunnelStream): void {
  const counts = counters.get(stream.service);
  if (!counts) return;
  counts.active--;
  counts.bytesIn += stream.bytesIn;
  counts.bytesOut += stream.bytesOut;
}
