/**
 * The detector's metrics, recorded through @opentelemetry/api only; `startTelemetry` installs the SDK with a
 * Prometheus endpoint when the config asks for one (otherwise the API's no-op meter makes recording free).
 */
import { type Attributes, metrics, type ObservableResult } from '@opentelemetry/api';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import type { HeaderValue, InRecord } from '../infra/transport.js';

export interface DetectorMetrics {
  eventsConsumed(n: number, attrs?: Attributes): void;
  alertsEmitted(n: number, attrs?: Attributes): void;
  ruleMatched(ruleId: string): void;
  evaluationMs(ms: number): void;
  deadLetters(n: number): void;
  /** Rule alerts dropped by the per-batch bound (repeats of a rule and host). */
  alertsDropped(n: number): void;
  correlationEvictions(n: number, correlationId: string): void;
  /** Entries dropped from one correlation group (per-group bound, or to fit a changelog record). */
  correlationTrimmed(n: number, correlationId: string): void;
  /** An event whose time strayed past the clock-skew bound from its record's timestamp (skew in ms, signed). */
  eventTimeClamped(skewMs: number): void;
  /** A rules-topic record refused (unsigned, bad signature, unknown key, stale version, ...). */
  ruleRefused(reason: string): void;
  /** Latest lag per partition, read by the gauge when scraped. */
  setLag(topic: string, partition: number, lag: number): void;
  setRuleSetVersion(version: string): void;
}

export function detectorMetrics(name = 'edr-detector'): DetectorMetrics {
  const meter = metrics.getMeter(name);
  const consumed = meter.createCounter('edr_detector_events_consumed', { description: 'records consumed' });
  const alerts = meter.createCounter('edr_detector_alerts_emitted', { description: 'alerts published' });
  const matches = meter.createCounter('edr_detector_rule_matches', { description: 'matches per rule' });
  const evalTime = meter.createHistogram('edr_detector_evaluation_ms', {
    description: 'rule evaluation time per batch',
    unit: 'ms',
  });
  const dead = meter.createCounter('edr_detector_dead_letters', { description: 'records dead-lettered' });
  const evictions = meter.createCounter('edr_detector_correlation_evictions', {
    description: 'correlation groups evicted to bound memory',
  });
  const dropped = meter.createCounter('edr_detector_alerts_dropped', {
    description: 'rule alerts beyond maxAlertsPerBatch dropped (repeats of a rule and host in one batch)',
  });
  const trimmed = meter.createCounter('edr_detector_correlation_entries_trimmed', {
    description: 'correlation entries dropped to bound one group (count, or changelog record size)',
  });
  const clamped = meter.createCounter('edr_detector_event_time_clamped', {
    description: 'events whose time lay beyond the clock-skew bound of their record timestamp, by direction',
  });
  const refused = meter.createCounter('edr_detector_rules_refused', {
    description: 'rules-topic records refused, by reason',
  });
  const lags = new Map<string, { topic: string; partition: number; lag: number }>();
  meter
    .createObservableGauge('edr_detector_consumer_lag', {
      description: 'records behind the end, per partition',
    })
    .addCallback((r: ObservableResult) => {
      for (const l of lags.values()) r.observe(l.lag, { topic: l.topic, partition: l.partition });
    });
  let version = '';
  meter
    .createObservableGauge('edr_detector_rule_set_version', {
      description: '1 for the rule-set version this worker runs (version in the label)',
    })
    .addCallback((r: ObservableResult) => {
      if (version !== '') r.observe(1, { version });
    });
  return {
    eventsConsumed: (n, attrs) => consumed.add(n, attrs),
    alertsEmitted: (n, attrs) => alerts.add(n, attrs),
    ruleMatched: (ruleId) => matches.add(1, { ruleId }),
    evaluationMs: (ms) => evalTime.record(ms),
    deadLetters: (n) => dead.add(n),
    alertsDropped: (n) => dropped.add(n),
    correlationEvictions: (n, correlationId) => evictions.add(n, { correlationId }),
    correlationTrimmed: (n, correlationId) => trimmed.add(n, { correlationId }),
    eventTimeClamped: (skewMs) => clamped.add(1, { direction: skewMs > 0 ? 'future' : 'past' }),
    ruleRefused: (reason) => refused.add(1, { reason }),
    setLag: (topic, partition, lag) => lags.set(`${topic}/${partition}`, { topic, partition, lag }),
    setRuleSetVersion: (v) => {
      version = v;
    },
  };
}

/** Installs the metrics SDK with a Prometheus endpoint on host:port/metrics. */
export async function startTelemetry(opts: {
  host: string;
  port: number;
}): Promise<{ close(): Promise<void> }> {
  const exporter = new PrometheusExporter({ host: opts.host, port: opts.port, preventServerStart: true });
  await exporter.startServer();
  const provider = new MeterProvider({ readers: [exporter] });
  metrics.setGlobalMeterProvider(provider);
  return {
    close: async () => {
      await provider.shutdown().catch(() => {});
      metrics.disable();
    },
  };
}

/** W3C trace context headers: an alert continues the trace of the event it came from. */
const TRACE_HEADERS = ['traceparent', 'tracestate'] as const;

export function traceHeaders(record: InRecord): Record<string, HeaderValue> {
  const out: Record<string, HeaderValue> = {};
  for (const h of TRACE_HEADERS) {
    const v = record.headers[h];
    // W3C trace context values are at most 512 characters: a larger one is a host's padding, not passed on.
    if (v !== undefined && v.length <= 512) out[h] = v;
  }
  return out;
}
