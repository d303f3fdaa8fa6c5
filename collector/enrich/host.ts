/** Who this host is: /etc/machine-id (the Kafka key), hostname, and the boot id (pids are unique within a boot). */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { EdrError } from '../../infra/errors.js';

export interface HostIdentity {
  hostId: string;
  hostname: string;
  bootId: string;
}

function readTrimmed(file: string): string | undefined {
  try {
    const v = readFileSync(file, 'utf8').trim();
    return v === '' ? undefined : v;
  } catch {
    return undefined;
  }
}

export function hostIdentity(
  over: { id?: string | undefined; hostname?: string | undefined } = {},
): HostIdentity {
  const hostId = over.id ?? readTrimmed('/etc/machine-id') ?? readTrimmed('/var/lib/dbus/machine-id');
  if (hostId === undefined) {
    throw new EdrError(
      'EDR_COLLECTOR_HOST_ID',
      'no host id: /etc/machine-id is missing or empty (run systemd-machine-id-setup, or set host.id in the config)',
    );
  }
  return {
    hostId,
    hostname: over.hostname ?? os.hostname(),
    bootId: readTrimmed('/proc/sys/kernel/random/boot_id') ?? 'unknown',
  };
}
