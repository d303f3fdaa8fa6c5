/** `edr acls`: the ACL table of infra/kafka/acls.ts, as `kafka-acls.sh` commands, a script, or Markdown. */
import { commandArgs } from '../infra/command-args.js';
import { EdrError } from '../infra/errors.js';
import {
  aclNames,
  aclsMarkdown,
  aclsScript,
  aclTable,
  defaultPrincipals,
  kafkaAclsCommands,
  type Service,
} from '../infra/kafka/acls.js';
import type { Command } from './command.js';

const help = `usage: edr acls [--script | --table] [--bootstrap-server HOST:PORT] [--command-config FILE]
                [--collector NAME] [--detector NAME] [--sink NAME] [--operator NAME] [--replay NAME]
                [--detector-group ID]

Prints the least-privilege ACLs of every service's principal (SASL user names) as kafka-acls.sh commands.

  --script               a POSIX shell script instead (BOOTSTRAP, COMMAND_CONFIG, KAFKA_ACLS from the environment)
  --table                the table as Markdown (as in infra/deploy/README.md)
  --bootstrap-server     default 127.0.0.1:9092
  --command-config FILE  a super user's client properties, passed to each command
  --collector --detector --sink --operator --replay NAME
                         the principals (defaults ${Object.values(defaultPrincipals).join(', ')})
  --detector-group ID    the detectors' groupId (default edr-detector): their groups and transactional ids
`;

const services: Service[] = ['collector', 'detector', 'sink', 'operator', 'replay'];

export const command: Command = {
  summary: "print the Kafka ACLs of each service's principal (kafka-acls.sh commands or a script)",
  async run(argv) {
    const args = commandArgs(argv, {
      usage: help,
      options: {
        script: { type: 'boolean', default: false },
        table: { type: 'boolean', default: false },
        'bootstrap-server': { type: 'string', default: '127.0.0.1:9092' },
        'command-config': { type: 'string' },
        'detector-group': { type: 'string' },
        collector: { type: 'string' },
        detector: { type: 'string' },
        sink: { type: 'string' },
        operator: { type: 'string' },
        replay: { type: 'string' },
      },
    });
    if (typeof args === 'number') return args;
    const { values } = args;
    if (values.script && values.table) {
      process.stderr.write(`edr acls: --script and --table exclude each other\n${help}`);
      return 2;
    }
    const bootstrap = values['bootstrap-server'];
    if (!/^[A-Za-z0-9.-]+:\d{1,5}$/.test(bootstrap)) {
      process.stderr.write(`edr acls: --bootstrap-server must be HOST:PORT, not '${bootstrap}'\n`);
      return 2;
    }
    const principals: Partial<Record<Service, string>> = {};
    for (const s of services) if (values[s] !== undefined) principals[s] = values[s];
    let rows: ReturnType<typeof aclTable>;
    try {
      rows = aclTable(
        aclNames({
          principals,
          ...(values['detector-group'] !== undefined ? { detectorGroup: values['detector-group'] } : {}),
        }),
      );
    } catch (err) {
      if (!(err instanceof EdrError)) throw err;
      process.stderr.write(`edr acls: ${err.message}\n`);
      return 2;
    }
    if (values.table) process.stdout.write(aclsMarkdown(rows));
    else if (values.script) process.stdout.write(aclsScript(rows, bootstrap));
    else process.stdout.write(`${kafkaAclsCommands(rows, bootstrap, values['command-config']).join('\n')}\n`);
    return 0;
  },
};
