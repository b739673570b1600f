/**
 * The contract between the bench runner (bench/run.ts) and the scenario modules
 * (bench/scenarios/*.ts). Every number is measured in this run; nothing is hard-coded.
 */

/** One measured contender in a load scenario (autocannon figures, medians over rounds). */
export interface LoadResult {
  contender: string;
  scenario: string;
  /** Requests per second: median over the rounds, and min/max as the spread. */
  rps: { median: number; min: number; max: number };
  /** Latency in ms (median over rounds of each percentile). */
  latencyMs: { p50: number; p99: number; p999: number };
  /** Non-2xx answers and socket errors summed over all rounds (must be 0 for a valid figure). */
  errors: number;
  rounds: number;
  /** Free text (e.g. "skipped: nginx not installed"). */
  note?: string;
  /** Streaming scenarios: body megabytes (MiB) per second, median and spread over the rounds. */
  mibPerSec?: { median: number; min: number; max: number };
  /**
   * CPU time the contender's own process spent per request (µs, median over rounds; user + system
   * from /proc, so the upstream, Redis and the load generator are not in it). Absent for nginx
   * (several worker processes).
   */
  cpuUsPerRequest?: number;
  /**
   * The same CPU per request in units of the upstream's own CPU per request in the same run
   * (median over rounds of contender ÷ upstream). Every contender's requests cost the upstream the
   * same work, so this cost ratio does not move with the host's speed, which on a shared VM drifts
   * by tens of percent within seconds and moves req/s with it. Absent for `direct` and nginx.
   */
  cpuPerUpstream?: number;
  /** Gateways: access-log `cache` levels of the measured requests, summed over the rounds (l1, l2, introspection…). */
  cacheLevels?: Record<string, number>;
}

/** A scenario that is not a throughput table (burst, flood): named figures with a verdict. */
export interface CountResult {
  scenario: string;
  contender: string;
  /** e.g. { requests: 200, introspections: 1, non2xx: 0 } */
  figures: Record<string, number>;
  /** The issue's goal for this scenario, in words, and whether this run met it. */
  goal?: string;
  met?: boolean;
  note?: string;
}

/** The options of a count scenario run on its own (`node bench/scenarios/burst.ts`). */
export const STANDALONE_OPTIONS: BenchOptions = {
  durationSeconds: 5,
  rounds: 1,
  steadyDurationSeconds: 5,
  steadyRounds: 1,
  connections: 50,
};

export interface BenchOptions {
  /** Seconds per measured run of one contender in one round. */
  durationSeconds: number;
  rounds: number;
  /**
   * Steady keep-alive (the goals' scenario): more, shorter rounds than the others, so the medians
   * of its nine contenders are interleaved more finely against the host's drift.
   */
  steadyDurationSeconds: number;
  steadyRounds: number;
  connections: number;
  /** CPU list for the servers and for the load generator when taskset exists (e.g. "0" / "1"). */
  serverCpus?: string;
  loadCpus?: string;
}
