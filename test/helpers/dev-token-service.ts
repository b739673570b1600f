import {
  type DevTokenService,
  type DevTokenServiceOptions,
  startDevTokenService as start,
} from '../../src/demo/token-service.ts';
import { recordSecret } from './leak-registry.ts';

export type { DevClient, DevTokenService, DevTokenServiceOptions } from '../../src/demo/token-service.ts';

/**
 * The development token service (oidc-provider) for tests: the same service, with every access
 * token it issues and every client secret it knows recorded for the whole-run leak check.
 */
export async function startDevTokenService(opts: DevTokenServiceOptions): Promise<DevTokenService> {
  for (const c of opts.clients) recordSecret((c as { client_secret?: string }).client_secret);
  const ts = await start(opts);
  const issue = ts.issueToken.bind(ts);
  ts.issueToken = async (clientId, clientSecret, scope) => {
    const answer = await issue(clientId, clientSecret, scope);
    recordSecret(answer.access_token);
    return answer;
  };
  return ts;
}
