/**
 * The project's floors, checked on the sources: infra/ and schemas/ are the ground and import nothing above
 * them, native/ stands on infra/ only, the processes (collector/, detector/, sinks/) never reach up into the
 * command layer (cli/), and no import cycle exists. Every relative import of every .ts file counts: static
 * `import ... from`, `export ... from`, bare `import '...'`, dynamic `import('...')` and `import('...')` types.
 * Type-only imports count for both checks: they are erased at run time, but a type-only edge is still a
 * dependency between modules, and the cycle this test was written against was closed by one.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { it } from 'node:test';
import ts from 'typescript';
import { repoRoot } from '../infra/paths.js';

/** Build output, dependencies and fetched or generated trees: not the project's own sources. */
const skipped = new Set([
  'node_modules',
  'dist',
  '.edr',
  '.git',
  'infra/kafka/lib',
  'native/build',
  'bpf/build',
]);

function sources(dir = ''): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(path.join(repoRoot, dir), { withFileTypes: true })) {
    const rel = dir === '' ? entry.name : `${dir}/${entry.name}`;
    if (skipped.has(rel)) continue;
    if (entry.isDirectory()) out.push(...sources(rel));
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) out.push(rel);
  }
  return out.sort();
}

/** Every module specifier the file names, in any import or re-export form. */
function specifiers(file: string): string[] {
  const text = readFileSync(path.join(repoRoot, file), 'utf8');
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const out: string[] = [];
  const visit = (node: ts.Node): void => {
    if (
      (ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) &&
      node.moduleSpecifier !== undefined &&
      ts.isStringLiteral(node.moduleSpecifier)
    ) {
      out.push(node.moduleSpecifier.text);
    } else if (
      ts.isCallExpression(node) &&
      node.expression.kind === ts.SyntaxKind.ImportKeyword &&
      node.arguments[0] !== undefined &&
      ts.isStringLiteralLike(node.arguments[0])
    ) {
      out.push(node.arguments[0].text);
    } else if (
      ts.isImportTypeNode(node) &&
      ts.isLiteralTypeNode(node.argument) &&
      ts.isStringLiteral(node.argument.literal)
    ) {
      out.push(node.argument.literal.text);
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return out;
}

/** The repository file a relative specifier names (`./x.js` is compiled from `./x.ts`); packages are skipped. */
function resolve(from: string, spec: string, files: Set<string>): string | undefined {
  if (!spec.startsWith('.')) return undefined;
  const target = path.posix.normalize(path.posix.join(path.posix.dirname(from), spec));
  for (const candidate of [target.replace(/\.js$/, '.ts'), target, `${target}.ts`, `${target}/index.ts`]) {
    if (files.has(candidate)) return candidate;
  }
  return target;
}

const files = sources();
const fileSet = new Set(files);
const imports = new Map<string, string[]>(
  files.map((f) => [
    f,
    specifiers(f)
      .map((s) => resolve(f, s, fileSet))
      .filter((t): t is string => t !== undefined),
  ]),
);

const top = (file: string): string => file.split('/')[0] ?? file;

/** Which top-level folders each floor may import from; a folder not listed here is unrestricted. */
const allowed: Record<string, (target: string) => boolean> = {
  infra: (t) => ['infra', 'schemas'].includes(top(t)),
  schemas: (t) => ['infra', 'schemas'].includes(top(t)),
  native: (t) => ['native', 'infra'].includes(top(t)),
  collector: (t) => top(t) !== 'cli',
  detector: (t) => top(t) !== 'cli',
  sinks: (t) => top(t) !== 'cli',
};

it('finds the sources and their imports', () => {
  for (const f of ['infra/config.ts', 'collector/main.ts', 'detector/main.ts', 'sinks/main.ts'])
    assert.ok(fileSet.has(f), f);
  assert.ok((imports.get('infra/config.ts') ?? []).includes('infra/errors.ts'));
});

it('keeps every floor off the floors above it', () => {
  const wrong: string[] = [];
  for (const [file, targets] of imports) {
    const ok = allowed[top(file)];
    if (ok === undefined) continue;
    // A unit test beside the code may also use the shared test support (contract suites, fixtures).
    const test = file.endsWith('.test.ts');
    for (const t of targets) if (!ok(t) && !(test && top(t) === 'test')) wrong.push(`${file} imports ${t}`);
  }
  assert.deepEqual(wrong, []);
});

it('has no import cycle', () => {
  // Depth-first search; a grey node met again closes a cycle, reported as the path around it.
  const state = new Map<string, 'grey' | 'black'>();
  const stack: string[] = [];
  const cycles: string[] = [];
  const visit = (file: string): void => {
    state.set(file, 'grey');
    stack.push(file);
    for (const t of imports.get(file) ?? []) {
      if (!imports.has(t)) continue;
      const s = state.get(t);
      if (s === 'grey') cycles.push([...stack.slice(stack.indexOf(t)), t].join(' -> '));
      else if (s === undefined) visit(t);
    }
    stack.pop();
    state.set(file, 'black');
  };
  for (const f of files) if (!state.has(f)) visit(f);
  assert.deepEqual(cycles, []);
});
