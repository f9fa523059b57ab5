/**
 * A strict reader of the Prometheus text exposition format (0.0.4), for tests: every line must be
 * a HELP, a TYPE or a sample of a family whose TYPE came before; it throws on anything else.
 */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Family {
  name: string;
  type: string;
  help: string;
  samples: Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

export function parsePrometheus(text: string): Map<string, Family> {
  if (!text.endsWith("\n")) throw new Error("exposition must end with a newline");
  const families = new Map<string, Family>();
  const seen = new Set<string>();
  const lines = text.slice(0, -1).split("\n");
  lines.forEach((line, index) => {
    const where = `line ${index + 1} "${line}"`;
    if (line.startsWith("# HELP ")) {
      const [, name, help] = /^# HELP (\S+) (.*)$/.exec(line) ?? [];
      if (!name || !METRIC_NAME.test(name)) throw new Error(`bad HELP at ${where}`);
      if (/\\[^\\n]/.test(help!.replace(/\\\\/g, ""))) throw new Error(`bad escape in ${where}`);
      const family = families.get(name) ?? { name, type: "", help: "", samples: [] };
      if (family.help) throw new Error(`second HELP at ${where}`);
      family.help = unescapeText(help!);
      families.set(name, family);
      return;
    }
    if (line.startsWith("# TYPE ")) {
      const [, name, type] =
        /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/.exec(line) ?? [];
      if (!name || !METRIC_NAME.test(name)) throw new Error(`bad TYPE at ${where}`);
      const family = families.get(name) ?? { name, type: "", help: "", samples: [] };
      if (family.type) throw new Error(`second TYPE at ${where}`);
      if (family.samples.length) throw new Error(`TYPE after samples at ${where}`);
      family.type = type!;
      families.set(name, family);
      return;
    }
    if (line.startsWith("#") || line.trim() === "") throw new Error(`unexpected ${where}`);
    const sample = parseSample(line, where);
    const family = families.get(sample.name);
    if (!family?.type) throw new Error(`sample before its TYPE at ${where}`);
    const key = `${sample.name}${JSON.stringify(Object.entries(sample.labels).sort())}`;
    if (seen.has(key)) throw new Error(`duplicate series at ${where}`);
    seen.add(key);
    family.samples.push(sample);
  });
  for (const family of families.values()) {
    if (!family.type || !family.help) throw new Error(`${family.name} lacks HELP or TYPE`);
    if (family.type === "counter" && !family.name.endsWith("_total")) {
      throw new Error(`counter ${family.name} should end in _total`);
    }
  }
  return families;
}

function parseSample(line: string, where: string): Sample {
  const nameMatch = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
  if (!nameMatch) throw new Error(`bad metric name at ${where}`);
  const name = nameMatch[0];
  let i = name.length;
  const labels: Record<string, string> = {};
  if (line[i] === "{") {
    i++;
    while (line[i] !== "}") {
      const labelMatch = /^([a-zA-Z_][a-zA-Z0-9_]*)="/.exec(line.slice(i));
      if (!labelMatch || !LABEL_NAME.test(labelMatch[1]!)) throw new Error(`bad label at ${where}`);
      i += labelMatch[0].length;
      let value = "";
      for (;;) {
        const ch = line[i];
        if (ch === undefined) throw new Error(`unterminated label value at ${where}`);
        if (ch === '"') break;
        if (ch === "\\") {
          const next = line[i + 1];
          if (next === "\\") value += "\\";
          else if (next === '"') value += '"';
          else if (next === "n") value += "\n";
          else throw new Error(`bad escape in label value at ${where}`);
          i += 2;
          continue;
        }
        value += ch;
        i++;
      }
      i++; // closing quote
      if (labelMatch[1]! in labels) throw new Error(`repeated label at ${where}`);
      labels[labelMatch[1]!] = value;
      if (line[i] === ",") i++;
      else if (line[i] !== "}") throw new Error(`expected , or } at ${where}`);
    }
    i++;
  }
  const rest = /^ (\S+)( -?\d+)?$/.exec(line.slice(i));
  if (!rest) throw new Error(`bad value at ${where}`);
  const text = rest[1]!;
  const value =
    text === "+Inf"
      ? Number.POSITIVE_INFINITY
      : text === "-Inf"
        ? Number.NEGATIVE_INFINITY
        : Number(text);
  if (Number.isNaN(value) && text !== "NaN") throw new Error(`bad value at ${where}`);
  return { name, labels, value };
}

function unescapeText(text: string): string {
  return text.replace(/\\(\\|n)/g, (_, c: string) => (c === "n" ? "\n" : "\\"));
}

/** The single value of `name` whose labels include `labels` (throws if none or several). */
export function metricValue(
  families: Map<string, Family>,
  name: string,
  labels: Record<string, string> = {},
): number {
  const matches = (families.get(name)?.samples ?? []).filter((s) =>
    Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  if (matches.length !== 1) {
    throw new Error(`${matches.length} samples of ${name} with ${JSON.stringify(labels)}`);
  }
  return matches[0]!.value;
}
