/**
 * The collector as `edr up` runs it on this host. It runs only where it can capture for real (root, the native
 * addon built); otherwise `edr up` says why and starts nothing.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { type BackgroundService, startBackground, yamlList } from '../infra/background.js';
import { repoRoot } from '../infra/paths.js';

const addonFile = (): string =>
  process.env['EDR_NATIVE_ADDON'] ?? path.join(repoRoot, 'native', 'build', 'Release', 'edr_capture.node');

export async function startBackgroundCollector(
  stateDir: string,
  brokers: string[],
): Promise<BackgroundService> {
  if (process.getuid?.() !== 0) {
    return { state: 'unavailable', detail: 'not started: the eBPF capture needs root (run edr up as root)' };
  }
  if (!existsSync(addonFile())) {
    return {
      state: 'unavailable',
      detail: `not started: native addon not built (${addonFile()}); run native/setup.sh then npm run build:native`,
    };
  }
  return startBackground(stateDir, {
    name: 'collector',
    command: 'collector',
    ready: '"msg":"connected to the broker"',
    config: [
      '# written by edr up: the local pipeline',
      'kafka:',
      `  brokers: ${yamlList(brokers)}`,
      '  clientId: edr-collector',
      'source:',
      '  type: ebpf',
      'spool:',
      `  dir: ${JSON.stringify(path.join(stateDir, 'collector-spool'))}`,
      '',
    ].join('\n'),
  });
}
