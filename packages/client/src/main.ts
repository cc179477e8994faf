// porthole-client's entry: the Node.js version is checked before anything that needs Node 20 is loaded. A
// module's static imports all load before its first line runs, so the program itself comes by import().
import { holdReloadWhileStarting } from '@porthole/protocol/early-reloads';
import { exitUnlessNodeIsRecentEnough } from '@porthole/protocol/node-version';

exitUnlessNodeIsRecentEnough('porthole-client');
holdReloadWhileStarting();
await import('./cli.js');
