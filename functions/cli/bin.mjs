#!/usr/bin/env node
// `npx ledgerline`: runs the TypeScript CLI through tsx's loader (a dev dependency of this repository).
import { register } from 'tsx/esm/api';

register();
const { main } = await import('./ledgerline.ts');
process.exitCode = await main(process.argv.slice(2));
