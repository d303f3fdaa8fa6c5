import type { Command } from '../infra/cli.js';

export const command: Command = {
  summary: 'evaluate a rule set over history held in Kafka (own group per run id)',
  async run() {
    return 2;
  },
};
