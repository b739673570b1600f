import { rmSync } from 'node:fs';
import { LEAK_DIR } from '../helpers/leak-registry.ts';

/** A run starts with no records: the leak check reads only this run's. */
export default function setup(): void {
  rmSync(LEAK_DIR, { recursive: true, force: true });
}
