/** Memory figures of another process, read from /proc (Linux). All values in bytes. */
import { readFileSync } from "node:fs";

function readKiB(text, field) {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(text);
  return match ? Number(match[1]) * 1024 : null;
}

/** VmRSS (now) and VmHWM (peak since the process started). */
export function readRss(pid) {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    return { rss: readKiB(status, "VmRSS"), peak: readKiB(status, "VmHWM") };
  } catch {
    return { rss: null, peak: null };
  }
}

/** Unique set size: pages only this process holds (Private_Clean + Private_Dirty). */
export function readUss(pid) {
  try {
    const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
    const clean = readKiB(rollup, "Private_Clean");
    const dirty = readKiB(rollup, "Private_Dirty");
    return clean === null || dirty === null ? null : clean + dirty;
  } catch {
    return null;
  }
}

/** Samples VmRSS of several processes every `everyMs` until `stop()`; returns the series. */
export function sampleRss(pids, everyMs = 100) {
  const startedAt = performance.now();
  const samples = [];
  const take = () => {
    const at = performance.now() - startedAt;
    samples.push({ at, rss: pids.map((pid) => readRss(pid).rss) });
  };
  take();
  const timer = setInterval(take, everyMs);
  return {
    stop() {
      clearInterval(timer);
      take();
      return samples;
    },
  };
}

/** CPU seconds the whole machine spent busy (all cores, all processes) since boot. */
export function machineBusySeconds() {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n")[0];
    const [user, nice, system, , , irq, softirq, steal] = line
      .trim()
      .split(/\s+/)
      .slice(1)
      .map(Number);
    return (user + nice + system + irq + softirq + steal) / 100; // USER_HZ is 100 on Linux
  } catch {
    return null;
  }
}
