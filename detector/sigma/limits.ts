/**
 * What one rule may cost to load. Rules come from a directory, the fleet-wide rules topic and rule authors' pull
 * requests, so a rule is hostile input: a huge file, a value list in the millions, a YAML alias bomb or a
 * megabyte regular expression would stall or exhaust every detector that loads it. A rule over a limit is
 * rejected with its file (or topic key) and line; the other rules load.
 */
export interface RuleLimits {
  /** Bytes of one rule file or rules-topic record. */
  maxFileBytes: number;
  /** Values in one rule's (or filter's) detection, counted after YAML aliases are expanded. */
  maxValues: number;
  /** Characters of one `|re` regular expression. */
  maxRegexLength: number;
  /**
   * The YAML parser's budget for alias expansion (the `yaml` package's `maxAliasCount`: an alias counts as many
   * times as the nodes it brings in), against "billion laughs" documents.
   */
  maxAliasCount: number;
}

/**
 * Defaults well above SigmaHQ's own largest (a 290 KB file, 4,438 values in one rule, a 620-character regular
 * expression, no aliases at all) and well below what hurts.
 */
export const DEFAULT_RULE_LIMITS: Readonly<RuleLimits> = Object.freeze({
  maxFileBytes: 512 * 1024,
  maxValues: 10_000,
  maxRegexLength: 2048,
  maxAliasCount: 100,
});

/** The error code of every limit a rule exceeds. */
export const LIMIT_CODE = 'EDR_SIGMA_LIMIT';
