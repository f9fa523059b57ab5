/**
 * Everything the CLI prints goes through here (the library itself never prints). On a terminal
 * the status line sits at the bottom and is redrawn in place; log lines are written above it.
 * Anywhere else (systemd, a pipe) the status is an ordinary log line.
 */
export class Output {
  private statusText = "";
  private readonly out: NodeJS.WritableStream;
  private readonly err: NodeJS.WritableStream;
  readonly tty: boolean;

  constructor(
    out: NodeJS.WritableStream & { isTTY?: boolean } = process.stdout,
    err: NodeJS.WritableStream = process.stderr,
  ) {
    this.out = out;
    this.err = err;
    this.tty = out.isTTY === true;
  }

  /** A log line on stdout (one line: control characters in it are escaped, see `oneLine`). */
  info(line: string): void {
    this.write(this.out, oneLine(line));
  }

  /** A problem on stderr (one line, like `info`). */
  error(line: string): void {
    this.write(this.err, oneLine(line));
  }

  /** Our own multi-line text (help, a stack trace) on stdout or stderr, as is. */
  text(block: string, toStderr = false): void {
    this.write(toStderr ? this.err : this.out, block);
  }

  /** Replaces the status line (TTY) or prints it as a log line. */
  status(text: string): void {
    const line = oneLine(text);
    if (!this.tty) {
      this.out.write(`${line}\n`);
      return;
    }
    this.statusText = line;
    this.out.write(`\r\x1b[2K${line}`);
  }

  /** Leaves the terminal clean (no half-drawn status) before exiting. */
  clearStatus(): void {
    if (this.tty && this.statusText) this.out.write("\r\x1b[2K");
    this.statusText = "";
  }

  private write(stream: NodeJS.WritableStream, line: string): void {
    if (this.tty && this.statusText) {
      this.out.write("\r\x1b[2K");
      stream.write(`${line}\n`);
      this.out.write(this.statusText);
      return;
    }
    stream.write(`${line}\n`);
  }
}

/**
 * Log lines carry what peers sent (client ids, service names, refusal and going-away messages):
 * a newline there would forge a log line, and terminal escapes would reach the operator's
 * terminal. Control characters (C0, DEL, C1, Unicode line separators) are written as escapes.
 */
export function oneLine(line: string): string {
  return line.replace(
    // biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point
    /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/** `1.5 KiB`, `3.2 MiB`: short and readable in a status line. */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${Math.round(value)} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/**
 * Turns cumulative byte counters into rates. Counters are keyed (one per tunnel, or one per
 * connection of the client) so a tunnel that leaves or a counter that restarts after a reconnect
 * never yields a negative rate.
 */
export class RateMeter {
  private last = new Map<unknown, { in: number; out: number }>();
  private lastAt = performance.now();

  /** Bytes per second in and out since the previous call. */
  sample(counters: Map<unknown, { in: number; out: number }>): { in: number; out: number } {
    const now = performance.now();
    const seconds = Math.max((now - this.lastAt) / 1000, 0.001);
    let bytesIn = 0;
    let bytesOut = 0;
    for (const [key, value] of counters) {
      const before = this.last.get(key);
      bytesIn += before && value.in >= before.in ? value.in - before.in : value.in;
      bytesOut += before && value.out >= before.out ? value.out - before.out : value.out;
    }
    this.last = new Map(counters);
    this.lastAt = now;
    return { in: bytesIn / seconds, out: bytesOut / seconds };
  }
}

/**
 * Calls `render` every second on a terminal (the line is redrawn in place) or every
 * `intervalSeconds` otherwise; 0 turns the status off. Returns a stop function.
 */
export function startStatus(
  output: Output,
  intervalSeconds: number,
  render: () => string,
): () => void {
  if (intervalSeconds <= 0) return () => {};
  const period = output.tty ? 1_000 : intervalSeconds * 1_000;
  const timer = setInterval(() => output.status(render()), period);
  timer.unref();
  return () => {
    clearInterval(timer);
    output.clearStatus();
  };
}
