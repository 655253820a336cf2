/**
 * Splits a SQL script into statements at top-level semicolons, respecting single and double quotes,
 * dollar-quoted bodies (`$$ … $$`, `$fn$ … $fn$`), line comments and block comments. Migrations are
 * run one statement per call because the RDS Data API refuses multi-statement calls.
 */
export function splitSqlStatements(script: string): string[] {
  const statements: string[] = [];
  let start = 0;
  let i = 0;
  const n = script.length;
  const push = (end: number) => {
    const text = script.slice(start, end).trim();
    if (stripComments(text).trim() !== '') statements.push(text);
  };
  while (i < n) {
    const c = script[i]!;
    const next = script[i + 1];
    if (c === '-' && next === '-') {
      const eol = script.indexOf('\n', i);
      i = eol === -1 ? n : eol + 1;
    } else if (c === '/' && next === '*') {
      let depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        if (script[i] === '/' && script[i + 1] === '*') (depth += 1), (i += 2);
        else if (script[i] === '*' && script[i + 1] === '/') (depth -= 1), (i += 2);
        else i += 1;
      }
    } else if (c === "'" || c === '"') {
      i += 1;
      while (i < n) {
        if (script[i] === c && script[i + 1] === c) i += 2;
        else if (script[i] === c) break;
        else i += 1;
      }
      i += 1;
    } else if (c === '$') {
      const tag = /^\$[A-Za-z_]*\$/.exec(script.slice(i, i + 64));
      if (tag) {
        const close = script.indexOf(tag[0], i + tag[0].length);
        if (close === -1) throw new Error(`unterminated dollar-quoted string ${tag[0]}`);
        i = close + tag[0].length;
      } else i += 1;
    } else if (c === ';') {
      push(i);
      i += 1;
      start = i;
    } else i += 1;
  }
  push(n);
  return statements;
}

function stripComments(text: string): string {
  return text.replace(/--[^\n]*/g, '').replace(/\/\*[\s\S]*?\*\//g, '');
}
