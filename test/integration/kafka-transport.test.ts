import { after } from 'node:test';
import { stopOwnBroker, testTransport } from '../harness/broker.js';
import { transportContract } from '../harness/transport-contract.js';

after(() => stopOwnBroker());

transportContract('kafka', () => testTransport(), { largeCount: 100_000, timeoutMs: 60_000 });
