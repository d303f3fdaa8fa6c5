import { transportContract } from '../test/harness/transport-contract.js';
import { MemoryTransport } from './memory-transport.js';

transportContract('memory', async () => new MemoryTransport(), { largeCount: 100_000, timeoutMs: 10_000 });
